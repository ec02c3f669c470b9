//! Conformance: each case of `conformance.json` is a definition, an input and scripted task
//! answers, with the output or the error the execution must end with (and, where given, how
//! many times each Task state was invoked). Waits and retry intervals run on a virtual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use commerce_asl::{
    Clock, Definition, Execution, Failure, RealTime, Script, TaskCall, Tasks, VirtualTime, run,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

fn execution(input: Value) -> Execution {
    Execution {
        id: "arn:aws:states:::execution:local:conformance".into(),
        name: "conformance".into(),
        state_machine: "local".into(),
        started: OffsetDateTime::now_utc(),
        input,
    }
}

#[tokio::test]
async fn every_case_ends_as_written() {
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("conformance.json")).expect("conformance.json is JSON");
    let mut failed = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let definition = Definition::from_value(&case["definition"], "definition")
            .unwrap_or_else(|e| panic!("{name}: definition refused: {e}"));
        let tasks =
            Script::parse(&case.get("tasks").cloned().unwrap_or(json!({})).to_string()).unwrap();
        let clock = VirtualTime::starting_at(OffsetDateTime::now_utc());
        let ended = run(
            &definition,
            &execution(case["input"].clone()),
            &tasks,
            &clock,
        )
        .await;
        let got = match &ended {
            Ok(output) => json!({"output": output}),
            Err(Failure { error, cause }) => json!({"error": error, "cause": cause}),
        };
        let mut ok = match (case.get("output"), case.get("error")) {
            (Some(output), None) => got.get("output") == Some(output),
            (None, Some(error)) => {
                got.get("error") == Some(error)
                    && case
                        .get("cause")
                        .is_none_or(|cause| got.get("cause") == Some(cause))
            }
            _ => panic!("{name}: a case gives an output or an error"),
        };
        if let Some(want) = case.get("invocations") {
            let want: BTreeMap<String, usize> = serde_json::from_value(want.clone()).unwrap();
            ok &= tasks.invocations() == want;
        }
        if !ok {
            failed.push(format!(
                "{name}: got {got}, invocations {:?}",
                tasks.invocations()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "cases that failed:\n{}",
        failed.join("\n")
    );
    assert!(cases.len() >= 30);
}

/// With the virtual clock, Wait states and retry intervals move time on instead of taking it.
#[tokio::test]
async fn waits_and_retry_intervals_move_the_virtual_clock() {
    let definition = Definition::from_value(
        &json!({"StartAt": "W", "States": {
            "W": {"Type": "Wait", "Seconds": 86400, "Next": "T"},
            "T": {"Type": "Task", "Resource": "r", "Retry": [{"ErrorEquals": ["X"], "IntervalSeconds": 10, "BackoffRate": 3, "MaxAttempts": 2}], "End": true}}}),
        "definition",
    )
    .unwrap();
    let start = OffsetDateTime::now_utc();
    let clock = VirtualTime::starting_at(start);
    let tasks = Script::parse(r#"{"T": [{"error": "X"}, {"error": "X"}, {"result": 1}]}"#).unwrap();
    run(&definition, &execution(json!({})), &tasks, &clock)
        .await
        .unwrap();
    // A day, then 10 s and 30 s between the tries.
    assert_eq!(
        clock.now() - start,
        time::Duration::seconds(86_400 + 10 + 30)
    );
}

#[test]
fn definitions_are_refused_when_loaded_not_when_run() {
    let refused = [
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true}, "B": {"Type": "Succeed"}}}),
            "no state goes to it",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nowhere"}}}),
            "not a state of this definition",
        ),
        (
            json!({"StartAt": "Z", "States": {"A": {"Type": "Succeed"}}}),
            "StartAt",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass"}}}),
            "exactly one of Next",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "A", "End": true}}}),
            "exactly one of Next",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Wait", "End": true}}}),
            "exactly one of Seconds",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Teleport", "End": true}}}),
            "not a state type",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Credentials": {}, "End": true}}}),
            "Credentials is not supported",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Arguments": {}, "End": true}}}),
            "Arguments is not supported",
        ),
        (
            json!({"QueryLanguage": "JSONata", "StartAt": "A", "States": {"A": {"Type": "Succeed"}}}),
            "JSONata",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Parameters": {"x.$": "$..y"}, "End": true}}}),
            "recursive descent",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Parameters": {"x.$": "States.Nope()"}, "End": true}}}),
            "not a supported intrinsic",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Retry": [{"ErrorEquals": ["States.ALL", "X"]}], "End": true}}}),
            "alone",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Retry": [{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}], "End": true}}}),
            "last",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Catch": [{"ErrorEquals": ["X"], "Next": "Gone"}], "End": true}}}),
            "not a state of this definition",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "TimeoutSeconds": 10, "HeartbeatSeconds": 10, "End": true}}}),
            "HeartbeatSeconds",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Map", "ItemReader": {}, "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Succeed"}}}, "End": true}}}),
            "ItemReader is not supported",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED"}, "StartAt": "I", "States": {"I": {"Type": "Succeed"}}}, "End": true}}}),
            "INLINE",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Parallel", "Branches": [{"StartAt": "I", "States": {"I": {"Type": "Pass", "Next": "A"}}}], "End": true}}}),
            "not a state of this definition",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringEquals": "y"}]}}}),
            "needs Next",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "ResultPath": "$.a[*]", "End": true}}}),
            "one place",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Wait", "Timestamp": "tomorrow", "End": true}}}),
            "RFC 3339",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "Retry": [{"ErrorEquals": ["X"], "MaxAttempts": 2.5}], "End": true}}}),
            "whole number",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Fail", "InputPath": "$.x"}}}),
            "InputPath is not supported",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Fail", "ErrorPath": "States.MathAdd(1, 2)"}}}),
            "does not give a string",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Parallel", "Branches": [{"TimeoutSeconds": 5, "StartAt": "I", "States": {"I": {"Type": "Succeed"}}}], "End": true}}}),
            "TimeoutSeconds is not supported",
        ),
        (
            json!({"StartAt": "A", "States": {"A": {"Type": "Map", "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE", "ExecutionType": "STANDARD"}, "StartAt": "I", "States": {"I": {"Type": "Succeed"}}}, "End": true}}}),
            "INLINE",
        ),
    ];
    for (definition, why) in refused {
        let err = Definition::from_value(&definition, "definition")
            .err()
            .unwrap_or_else(|| panic!("{definition} should be refused"));
        assert!(
            err.to_string().contains(why),
            "{definition}: {err} should say {why:?}"
        );
    }
    let substituted = Definition::load(
        r#"{"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "${ReleaseStock}", "End": true}}}"#,
        &BTreeMap::from([("ReleaseStock".to_owned(), "arn:aws:lambda:::function:release".to_owned())]),
    )
    .unwrap();
    assert!(format!("{substituted:?}").contains("arn:aws:lambda:::function:release"));
}

