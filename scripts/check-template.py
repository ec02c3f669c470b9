"""Checks template.yaml for what cfn-lint cannot know: the rules this project relies on.

A tenant claim users could set or change would let anyone act as an admin of any shop, so the
user pool's tenant attribute must be immutable, not writable by the app client, and users must
be created by administrators only. Run by scripts/test; exits 1 with the broken rules.
"""

import sys

import yaml


class Loader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


def _any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


Loader.add_multi_constructor("!", _any_tag)


def main(path):
    with open(path, encoding="utf-8") as f:
        template = yaml.load(f, Loader=Loader)
    resources = template["Resources"]
    broken = []

    pool = resources.get("UserPool", {}).get("Properties", {})
    tenant = [a for a in pool.get("Schema", []) if a.get("Name") == "tenant"]
    if not tenant or tenant[0].get("Mutable") is not False:
        broken.append("the user pool's tenant attribute must be immutable (Mutable: false)")
    if pool.get("AdminCreateUserConfig", {}).get("AllowAdminCreateUserOnly") is not True:
        broken.append("users must be created by administrators only (AllowAdminCreateUserOnly)")
    client = resources.get("UserPoolClient", {}).get("Properties", {})
    writable = client.get("WriteAttributes")
    if writable is None or "custom:tenant" in writable:
        broken.append("the app client must list WriteAttributes without custom:tenant")

    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    if "custom:tenant" not in str(variables.get("TENANT_CLAIM")):
        broken.append("with the user pool, TENANT_CLAIM must be custom:tenant")
    if "CursorSecret" not in str(variables.get("CURSOR_SECRET")):
        broken.append("every function needs CURSOR_SECRET from the generated secret")

    for rule in broken:
        print(f"template.yaml: {rule}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "template.yaml"))
