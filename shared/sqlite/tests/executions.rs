//! Durable executions on the embedded default: a runtime that stops anywhere (its tasks
//! dropped, as `kill -9` or a Lambda timeout would) leaves an execution another runtime on the
//! same database takes up and finishes, invoking no finished task again; a runner whose claim
//! was taken over records nothing more.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_app::executions::{
    self, ExecutionError, ExecutionStatus, Happened, LocalExecutions, StateMachines,
};
use commerce_asl::{Definition, Failure, TaskCall, Tasks};
use commerce_sqlite::SqliteTable;
use serde_json::{Value, json};
use tokio::sync::Notify;

const MACHINE: &str = "two-steps";

/// First, then Second (retried on `Flaky`), then a Wait of a second, then the end.
fn definitions() -> BTreeMap<String, Definition> {
    let text = json!({
        "StartAt": "First",
        "States": {
            "First": {"Type": "Task", "Resource": "first", "ResultPath": "$.first", "Next": "Second"},
            "Second": {
                "Type": "Task", "Resource": "second", "ResultPath": "$.second",
                "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 3}],
                "Next": "Pause"
            },
            "Pause": {"Type": "Wait", "Seconds": 1, "End": true}
        }
    })
    .to_string();
    BTreeMap::from([(
        MACHINE.to_owned(),
        Definition::load(&text, &BTreeMap::new()).unwrap(),
    )])
}

/// Counts invocations per state; `second` fails `Flaky` while `flaky` is above 0, and
/// blocks while `hold` is set (until released).
#[derive(Clone, Default)]
struct Steps {
    calls: Arc<Mutex<HashMap<String, u32>>>,
    flaky: Arc<Mutex<u32>>,
    hold: Arc<Mutex<bool>>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    /// Tokens handed to `.waitForTaskToken` tasks.
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Steps {
    fn calls(&self, state: &str) -> u32 {
        self.calls.lock().unwrap().get(state).copied().unwrap_or(0)
    }
}

impl Tasks for Steps {
    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(call.state.clone())
            .or_default() += 1;
        if let Some(token) = &call.token {
            self.tokens.lock().unwrap().push(token.clone());
        }
        if call.resource == "second" {
            let hold = *self.hold.lock().unwrap();
            if hold {
                self.entered.notify_one();
                self.release.notified().await;
            }
            let mut flaky = self.flaky.lock().unwrap();
            if *flaky > 0 {
                *flaky -= 1;
                return Err(Failure::new("Flaky", "not now"));
            }
        }
        Ok(json!({"by": call.state}))
    }
}

fn table(dir: &tempfile::TempDir) -> SqliteTable {
    SqliteTable::open(dir.path().join("commerce.db")).unwrap()
}

async fn finished(table: &SqliteTable, name: &str) -> executions::ExecutionRecord {
    for _ in 0..200 {
        let record = executions::describe(table, name).await.unwrap().unwrap();
        if record.status != ExecutionStatus::Running {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} did not finish");
}

#[tokio::test]
async fn an_execution_runs_to_its_end_and_a_repeated_start_is_the_same_execution() {
    let dir = tempfile::tempdir().unwrap();
    let table = table(&dir);
    let steps = Steps::default();
    *steps.flaky.lock().unwrap() = 1;
    let runtime = LocalExecutions::new(table.clone(), steps.clone(), definitions());
    let input = json!({"order": "o1"});
    runtime.start(MACHINE, "run-1", &input).await.unwrap();
    runtime.start(MACHINE, "run-1", &input).await.unwrap();
    assert!(matches!(
        runtime
            .start(MACHINE, "run-1", &json!({"order": "o2"}))
            .await,
        Err(ExecutionError::AlreadyExists(_))
    ));
    assert!(matches!(
        runtime.start("no-such-machine", "run-2", &input).await,
        Err(ExecutionError::UnknownStateMachine(_))
    ));
    let record = finished(&table, "run-1").await;
    assert_eq!(record.status, ExecutionStatus::Succeeded, "{record:?}");
    assert_eq!(record.output.unwrap()["second"], json!({"by": "Second"}));
    assert_eq!((steps.calls("First"), steps.calls("Second")), (1, 2));
    let history = executions::history(&table, "run-1").await.unwrap();
    let kinds: Vec<(&str, &str)> = history
        .iter()
        .map(|h| {
            (
                h.state.as_str(),
                match h.what {
                    Happened::TaskSucceeded { .. } => "succeeded",
                    Happened::TaskFailed { .. } => "failed",
                    Happened::Waited { .. } => "waited",
                    Happened::TaskScheduled {} => "scheduled",
                    Happened::Heartbeat {} => "heartbeat",
                },
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("First", "succeeded"),
            ("Second", "failed"),
            ("Second", "waited"),
            ("Second", "succeeded"),
            ("Pause", "waited")
        ]
    );
    let (listed, _) = executions::list(&table, MACHINE, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ExecutionStatus::Succeeded);
    assert_eq!(
        runtime.resume_all().await.unwrap(),
        0,
        "nothing left running"
    );
}

#[test]
fn an_execution_whose_process_stopped_midway_is_finished_by_the_next_without_repeating_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Steps::default();
    *steps.hold.lock().unwrap() = true;
    // The first process: runs First, and is stopped while Second is running.
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let runtime = LocalExecutions::new(table(&dir), steps.clone(), definitions());
        let entered = steps.entered.notified();
        runtime
            .start(MACHINE, "run-1", &json!({"order": "o1"}))
            .await
            .unwrap();
        entered.await;
    });
    first.shutdown_background();
    assert_eq!((steps.calls("First"), steps.calls("Second")), (1, 1));

    // The next process takes it up at start.
    *steps.hold.lock().unwrap() = false;
    let next = tokio::runtime::Runtime::new().unwrap();
    next.block_on(async {
        let table = table(&dir);
        let runtime = LocalExecutions::new(table.clone(), steps.clone(), definitions());
        assert_eq!(runtime.resume_all().await.unwrap(), 1);
        let record = finished(&table, "run-1").await;
        assert_eq!(record.status, ExecutionStatus::Succeeded, "{record:?}");
        assert_eq!(record.runs, 2);
    });
    assert_eq!(
        (steps.calls("First"), steps.calls("Second")),
        (1, 2),
        "First was recorded and not run again; Second had not answered, so it ran again"
    );
}

