//! The Step Functions adapter with the real aws-sdk client against moto server: the
//! cancellation state machine created from its file, executions started by name.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use commerce_app::executions::StateMachines;
use commerce_dynamodb::moto::sdk_config;
use commerce_stepfunctions::StepFunctions;
use serde_json::json;

const DEFINITION: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infra/statemachines/order-cancellation.asl.json"
));

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{what}-{}-{nanos}", std::process::id())
}

/// A fresh cancellation state machine in moto, its task resources made Lambda ARNs.
async fn step_functions() -> (StepFunctions, aws_sdk_sfn::Client) {
    let client = aws_sdk_sfn::Client::new(&sdk_config().await);
    let mut definition = DEFINITION.to_owned();
    for name in [
        "ReleaseStockFunctionArn",
        "SettlePaymentFunctionArn",
        "CompleteCancellationFunctionArn",
        "FlagCancellationFunctionArn",
    ] {
        definition = definition.replace(
            &format!("${{{name}}}"),
            &format!("arn:aws:lambda:us-east-1:123456789012:function:{name}"),
        );
    }
    let created = client
        .create_state_machine()
        .name(unique("order-cancellation"))
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/cancellation-saga")
        .send()
        .await
        .expect("create the state machine in moto");
    let machines = BTreeMap::from([(
        "order-cancellation".to_owned(),
        created.state_machine_arn().to_owned(),
    )]);
    (StepFunctions::new(client.clone(), machines), client)
}

#[tokio::test]
async fn step_functions_keeps_the_state_machines_contract() {
    let (machines, _) = step_functions().await;
    commerce_app::contract::state_machines_contract(&machines, "order-cancellation", &unique("c"))
        .await;
}

#[tokio::test]
async fn a_start_repeated_after_the_execution_ended_is_still_the_same_execution() {
    let (machines, client) = step_functions().await;
    let name = unique("ended");
    let input = json!({"tenant": "acme", "order_id": "o-1", "attempt": 1});
    machines
        .start("order-cancellation", &name, &input)
        .await
        .unwrap();
    let described = machines
        .describe("order-cancellation", &name)
        .await
        .unwrap()
        .expect("the execution exists");
    assert_eq!(described.input, Some(input.clone()));
    client
        .stop_execution()
        .execution_arn(machines.execution_arn("order-cancellation", &name).unwrap())
        .send()
        .await
        .unwrap();
    machines
        .start("order-cancellation", &name, &input)
        .await
        .expect("Step Functions refuses the name; the adapter sees the same input");
    assert_eq!(
        machines
            .describe("order-cancellation", &unique("never"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn callback_answers_reach_step_functions() {
    let (machines, _) = step_functions().await;
    let token = unique("token");
    machines
        .send_task_success(&token, &json!({"delivered": true}))
        .await
        .unwrap();
    machines
        .send_task_failure(&token, "Carrier.Lost", "the parcel is lost")
        .await
        .unwrap();
    machines.send_task_heartbeat(&token).await.unwrap();
}
