//! The cancellation saga's Lambdas: each Task state's function (one binary; `COMMERCE_STEP`
//! names the step), and the starter that turns each `OrderCancellationRequested` on its SQS
//! queue into a Step Functions execution.

use std::collections::BTreeMap;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use commerce_app::executions::{ExecutionError, StateMachines};
use commerce_app::saga::{CancellationStep, ORDER_CANCELLATION, cancellation_of};
use commerce_app::shop::StepError;
use commerce_app::{Clock, PaymentGateway, Shop, Table};
use lambda_http::lambda_runtime::Diagnostic;
use serde_json::Value;

/// A step's failure as Step Functions sees it: the error name its Retry and Catch match
/// (`Commerce.Transient`, `Commerce.PaymentRefused`, ...) is the Lambda's error type.
#[derive(Debug)]
pub struct StepFailed(pub StepError);

impl From<StepFailed> for Diagnostic {
    fn from(failed: StepFailed) -> Self {
        Diagnostic {
            error_type: failed.0.error.to_owned(),
            error_message: failed.0.cause,
        }
    }
}

/// Runs `step` on the state the state machine passes, answering what it records.
pub async fn run_step<T: Table, P: PaymentGateway, C: Clock>(
    shop: &Shop<T, P, C>,
    step: CancellationStep,
    input: &Value,
) -> Result<Value, StepFailed> {
    let answer = step.run(shop, input).await.map_err(StepFailed)?;
    serde_json::to_value(answer).map_err(|e| {
        StepFailed(StepError {
            error: commerce_app::shop::TRANSIENT,
            cause: e.to_string(),
        })
    })
}

/// Starts an execution for each cancellation in the batch, named from order and attempt, so
/// a redelivery starts nothing new. A start that fails for now is reported failed and comes
/// back; a message that is no cancellation is logged and dropped.
pub async fn start_cancellations<S: StateMachines>(
    machines: &S,
    event: SqsEvent,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let Some(task) = cancellation_of(record.body.as_deref().unwrap_or_default()) else {
            tracing::warn!(message = %id, "not a cancellation request; dropped");
            continue;
        };
        let input = match serde_json::to_value(&task) {
            Ok(input) => input,
            Err(e) => {
                tracing::error!(message = %id, error = %e, "cannot encode the saga's input");
                continue;
            }
        };
        match machines
            .start(ORDER_CANCELLATION, &task.execution_name(), &input)
            .await
        {
            Ok(()) => {}
            Err(ExecutionError::AlreadyExists(name)) => {
                tracing::error!(execution = %name, "a cancellation's execution exists with another input");
            }
            Err(e) => {
                tracing::warn!(message = %id, error = %e, "starting a cancellation failed; it comes back");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
    }
    response
}

/// The state machines the starter knows: the cancellation saga at `CANCELLATION_STATE_MACHINE_ARN`.
pub fn machines_from_env() -> Result<BTreeMap<String, String>, lambda_http::Error> {
    let arn = std::env::var("CANCELLATION_STATE_MACHINE_ARN")
        .map_err(|_| "CANCELLATION_STATE_MACHINE_ARN is not set")?;
    Ok(BTreeMap::from([(ORDER_CANCELLATION.to_owned(), arn)]))
}
