//! Payload templates (`Parameters`, `ResultSelector`, `ItemSelector`): JSON whose fields named
//! `something.$` take their value from a path or an intrinsic function.

use serde_json::{Map, Value};

use crate::intrinsic::Call;
use crate::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Literal(Value),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    Path(Path),
    Intrinsic(Call),
}

/// Why a template could not be filled in: a path that selects nothing (the state fails with
/// `States.ParameterPathFailure`) or a failed intrinsic (`States.IntrinsicFailure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfilled {
    Path(String),
    Intrinsic(String),
}

impl Template {
    pub fn parse(value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, value) in map {
                    match key.strip_suffix(".$") {
                        Some(name) => {
                            let Value::String(text) = value else {
                                return Err(format!(
                                    "{key}: a .$ field takes a path or an intrinsic function as a string"
                                ));
                            };
                            let dynamic = if text.starts_with('$') {
                                Template::Path(Path::parse(text)?)
                            } else if text.starts_with("States.") {
                                Template::Intrinsic(Call::parse(text)?)
                            } else {
                                return Err(format!(
                                    "{key}: {text:?} is neither a path nor an intrinsic function"
                                ));
                            };
                            fields.push((name.to_owned(), dynamic));
                        }
                        None => fields.push((key.clone(), Template::parse(value)?)),
                    }
                }
                Template::Object(fields)
            }
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .map(Template::parse)
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Literal(other.clone()),
        })
    }

    pub fn fill(&self, input: &Value, context: &Value) -> Result<Value, Unfilled> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Object(fields) => {
                let mut map = Map::new();
                for (name, template) in fields {
                    map.insert(name.clone(), template.fill(input, context)?);
                }
                Value::Object(map)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.fill(input, context))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Path(path) => path
                .select(input, context)
                .ok_or_else(|| Unfilled::Path(format!("{path} selects nothing from the input")))?,
            Template::Intrinsic(call) => call.eval(input, context).map_err(Unfilled::Intrinsic)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_paths_intrinsics_and_literals_at_any_depth() {
        let template = Template::parse(&json!({
            "order.$": "$.id",
            "nested": {"token.$": "$$.Task.Token", "fixed": 1},
            "list": [{"n.$": "States.MathAdd($.n, 1)"}, "x"],
        }))
        .unwrap();
        let filled = template
            .fill(
                &json!({"id": "o-1", "n": 1}),
                &json!({"Task": {"Token": "t"}}),
            )
            .unwrap();
        assert_eq!(
            filled,
            json!({"order": "o-1", "nested": {"token": "t", "fixed": 1}, "list": [{"n": 2}, "x"]})
        );
    }

    #[test]
    fn a_missing_path_or_bad_field_is_reported() {
        let template = Template::parse(&json!({"a.$": "$.missing"})).unwrap();
        assert!(matches!(
            template.fill(&json!({}), &json!({})),
            Err(Unfilled::Path(_))
        ));
        assert!(Template::parse(&json!({"a.$": 1})).is_err());
        assert!(Template::parse(&json!({"a.$": "plain"})).is_err());
    }
}
