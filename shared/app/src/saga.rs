//! The order-cancellation saga around its state machine: the definition (the ASL file Step
//! Functions runs, compiled in), what runs its Task states, and the consumer that starts an
//! execution for each `OrderCancellationRequested`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use commerce_asl::{Definition, Failure, Refused, TaskCall, Tasks};
use commerce_domain::{OrderEvent, OrderId, StepFailure, TenantId};
use serde::Deserialize;
use serde_json::Value;

use crate::bus::{BusError, FilterPolicy, Queue, Subscription};
use crate::event_store::Envelope;
use crate::executions::{ExecutionError, StateMachines};
use crate::shop::{CancellationTask, StepAnswer, StepError};
use crate::{Clock, PaymentGateway, Shop, Table};

/// The state machine's name, locally and in the template.
pub const ORDER_CANCELLATION: &str = "order-cancellation";

/// `infra/statemachines/order-cancellation.asl.json`, as deployed.
pub const ORDER_CANCELLATION_ASL: &str =
    include_str!("../../../infra/statemachines/order-cancellation.asl.json");

/// The saga's steps, each a Task state's resource: a Lambda function on AWS (the
/// `DefinitionSubstitutions` name in the template), a method of the shop locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancellationStep {
    ReleaseStock,
    SettlePayment,
    Complete,
    Flag,
}

impl CancellationStep {
    pub const ALL: [CancellationStep; 4] = [
        CancellationStep::ReleaseStock,
        CancellationStep::SettlePayment,
        CancellationStep::Complete,
        CancellationStep::Flag,
    ];

    /// The definition's substitution variable for this step's function.
    pub fn substitution(self) -> &'static str {
        match self {
            Self::ReleaseStock => "ReleaseStockFunctionArn",
            Self::SettlePayment => "SettlePaymentFunctionArn",
            Self::Complete => "CompleteCancellationFunctionArn",
            Self::Flag => "FlagCancellationFunctionArn",
        }
    }

    /// What the step is called in the local runtime's resources and a Lambda's
    /// `COMMERCE_STEP` setting.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReleaseStock => "release-stock",
            Self::SettlePayment => "settle-payment",
            Self::Complete => "complete-cancellation",
            Self::Flag => "flag-cancellation",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|step| step.name() == name)
    }

    /// Runs the step on the state's input (the saga's state: the task's fields and more).
    pub async fn run<T: Table, P: PaymentGateway, C: Clock>(
        self,
        shop: &Shop<T, P, C>,
        input: &Value,
    ) -> Result<StepAnswer, StepError> {
        let task: CancellationTask =
            serde_json::from_value(input.clone()).map_err(|e| StepError {
                error: crate::shop::REFUSED,
                cause: format!("not a cancellation task: {e}"),
            })?;
        // Boxed: each step's future is deep, and a Lambda's whole handler is one type.
        match self {
            Self::ReleaseStock => Box::pin(shop.release_cancelled_stock(&task)).await,
            Self::SettlePayment => Box::pin(shop.settle_cancelled_payment(&task)).await,
            Self::Complete => Box::pin(shop.complete_cancellation(&task)).await,
            Self::Flag => Box::pin(shop.flag_cancellation(&task, failure_of(input))).await,
        }
    }
}

/// The cancellation state machine with each step's resource named for the local runtime
/// (`local:<step>`).
pub fn local_definitions() -> Result<BTreeMap<String, Definition>, Refused> {
    let substitutions = CancellationStep::ALL
        .into_iter()
        .map(|step| {
            (
                step.substitution().to_owned(),
                format!("local:{}", step.name()),
            )
        })
        .collect();
    Ok(BTreeMap::from([(
        ORDER_CANCELLATION.to_owned(),
        Definition::load(ORDER_CANCELLATION_ASL, &substitutions)?,
    )]))
}

/// Runs the saga's Task states in this process, on the shop.
#[derive(Debug)]
pub struct LocalSteps<T, P, C> {
    pub shop: Arc<Shop<T, P, C>>,
}

impl<T: Table, P: PaymentGateway, C: Clock> Tasks for LocalSteps<T, P, C> {
    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        let step = call
            .resource
            .strip_prefix("local:")
            .and_then(CancellationStep::parse)
            .ok_or_else(|| {
                Failure::new(
                    "States.TaskFailed",
                    format!("no local function {}", call.resource),
                )
            })?;
        match step.run(&self.shop, &call.input).await {
            Ok(answer) => serde_json::to_value(answer)
                .map_err(|e| Failure::new(crate::shop::TRANSIENT, e.to_string())),
            Err(e) => Err(Failure::new(e.error, e.cause)),
        }
    }
}

