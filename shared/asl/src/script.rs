//! Scripted task answers, as `commerce asl run --tasks` reads them: for each Task state, a
//! list of steps, `{"result": ...}` or `{"error": "Name", "cause": "text"}`. Each invocation
//! of the state (retries included) takes the next step; the last one repeats.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::Value;

use crate::run::{Failure, RUNTIME, TaskCall, Tasks};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Step {
    Result {
        result: Value,
    },
    Error {
        error: String,
        cause: Option<String>,
    },
}

#[derive(Debug, Default)]
pub struct Script {
    steps: BTreeMap<String, Vec<Step>>,
    taken: Mutex<BTreeMap<String, usize>>,
}

impl Script {
    pub fn parse(text: &str) -> Result<Self, String> {
        let steps: BTreeMap<String, Vec<Step>> = serde_json::from_str(text).map_err(|e| {
            format!("the tasks file maps state names to lists of {{\"result\"}} or {{\"error\", \"cause\"}} steps: {e}")
        })?;
        if let Some((state, _)) = steps.iter().find(|(_, s)| s.is_empty()) {
            return Err(format!("the tasks file gives {state} no steps"));
        }
        Ok(Self {
            steps,
            taken: Mutex::default(),
        })
    }

    /// How many times each Task state was invoked.
    pub fn invocations(&self) -> BTreeMap<String, usize> {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Tasks for Script {
    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        let Some(steps) = self.steps.get(&call.state) else {
            return Err(Failure::new(
                RUNTIME,
                format!("the tasks file has no steps for Task state {}", call.state),
            ));
        };
        let n = {
            let mut taken = self
                .taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = taken.entry(call.state.clone()).or_default();
            *n += 1;
            *n - 1
        };
        match steps.get(n).or(steps.last()) {
            Some(Step::Result { result }) => Ok(result.clone()),
            Some(Step::Error { error, cause }) => {
                Err(Failure::new(error, cause.clone().unwrap_or_default()))
            }
            None => Err(Failure::new(
                RUNTIME,
                format!("no steps for {}", call.state),
            )),
        }
    }
}
