//! The promises of the [`StateMachines`] port, for every adapter: the local runtime, and Step
//! Functions on moto.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;

use crate::executions::{ExecutionError, StateMachines};

/// Runs every case on `machine`, a state machine the adapter knows whose executions take a
/// while; `prefix` keeps this run's execution names apart from another's.
pub async fn state_machines_contract<S: StateMachines>(machines: &S, machine: &str, prefix: &str) {
    let name = format!("{prefix}-repeated");
    let input = json!({"order_id": "o-1", "attempt": 1});
    machines.start(machine, &name, &input).await.unwrap();
    machines
        .start(machine, &name, &input)
        .await
        .expect("a repeated start is the same execution");
    let other = machines
        .start(machine, &name, &json!({"order_id": "o-2", "attempt": 1}))
        .await;
    assert!(
        matches!(other, Err(ExecutionError::AlreadyExists(_))),
        "{other:?}"
    );
    let unknown = machines
        .start(
            &format!("{machine}-missing"),
            &format!("{prefix}-x"),
            &input,
        )
        .await;
    assert!(
        matches!(unknown, Err(ExecutionError::UnknownStateMachine(_))),
        "{unknown:?}"
    );
}
