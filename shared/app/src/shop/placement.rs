//! Placing an order, exactly once per `Idempotency-Key` however the request is interrupted.
//!
//! 1. **Claim.** One commit holds the stock (a basket gets a hold of its own; a reservation
//!    starts its checkout, so no second order can pay for it) and claims the key, recording the
//!    attempt: order id, reservation, priced lines.
//! 2. **Authorize.** The provider de-duplicates by order id, so asking again after a crash or a
//!    lost answer gives the same authorization.
//! 3. **Record.** One commit confirms the hold, places the order and stores the answer, on
//!    condition that this run still owns the key.
//!
//! The work runs in a task of its own, so a client that goes away does not stop it. A run that
//! stops anyway (crash, timeout) leaves its claim; once the lease is out, a retry with the same
//! key takes it over and resumes from the attempt. Every attempt is queued for the reconciler
//! (the sweeper) in its first commit and leaves the queue in the commit that ends it; one still
//! there at its check time is given up: voided, its hold or checkout ended, its key freed.

use std::sync::Arc;
use std::time::Duration;

use commerce_domain::{
    Line, Money, NewOrder, Order, OrderId, OrderLine, PaymentAuthorization, Quantity, Reservation,
    ReservationId, ReservationStatus, TenantId,
};
use serde::{Deserialize, Serialize};

use super::reservations::HoldRequest;
use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, CommitError, Origin, Stream, load};
use crate::idempotency::{Begin, Guard, IdempotencyKey, Outcome};
use crate::keys;
use crate::payments::PaymentError;
use crate::table::StoreError;
use crate::views::{Contact, OrderView};
use crate::{AppError, Clock, PaymentGateway, Table};

/// An order from a basket (`lines`) or from the caller's own reservation (`reservation_id`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaceOrder {
    /// The basket, each SKU at most once. Give this or `reservation_id`, not both.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 20))]
    pub lines: Option<Vec<Line>>,
    /// One of the caller's held reservations. Give this or `lines`, not both.
    #[serde(default)]
    pub reservation_id: Option<ReservationId>,
    /// The payment method, as the payment provider's token.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 255))]
    pub payment_token: String,
    #[serde(default)]
    pub contact: Option<Contact>,
}

impl PlaceOrder {
    fn check(&self) -> Result<(), AppError> {
        if let Some(contact) = &self.contact {
            contact.check()?;
        }
        if self.payment_token.is_empty() || self.payment_token.len() > 255 {
            return Err(AppError::BadRequest(
                "payment_token must be 1 to 255 characters".into(),
            ));
        }
        if self.lines.is_some() == self.reservation_id.is_some() {
            return Err(AppError::BadRequest(
                "give either lines or reservation_id".into(),
            ));
        }
        Ok(())
    }
}

/// What the key's record keeps of a placement, so a run that takes over can resume it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    tenant: TenantId,
    order: OrderId,
    reservation: ReservationId,
    /// The hold was made for this order from a basket, and goes when its payment fails. A
    /// customer's own reservation stays held instead.
    own_hold: bool,
    lines: Vec<OrderLine>,
    total: Money,
    /// When the reconciler looks at the attempt (Unix ms): if it has not ended by then, its
    /// authorization is voided and its key given back.
    check_at: i64,
    /// The order is being given up: its void may be on its way to the provider. A run that
    /// takes such an attempt over only finishes the void; it never authorizes or places it.
    #[serde(default)]
    voiding: bool,
}

impl Attempt {
    /// When the reconciler looks at it (Unix ms).
    pub(crate) fn check_at(&self) -> i64 {
        self.check_at
    }
}

/// A claim on the key: the attempt to carry on with, or another run got it first.
enum Claimed {
    /// The attempt, with its reservation as the claim left it when this run knows it.
    Attempt(Attempt, Option<Box<Stream<Reservation>>>),
    Raced,
}

impl Claimed {
    /// Carries the reservation the claim's commit wrote, so recording the order need not read
    /// it back.
    fn knowing(self, reservation: Stream<Reservation>) -> Self {
        match self {
            Claimed::Attempt(attempt, _) => Claimed::Attempt(attempt, Some(Box::new(reservation))),
            raced => raced,
        }
    }
}

