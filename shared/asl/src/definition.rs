//! A state machine definition, read and checked once: everything this interpreter does not
//! support is refused here, so nothing unsupported is met while running.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::choice::Rule;
use crate::path::Path;
use crate::template::Template;

/// A definition (or a Parallel branch, or a Map's item processor).
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub start_at: String,
    pub states: BTreeMap<String, State>,
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub kind: Kind,
    /// `None`: `InputPath: null` (the state sees `{}`); default `$`.
    pub input_path: Option<Path>,
    /// `None`: `OutputPath: null` (the state passes on `{}`); default `$`.
    pub output_path: Option<Path>,
    /// `None`: `ResultPath: null` (the result is dropped, the input passes on); default `$`.
    pub result_path: Option<Path>,
    pub parameters: Option<Template>,
    pub result_selector: Option<Template>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Pass {
        result: Option<Value>,
    },
    Task {
        resource: String,
        /// `.waitForTaskToken`: the task answers later, through a token.
        callback: bool,
        timeout: Seconds,
        heartbeat: Option<Seconds>,
    },
    Choice {
        choices: Vec<(Rule, String)>,
        default: Option<String>,
    },
    Wait(WaitFor),
    Succeed,
    Fail {
        error: Option<Dynamic>,
        cause: Option<Dynamic>,
    },
    Parallel {
        branches: Vec<Definition>,
    },
    Map {
        processor: Box<Definition>,
        items_path: Path,
        item_selector: Option<Template>,
        max_concurrency: usize,
    },
}

/// A number of seconds, given or read from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Seconds {
    Fixed(u64),
    Path(Path),
}

#[derive(Debug, Clone, PartialEq)]
pub enum WaitFor {
    Seconds(Seconds),
    Timestamp(String),
    TimestampPath(Path),
}