/// Answers after a while, recording what each call carried.
struct Slow {
    takes: Duration,
    calls: std::sync::Mutex<Vec<TaskCall>>,
}

impl Tasks for Slow {
    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        self.calls.lock().unwrap().push(call);
        tokio::time::sleep(self.takes).await;
        Ok(json!("late"))
    }
}

#[tokio::test]
async fn a_task_longer_than_its_timeout_fails_with_states_timeout_and_can_be_retried() {
    let definition = Definition::from_value(
        &json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "TimeoutSeconds": 1,
            "Retry": [{"ErrorEquals": ["States.Timeout"], "MaxAttempts": 1, "IntervalSeconds": 1}], "End": true}}}),
        "definition",
    )
    .unwrap();
    let slow = Slow {
        takes: Duration::from_secs(30),
        calls: std::sync::Mutex::default(),
    };
    let ended = run(&definition, &execution(json!({})), &slow, &RealTime).await;
    assert_eq!(ended.unwrap_err().error, "States.Timeout");
    assert_eq!(
        slow.calls.lock().unwrap().len(),
        2,
        "tried, timed out, retried once"
    );
}

#[tokio::test]
async fn an_execution_longer_than_its_timeout_fails_with_states_timeout() {
    let definition = Definition::from_value(
        &json!({"TimeoutSeconds": 1, "StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 60, "End": true}}}),
        "definition",
    )
    .unwrap();
    let ended = run(
        &definition,
        &execution(json!({})),
        &Script::default(),
        &RealTime,
    )
    .await;
    assert_eq!(ended.unwrap_err().error, "States.Timeout");
}

#[tokio::test]
async fn a_callback_task_gets_a_token_and_its_heartbeat() {
    let definition = Definition::from_value(
        &json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {"token.$": "$$.Task.Token"}, "HeartbeatSeconds": 5, "End": true}}}),
        "definition",
    )
    .unwrap();
    let slow = Slow {
        takes: Duration::ZERO,
        calls: std::sync::Mutex::default(),
    };
    run(&definition, &execution(json!({})), &slow, &RealTime)
        .await
        .unwrap();
    let calls = slow.calls.lock().unwrap();
    let call = calls.first().unwrap();
    let token = call.token.clone().expect("a callback task has a token");
    assert_eq!(call.input, json!({"token": token}));
    assert_eq!(call.heartbeat, Some(Duration::from_secs(5)));
}

/// Hands the token of each call to someone who answers it later (or never).
struct Courier {
    callbacks: std::sync::Arc<commerce_asl::Callbacks>,
    answer: Option<Value>,
}

impl Tasks for Courier {
    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        let token = call.token.expect("a callback task gets a token");
        if let Some(answer) = self.answer.clone() {
            let callbacks = self.callbacks.clone();
            // Answered from elsewhere, whenever that runs: before or after the state waits.
            tokio::spawn(async move { callbacks.succeed(&token, answer).unwrap() });
        }
        Ok(json!("sent"))
    }
}

#[tokio::test]
async fn a_callback_task_waits_for_its_token_and_ends_without_heartbeats() {
    let definition = Definition::from_value(
        &json!({"StartAt": "T", "States": {"T": {"Type": "Task",
            "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {"token.$": "$$.Task.Token"}, "HeartbeatSeconds": 1,
            "Catch": [{"ErrorEquals": ["States.HeartbeatTimeout"], "Next": "Silent"}], "ResultPath": "$.answer", "End": true},
            "Silent": {"Type": "Pass", "Result": "no heartbeat", "End": true}}}),
        "definition",
    )
    .unwrap();
    let callbacks = std::sync::Arc::new(commerce_asl::Callbacks::default());
    let answering = Courier {
        callbacks: callbacks.clone(),
        answer: Some(json!({"approved": true})),
    };
    let tasks = commerce_asl::WithCallbacks {
        inner: &answering,
        callbacks: &callbacks,
        clock: &RealTime,
    };
    let ended = run(
        &definition,
        &execution(json!({"order": 1})),
        &tasks,
        &RealTime,
    )
    .await;
    assert_eq!(ended, Ok(json!({"order": 1, "answer": {"approved": true}})));

    let silent = Courier {
        callbacks: callbacks.clone(),
        answer: None,
    };
    let tasks = commerce_asl::WithCallbacks {
        inner: &silent,
        callbacks: &callbacks,
        clock: &RealTime,
    };
    let ended = run(&definition, &execution(json!({})), &tasks, &RealTime).await;
    assert_eq!(ended, Ok(json!("no heartbeat")));
}
