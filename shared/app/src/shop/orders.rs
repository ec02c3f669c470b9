use commerce_domain::{
    Line, Money, Order, OrderId, OrderLine, PaymentAuthorization, Product, Reservation,
    ReservationId, ReservationStatus,
};
use serde::Deserialize;
use std::time::Duration;

use super::{Caller, Reply, Role, Shop};
use crate::clock::now_seconds;
use crate::event_store::{Changes, CommitError, Stream, load};
use crate::idempotency::{self, IdempotencyKey};
use crate::keys;
use crate::payments::PaymentError;
use crate::table::StoreError;
use crate::views::{Contact, ListPage, OrderSummary, OrderView, Problem};
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

/// Claiming the idempotency key with the first commit: done, or someone already answered.
enum Claim<T> {
    Fresh(T),
    Answered(Reply),
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Holds the stock, authorizes payment, then turns the hold into an order. A decline gives the
    /// stock back and answers 402; a provider that stays unavailable gives it back and answers 503
    /// with the key free for a retry.
    pub async fn place_order(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        request: PlaceOrder,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer], "place orders")?;
        if let Some(reply) = self.replay(key).await? {
            return Ok(reply);
        }
        if let Some(contact) = &request.contact {
            contact.check()?;
        }
        if request.payment_token.is_empty() || request.payment_token.len() > 255 {
            return Err(AppError::BadRequest(
                "payment_token must be 1 to 255 characters".into(),
            ));
        }
        let order_id = OrderId::parse(uuid::Uuid::now_v7().to_string())?;
        let (reservation_id, priced) = match (request.lines, request.reservation_id) {
            (Some(lines), None) => {
                Line::check_all(&lines)?;
                let priced = self.price(caller, &lines).await?;
                let id = ReservationId::parse(uuid::Uuid::now_v7().to_string())?;
                if let Claim::Answered(reply) =
                    self.hold_for_order(caller, key, &id, &lines).await?
                {
                    return Ok(reply);
                }
                (id, priced)
            }
            (None, Some(id)) => {
                let lines = match self
                    .claim_own_reservation(caller, key, &id, &order_id)
                    .await?
                {
                    Claim::Fresh(lines) => lines,
                    Claim::Answered(reply) => return Ok(reply),
                };
                match self.price(caller, &lines).await {
                    Ok(priced) => (id, priced),
                    Err(e) => {
                        self.give_back(caller, key, &id, None).await?;
                        return Err(e);
                    }
                }
            }
            _ => {
                return Err(AppError::BadRequest(
                    "give either lines or reservation_id".into(),
                ));
            }
        };
        match self
            .authorize(&order_id, priced.1, &request.payment_token)
            .await
        {
            Ok(authorization) => {
                self.record_order(
                    caller,
                    key,
                    order_id,
                    reservation_id,
                    priced,
                    authorization,
                    request.contact,
                )
                .await
            }
            Err(PaymentError::Declined(reason)) => {
                let problem = Problem::new(
                    402,
                    "payment-declined",
                    "Payment declined",
                    &format!("the payment provider declined: {reason}"),
                );
                let reply = Reply {
                    status: 402,
                    body: serde_json::to_value(&problem)
                        .map_err(|e| StoreError::Failure(e.to_string()))?,
                };
                self.give_back(caller, key, &reservation_id, Some(reply.clone()))
                    .await?;
                Ok(reply)
            }
            Err(PaymentError::Unavailable(why)) => {
                tracing::warn!(order = %order_id, %why, "payment provider unavailable; stock given back");
                self.give_back(caller, key, &reservation_id, None).await?;
                Err(AppError::PaymentUnavailable)
            }
        }
    }

    /// Unit prices from the catalog and the total, all in one currency.
    async fn price(
        &self,
        caller: &Caller,
        lines: &[Line],
    ) -> Result<(Vec<OrderLine>, Money), AppError> {
        let mut prices = Vec::with_capacity(lines.len());
        for line in lines {
            let product =
                load::<Product, _>(&self.table, keys::product(&caller.tenant, &line.sku)).await?;
            let price = product
                .state
                .details
                .map(|d| d.price)
                .ok_or_else(|| AppError::UnknownSku(line.sku.to_string()))?;
            prices.push(price);
        }
        Ok(Order::price(lines, &prices)?)
    }

    /// Holds the basket's stock for this order, with the idempotency key claimed in the same commit.
    async fn hold_for_order(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &ReservationId,
        lines: &[Line],
    ) -> Result<Claim<()>, AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let (mut changes, _) = self
                .hold(caller, id, lines.to_vec(), self.config.order_hold_seconds)
                .await?;
            if let Some(key) = key {
                idempotency::claim(&mut changes, key, now_seconds())?;
            }
            match changes.commit(&self.table).await {
                Ok(()) => return Ok(Claim::Fresh(())),
                Err(CommitError::StreamConflict) => {}
                Err(CommitError::KeyTaken) => return self.key_taken(key).await,
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    /// Checks the caller's reservation can become this order and claims the key; returns its lines.
    async fn claim_own_reservation(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &ReservationId,
        order: &OrderId,
    ) -> Result<Claim<Vec<Line>>, AppError> {
        let reservation =
            load::<Reservation, _>(&self.table, keys::reservation(&caller.tenant, id)).await?;
        let held = match &reservation.state.held {
            Some(h) if h.owner == caller.subject => h,
            _ => return Err(AppError::NotFound("reservation")),
        };
        reservation.state.confirm(order.clone(), self.now_ms())?;
        if let Some(key) = key {
            let mut changes = Changes::new();
            idempotency::claim(&mut changes, key, now_seconds())?;
            match changes.commit(&self.table).await {
                Ok(()) => {}
                Err(CommitError::KeyTaken) => return self.key_taken(Some(key)).await,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Claim::Fresh(held.lines.clone()))
    }

    /// The key turned out to be taken between our check and our claim: replay its answer if the
    /// first request has finished, otherwise it is still in flight.
    async fn key_taken<V>(&self, key: Option<&IdempotencyKey>) -> Result<Claim<V>, AppError> {
        match self.replay(key).await? {
            Some(reply) => Ok(Claim::Answered(reply)),
            None => Err(AppError::IdempotencyInFlight),
        }
    }

    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        let mut backoff = Duration::from_millis(self.config.payment_backoff_ms);
        let mut attempt = 1;
        loop {
            match self.payments.authorize(order, amount, token).await {
                Err(PaymentError::Unavailable(why)) if attempt < self.config.payment_attempts => {
                    tracing::info!(%order, attempt, %why, "payment provider unavailable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Releases the hold after a failed payment, storing `reply` under the key if it is final,
    /// or freeing the key if the caller should retry.
    async fn give_back(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &ReservationId,
        reply: Option<Reply>,
    ) -> Result<(), AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation =
                load::<Reservation, _>(&self.table, keys::reservation(&caller.tenant, id)).await?;
            let held = reservation
                .state
                .held
                .as_ref()
                .is_some_and(|h| h.status == ReservationStatus::Held);
            let mut changes = if held {
                let events = reservation.state.release()?;
                self.end_hold(&caller.tenant, &mut reservation, events)
                    .await?
            } else {
                Changes::new()
            };
            if let Some(key) = key {
                match &reply {
                    Some(reply) => idempotency::complete(
                        &mut changes,
                        key,
                        reply.clone(),
                        true,
                        now_seconds(),
                    )?,
                    None => idempotency::abandon(&mut changes, key),
                }
            }
            if changes.is_empty() {
                return Ok(());
            }
            match changes.commit(&self.table).await {
                Ok(()) => return Ok(()),
                Err(CommitError::StreamConflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_order(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        order_id: OrderId,
        reservation_id: ReservationId,
        (lines, total): (Vec<OrderLine>, Money),
        authorization: PaymentAuthorization,
        contact: Option<Contact>,
    ) -> Result<Reply, AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation = load::<Reservation, _>(
                &self.table,
                keys::reservation(&caller.tenant, &reservation_id),
            )
            .await?;
            let confirmed = match reservation.state.confirm(order_id.clone(), self.now_ms()) {
                Ok(events) => events,
                Err(e) => {
                    // The hold ended while we were paying (expired or released): no order, no charge.
                    self.void(&authorization).await;
                    self.give_back(caller, key, &reservation_id, None).await?;
                    return Err(e.into());
                }
            };
            let expires_at = reservation.state.held.as_ref().map_or(0, |h| h.expires_at);
            let mut order: Stream<Order> = Stream::fresh(keys::order(&caller.tenant, &order_id));
            let placed = order.state.place(
                order_id.clone(),
                caller.subject.clone(),
                reservation_id.clone(),
                lines.clone(),
                total,
                authorization.clone(),
                self.now_ms(),
            )?;
            let mut changes = Changes::new();
            changes.append(&mut reservation, confirmed, self.now_ms())?;
            changes.append(&mut order, placed, self.now_ms())?;
            changes.delete_read_model(
                keys::holds(keys::hold_shard(&reservation_id)),
                keys::hold_sk(expires_at, &caller.tenant, &reservation_id),
            );
            let placed = order
                .state
                .placed
                .as_ref()
                .ok_or(AppError::NotFound("order"))?;
            let summary = OrderSummary {
                id: order_id.to_string(),
                status: placed.status,
                customer: caller.subject.to_string(),
                total,
                placed_at: crate::views::timestamp(placed.placed_at),
            };
            changes.put_read_model(
                keys::customer_orders(&caller.tenant, &caller.subject),
                order_id.to_string(),
                &summary,
            )?;
            changes.put_read_model(
                keys::tenant_orders(&caller.tenant),
                order_id.to_string(),
                &summary,
            )?;
            if let Some(contact) = &contact {
                changes.put_read_model(
                    keys::order_contact(&caller.tenant, &order_id),
                    keys::HEAD.to_owned(),
                    contact,
                )?;
            }
            let view = OrderView::new(placed, contact.clone());
            let reply = Reply {
                status: 201,
                body: serde_json::to_value(&view)
                    .map_err(|e| StoreError::Failure(e.to_string()))?,
            };
            if let Some(key) = key {
                idempotency::complete(&mut changes, key, reply.clone(), true, now_seconds())?;
            }
            match changes.commit(&self.table).await {
                Ok(()) => return Ok(reply),
                Err(CommitError::StreamConflict) => {}
                Err(CommitError::KeyTaken) => {
                    self.void(&authorization).await;
                    return Err(AppError::IdempotencyInFlight);
                }
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    async fn void(&self, authorization: &PaymentAuthorization) {
        if let Err(e) = self.payments.void(authorization).await {
            tracing::error!(authorization = %authorization.id, error = %e, "could not void a payment authorization; it will lapse at the provider");
        }
    }

    pub async fn order(&self, caller: &Caller, id: &OrderId) -> Result<OrderView, AppError> {
        caller.require(&[Role::Customer, Role::Ops], "read orders")?;
        let order = load::<Order, _>(&self.table, keys::order(&caller.tenant, id)).await?;
        let placed = match &order.state.placed {
            Some(o) if o.customer == caller.subject || caller.has(Role::Ops) => o,
            _ => return Err(AppError::NotFound("order")),
        };
        let contact = match self
            .table
            .get(&keys::order_contact(&caller.tenant, id), keys::HEAD)
            .await?
        {
            Some(item) => Some(
                serde_json::from_slice(&item.data)
                    .map_err(|e| StoreError::Failure(format!("corrupt contact: {e}")))?,
            ),
            None => None,
        };
        Ok(OrderView::new(placed, contact))
    }

    /// Newest first. Customers see their own orders; operators see the whole shop's.
    pub async fn orders(
        &self,
        caller: &Caller,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage<OrderSummary>, AppError> {
        caller.require(&[Role::Customer, Role::Ops], "read orders")?;
        let pk = if caller.has(Role::Ops) {
            keys::tenant_orders(&caller.tenant)
        } else {
            keys::customer_orders(&caller.tenant, &caller.subject)
        };
        self.list(&pk, cursor, limit, true).await
    }
}