/// A Fail state's `Error` or `Cause`: given, or read with `ErrorPath` / `CausePath` (a path
/// or an intrinsic function).
#[derive(Debug, Clone, PartialEq)]
pub enum Dynamic {
    Fixed(String),
    Path(Path),
    Intrinsic(crate::intrinsic::Call),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retrier {
    pub errors: Vec<String>,
    pub interval_seconds: f64,
    pub max_attempts: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: Option<f64>,
    pub full_jitter: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Catcher {
    pub errors: Vec<String>,
    pub next: String,
    /// `None`: `ResultPath: null`; default `$`.
    pub result_path: Option<Path>,
}

/// Why a definition is refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {why}")]
pub struct Refused {
    pub at: String,
    pub why: String,
}

/// Task timeout when a definition gives none (Step Functions' own default).
pub const DEFAULT_TASK_TIMEOUT: u64 = 99_999_999;

impl Definition {
    /// Reads a definition's JSON after replacing each `${Name}` with its substitution, as
    /// `DefinitionSubstitutions` does on AWS. A `${Name}` with no substitution is left as is.
    pub fn load(text: &str, substitutions: &BTreeMap<String, String>) -> Result<Self, Refused> {
        let mut text = text.to_owned();
        for (name, value) in substitutions {
            text = text.replace(&format!("${{{name}}}"), value);
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| Refused {
            at: "definition".into(),
            why: format!("not JSON: {e}"),
        })?;
        Self::from_value(&value, "definition")
    }

    /// A whole definition, from its JSON.
    pub fn from_value(value: &Value, at: &str) -> Result<Self, Refused> {
        Self::read(value, at, Level::Top)
    }

    fn read(value: &Value, at: &str, level: Level) -> Result<Self, Refused> {
        let refuse = |why: String| Refused {
            at: at.to_owned(),
            why,
        };
        let map = value
            .as_object()
            .ok_or_else(|| refuse("a definition is an object".into()))?;
        if map.contains_key("QueryLanguage") {
            return Err(refuse("only JSONPath is supported, not JSONata".into()));
        }
        let fields: &[&str] = match level {
            Level::Top => &["StartAt", "States", "Comment", "Version", "TimeoutSeconds"],
            Level::Branch => &["StartAt", "States", "Comment"],
            Level::ItemProcessor => &["StartAt", "States", "Comment", "ProcessorConfig"],
        };
        only(map, fields, at)?;
        if let Some(config) = map.get("ProcessorConfig") {
            let inline = config.as_object().is_some_and(|c| {
                c.keys().all(|k| k == "Mode")
                    && c.get("Mode")
                        .is_none_or(|mode| mode == &Value::String("INLINE".into()))
            });
            if !inline {
                return Err(refuse("only an INLINE Map processor is supported".into()));
            }
        }
        let start_at = text(map, "StartAt", at)?.to_owned();
        let states_value = map
            .get("States")
            .and_then(Value::as_object)
            .ok_or_else(|| refuse("States must be an object".into()))?;
        if states_value.is_empty() {
            return Err(refuse("States must name at least one state".into()));
        }
        let mut states = BTreeMap::new();
        for (name, state) in states_value {
            if name.len() > 80 {
                return Err(refuse(format!(
                    "state name {name:?} is longer than 80 characters"
                )));
            }
            states.insert(
                name.clone(),
                State::from_value(state, &format!("{at}.States.{name}"))?,
            );
        }
        let timeout_seconds = match map.get("TimeoutSeconds") {
            None => None,
            Some(v) => Some(positive(v, &format!("{at}.TimeoutSeconds"))?),
        };
        let definition = Self {
            start_at,
            states,
            timeout_seconds,
        };
        definition.check_transitions(at)?;
        Ok(definition)
    }

    /// Every transition names a state of this definition, and every state can be reached.
    fn check_transitions(&self, at: &str) -> Result<(), Refused> {
        let missing = |from: &str, to: &str| Refused {
            at: format!("{at}.States.{from}"),
            why: format!("goes to {to:?}, which is not a state of this definition"),
        };
        if !self.states.contains_key(&self.start_at) {
            return Err(Refused {
                at: at.into(),
                why: format!("StartAt {:?} is not a state", self.start_at),
            });
        }
        let mut reached = BTreeSet::new();
        let mut todo = vec![self.start_at.clone()];
        while let Some(name) = todo.pop() {
            if !reached.insert(name.clone()) {
                continue;
            }
            let Some(state) = self.states.get(&name) else {
                continue;
            };
            for to in state.targets() {
                if !self.states.contains_key(to) {
                    return Err(missing(&name, to));
                }
                todo.push(to.to_owned());
            }
        }
        if let Some(unreached) = self.states.keys().find(|n| !reached.contains(*n)) {
            return Err(Refused {
                at: format!("{at}.States.{unreached}"),
                why: "no state goes to it".into(),
            });
        }
        Ok(())
    }
}

impl State {
    /// The states it may go to.
    fn targets(&self) -> Vec<&str> {
        let mut targets: Vec<&str> = self.next.iter().map(String::as_str).collect();
        targets.extend(self.catch.iter().map(|c| c.next.as_str()));
        if let Kind::Choice { choices, default } = &self.kind {
            targets.extend(choices.iter().map(|(_, next)| next.as_str()));
            targets.extend(default.iter().map(String::as_str));
        }
        targets
    }

    fn from_value(value: &Value, at: &str) -> Result<Self, Refused> {
        let refuse = |why: String| Refused {
            at: at.to_owned(),
            why,
        };
        let map = value
            .as_object()
            .ok_or_else(|| refuse("a state is an object".into()))?;
        let kind_name = text(map, "Type", at)?;
        const COMMON: &[&str] = &["Type", "Comment", "InputPath", "OutputPath"];
        let (fields, flow): (&[&str], Flow) = match kind_name {
            "Pass" => (&["Result", "ResultPath", "Parameters"], Flow::NextOrEnd),
            "Task" => (
                &[
                    "Resource",
                    "Parameters",
                    "ResultSelector",
                    "ResultPath",
                    "Retry",
                    "Catch",
                    "TimeoutSeconds",
                    "TimeoutSecondsPath",
                    "HeartbeatSeconds",
                    "HeartbeatSecondsPath",
                ],
                Flow::NextOrEnd,
            ),
            "Choice" => (&["Choices", "Default"], Flow::Neither),
            "Wait" => (
                &["Seconds", "SecondsPath", "Timestamp", "TimestampPath"],
                Flow::NextOrEnd,
            ),
            "Succeed" => (&[], Flow::Neither),
            "Fail" => (&["Error", "ErrorPath", "Cause", "CausePath"], Flow::Neither),
            "Parallel" => (
                &[
                    "Branches",
                    "Parameters",
                    "ResultSelector",
                    "ResultPath",
                    "Retry",
                    "Catch",
                ],
                Flow::NextOrEnd,
            ),
            "Map" => (
                &[
                    "Iterator",
                    "ItemProcessor",
                    "ItemsPath",
                    "ItemSelector",
                    "Parameters",
                    "MaxConcurrency",
                    "ResultSelector",
                    "ResultPath",
                    "Retry",
                    "Catch",
                ],
                Flow::NextOrEnd,
            ),
            other => return Err(refuse(format!("Type {other:?} is not a state type"))),
        };
        let flow_fields: &[&str] = match flow {
            Flow::NextOrEnd => &["Next", "End"],
            Flow::Neither => &[],
        };
        // A Fail state takes only Type and Comment of the common fields.
        let common: &[&str] = if kind_name == "Fail" {
            &["Type", "Comment"]
        } else {
            COMMON
        };
        let known: Vec<&str> = common
            .iter()
            .chain(fields)
            .chain(flow_fields)
            .copied()
            .collect();
        only(map, &known, at)?;
        let next = match flow {
            Flow::Neither => None,
            Flow::NextOrEnd => match (map.get("Next"), map.get("End")) {
                (Some(Value::String(next)), None) => Some(next.clone()),
                (None, Some(Value::Bool(true))) => None,
                _ => {
                    return Err(refuse(
                        "takes exactly one of Next (a state name) and End (true)".into(),
                    ));
                }
            },
        };
        let kind = match kind_name {
            "Pass" => Kind::Pass {
                result: map.get("Result").cloned(),
            },
            "Task" => {
                let resource = text(map, "Resource", at)?.to_owned();
                let callback = resource.ends_with(".waitForTaskToken");
                let timeout = seconds(map, "TimeoutSeconds", at)?
                    .unwrap_or(Seconds::Fixed(DEFAULT_TASK_TIMEOUT));
                let heartbeat = seconds(map, "HeartbeatSeconds", at)?;
                if let (Seconds::Fixed(t), Some(Seconds::Fixed(h))) = (&timeout, &heartbeat)
                    && h >= t
                {
                    return Err(refuse(
                        "HeartbeatSeconds must be below TimeoutSeconds".into(),
                    ));
                }
                Kind::Task {
                    resource,
                    callback,
                    timeout,
                    heartbeat,
                }
            }
            "Choice" => {
                let rules = map
                    .get("Choices")
                    .and_then(Value::as_array)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| refuse("Choices must be a list of at least one rule".into()))?;
                let mut choices = Vec::with_capacity(rules.len());
                for (n, rule) in rules.iter().enumerate() {
                    let at = format!("{at}.Choices[{n}]");
                    let next = rule
                        .get("Next")
                        .and_then(Value::as_str)
                        .ok_or_else(|| Refused {
                            at: at.clone(),
                            why: "a choice needs Next".into(),
                        })?;
                    let rule = Rule::parse(rule, true).map_err(|why| Refused { at, why })?;
                    choices.push((rule, next.to_owned()));
                }
                let default = match map.get("Default") {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(refuse("Default must be a state name".into())),
                };
                Kind::Choice { choices, default }
            }
            "Wait" => {
                let given: Vec<&str> = ["Seconds", "SecondsPath", "Timestamp", "TimestampPath"]
                    .into_iter()
                    .filter(|k| map.contains_key(*k))
                    .collect();
                if given.len() != 1 {
                    return Err(refuse(
                        "takes exactly one of Seconds, SecondsPath, Timestamp and TimestampPath"
                            .into(),
                    ));
                }
                match given.first().copied() {
                    Some("Timestamp") => {
                        let t = text(map, "Timestamp", at)?;
                        if crate::choice::timestamp(t).is_none() {
                            return Err(refuse(format!("Timestamp {t:?} is not RFC 3339")));
                        }
                        Kind::Wait(WaitFor::Timestamp(t.to_owned()))
                    }
                    Some("TimestampPath") => {
                        Kind::Wait(WaitFor::TimestampPath(path(map, "TimestampPath", at)?))
                    }
                    _ => Kind::Wait(WaitFor::Seconds(
                        seconds_allowing_zero(map, "Seconds", at)?
                            .ok_or_else(|| refuse("Seconds is missing".into()))?,
                    )),
                }
            }
            "Succeed" => Kind::Succeed,
            "Fail" => Kind::Fail {
                error: dynamic(map, "Error", at)?,
                cause: dynamic(map, "Cause", at)?,
            },
            "Parallel" => {
                let branches = map
                    .get("Branches")
                    .and_then(Value::as_array)
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| {
                        refuse("Branches must be a list of at least one branch".into())
                    })?;
                Kind::Parallel {
                    branches: branches
                        .iter()
                        .enumerate()
                        .map(|(n, b)| {
                            Definition::read(b, &format!("{at}.Branches[{n}]"), Level::Branch)
                        })
                        .collect::<Result<_, _>>()?,
                }
            }
            "Map" => {
                if map.contains_key("Iterator") == map.contains_key("ItemProcessor") {
                    return Err(refuse(
                        "takes exactly one of ItemProcessor and Iterator".into(),
                    ));
                }
                if map.contains_key("ItemSelector") && map.contains_key("Parameters") {
                    return Err(refuse("takes ItemSelector or Parameters, not both".into()));
                }
                let (key, processor) = ["ItemProcessor", "Iterator"]
                    .into_iter()
                    .find_map(|k| map.get(k).map(|v| (k, v)))
                    .ok_or_else(|| refuse("ItemProcessor is missing".into()))?;
                let processor =
                    Definition::read(processor, &format!("{at}.{key}"), Level::ItemProcessor)?;
                let items_path = match map.get("ItemsPath") {
                    None => Path::parse("$").map_err(refuse)?,
                    Some(_) => path(map, "ItemsPath", at)?,
                };
                let selector_key = if map.contains_key("ItemSelector") {
                    "ItemSelector"
                } else {
                    "Parameters"
                };
                let item_selector = template(map, selector_key, at)?;
                let max_concurrency = match map.get("MaxConcurrency") {
                    None => 0,
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| refuse("MaxConcurrency must be a whole number".into()))?,
                };
                Kind::Map {
                    processor: Box::new(processor),
                    items_path,
                    item_selector,
                    max_concurrency,
                }
            }
            _ => return Err(refuse(format!("Type {kind_name:?} is not a state type"))),
        };
        let parameters = match kind {
            // A Map's Parameters are its item selector (the older name).
            Kind::Map { .. } => None,
            _ => template(map, "Parameters", at)?,
        };
        Ok(Self {
            input_path: nullable_path(map, "InputPath", at)?,
            output_path: nullable_path(map, "OutputPath", at)?,
            result_path: {
                let p = nullable_path(map, "ResultPath", at)?;
                if let Some(p) = &p
                    && (!p.is_definite() || p.root != crate::path::Root::Input)
                {
                    return Err(refuse(format!(
                        "ResultPath {p} must name one place in the input"
                    )));
                }
                p
            },
            parameters,
            result_selector: template(map, "ResultSelector", at)?,
            retry: retriers(map, at)?,
            catch: catchers(map, at)?,
            next,
            kind,
        })
    }
}