#[tokio::test]
async fn a_runner_whose_claim_was_taken_over_records_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let table = table(&dir);
    let slow = Steps::default();
    *slow.hold.lock().unwrap() = true;
    let old = LocalExecutions::new(table.clone(), slow.clone(), definitions());
    let entered = slow.entered.notified();
    old.start(MACHINE, "run-1", &json!({"order": "o1"}))
        .await
        .unwrap();
    entered.await;

    // Another runtime on the same table takes the execution over and finishes it.
    let quick = Steps::default();
    let new = LocalExecutions::new(table.clone(), quick.clone(), definitions());
    assert_eq!(new.resume_all().await.unwrap(), 1);
    let record = finished(&table, "run-1").await;
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    assert_eq!(quick.calls("First"), 0, "answered from the journal");
    let before = executions::history(&table, "run-1").await.unwrap();

    // The old runner's task answers now: its claim is gone, so it writes nothing.
    slow.release.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executions::history(&table, "run-1").await.unwrap(), before);
    let after = executions::describe(&table, "run-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after, record,
        "the finished record stays as the new runner left it"
    );
}

#[tokio::test]
async fn the_local_runtime_keeps_the_state_machines_contract() {
    let dir = tempfile::tempdir().unwrap();
    let waiting = json!({
        "StartAt": "Later",
        "States": {"Later": {"Type": "Wait", "Seconds": 3600, "End": true}}
    })
    .to_string();
    let machines = BTreeMap::from([(
        "waits".to_owned(),
        Definition::load(&waiting, &BTreeMap::new()).unwrap(),
    )]);
    let runtime = LocalExecutions::new(table(&dir), Steps::default(), machines);
    commerce_app::contract::state_machines_contract(&runtime, "waits", "local").await;
}

/// One task that waits for its token; with `heartbeat`, it must hear from it that often.
fn waiting(heartbeat: Option<u64>) -> BTreeMap<String, Definition> {
    waiting_at_most(heartbeat, None)
}

/// [`waiting`], with `TimeoutSeconds` when `timeout` is given.
fn waiting_at_most(heartbeat: Option<u64>, timeout: Option<u64>) -> BTreeMap<String, Definition> {
    let mut ask = json!({
        "Type": "Task", "Resource": "ask.waitForTaskToken",
        "Parameters": {"token.$": "$$.Task.Token"}, "End": true
    });
    if let Some(seconds) = heartbeat {
        ask["HeartbeatSeconds"] = json!(seconds);
    }
    if let Some(seconds) = timeout {
        ask["TimeoutSeconds"] = json!(seconds);
    }
    let text = json!({"StartAt": "Ask", "States": {"Ask": ask}}).to_string();
    BTreeMap::from([(
        "asks".to_owned(),
        Definition::load(&text, &BTreeMap::new()).unwrap(),
    )])
}