/// What failed, from the saga's state when it reaches RecordNeedsAttention: a step's caught
/// error (`failure`), or the branches' (`outcome.stock`, `outcome.payment`).
fn failure_of(input: &Value) -> StepFailure {
    #[derive(Deserialize)]
    struct Caught {
        #[serde(rename = "Error", default)]
        error: String,
        #[serde(rename = "Cause", default)]
        cause: String,
    }
    let caught = |v: Option<&Value>| -> Option<Caught> {
        v.and_then(|v| serde_json::from_value(v.clone()).ok())
    };
    if let Some(c) = caught(input.get("failure")) {
        return StepFailure {
            error: c.error,
            cause: c.cause,
        };
    }
    let mut errors = Vec::new();
    let mut causes = Vec::new();
    for branch in ["stock", "payment"] {
        if let Some(c) = caught(
            input
                .get("outcome")
                .and_then(|o| o.get(branch))
                .and_then(|b| b.get("failure")),
        ) {
            errors.push(c.error);
            causes.push(format!("{branch}: {}", c.cause));
        }
    }
    StepFailure {
        error: if errors.is_empty() {
            "Unknown".to_owned()
        } else {
            errors.join(", ")
        },
        cause: causes.join("; "),
    }
}

/// The saga starter's queue: every `OrderCancellationRequested`.
pub const STARTER_QUEUE: &str = "cancellation-saga";

/// Receives after which a start that keeps failing moves to the dead-letter queue.
pub const STARTER_MAX_RECEIVES: u32 = 10;

pub fn starter_subscription() -> Subscription {
    Subscription {
        queue: STARTER_QUEUE.to_owned(),
        filter: FilterPolicy(BTreeMap::from([(
            crate::bus::EVENT_TYPE.to_owned(),
            vec!["OrderCancellationRequested".to_owned()],
        )])),
        max_receives: STARTER_MAX_RECEIVES,
    }
}

/// The cancellation an event asks for, if it is an `OrderCancellationRequested`.
pub fn cancellation_of(body: &str) -> Option<CancellationTask> {
    let envelope: Envelope<OrderEvent> = serde_json::from_str(body).ok()?;
    let OrderEvent::OrderCancellationRequested { attempt, .. } = envelope.data else {
        return None;
    };
    Some(CancellationTask {
        tenant: TenantId::parse(&envelope.tenant).ok()?,
        order_id: OrderId::parse(&envelope.aggregate_id).ok()?,
        attempt,
        correlation_id: envelope.correlation_id,
        causation_id: envelope.id.to_string(),
    })
}

/// Starts the saga of each cancellation received, under the name derived from order and
/// attempt, so a redelivered event or a repeated start is the same execution. A message that
/// is no cancellation is dropped; a start that fails comes back later.
pub async fn start_received<Q: Queue, S: StateMachines>(
    queue: &Q,
    machines: &S,
    visibility: Duration,
    wait: Duration,
) -> Result<usize, BusError> {
    let deliveries = queue.receive(10, visibility, wait).await?;
    let mut done = Vec::new();
    for delivery in &deliveries {
        let Some(task) = cancellation_of(&delivery.message.body) else {
            tracing::warn!(message = %delivery.message.id, "not a cancellation request; dropped");
            done.push(delivery.receipt.clone());
            continue;
        };
        let input = serde_json::to_value(&task).map_err(|e| BusError::Failure(e.to_string()))?;
        match machines
            .start(ORDER_CANCELLATION, &task.execution_name(), &input)
            .await
        {
            Ok(_) => done.push(delivery.receipt.clone()),
            Err(ExecutionError::AlreadyExists(name)) => {
                tracing::error!(execution = %name, "a cancellation's execution exists with another input");
                done.push(delivery.receipt.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "starting a cancellation failed; will retry");
                let backoff = Duration::from_millis(200u64 << delivery.receive_count.min(6));
                queue.retry_after(&delivery.receipt, backoff).await?;
            }
        }
    }
    queue.delete_all(&done).await?;
    Ok(deliveries.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_deployed_definition_loads_locally_with_every_step_bound() {
        let definitions = local_definitions().unwrap();
        let text =
            serde_json::to_string(&serde_json::from_str::<Value>(ORDER_CANCELLATION_ASL).unwrap())
                .unwrap();
        for step in CancellationStep::ALL {
            assert!(
                text.contains(&format!("${{{}}}", step.substitution())),
                "{step:?}"
            );
            assert_eq!(CancellationStep::parse(step.name()), Some(step));
        }
        assert!(definitions.contains_key(ORDER_CANCELLATION));
    }

    #[test]
    fn a_failure_is_read_from_the_step_or_the_branches() {
        let caught = serde_json::json!({"failure": {"Error": "Commerce.Refused", "Cause": "no"}});
        assert_eq!(failure_of(&caught).error, "Commerce.Refused");
        let branches = serde_json::json!({"outcome": {
            "stock": {"done": true, "answer": {}},
            "payment": {"done": false, "failure": {"Error": "Commerce.PaymentRefused", "Cause": "refund_refused"}}
        }});
        let failure = failure_of(&branches);
        assert_eq!(failure.error, "Commerce.PaymentRefused");
        assert_eq!(failure.cause, "payment: refund_refused");
    }
}