enum Flow {
    NextOrEnd,
    Neither,
}

/// Where a definition sits: what top-level fields it may have.
#[derive(Clone, Copy)]
enum Level {
    Top,
    Branch,
    ItemProcessor,
}

/// The intrinsic functions a Fail state's ErrorPath or CausePath may use: those that give a
/// string.
const STRING_FUNCTIONS: &[&str] = &[
    "States.Format",
    "States.JsonToString",
    "States.ArrayGetItem",
    "States.Base64Encode",
    "States.Base64Decode",
    "States.Hash",
    "States.UUID",
];

fn only(map: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), Refused> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(Refused {
            at: at.into(),
            why: format!("{key} is not supported here"),
        }),
        None => Ok(()),
    }
}

fn text<'a>(map: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, Refused> {
    map.get(key).and_then(Value::as_str).ok_or_else(|| Refused {
        at: at.into(),
        why: format!("{key} must be a string"),
    })
}

fn path(map: &Map<String, Value>, key: &str, at: &str) -> Result<Path, Refused> {
    Path::parse(text(map, key, at)?).map_err(|why| Refused {
        at: format!("{at}.{key}"),
        why,
    })
}

/// A path field whose `null` means "nothing"; absent means `$`.
fn nullable_path(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<Path>, Refused> {
    match map.get(key) {
        None => Ok(Path::parse("$").ok()),
        Some(Value::Null) => Ok(None),
        Some(_) => path(map, key, at).map(Some),
    }
}

fn template(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<Template>, Refused> {
    map.get(key)
        .map(|v| {
            Template::parse(v).map_err(|why| Refused {
                at: format!("{at}.{key}"),
                why,
            })
        })
        .transpose()
}

fn positive(value: &Value, at: &str) -> Result<u64, Refused> {
    value.as_u64().filter(|n| *n > 0).ok_or_else(|| Refused {
        at: at.into(),
        why: "must be a positive whole number".into(),
    })
}

/// `Key` (positive) or `KeyPath`, not both.
fn seconds(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<Seconds>, Refused> {
    let path_key = format!("{key}Path");
    match (map.get(key), map.contains_key(&path_key)) {
        (Some(_), true) => Err(Refused {
            at: at.into(),
            why: format!("takes {key} or {path_key}, not both"),
        }),
        (Some(v), false) => Ok(Some(Seconds::Fixed(positive(v, &format!("{at}.{key}"))?))),
        (None, true) => Ok(Some(Seconds::Path(path(map, &path_key, at)?))),
        (None, false) => Ok(None),
    }
}

/// A Wait's `Seconds` may be 0.
fn seconds_allowing_zero(
    map: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<Seconds>, Refused> {
    match map.get(key) {
        Some(v) => v
            .as_u64()
            .map(|n| Some(Seconds::Fixed(n)))
            .ok_or_else(|| Refused {
                at: format!("{at}.{key}"),
                why: "must be a whole number of seconds".into(),
            }),
        None => seconds(map, key, at),
    }
}

fn dynamic(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<Dynamic>, Refused> {
    let path_key = format!("{key}Path");
    match (map.get(key), map.contains_key(&path_key)) {
        (Some(_), true) => Err(Refused {
            at: at.into(),
            why: format!("takes {key} or {path_key}, not both"),
        }),
        (Some(_), false) => Ok(Some(Dynamic::Fixed(text(map, key, at)?.to_owned()))),
        (None, true) => {
            let given = text(map, &path_key, at)?;
            let refuse = |why| Refused {
                at: format!("{at}.{path_key}"),
                why,
            };
            if given.starts_with("States.") {
                let call = crate::intrinsic::Call::parse(given).map_err(refuse)?;
                if !STRING_FUNCTIONS.contains(&call.name.as_str()) {
                    return Err(refuse(format!(
                        "{} does not give a string; {path_key} takes one of {STRING_FUNCTIONS:?}",
                        call.name
                    )));
                }
                Ok(Some(Dynamic::Intrinsic(call)))
            } else {
                Path::parse(given)
                    .map(|p| Some(Dynamic::Path(p)))
                    .map_err(refuse)
            }
        }
        (None, false) => Ok(None),
    }
}

fn error_names(value: Option<&Value>, at: &str) -> Result<Vec<String>, Refused> {
    let refuse = |why: &str| Refused {
        at: at.into(),
        why: why.into(),
    };
    let names: Vec<String> = value
        .and_then(Value::as_array)
        .ok_or_else(|| refuse("ErrorEquals must be a list of error names"))?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| refuse("ErrorEquals must be a list of error names"))?;
    if names.is_empty() {
        return Err(refuse("ErrorEquals must name at least one error"));
    }
    if names.len() > 1 && names.iter().any(|n| n == crate::run::ALL) {
        return Err(refuse("States.ALL must be alone in its ErrorEquals"));
    }
    Ok(names)
}

fn retriers(map: &Map<String, Value>, at: &str) -> Result<Vec<Retrier>, Refused> {
    let Some(list) = map.get("Retry") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| Refused {
        at: at.into(),
        why: "Retry must be a list".into(),
    })?;
    let mut out = Vec::with_capacity(list.len());
    for (n, value) in list.iter().enumerate() {
        let at = format!("{at}.Retry[{n}]");
        let refuse = |why: String| Refused {
            at: at.clone(),
            why,
        };
        let map = value
            .as_object()
            .ok_or_else(|| refuse("a retrier is an object".into()))?;
        only(
            map,
            &[
                "ErrorEquals",
                "IntervalSeconds",
                "MaxAttempts",
                "BackoffRate",
                "MaxDelaySeconds",
                "JitterStrategy",
                "Comment",
            ],
            &at,
        )?;
        let whole = |key: &str, default: u64, min: u64| -> Result<u64, Refused> {
            match map.get(key) {
                None => Ok(default),
                Some(v) => v.as_u64().filter(|n| *n >= min).ok_or_else(|| Refused {
                    at: at.clone(),
                    why: format!("{key} must be a whole number of at least {min}"),
                }),
            }
        };
        let backoff_rate = match map.get("BackoffRate") {
            None => 2.0,
            Some(v) => v.as_f64().filter(|f| *f >= 1.0).ok_or_else(|| Refused {
                at: at.clone(),
                why: "BackoffRate must be a number of at least 1.0".into(),
            })?,
        };
        let full_jitter = match map.get("JitterStrategy").map(Value::as_str) {
            None | Some(Some("NONE")) => false,
            Some(Some("FULL")) => true,
            Some(_) => return Err(refuse("JitterStrategy is FULL or NONE".into())),
        };
        out.push(Retrier {
            errors: error_names(map.get("ErrorEquals"), &at)?,
            interval_seconds: whole("IntervalSeconds", 1, 1)? as f64,
            max_attempts: u32::try_from(whole("MaxAttempts", 3, 0)?).unwrap_or(u32::MAX),
            backoff_rate,
            max_delay_seconds: map
                .get("MaxDelaySeconds")
                .map(|_| whole("MaxDelaySeconds", 1, 1).map(|n| n as f64))
                .transpose()?,
            full_jitter,
        });
    }
    all_last(out.iter().map(|r| &r.errors), at)?;
    Ok(out)
}

fn catchers(map: &Map<String, Value>, at: &str) -> Result<Vec<Catcher>, Refused> {
    let Some(list) = map.get("Catch") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| Refused {
        at: at.into(),
        why: "Catch must be a list".into(),
    })?;
    let mut out = Vec::with_capacity(list.len());
    for (n, value) in list.iter().enumerate() {
        let at = format!("{at}.Catch[{n}]");
        let map = value.as_object().ok_or_else(|| Refused {
            at: at.clone(),
            why: "a catcher is an object".into(),
        })?;
        only(map, &["ErrorEquals", "Next", "ResultPath", "Comment"], &at)?;
        let result_path = nullable_path(map, "ResultPath", &at)?;
        if let Some(p) = &result_path
            && !p.is_definite()
        {
            return Err(Refused {
                at,
                why: format!("ResultPath {p} must name one place"),
            });
        }
        out.push(Catcher {
            errors: error_names(map.get("ErrorEquals"), &at)?,
            next: text(map, "Next", &at)?.to_owned(),
            result_path,
        });
    }
    all_last(out.iter().map(|c| &c.errors), at)?;
    Ok(out)
}

/// `States.ALL` may only come last.
fn all_last<'a>(lists: impl Iterator<Item = &'a Vec<String>>, at: &str) -> Result<(), Refused> {
    let lists: Vec<_> = lists.collect();
    let n = lists.len();
    for (i, errors) in lists.into_iter().enumerate() {
        if i + 1 < n && errors.iter().any(|e| e == crate::run::ALL) {
            return Err(Refused {
                at: at.into(),
                why: "States.ALL must be in the last retrier or catcher".into(),
            });
        }
    }
    Ok(())
}