async fn handed_out(steps: &Steps) -> String {
    for _ in 0..200 {
        if let Some(token) = steps.tokens.lock().unwrap().last().cloned() {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no token was handed out");
}

#[test]
fn a_task_waiting_for_its_token_survives_a_restart_and_takes_the_answer_sent_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Steps::default();
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let token = first.block_on(async {
        let table = table(&dir);
        let runtime = LocalExecutions::new(table.clone(), steps.clone(), waiting(None));
        runtime.start("asks", "ask-1", &json!({})).await.unwrap();
        let token = handed_out(&steps).await;
        // Scheduled in the journal before the process goes.
        for _ in 0..100 {
            let history = executions::history(&table, "ask-1").await.unwrap();
            if history
                .iter()
                .any(|h| matches!(h.what, Happened::TaskScheduled {}))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token
    });
    first.shutdown_background();

    let next = tokio::runtime::Runtime::new().unwrap();
    next.block_on(async {
        let table = table(&dir);
        let runtime = LocalExecutions::new(table.clone(), steps.clone(), waiting(None));
        assert_eq!(runtime.resume_all().await.unwrap(), 1);
        executions::send_task_success(&table, &token, &json!({"answer": 42}))
            .await
            .unwrap();
        let record = finished(&table, "ask-1").await;
        assert_eq!(record.status, ExecutionStatus::Succeeded, "{record:?}");
        assert_eq!(record.output, Some(json!({"answer": 42})));
        assert!(matches!(
            executions::send_task_success(&table, &token, &json!({})).await,
            Err(executions::CallbackRefused::NotWaiting)
        ));
    });
    assert_eq!(
        steps.calls("Ask"),
        1,
        "the task was not invoked again on resume"
    );
}

#[tokio::test]
async fn only_a_token_the_execution_handed_out_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let table = table(&dir);
    let steps = Steps::default();
    let runtime = LocalExecutions::new(table.clone(), steps.clone(), waiting(None));
    runtime.start("asks", "ask-2", &json!({})).await.unwrap();
    let token = handed_out(&steps).await;
    let (name, key, _) = {
        let mut parts = token.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    let forged = format!("{name}.{key}.{}", "00".repeat(32));
    for bad in ["", "x.y.z", forged.as_str()] {
        assert!(matches!(
            executions::send_task_success(&table, bad, &json!({})).await,
            Err(executions::CallbackRefused::InvalidToken)
        ));
    }
    // The first answer is taken, whichever process sends it.
    for _ in 0..100 {
        match executions::send_task_failure(&table, &token, "Carrier.Lost", "gone").await {
            Ok(()) => break,
            Err(executions::CallbackRefused::NotWaiting) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let record = finished(&table, "ask-2").await;
    assert_eq!(
        (record.status, record.error.as_deref()),
        (ExecutionStatus::Failed, Some("Carrier.Lost"))
    );
}

#[tokio::test]
async fn a_task_whose_heartbeats_stop_fails_with_heartbeat_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let table = table(&dir);
    let steps = Steps::default();
    let runtime = LocalExecutions::new(table.clone(), steps.clone(), waiting(Some(1)));
    runtime.start("asks", "ask-3", &json!({})).await.unwrap();
    let token = handed_out(&steps).await;
    let mut beats = 0;
    for _ in 0..100 {
        if executions::send_task_heartbeat(&table, &token)
            .await
            .is_ok()
        {
            beats += 1;
            if beats == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(beats, 3, "heartbeats are taken while the task waits");
    let record = finished(&table, "ask-3").await;
    assert_eq!(record.error.as_deref(), Some("States.HeartbeatTimeout"));
    assert!(matches!(
        executions::send_task_heartbeat(&table, &token).await,
        Err(executions::CallbackRefused::NotWaiting)
    ));
}

#[tokio::test]
async fn a_wait_that_timed_out_is_recorded_so_a_late_answer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = table(&dir);
    let steps = Steps::default();
    let runtime =
        LocalExecutions::new(table.clone(), steps.clone(), waiting_at_most(None, Some(1)));
    runtime.start("asks", "ask-4", &json!({})).await.unwrap();
    let token = handed_out(&steps).await;
    let record = finished(&table, "ask-4").await;
    assert_eq!(record.error.as_deref(), Some("States.Timeout"));
    assert!(matches!(
        executions::send_task_success(&table, &token, &json!({})).await,
        Err(executions::CallbackRefused::NotWaiting)
    ));
    let history = executions::history(&table, "ask-4").await.unwrap();
    assert!(history.iter().any(|h| matches!(
        &h.what,
        Happened::TaskFailed { error, .. } if error == "States.Timeout"
    )));
    assert!(matches!(
        executions::send_task_failure(&table, &token, "States.Runtime", "x").await,
        Err(executions::CallbackRefused::ReservedError)
    ));
}
