//! The project's cancellation saga, from the very file Step Functions runs, on this
//! interpreter with scripted task answers: where each failure leads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use commerce_asl::{Definition, Execution, Failure, Script, VirtualTime, run};
use serde_json::{Value, json};
use time::OffsetDateTime;

const FILE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infra/statemachines/order-cancellation.asl.json"
));

async fn cancel(tasks: Value) -> (Result<Value, Failure>, BTreeMap<String, usize>) {
    let definition = Definition::load(FILE, &BTreeMap::new()).expect("the saga's definition loads");
    let script = Script::parse(&tasks.to_string()).unwrap();
    let now = OffsetDateTime::now_utc();
    let execution = Execution {
        id: "local:o-1:1".into(),
        name: "o-1-1".into(),
        state_machine: "order-cancellation".into(),
        started: now,
        input: json!({"tenant": "acme", "order_id": "o-1", "attempt": 1}),
    };
    let ended = run(
        &definition,
        &execution,
        &script,
        &VirtualTime::starting_at(now),
    )
    .await;
    (ended, script.invocations())
}

#[tokio::test]
async fn the_happy_path_releases_settles_and_marks_cancelled() {
    let (ended, calls) = cancel(json!({
        "ReleaseStock": [{"result": {"released": 2}}],
        "SettlePayment": [{"result": {"settled": "voided"}}],
        "MarkCancelled": [{"result": {"status": "cancelled"}}],
    }))
    .await;
    assert_eq!(ended, Ok(json!({"status": "cancelled"})));
    assert_eq!(calls.get("RecordNeedsAttention"), None);
}

#[tokio::test]
async fn a_refund_failing_twice_then_succeeding_is_retried_not_flagged() {
    let (ended, calls) = cancel(json!({
        "ReleaseStock": [{"result": {"released": 2}}],
        "SettlePayment": [{"error": "Commerce.Transient", "cause": "503"}, {"error": "Commerce.Transient"}, {"result": {"settled": "refunded"}}],
        "MarkCancelled": [{"result": {"status": "cancelled"}}],
    }))
    .await;
    assert_eq!(ended, Ok(json!({"status": "cancelled"})));
    assert_eq!(calls["SettlePayment"], 3);
}

#[tokio::test]
async fn a_refund_failing_for_good_still_releases_the_stock_and_ends_in_needs_attention() {
    let (ended, calls) = cancel(json!({
        "ReleaseStock": [{"result": {"released": 2}}],
        "SettlePayment": [{"error": "Commerce.PaymentRefused", "cause": "the charge was disputed"}],
        "MarkCancelled": [{"result": {"status": "cancelled"}}],
        "RecordNeedsAttention": [{"result": {}}],
    }))
    .await;
    assert_eq!(ended.unwrap_err().error, "NeedsAttention");
    assert_eq!(calls["ReleaseStock"], 1, "the stock went back all the same");
    assert_eq!(
        calls["SettlePayment"], 1,
        "a permanent refusal is not retried"
    );
    assert_eq!(calls["RecordNeedsAttention"], 1);
    assert_eq!(calls.get("MarkCancelled"), None);
}

#[tokio::test]
async fn transient_failures_that_never_end_exhaust_the_retries_then_need_attention() {
    let (ended, calls) = cancel(json!({
        "ReleaseStock": [{"error": "Lambda.TooManyRequestsException"}],
        "SettlePayment": [{"result": {"settled": "voided"}}],
        "RecordNeedsAttention": [{"error": "Lambda.ServiceException"}, {"result": {}}],
    }))
    .await;
    assert_eq!(ended.unwrap_err().error, "NeedsAttention");
    assert_eq!(calls["ReleaseStock"], 7, "one try and six retries");
    assert_eq!(
        calls["RecordNeedsAttention"], 2,
        "recording it is retried too"
    );
}

#[tokio::test]
async fn marking_the_order_cancelled_failing_for_good_needs_attention() {
    let (ended, calls) = cancel(json!({
        "ReleaseStock": [{"result": {"released": 1}}],
        "SettlePayment": [{"result": {"settled": "refunded"}}],
        "MarkCancelled": [{"error": "Commerce.OrderChanged", "cause": "the order shipped meanwhile"}],
        "RecordNeedsAttention": [{"result": {}}],
    }))
    .await;
    assert_eq!(ended.unwrap_err().error, "NeedsAttention");
    assert_eq!(calls["MarkCancelled"], 1);
}

/// Answers without the fields one might expect still lead where they should: the definition
/// reads none of them (a path that selects nothing would fail the execution past every Catch).
#[tokio::test]
async fn answers_and_failures_of_any_shape_are_carried_not_read() {
    let (ended, calls) = cancel(json!({
        "ReleaseStock": [{"result": {}}],
        "SettlePayment": [{"error": "Commerce.PaymentRefused"}],
        "RecordNeedsAttention": [{"result": null}],
    }))
    .await;
    assert_eq!(ended.unwrap_err().error, "NeedsAttention");
    assert_eq!(calls["RecordNeedsAttention"], 1);
}

/// Records the key of every invocation and wait, answering from a script.
struct Keys {
    script: Script,
    seen: std::sync::Mutex<Vec<String>>,
}

impl commerce_asl::Tasks for Keys {
    async fn invoke(&self, call: commerce_asl::TaskCall) -> Result<Value, Failure> {
        self.seen.lock().unwrap().push(call.key.clone());
        self.script.invoke(call).await
    }
}

impl commerce_asl::Clock for Keys {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    async fn pause(&self, key: &str, _duration: std::time::Duration) {
        self.seen.lock().unwrap().push(key.to_owned());
    }

    async fn deadline(&self, _duration: std::time::Duration) {
        std::future::pending::<()>().await;
    }
}

#[tokio::test]
async fn every_invocation_and_wait_has_a_key_that_names_its_branch_state_and_retry() {
    let definition = Definition::load(FILE, &BTreeMap::new()).unwrap();
    let keys = Keys {
        script: Script::parse(
            &json!({
                "ReleaseStock": [{"result": {}}],
                "SettlePayment": [{"error": "Commerce.Transient"}, {"result": {}}],
                "MarkCancelled": [{"result": {}}],
            })
            .to_string(),
        )
        .unwrap(),
        seen: std::sync::Mutex::default(),
    };
    let execution = Execution {
        id: "local:o-1:1".into(),
        name: "o-1-1".into(),
        state_machine: "order-cancellation".into(),
        started: OffsetDateTime::UNIX_EPOCH,
        input: json!({"tenant": "acme", "order_id": "o-1", "attempt": 1}),
    };
    run(&definition, &execution, &keys, &keys).await.unwrap();
    let mut seen = keys.seen.into_inner().unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [
            "/GiveBackAndSettle.1#0[0]/ReleaseStock.1#0",
            "/GiveBackAndSettle.1#0[1]/SettlePayment.1#0",
            "/GiveBackAndSettle.1#0[1]/SettlePayment.1#0:retry",
            "/GiveBackAndSettle.1#0[1]/SettlePayment.1#1",
            "/MarkCancelled.1#0",
        ]
    );
}
