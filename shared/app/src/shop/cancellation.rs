//! Cancelling an order: the request that records `OrderCancellationRequested`, and the steps
//! the cancellation saga runs. Each step is idempotent on the order and the cancellation's
//! attempt: it reads how far the order got and does only what is left, committing its events
//! conditionally on the order's version, so a repeated or concurrent run of a step acts once.
//!
//! Compensation rules (docs/cancellation.md gives the whole table):
//! - A store that is busy, a lost race that keeps being lost, or a provider that cannot answer
//!   is `Commerce.Transient`: the state machine retries it with backoff.
//! - A provider refusal (`Commerce.PaymentRefused`) or a rule the order breaks
//!   (`Commerce.Refused`) is for good: the branch gives up, the other branch still runs, and
//!   the saga ends in `NeedsAttention` with the failure recorded on the order.
//! - A step of a superseded cancellation (`Commerce.StaleCancellation`) does nothing.

use commerce_domain::{
    DomainError, Line, Order, OrderId, PlacedOrder, Settlement, StepFailure, TenantId,
};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, CommitError, Origin, Stream, load};
use crate::idempotency::Begin;
use crate::keys;
use crate::payments::{PaymentError, operation_key};
use crate::views::{AlertView, OrderView, timestamp};
use crate::{AppError, Clock, IdempotencyKey, PaymentGateway, Table};

/// A request to cancel an order, or some of its lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelOrder {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 500))]
    pub reason: String,
    /// The units to cancel, each SKU at most once; everything left when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 20))]
    pub lines: Option<Vec<Line>>,
}

/// What each step of the saga is given: the order, which of its cancellations, and what ties
/// the step's events to the request that started it. Other fields (the saga's own) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationTask {
    pub tenant: TenantId,
    pub order_id: OrderId,
    pub attempt: u32,
    pub correlation_id: String,
    /// The `OrderCancellationRequested` event's id.
    pub causation_id: String,
}

impl CancellationTask {
    fn origin(&self) -> Origin {
        Origin {
            actor: "system:cancellation".to_owned(),
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.causation_id.clone()),
        }
    }

    /// The execution name of this cancellation's saga: derived from order and attempt, so a
    /// second start of the same cancellation is recognised. Step Functions allows 80
    /// characters of `[A-Za-z0-9_-]`; tenant and order ids may hold others, so they are hashed.
    pub fn execution_name(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{}\0{}", self.tenant, self.order_id));
        let short: String = hex::encode(digest).chars().take(32).collect();
        format!("cancel-{short}-{}", self.attempt)
    }
}

/// Why a saga step failed, named as the state machine's Retry and Catch match it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {cause}")]
pub struct StepError {
    pub error: &'static str,
    pub cause: String,
}

/// Rounds of the settle step: finishing a capture under way, then refunding.
const SETTLE_ROUNDS: usize = 3;

/// Retried by the state machine.
pub const TRANSIENT: &str = "Commerce.Transient";
/// The payment provider refused; retrying will not help.
pub const PAYMENT_REFUSED: &str = "Commerce.PaymentRefused";
/// The order's rules refuse the step.
pub const REFUSED: &str = "Commerce.Refused";
/// A newer cancellation of the order took over.
pub const STALE: &str = "Commerce.StaleCancellation";

impl From<AppError> for StepError {
    fn from(e: AppError) -> Self {
        let cause = e.to_string();
        let error = match e {
            AppError::Domain(commerce_domain::DomainError::StaleCancellation { .. }) => STALE,
            AppError::Domain(_) | AppError::NotFound(_) | AppError::BadRequest(_) => REFUSED,
            AppError::PaymentDeclined(_) => PAYMENT_REFUSED,
            _ => TRANSIENT,
        };
        Self { error, cause }
    }
}

impl From<PaymentError> for StepError {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Declined(why) => Self {
                error: PAYMENT_REFUSED,
                cause: why,
            },
            PaymentError::Unavailable(why) => Self {
                error: TRANSIENT,
                cause: why,
            },
        }
    }
}

impl From<commerce_domain::DomainError> for StepError {
    fn from(e: commerce_domain::DomainError) -> Self {
        AppError::from(e).into()
    }
}

impl From<CommitError> for StepError {
    fn from(e: CommitError) -> Self {
        AppError::from(e).into()
    }
}