/// Times a run looks at the key again after another run of it moved first.
const BEGINS: usize = 3;

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Places an order in a task of its own: dropping the returned future (the client went
    /// away) does not stop the placement, whose answer the key then replays.
    pub async fn place_order(
        self: &Arc<Self>,
        caller: Caller,
        key: Option<IdempotencyKey>,
        request: PlaceOrder,
    ) -> Result<Reply, AppError> {
        let shop = Arc::clone(self);
        tokio::spawn(async move { shop.place(&caller, key.as_ref(), request).await })
            .await
            .map_err(|e| StoreError::Failure(format!("the placement task failed: {e}")))?
    }

    /// The placement in the caller's own task: dropping it stops it where it stands, as a
    /// crash would. [`Shop::place_order`] is what a request handler wants.
    pub async fn place(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        request: PlaceOrder,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer], "place orders")?;
        request.check()?;
        for _ in 0..BEGINS {
            let mut guard = match self.begin::<Attempt>(key).await? {
                Begin::Replay(outcome) => {
                    return self.with_contact(caller, outcome.into_reply()?).await;
                }
                Begin::Fresh(guard) => guard,
            };
            let claimed = match guard.progress().cloned() {
                Some(attempt) => self.resume(caller, &mut guard, attempt).await?,
                None => self.start(caller, &mut guard, &request).await?,
            };
            if let Claimed::Attempt(attempt, reservation) = claimed {
                return self
                    .pay_and_record(caller, &mut guard, &attempt, reservation, &request)
                    .await;
            }
        }
        Err(AppError::IdempotencyInFlight)
    }

    /// A first run: prices the lines, holds the stock and claims the key.
    async fn start(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        request: &PlaceOrder,
    ) -> Result<Claimed, AppError> {
        let order = OrderId::parse(uuid::Uuid::now_v7().to_string())?;
        match (&request.lines, &request.reservation_id) {
            (Some(lines), None) => {
                Line::check_all(lines)?;
                let priced = self.price(caller, lines).await?;
                let hold = ReservationId::parse(uuid::Uuid::now_v7().to_string())?;
                let attempt = self.attempt(caller, order, hold, true, priced);
                self.claim_basket(caller, guard, attempt, lines).await
            }
            (None, Some(id)) => {
                let reservation = self.own_reservation(caller, id).await?;
                let lines = reservation
                    .state
                    .held
                    .map(|h| h.lines)
                    .ok_or(AppError::NotFound("reservation"))?;
                let priced = self.price(caller, &lines).await?;
                let attempt = self.attempt(caller, order, id.clone(), false, priced);
                self.claim_checkout(caller, guard, attempt).await
            }
            _ => Err(AppError::BadRequest(
                "give either lines or reservation_id".into(),
            )),
        }
    }

    /// A new attempt, due a check by the reconciler if it has not ended in time.
    fn attempt(
        &self,
        caller: &Caller,
        order: OrderId,
        reservation: ReservationId,
        own_hold: bool,
        (lines, total): (Vec<OrderLine>, Money),
    ) -> Attempt {
        Attempt {
            tenant: caller.tenant.clone(),
            order,
            reservation,
            own_hold,
            lines,
            total,
            check_at: self.now_ms().saturating_add(self.config.reconcile_after_ms),
            voiding: false,
        }
    }

    /// Holds the basket's stock for the order and claims the key, in one commit.
    async fn claim_basket(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: Attempt,
        lines: &[Line],
    ) -> Result<Claimed, AppError> {
        let request = HoldRequest {
            id: &attempt.reservation,
            lines,
            ttl_seconds: self.config.order_hold_seconds,
            checkout: Some(attempt.order.clone()),
        };
        let mut attempts = self.attempts();
        while attempts.next().await {
            let (changes, reservation) = self.hold(caller, &request).await?;
            if let Some(claimed) = self.claim(guard, changes, &attempt).await? {
                return Ok(claimed.knowing(reservation.committed()));
            }
        }
        Err(AppError::Contention)
    }

    /// Starts the checkout of the caller's reservation for the order and claims the key, in
    /// one commit. Resuming a checkout that is still this order's changes only the claim.
    async fn claim_checkout(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: Attempt,
    ) -> Result<Claimed, AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation = self.own_reservation(caller, &attempt.reservation).await?;
            let events = reservation
                .state
                .start_checkout(attempt.order.clone(), self.now_ms())?;
            let mut changes = Changes::new(caller.origin());
            changes.append(&mut reservation, events, self.now_ms())?;
            if let Some(claimed) = self.claim(guard, changes, &attempt).await? {
                return Ok(claimed.knowing(reservation.committed()));
            }
        }
        Err(AppError::Contention)
    }

    /// Commits `changes` with the claim; the first claim of a key also puts the attempt in
    /// the reconciler's queue. `None`: a stream moved, build the changes again.
    async fn claim(
        &self,
        guard: &mut Guard<Attempt>,
        mut changes: Changes,
        attempt: &Attempt,
    ) -> Result<Option<Claimed>, AppError> {
        let held_before = guard.holds_claim();
        if !held_before
            && guard.progress().is_none()
            && let Some(pk) = guard.record_pk()
        {
            changes.put_read_model(
                self.attempt_queue(pk),
                keys::attempt_sk(attempt.check_at, pk),
                &(),
            )?;
        }
        match guard
            .claim(
                &self.table,
                changes,
                attempt.clone(),
                self.now_ms(),
                self.config.lease_ms,
            )
            .await
        {
            Ok(()) => Ok(Some(Claimed::Attempt(attempt.clone(), None))),
            Err(CommitError::StreamConflict) => Ok(None),
            // Holding the claim, losing it means another run took over and will finish.
            Err(CommitError::KeyTaken) if held_before => Err(AppError::IdempotencyInFlight),
            Err(CommitError::KeyTaken) => Ok(Some(Claimed::Raced)),
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }

    /// Takes over a placement whose run stopped. If its hold still waits for this order, the
    /// run carries on; if the hold is gone, whatever was authorized is voided and the key is
    /// given back, so the next look starts afresh.
    async fn resume(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: Attempt,
    ) -> Result<Claimed, AppError> {
        if attempt.voiding {
            // Its void may still be on the wire: finish giving it up, then start afresh.
            tracing::info!(order = %attempt.order, "resumed placement was being given up");
            return self.give_up_for_retry(caller, guard, &attempt).await;
        }
        let reservation = load::<Reservation, _>(
            &self.table,
            keys::reservation(&caller.tenant, &attempt.reservation),
        )
        .await?;
        let held = reservation
            .state
            .held
            .as_ref()
            .filter(|h| h.status == ReservationStatus::Held);
        let now = self.now_ms();
        if attempt.own_hold {
            return match held {
                Some(h) if h.checkout.as_ref() == Some(&attempt.order) && h.expires_at > now => {
                    Ok(self
                        .claim(guard, Changes::new(caller.origin()), &attempt)
                        .await?
                        .unwrap_or(Claimed::Raced))
                }
                _ => self.hold_again(caller, guard, attempt, reservation).await,
            };
        }
        // Time enough left to pay before the reservation runs out, or it counts as gone.
        let pay_by = now.saturating_add(self.config.payment_deadline_ms as i64);
        let waiting = held.is_some_and(|h| {
            h.expires_at > pay_by
                && (h.checkout.is_none() || h.checkout.as_ref() == Some(&attempt.order))
        });
        if waiting {
            return self.claim_checkout(caller, guard, attempt).await;
        }
        tracing::info!(order = %attempt.order, "resumed placement found its reservation gone");
        self.give_up_for_retry(caller, guard, &attempt).await
    }

    /// Gives the attempt up (void, key back) so the caller's next look starts afresh.
    async fn give_up_for_retry(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
    ) -> Result<Claimed, AppError> {
        match self.give_up(&caller.origin(), guard, attempt).await {
            Ok(_) | Err(AppError::IdempotencyInFlight) => Ok(Claimed::Raced),
            Err(e) => Err(e),
        }
    }

    /// The basket's hold was given back (the provider was down) or ran out: hold the stock
    /// again for the same order, which keeps its id and so its authorization. An old hold not
    /// swept yet is given back first, in a commit of its own (one commit cannot write a SKU's
    /// stock twice), so the customer never holds the basket twice.
    async fn hold_again(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: Attempt,
        mut old: Stream<Reservation>,
    ) -> Result<Claimed, AppError> {
        if let Ok(events) = old.state.give_back(&attempt.order) {
            let changes = self
                .end_hold(&caller.tenant, &caller.origin(), &mut old, events)
                .await?;
            match self.claim(guard, changes, &attempt).await? {
                Some(Claimed::Attempt(..)) => {}
                // A stream moved or another run got the key: look again from the start.
                _ => return Ok(Claimed::Raced),
            }
        }
        let lines: Vec<Line> = attempt
            .lines
            .iter()
            .map(|l| {
                Ok(Line {
                    sku: l.sku.clone(),
                    quantity: Quantity::new(l.quantity)?,
                })
            })
            .collect::<Result<_, commerce_domain::DomainError>>()?;
        let again = Attempt {
            reservation: ReservationId::parse(uuid::Uuid::now_v7().to_string())?,
            ..attempt
        };
        self.claim_basket(caller, guard, again, &lines).await
    }

    /// Voids the attempt's authorization. The claim is taken (or renewed) first, marking the
    /// attempt as being given up: only the claim's owner may void, since another run may be using
    /// the same authorization, and whoever takes the attempt over after that mark only finishes
    /// the void. A void that fails leaves the attempt as it was, for the reconciler to try again;
    /// voids repeat harmlessly, and the provider authorizes no voided order.
    async fn void_attempt(
        &self,
        origin: &Origin,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
    ) -> Result<(), AppError> {
        let voiding = Attempt {
            voiding: true,
            ..attempt.clone()
        };
        match self
            .claim(guard, Changes::new(origin.clone()), &voiding)
            .await?
        {
            Some(Claimed::Attempt(..)) => {}
            _ => return Err(AppError::IdempotencyInFlight),
        }
        if self.void(&attempt.order).await {
            Ok(())
        } else {
            Err(AppError::PaymentUnavailable)
        }
    }

    /// Commits `changes` with the key given back and the attempt out of the reconciler's queue.
    async fn abandon_attempt(
        &self,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
        mut changes: Changes,
    ) -> Result<(), AppError> {
        self.forget_attempt(&mut changes, guard, attempt);
        match guard.abandon(&self.table, changes).await {
            Ok(()) => Ok(()),
            Err(CommitError::KeyTaken) => Err(AppError::IdempotencyInFlight),
            Err(e) => Err(e.into()),
        }
    }

    /// The attempt has ended: it leaves the reconciler's queue in the commit that ends it.
    fn forget_attempt(&self, changes: &mut Changes, guard: &Guard<Attempt>, attempt: &Attempt) {
        if let Some(pk) = guard.record_pk() {
            changes.delete_read_model(
                self.attempt_queue(pk),
                keys::attempt_sk(attempt.check_at, pk),
            );
        }
    }

    /// Gives a placement up: its authorization is voided, its hold or checkout ends, and its key
    /// is given back, so a late retry starts afresh. The reconciler does this to a placement not
    /// ended by its check time; a run does it when the hold it was paying for is gone. Returns
    /// whether it was given up (false: another run got to the key first).
    pub(super) async fn give_up(
        &self,
        origin: &Origin,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
    ) -> Result<bool, AppError> {
        match self.void_attempt(origin, guard, attempt).await {
            Ok(()) => {}
            Err(AppError::IdempotencyInFlight) => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut attempts = self.attempts();
        while attempts.next().await {
            let changes = self.end_checkout(&attempt.tenant, origin, attempt).await?;
            match self.abandon_attempt(guard, attempt, changes).await {
                Ok(()) => return Ok(true),
                Err(AppError::IdempotencyInFlight) => return Ok(false),
                // A stream moved under the commit: read again.
                Err(AppError::Contention) => {}
                Err(e) => return Err(e),
            }
        }
        Err(AppError::Contention)
    }

    async fn pay_and_record(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
        reservation: Option<Box<Stream<Reservation>>>,
        request: &PlaceOrder,
    ) -> Result<Reply, AppError> {
        match self.authorize(attempt, &request.payment_token).await {
            Ok(authorization) => {
                self.record_order(
                    caller,
                    guard,
                    attempt,
                    (authorization, reservation),
                    request.contact.as_ref(),
                )
                .await
            }
            Err(PaymentError::Declined(reason)) => {
                self.decline(caller, guard, attempt, reason).await
            }
            Err(PaymentError::Unavailable(why)) => {
                tracing::warn!(order = %attempt.order, %why, "payment provider unavailable");
                self.pause(caller, guard, attempt).await?;
                Err(AppError::PaymentUnavailable)
            }
        }
    }

    /// Asks the provider, retrying while it is unavailable, within the payment deadline (well
    /// inside the claim's lease, so a run never authorizes after another took over).
    async fn authorize(
        &self,
        attempt: &Attempt,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        let deadline = Duration::from_millis(self.config.payment_deadline_ms);
        let tries = async {
            let mut backoff = Duration::from_millis(self.config.payment_backoff_ms);
            let mut tried = 1;
            loop {
                match self
                    .payments
                    .authorize(&attempt.order, attempt.total, token)
                    .await
                {
                    Err(PaymentError::Unavailable(why)) if tried < self.config.payment_attempts => {
                        tracing::info!(order = %attempt.order, tried, %why, "payment provider unavailable, retrying");
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                        tried += 1;
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(deadline, tries)
            .await
            .unwrap_or_else(|_| Err(PaymentError::Unavailable("no answer in time".into())))
    }

    /// Turns the hold into the order and stores the answer. The first try builds on the
    /// reservation as the claim left it, when known; lost races are read again; a store that
    /// fails is retried, since every write is conditioned on what was read and on this run's
    /// claim.
    async fn record_order(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
        (authorization, mut claimed): (PaymentAuthorization, Option<Box<Stream<Reservation>>>),
        contact: Option<&Contact>,
    ) -> Result<Reply, AppError> {
        let mut failures = 0;
        let mut attempts = self.attempts();
        while attempts.next().await {
            let (mut changes, view) = match self
                .order_changes(caller, attempt, &authorization, contact, claimed.take())
                .await
            {
                Err(AppError::Domain(why)) => {
                    return self.hold_lost(caller, guard, attempt, why).await;
                }
                other => other?,
            };
            self.forget_attempt(&mut changes, guard, attempt);
            let stored = Reply {
                status: 201,
                body: serde_json::to_value(&view)
                    .map_err(|e| StoreError::Failure(e.to_string()))?,
            };
            match guard
                .finish(&self.table, changes, Outcome::Done(stored), self.now_ms())
                .await
            {
                Ok(()) => return reply_with(view, contact),
                Err(CommitError::StreamConflict) => {}
                Err(CommitError::KeyTaken) => return Err(AppError::IdempotencyInFlight),
                Err(CommitError::Store(e)) => {
                    failures += 1;
                    tracing::warn!(order = %attempt.order, failures, error = %e, "recording an authorized order failed");
                    if failures >= self.config.store_attempts {
                        // A retry with the key resumes at once; without one, the hold expires
                        // and the sweeper voids the authorization.
                        let _ = guard
                            .park(&self.table, Changes::new(caller.origin()), self.now_ms())
                            .await;
                        return Err(e.into());
                    }
                    tokio::time::sleep(Duration::from_millis(10 << failures)).await;
                }
            }
        }
        Err(AppError::Contention)
    }

    /// The one commit that places the order: the hold confirmed, the order's first event, the
    /// customer's holds and the order lists, and the contact kept apart. The view holds no
    /// contact: it is what the key stores.
    async fn order_changes(
        &self,
        caller: &Caller,
        attempt: &Attempt,
        authorization: &PaymentAuthorization,
        contact: Option<&Contact>,
        known: Option<Box<Stream<Reservation>>>,
    ) -> Result<(Changes, OrderView), AppError> {
        let tenant = &caller.tenant;
        let mut reservation = match known {
            Some(reservation) => *reservation,
            None => {
                load::<Reservation, _>(&self.table, keys::reservation(tenant, &attempt.reservation))
                    .await?
            }
        };
        let confirmed = reservation
            .state
            .confirm(attempt.order.clone(), self.now_ms())?;
        let held = reservation
            .state
            .held
            .clone()
            .ok_or(AppError::NotFound("reservation"))?;
        let mut order = Stream::<Order>::fresh(keys::order(tenant, &attempt.order));
        let placed = order.state.place(NewOrder {
            id: attempt.order.clone(),
            customer: caller.subject.clone(),
            reservation: attempt.reservation.clone(),
            lines: attempt.lines.clone(),
            total: attempt.total,
            payment: authorization.clone(),
            placed_at: self.now_ms(),
        })?;
        let mut changes = Changes::new(caller.origin());
        changes.append(&mut reservation, confirmed, self.now_ms())?;
        changes.append(&mut order, placed, self.now_ms())?;
        self.forget_hold(&mut changes, tenant, &held).await?;
        let placed = order
            .state
            .placed
            .as_ref()
            .ok_or(AppError::NotFound("order"))?;
        self.list_order(&mut changes, tenant, placed)?;
        if let Some(contact) = contact {
            changes.put_read_model(
                keys::order_contact(tenant, &attempt.order),
                keys::HEAD.to_owned(),
                contact,
            )?;
        }
        Ok((changes, OrderView::new(placed, None)))
    }

    /// The hold ended while the order was being paid for (it expired): no order, and the
    /// authorization goes back. The key is given back too; the caller may try again.
    async fn hold_lost(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
        why: commerce_domain::DomainError,
    ) -> Result<Reply, AppError> {
        if self.give_up(&caller.origin(), guard, attempt).await? {
            Err(why.into())
        } else {
            // Another run holds the key now: its answer is the key's.
            Err(AppError::IdempotencyInFlight)
        }
    }

    /// A decline is final for the key: a basket's hold goes, a reservation stays held.
    async fn decline(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
        reason: String,
    ) -> Result<Reply, AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut changes = self
                .end_checkout(&caller.tenant, &caller.origin(), attempt)
                .await?;
            self.forget_attempt(&mut changes, guard, attempt);
            let outcome = Outcome::Declined {
                reason: reason.clone(),
            };
            match guard
                .finish(&self.table, changes, outcome, self.now_ms())
                .await
            {
                Ok(()) => return Err(AppError::PaymentDeclined(reason)),
                Err(CommitError::StreamConflict) => {}
                Err(CommitError::KeyTaken) => return Err(AppError::IdempotencyInFlight),
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    /// The provider is down: the attempt is kept for a retry with the same key, which resumes
    /// at once under the same order id. A basket's stock goes back meanwhile (the retry holds
    /// it again), and a reservation leaves checkout, so nothing stays locked for a retry that may
    /// never come; the reconciler voids the order's authorization, if any, when its time is up.
    async fn pause(
        &self,
        caller: &Caller,
        guard: &mut Guard<Attempt>,
        attempt: &Attempt,
    ) -> Result<(), AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let changes = self
                .end_checkout(&caller.tenant, &caller.origin(), attempt)
                .await?;
            match guard.park(&self.table, changes, self.now_ms()).await {
                Ok(()) => return Ok(()),
                Err(CommitError::StreamConflict) => {}
                Err(CommitError::KeyTaken) => return Err(AppError::IdempotencyInFlight),
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    /// Ends the order's claim on its hold: a customer's reservation leaves checkout; a basket's
    /// own hold is given back.
    async fn end_checkout(
        &self,
        tenant: &TenantId,
        origin: &Origin,
        attempt: &Attempt,
    ) -> Result<Changes, AppError> {
        let mut reservation =
            load::<Reservation, _>(&self.table, keys::reservation(tenant, &attempt.reservation))
                .await?;
        if attempt.own_hold {
            return match reservation.state.give_back(&attempt.order) {
                Ok(events) => {
                    self.end_hold(tenant, origin, &mut reservation, events)
                        .await
                }
                // Already ended (expired): nothing left to give back.
                Err(_) => Ok(Changes::new(origin.clone())),
            };
        }
        let events = reservation
            .state
            .end_checkout(&attempt.order)
            .unwrap_or_default();
        let mut changes = Changes::new(origin.clone());
        changes.append(&mut reservation, events, self.now_ms())?;
        Ok(changes)
    }

    /// A replayed order answer gets its contact back from where it is kept (none if erased).
    async fn with_contact(&self, caller: &Caller, mut reply: Reply) -> Result<Reply, AppError> {
        let id = reply.body.get("id").and_then(|id| id.as_str());
        let Some(id) = id.and_then(|id| OrderId::parse(id).ok()) else {
            return Ok(reply);
        };
        if let (Some(contact), Some(body)) = (
            self.contact(&caller.tenant, &id).await?,
            reply.body.as_object_mut(),
        ) {
            let contact =
                serde_json::to_value(contact).map_err(|e| StoreError::Failure(e.to_string()))?;
            body.insert("contact".into(), contact);
        }
        Ok(reply)
    }
}

fn reply_with(mut view: OrderView, contact: Option<&Contact>) -> Result<Reply, AppError> {
    view.contact = contact.cloned();
    Ok(Reply {
        status: 201,
        body: serde_json::to_value(&view).map_err(|e| StoreError::Failure(e.to_string()))?,
    })
}
