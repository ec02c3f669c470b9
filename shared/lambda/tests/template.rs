//! `template.yaml` declares what the code assumes about AWS: the stream filter the publisher
//! relies on, each projection's subscription filter and receive limit, and a function for every
//! binary. The code is the source; this keeps the template in step with it.

#![allow(clippy::expect_used, clippy::panic)]

use commerce_app::projection::{MAX_RECEIVES, subscriptions};

fn template() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    std::fs::read_to_string(path).expect("template.yaml at the repository's root")
}

#[test]
fn the_publishers_stream_filter_is_the_adapters() {
    let pattern = format!("Pattern: '{}'", commerce_dynamodb::STREAM_FILTER);
    assert!(
        template().contains(&pattern),
        "template.yaml needs {pattern}"
    );
}

#[test]
fn every_projection_is_subscribed_as_the_code_says() {
    let template = template();
    assert!(template.contains(&format!("maxReceiveCount: {MAX_RECEIVES}")));
    for subscription in subscriptions() {
        let title = {
            let mut chars = subscription.queue.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        };
        let block = template
            .split(&format!("  {title}Subscription:\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("template.yaml has no {title}Subscription"));
        let block = block.split("\n\n").next().unwrap_or_default();
        assert!(
            block.contains("RawMessageDelivery: true"),
            "{title}: {block}"
        );
        if subscription.filter.is_empty() {
            assert!(!block.contains("FilterPolicy"), "{title} takes every event");
        } else {
            let policy = serde_json::to_string(&subscription.filter).expect("json");
            assert!(
                block.contains(&format!("FilterPolicy: '{policy}'")),
                "{title}Subscription needs FilterPolicy: '{policy}'"
            );
        }
        for resource in [
            "Queue",
            "DeadLetters",
            "ProjectorFunction",
            "DeadLettersAlarm",
        ] {
            assert!(
                template.contains(&format!("  {title}{resource}:\n")),
                "template.yaml needs {title}{resource}"
            );
        }
    }
}

#[test]
fn every_function_binary_is_deployed() {
    let template = template();
    let bins = concat!(env!("CARGO_MANIFEST_DIR"), "/../../functions/src/bin");
    for entry in std::fs::read_dir(bins).expect("functions/src/bin") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        let binary = name.trim_end_matches(".rs");
        assert!(
            template.contains(&format!("Binary: {binary}\n")),
            "template.yaml deploys no function with Binary: {binary}"
        );
    }
}

/// `cancellation-saga` → `CancellationSaga`, as the template names resources after queues.
fn pascal(kebab: &str) -> String {
    kebab
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The block of resource `name`: from its line to the next blank line.
fn block(template: &str, name: &str) -> String {
    template
        .split(&format!("\n  {name}:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("template.yaml has no {name}"))
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_saga_starter_is_subscribed_as_the_code_says() {
    use commerce_app::saga::{STARTER_MAX_RECEIVES, STARTER_QUEUE, starter_subscription};
    let template = template();
    let title = pascal(STARTER_QUEUE);
    let subscription = block(&template, &format!("{title}Subscription"));
    let policy = serde_json::to_string(&starter_subscription().filter).expect("json");
    assert!(
        subscription.contains(&format!("FilterPolicy: '{policy}'")),
        "{title}Subscription needs FilterPolicy: '{policy}'"
    );
    assert!(subscription.contains("RawMessageDelivery: true"));
    assert!(
        block(&template, &format!("{title}Queue"))
            .contains(&format!("maxReceiveCount: {STARTER_MAX_RECEIVES}"))
    );
    for resource in ["DeadLetters", "DeadLettersAlarm"] {
        block(&template, &format!("{title}{resource}"));
    }
}

#[test]
fn every_step_of_the_state_machine_is_a_function_running_that_step() {
    use commerce_app::saga::CancellationStep;
    let template = template();
    let machine = block(&template, "CancellationStateMachine");
    assert!(machine.contains("DefinitionUri: infra/statemachines/order-cancellation.asl.json"));
    for step in CancellationStep::ALL {
        let function = step.substitution().trim_end_matches("Arn");
        assert!(
            machine.contains(&format!("{}: !GetAtt {function}.Arn", step.substitution())),
            "CancellationStateMachine substitutes {} with {function}",
            step.substitution()
        );
        assert!(
            machine.contains(&format!("FunctionName: !Ref {function}")),
            "the state machine's role may invoke {function}"
        );
        let body = block(&template, function);
        assert!(
            body.contains("Binary: cancellation-step")
                && body.contains(&format!("COMMERCE_STEP: {}", step.name())),
            "{function} runs the {} step",
            step.name()
        );
    }
}

/// Each route goes to the function of its group, which builds that group's routes only: a
/// path the template sent elsewhere would answer 404.
#[test]
fn every_route_is_routed_to_the_function_of_its_group() {
    use commerce_api::RouteGroup;
    let template = template();
    let spec = commerce_api::spec();
    let routes = commerce_api::route_groups::<
        commerce_dynamodb::DynamoTable,
        commerce_stripe::Provider<commerce_dynamodb::DynamoTable>,
        commerce_app::SystemClock,
    >();
    assert_eq!(
        routes.len(),
        spec.paths.paths.len(),
        "the route table and the OpenAPI document list the same paths"
    );
    for (group, path) in routes {
        let item = spec
            .paths
            .paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
        // Metrics are this process's own figures, served by the local server; on AWS,
        // CloudWatch has them.
        if group == RouteGroup::Local {
            assert!(
                !template.contains(&format!("Path: {path}\n")),
                "{path} is local"
            );
            continue;
        }
        // Each line whole, the block's last one too.
        let function = block(&template, &format!("{}Function", pascal(group.name()))) + "\n";
        let binary = format!("Binary: {}\n", group.name());
        assert!(function.contains(&binary), "{} runs {binary}", group.name());
        for (method, operation) in [("GET", &item.get), ("PUT", &item.put), ("POST", &item.post)] {
            if operation.is_none() {
                continue;
            }
            let event = format!("            Method: {method}\n            Path: {path}\n");
            assert!(
                function.contains(&event),
                "template.yaml routes {method} {path} to the {} function",
                group.name()
            );
            assert_eq!(template.matches(&event).count(), 1, "{method} {path} once");
        }
    }
}