impl From<crate::StoreError> for StepError {
    fn from(e: crate::StoreError) -> Self {
        AppError::from(e).into()
    }
}

/// What a step answers the state machine: the order's status and money after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAnswer {
    pub order_id: String,
    pub attempt: u32,
    pub status: commerce_domain::OrderStatus,
    pub payment: crate::views::PaymentView,
}

impl StepAnswer {
    fn of(placed: &PlacedOrder, attempt: u32) -> Self {
        Self {
            order_id: placed.id.to_string(),
            attempt,
            status: placed.status,
            payment: OrderView::new(placed, None).payment,
        }
    }
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Records the request; the saga starts from its event. Answers 202 with the order as it
    /// is now (`cancelling`), or as the same cancellation left it when it was asked already.
    pub async fn request_cancellation(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &OrderId,
        request: CancelOrder,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer, Role::Admin], "cancel orders")?;
        let mut guard = match self.begin::<()>(key).await? {
            Begin::Replay(outcome) => return outcome.into_reply(),
            Begin::Fresh(guard) => guard,
        };
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut order = load::<Order, _>(&self.table, keys::order(&caller.tenant, id)).await?;
            match &order.state.placed {
                Some(o) if o.customer == caller.subject || caller.has(Role::Admin) => {}
                _ => return Err(AppError::NotFound("order")),
            }
            let events = order.state.request_cancellation(
                &request.reason,
                request.lines.as_deref(),
                self.now_ms(),
            )?;
            let mut changes = Changes::new(caller.origin());
            let placed = self.append_order(
                &mut changes,
                &caller.tenant,
                &mut order,
                events,
                self.now_ms(),
            )?;
            let view = OrderView::new(&placed, None);
            if let Some(reply) = self
                .commit_answer(&mut guard, key, changes, 202, &view)
                .await?
            {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    /// Takes the payment authorized for the order (admins; e.g. when it is packed), in a task
    /// of its own: a client that goes away does not cut the capture short between the
    /// provider and the order.
    pub async fn capture_order_payment(
        self: &Arc<Self>,
        caller: Caller,
        key: Option<IdempotencyKey>,
        id: OrderId,
    ) -> Result<Reply, AppError> {
        let shop = Arc::clone(self);
        tokio::spawn(async move { shop.capture_payment(&caller, key.as_ref(), &id).await })
            .await
            .map_err(|e| crate::StoreError::Failure(format!("the capture task failed: {e}")))?
    }

    /// The capture in the caller's task. First the order records the capture it asks for (so
    /// a cancellation that comes meanwhile finishes it before it refunds, instead of leaving
    /// an amount out of a capture that may have happened); then the provider is asked, once
    /// per order (its key); then what it took is recorded. A capture asked for and not
    /// recorded (a lost answer, a crash) is finished by the next capture request or by a
    /// cancellation, with the same amount and key.
    pub async fn capture_payment(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &OrderId,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Admin], "capture payments")?;
        let mut guard = match self.begin::<()>(key).await? {
            Begin::Replay(outcome) => return outcome.into_reply(),
            Begin::Fresh(guard) => guard,
        };
        let pk = keys::order(&caller.tenant, id);
        let mut attempts = self.attempts();
        let (amount, authorization) = loop {
            if !attempts.next().await {
                return Err(AppError::Contention);
            }
            let mut order = load::<Order, _>(&self.table, pk.clone()).await?;
            let placed = order
                .state
                .placed
                .clone()
                .ok_or(AppError::NotFound("order"))?;
            let (amount, events) = order.state.request_capture()?;
            if events.is_empty() {
                break (amount, placed.payment);
            }
            let mut changes = Changes::new(caller.origin());
            self.append_order(
                &mut changes,
                &caller.tenant,
                &mut order,
                events,
                self.now_ms(),
            )?;
            match changes.commit(&self.table).await {
                Ok(()) => break (amount, placed.payment),
                Err(CommitError::StreamConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let captured = self
            .payments
            .capture(&authorization, amount, &operation_key(id, "capture", 1))
            .await;
        let receipt = match captured {
            Ok(receipt) => receipt,
            Err(PaymentError::Declined(why)) => {
                self.record_on_order(caller, &pk, |order| order.refuse_capture(why.clone()))
                    .await?;
                return Err(AppError::PaymentDeclined(why));
            }
            // The capture stays asked for: a retry or a cancellation finishes it.
            Err(PaymentError::Unavailable(_)) => return Err(AppError::PaymentUnavailable),
        };
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut order = load::<Order, _>(&self.table, pk.clone()).await?;
            let events = order
                .state
                .record_capture(receipt.amount, receipt.id.clone())?;
            let mut changes = Changes::new(caller.origin());
            let placed = self.append_order(
                &mut changes,
                &caller.tenant,
                &mut order,
                events,
                self.now_ms(),
            )?;
            if let Some(reply) = self
                .commit_answer(
                    &mut guard,
                    key,
                    changes,
                    200,
                    &OrderView::new(&placed, None),
                )
                .await?
            {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    /// Commits what `decide` records on the order, reading it again after a lost race.
    async fn record_on_order(
        &self,
        caller: &Caller,
        pk: &str,
        decide: impl Fn(&Order) -> Result<Vec<commerce_domain::OrderEvent>, DomainError>,
    ) -> Result<(), AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut order = load::<Order, _>(&self.table, pk.to_owned()).await?;
            let events = decide(&order.state)?;
            if events.is_empty() {
                return Ok(());
            }
            let mut changes = Changes::new(caller.origin());
            self.append_order(
                &mut changes,
                &caller.tenant,
                &mut order,
                events,
                self.now_ms(),
            )?;
            match changes.commit(&self.table).await {
                Ok(()) => return Ok(()),
                Err(CommitError::StreamConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    /// Saga step: gives the cancelled units back to stock, once.
    pub async fn release_cancelled_stock(
        &self,
        task: &CancellationTask,
    ) -> Result<StepAnswer, StepError> {
        self.step(task, |shop, order| async move {
            let mut order = order;
            let events = order.state.release_stock(task.attempt)?;
            let mut changes = Changes::new(task.origin());
            if let Some(commerce_domain::OrderEvent::CancellationStockReleased { lines, .. }) =
                events.first()
            {
                match shop.release_lines(&mut changes, &task.tenant, lines).await {
                    Ok(()) => {}
                    // Another run of this step may have released them since the order was
                    // read (its commit moves stock and order together): if the order moved,
                    // read again.
                    Err(AppError::Domain(DomainError::ReleaseExceedsReserved { .. }))
                        if shop.moved(&order).await? =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.append_order(
                &mut changes,
                &task.tenant,
                &mut order,
                events,
                shop.now_ms(),
            )?;
            Ok(Some(changes))
        })
        .await
    }

    /// Saga step: voids the authorization, leaves the cancelled amount out of the capture, or
    /// refunds it, once. A refund is keyed by its number on the order, so a retry after a
    /// lost answer, a crash or a lost race asks the provider for the same refund.
    pub async fn settle_cancelled_payment(
        &self,
        task: &CancellationTask,
    ) -> Result<StepAnswer, StepError> {
        // A capture found on the way is recorded first; the refund follows in the next round.
        for _ in 0..SETTLE_ROUNDS {
            let answer = self.settle_once(task).await?;
            let order =
                load::<Order, _>(&self.table, keys::order(&task.tenant, &task.order_id)).await?;
            if order.state.settlement(task.attempt)? == Settlement::Settled {
                return Ok(answer);
            }
        }
        Err(StepError {
            error: TRANSIENT,
            cause: "the payment is not settled yet".into(),
        })
    }

    async fn settle_once(&self, task: &CancellationTask) -> Result<StepAnswer, StepError> {
        self.step(task, |shop, order| async move {
            let mut order = order;
            let settlement = order.state.settlement(task.attempt)?;
            let placed = order
                .state
                .placed
                .clone()
                .ok_or(AppError::NotFound("order"))?;
            let mut first = Vec::new();
            let receipt = match &settlement {
                Settlement::Settled | Settlement::LeaveUncaptured { .. } => None,
                // Finish the capture under way first (the same capture, under its key), and
                // record what it took; the refund follows in the next round.
                Settlement::FinishCapture { amount } => {
                    let events = match shop
                        .payments
                        .capture(
                            &placed.payment,
                            *amount,
                            &operation_key(&placed.id, "capture", 1),
                        )
                        .await
                    {
                        Ok(receipt) => order.state.record_capture(receipt.amount, receipt.id)?,
                        Err(PaymentError::Declined(why)) => order.state.refuse_capture(why)?,
                        Err(e) => return Err(e.into()),
                    };
                    let mut changes = Changes::new(task.origin());
                    self.append_order(
                        &mut changes,
                        &task.tenant,
                        &mut order,
                        events,
                        shop.now_ms(),
                    )?;
                    return Ok(Some(changes));
                }
                Settlement::VoidAuthorization { .. } => {
                    match shop.payments.void(&placed.id).await {
                        Ok(()) => {
                            // A capture under way can no longer take anything.
                            first = order
                                .state
                                .refuse_capture("authorization_voided".to_owned())?;
                            None
                        }
                        // A capture reached the provider but not the order (its request was cut
                        // short, or raced this cancellation): the same capture, asked again under
                        // its key, tells what was taken; recorded, it is refunded instead.
                        Err(PaymentError::Declined(code)) if code == "already_captured" => {
                            let amount = order.state.uncaptured_amount()?;
                            let receipt = shop
                                .payments
                                .capture(
                                    &placed.payment,
                                    amount,
                                    &operation_key(&placed.id, "capture", 1),
                                )
                                .await?;
                            let events = order.state.record_capture(receipt.amount, receipt.id)?;
                            let mut changes = Changes::new(task.origin());
                            self.append_order(
                                &mut changes,
                                &task.tenant,
                                &mut order,
                                events,
                                shop.now_ms(),
                            )?;
                            // Committed, the step reads the order again and refunds.
                            return Ok(Some(changes));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Settlement::Refund { amount, number } => Some(
                    shop.payments
                        .refund(
                            &placed.payment,
                            *amount,
                            &operation_key(&placed.id, "refund", *number),
                        )
                        .await?
                        .id,
                ),
            };
            let mut events = first;
            events.extend(order.state.settle(task.attempt, &settlement, receipt)?);
            let mut changes = Changes::new(task.origin());
            self.append_order(
                &mut changes,
                &task.tenant,
                &mut order,
                events,
                shop.now_ms(),
            )?;
            Ok(Some(changes))
        })
        .await
    }

    /// Saga step: marks the order cancelled (or partially), once stock and money are back.
    pub async fn complete_cancellation(
        &self,
        task: &CancellationTask,
    ) -> Result<StepAnswer, StepError> {
        self.step(task, |shop, order| async move {
            let mut order = order;
            let events = order.state.complete_cancellation(task.attempt)?;
            let mut changes = Changes::new(task.origin());
            self.append_order(
                &mut changes,
                &task.tenant,
                &mut order,
                events,
                shop.now_ms(),
            )?;
            Ok(Some(changes))
        })
        .await
    }

    /// Saga step: records that the cancellation failed for good, on the order (which now says
    /// `needs_attention`) and as an alert for operators, once.
    pub async fn flag_cancellation(
        &self,
        task: &CancellationTask,
        failure: StepFailure,
    ) -> Result<StepAnswer, StepError> {
        self.step(task, |shop, order| {
            let failure = failure.clone();
            async move {
                let mut order = order;
                let events = match order.state.flag_cancellation(task.attempt, failure.clone()) {
                    Ok(events) => events,
                    // A newer cancellation took over: there is nothing to flag for this one.
                    Err(DomainError::StaleCancellation { .. }) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                let mut changes = Changes::new(task.origin());
                if !events.is_empty() {
                    let now = shop.now_ms();
                    tracing::error!(
                        tenant = %task.tenant,
                        order = %task.order_id,
                        attempt = task.attempt,
                        error = %failure.error,
                        cause = %failure.cause,
                        "cancellation needs attention"
                    );
                    changes.put_read_model(
                        keys::alerts(&task.tenant),
                        format!("{}#{}#{}", timestamp(now), task.order_id, task.attempt),
                        &AlertView {
                            kind: "cancellation-needs-attention".to_owned(),
                            order_id: task.order_id.to_string(),
                            attempt: task.attempt,
                            failure,
                            raised_at: timestamp(now),
                        },
                    )?;
                }
                self.append_order(
                    &mut changes,
                    &task.tenant,
                    &mut order,
                    events,
                    shop.now_ms(),
                )?;
                Ok(Some(changes))
            }
        })
        .await
    }

    /// Whether the order's stream moved past the version `order` was read at.
    async fn moved(&self, order: &Stream<Order>) -> Result<bool, AppError> {
        let now = load::<Order, _>(&self.table, order.pk.clone()).await?;
        Ok(now.version != order.version)
    }

    /// Runs one saga step to a commit: reads the order, lets `work` decide and act, commits
    /// on the order's version, and starts again from a fresh read when the order moved.
    async fn step<'a, F, Fut>(
        &'a self,
        task: &'a CancellationTask,
        work: F,
    ) -> Result<StepAnswer, StepError>
    where
        F: Fn(&'a Self, Stream<Order>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Changes>, StepError>> + 'a,
    {
        let pk = keys::order(&task.tenant, &task.order_id);
        let mut attempts = self.attempts();
        while attempts.next().await {
            let order = load::<Order, _>(&self.table, pk.clone()).await?;
            if order.state.placed.is_none() {
                return Err(AppError::NotFound("order").into());
            }
            // `None`: what the work read moved under it; read again.
            let Some(changes) = work(self, order).await? else {
                continue;
            };
            let committed = if changes.is_empty() {
                Ok(())
            } else {
                changes.commit(&self.table).await
            };
            match committed {
                Ok(()) => {
                    let order = load::<Order, _>(&self.table, pk.clone()).await?;
                    let placed = order
                        .state
                        .placed
                        .as_ref()
                        .ok_or(AppError::NotFound("order"))?;
                    return Ok(StepAnswer::of(placed, task.attempt));
                }
                Err(CommitError::StreamConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention.into())
    }

    /// Operators' alerts, newest first.
    pub async fn alerts(
        &self,
        caller: &Caller,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<crate::views::ListPage<AlertView>, AppError> {
        caller.require(&[Role::Ops], "read alerts")?;
        self.list(&keys::alerts(&caller.tenant), cursor, limit, true)
            .await
    }
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Appends the order's events and, if its status moved, the order lists' summaries. Returns
    /// the order as it will be.
    fn append_order(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        order: &mut Stream<Order>,
        events: Vec<commerce_domain::OrderEvent>,
        now_ms: i64,
    ) -> Result<PlacedOrder, AppError> {
        let before = order.state.placed.as_ref().map(|o| o.status);
        changes.append(order, events, now_ms)?;
        let placed = order
            .state
            .placed
            .clone()
            .ok_or(AppError::NotFound("order"))?;
        if before != Some(placed.status) {
            self.list_order(changes, tenant, &placed)?;
        }
        Ok(placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_domain::DomainError;

    #[test]
    fn step_errors_are_named_for_the_state_machine() {
        let name = |e: StepError| e.error;
        assert_eq!(name(AppError::Contention.into()), TRANSIENT);
        assert_eq!(
            name(crate::StoreError::Busy("slow".into()).into()),
            TRANSIENT
        );
        assert_eq!(
            name(PaymentError::Unavailable("503".into()).into()),
            TRANSIENT
        );
        assert_eq!(
            name(PaymentError::Declined("refund_refused".into()).into()),
            PAYMENT_REFUSED
        );
        assert_eq!(
            name(
                DomainError::ReleaseExceedsReserved {
                    requested: 2,
                    reserved: 1
                }
                .into()
            ),
            REFUSED
        );
        assert_eq!(
            name(
                DomainError::StaleCancellation {
                    attempt: 1,
                    latest: 2
                }
                .into()
            ),
            STALE
        );
    }

    #[test]
    fn an_execution_name_is_derived_from_order_and_attempt_within_step_functions_rules() {
        let task = |order: &str, attempt| CancellationTask {
            tenant: TenantId::parse("acme").unwrap(),
            order_id: OrderId::parse(order).unwrap(),
            attempt,
            correlation_id: "c".into(),
            causation_id: "e".into(),
        };
        let name = task("o.1", 1).execution_name();
        assert_eq!(name, task("o.1", 1).execution_name());
        assert_ne!(name, task("o.1", 2).execution_name());
        assert_ne!(name, task("o.2", 1).execution_name());
        assert!(name.len() <= 80);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
