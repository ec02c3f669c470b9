//! The JSONPath subset ASL definitions use: `$` (the state's input) or `$$` (the context
//! object), then any number of `.name`, `['name']`, `[n]` and `[*]` / `.*`. Filters, slices,
//! unions and recursive descent are refused when a definition is loaded.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Input,
    Context,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(usize),
    /// Every element (or every value of an object).
    All,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub root: Root,
    pub steps: Vec<Step>,
    text: String,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (root, mut rest) = if let Some(rest) = text.strip_prefix("$$") {
            (Root::Context, rest)
        } else if let Some(rest) = text.strip_prefix('$') {
            (Root::Input, rest)
        } else {
            return Err(format!(
                "{text:?} is not a path: it must start with $ or $$"
            ));
        };
        let unsupported = |what: &str| format!("{text:?}: {what} is not supported");
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("..") {
                let _ = after;
                return Err(unsupported("recursive descent (..)"));
            } else if let Some(after) = rest.strip_prefix(".*") {
                steps.push(Step::All);
                rest = after;
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let (name, tail) = after.split_at(end);
                if name.is_empty() {
                    return Err(format!("{text:?}: a name is missing after '.'"));
                }
                steps.push(Step::Field(name.to_owned()));
                rest = tail;
            } else if let Some(after) = rest.strip_prefix('[') {
                let close = after
                    .find(']')
                    .ok_or_else(|| format!("{text:?}: '[' is not closed"))?;
                let (inside, tail) = after.split_at(close);
                rest = tail.get(1..).unwrap_or_default();
                let inside = inside.trim();
                if inside == "*" {
                    steps.push(Step::All);
                } else if let Some(name) = quoted(inside) {
                    steps.push(Step::Field(name));
                } else if let Ok(index) = inside.parse::<usize>() {
                    steps.push(Step::Index(index));
                } else if inside.starts_with('?') {
                    return Err(unsupported("a filter expression"));
                } else if inside.contains(':') {
                    return Err(unsupported("a slice"));
                } else if inside.contains(',') {
                    return Err(unsupported("a union"));
                } else {
                    return Err(format!("{text:?}: [{inside}] is not a name or an index"));
                }
            } else {
                return Err(format!("{text:?}: unexpected {rest:?}"));
            }
        }
        Ok(Self {
            root,
            steps,
            text: text.to_owned(),
        })
    }

    /// Whether it names one place (no wildcard): what ResultPath and Choice variables need.
    pub fn is_definite(&self) -> bool {
        !self.steps.contains(&Step::All)
    }

    /// What it selects from `input` (or from `context`); `None` when nothing is there. A path
    /// with a wildcard selects a list of what it matched.
    pub fn select(&self, input: &Value, context: &Value) -> Option<Value> {
        let start = match self.root {
            Root::Input => input,
            Root::Context => context,
        };
        if self.is_definite() {
            let mut at = start;
            for step in &self.steps {
                at = match (step, at) {
                    (Step::Field(name), Value::Object(map)) => map.get(name)?,
                    (Step::Index(i), Value::Array(items)) => items.get(*i)?,
                    _ => return None,
                };
            }
            return Some(at.clone());
        }
        let mut matched = vec![start];
        for step in &self.steps {
            let mut next = Vec::new();
            for at in matched {
                match (step, at) {
                    (Step::Field(name), Value::Object(map)) => next.extend(map.get(name)),
                    (Step::Index(i), Value::Array(items)) => next.extend(items.get(*i)),
                    (Step::All, Value::Array(items)) => next.extend(items.iter()),
                    (Step::All, Value::Object(map)) => next.extend(map.values()),
                    _ => {}
                }
            }
            matched = next;
        }
        Some(Value::Array(matched.into_iter().cloned().collect()))
    }

    /// Puts `value` at this path in `target`, making the objects on the way. Fails (as
    /// `States.ResultPathMatchFailure` does) when something on the way is not an object, or an
    /// index is out of range.
    pub fn put(&self, target: &mut Value, value: Value) -> Result<(), String> {
        if self.root == Root::Context {
            return Err(format!(
                "{self} names the context object, which cannot be written"
            ));
        }
        let Some((last, init)) = self.steps.split_last() else {
            *target = value;
            return Ok(());
        };
        let mut at = target;
        for step in init {
            at = match step {
                Step::Field(name) => {
                    let Value::Object(map) = at else {
                        return Err(format!(
                            "{self}: the value before {name:?} is not an object"
                        ));
                    };
                    map.entry(name.clone())
                        .or_insert_with(|| Value::Object(Map::new()))
                }
                Step::Index(i) => match at {
                    Value::Array(items) => items
                        .get_mut(*i)
                        .ok_or_else(|| format!("{self}: index {i} is out of range"))?,
                    _ => return Err(format!("{self}: the value before [{i}] is not an array")),
                },
                Step::All => return Err(format!("{self}: a result path names one place")),
            };
        }
        match last {
            Step::Field(name) => match at {
                Value::Object(map) => {
                    map.insert(name.clone(), value);
                    Ok(())
                }
                _ => Err(format!(
                    "{self}: the value before {name:?} is not an object"
                )),
            },
            Step::Index(i) => match at {
                Value::Array(items) => {
                    let slot = items
                        .get_mut(*i)
                        .ok_or_else(|| format!("{self}: index {i} is out of range"))?;
                    *slot = value;
                    Ok(())
                }
                _ => Err(format!("{self}: the value before [{i}] is not an array")),
            },
            Step::All => Err(format!("{self}: a result path names one place")),
        }
    }
}

fn quoted(inside: &str) -> Option<String> {
    let body = inside
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inside.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    Some(body.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_names_indices_and_wildcards() {
        let input = json!({"a": {"b c": [1, {"d": 2}]}, "list": [{"x": 1}, {"x": 2}, {"y": 3}]});
        let at = |p: &str| Path::parse(p).unwrap().select(&input, &json!({"k": 9}));
        assert_eq!(at("$"), Some(input.clone()));
        assert_eq!(at("$.a['b c'][1].d"), Some(json!(2)));
        assert_eq!(at("$.list[*].x"), Some(json!([1, 2])));
        assert_eq!(at("$.list.*.y"), Some(json!([3])));
        assert_eq!(at("$.missing"), None);
        assert_eq!(at("$.a['b c'][5]"), None);
        assert_eq!(at("$$.k"), Some(json!(9)));
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        for bad in [
            "a.b",
            "$..x",
            "$.a[?(@.x)]",
            "$.a[1:2]",
            "$.a[1,2]",
            "$.",
            "$.a[",
            "$x",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn puts_values_making_objects_on_the_way() {
        let mut v = json!({"a": 1});
        Path::parse("$.b.c").unwrap().put(&mut v, json!(2)).unwrap();
        assert_eq!(v, json!({"a": 1, "b": {"c": 2}}));
        Path::parse("$").unwrap().put(&mut v, json!("all")).unwrap();
        assert_eq!(v, json!("all"));
        let mut v = json!({"a": 1});
        assert!(Path::parse("$.a.b").unwrap().put(&mut v, json!(2)).is_err());
        let mut v = json!({"l": [0, 1]});
        Path::parse("$.l[1]")
            .unwrap()
            .put(&mut v, json!(5))
            .unwrap();
        assert_eq!(v, json!({"l": [0, 5]}));
    }
}
