use commerce_domain::{
    CustomerHolds, Held, HoldWindow, Line, OrderId, Reservation, ReservationEvent, ReservationId,
    TenantId,
};
use serde::Deserialize;

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, Origin, Stream, Versioned, load, load_versioned};
use crate::idempotency::Begin;
use crate::keys;
use crate::views::ReservationView;
use crate::{AppError, Clock, IdempotencyKey, PaymentGateway, Table};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewReservation {
    /// Each SKU at most once, all priced in one currency.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 20))]
    pub lines: Vec<Line>,
    /// How long the stock is held (default 900; the shop sets the longest allowed).
    #[serde(default = "default_ttl")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub ttl_seconds: u32,
}

fn default_ttl() -> u32 {
    15 * 60
}

/// What a new hold is for and how long it lasts.
pub(super) struct HoldRequest<'a> {
    pub id: &'a ReservationId,
    pub lines: &'a [Line],
    pub ttl_seconds: u32,
    /// The order the hold is made for, when it is made for one.
    pub checkout: Option<OrderId>,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    pub async fn create_reservation(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        new: NewReservation,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer], "reserve stock")?;
        let mut guard = match self.begin::<()>(key).await? {
            Begin::Replay(outcome) => return outcome.into_reply(),
            Begin::Fresh(guard) => guard,
        };
        Line::check_all(&new.lines)?;
        // Priced now so a cart that could never become an order is refused at once.
        self.price(caller, &new.lines).await?;
        let id = ReservationId::parse(uuid::Uuid::now_v7().to_string())?;
        let request = HoldRequest {
            id: &id,
            lines: &new.lines,
            ttl_seconds: new.ttl_seconds,
            checkout: None,
        };
        let mut attempts = self.attempts();
        while attempts.next().await {
            let (changes, reservation) = self.hold(caller, &request).await?;
            let view = reservation
                .state
                .held
                .as_ref()
                .map(ReservationView::from)
                .ok_or(AppError::NotFound("reservation"))?;
            if let Some(reply) = self
                .commit_answer(&mut guard, key, changes, 201, &view)
                .await?
            {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    /// The writes that hold stock for a new reservation: its stream, every line's stock, the
    /// customer's open reservations (within the shop's limits) and its place in the expiry queue.
    pub(super) async fn hold(
        &self,
        caller: &Caller,
        request: &HoldRequest<'_>,
    ) -> Result<(Changes, Stream<Reservation>), AppError> {
        let id = request.id;
        let mut reservation = Stream::<Reservation>::fresh(keys::reservation(&caller.tenant, id));
        let window = HoldWindow {
            now_ms: self.now_ms(),
            ttl_seconds: request.ttl_seconds,
            max_ttl_seconds: self.config.limits.max_ttl_seconds,
        };
        let events = reservation.state.hold(
            id.clone(),
            caller.subject.clone(),
            request.lines.to_vec(),
            window,
            request.checkout.clone(),
        )?;
        let mut changes = Changes::new(caller.origin());
        // A customer's reservations count against the shop's limits. An order's own hold lasts
        // only while it pays, so it does not, and orders never queue on their customer.
        if request.checkout.is_none() {
            let mut holds = self.customer_holds(&caller.tenant, &caller.subject).await?;
            holds.state.add(id, request.lines, &self.config.limits)?;
            changes.put_versioned(&holds)?;
        }
        self.reserve_lines(&mut changes, &caller.tenant, request.lines)
            .await?;
        changes.append(&mut reservation, events, self.now_ms())?;
        let expires_at = reservation.state.held.as_ref().map_or(0, |h| h.expires_at);
        changes.put_read_model(
            self.hold_queue(id),
            keys::hold_sk(expires_at, &caller.tenant, id),
            &(),
        )?;
        Ok((changes, reservation))
    }

    pub(super) async fn customer_holds(
        &self,
        tenant: &TenantId,
        customer: &commerce_domain::CustomerId,
    ) -> Result<Versioned<CustomerHolds>, AppError> {
        Ok(load_versioned(
            &self.table,
            keys::customer_holds(tenant, customer),
            keys::HEAD,
        )
        .await?)
    }

    pub async fn reservation(
        &self,
        caller: &Caller,
        id: &ReservationId,
    ) -> Result<ReservationView, AppError> {
        let reservation = self.visible_reservation(caller, id).await?;
        reservation
            .state
            .held
            .as_ref()
            .map(ReservationView::from)
            .ok_or(AppError::NotFound("reservation"))
    }

    /// Only the customer who holds a reservation releases it; an operator's role does not make
    /// someone else's hold theirs.
    pub async fn release_reservation(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &ReservationId,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer], "release a reservation")?;
        let mut guard = match self.begin::<()>(key).await? {
            Begin::Replay(outcome) => return outcome.into_reply(),
            Begin::Fresh(guard) => guard,
        };
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation = self.own_reservation(caller, id).await?;
            let events = reservation.state.release()?;
            let changes = self
                .end_hold(&caller.tenant, &caller.origin(), &mut reservation, events)
                .await?;
            let view = reservation
                .state
                .held
                .as_ref()
                .map(ReservationView::from)
                .ok_or(AppError::NotFound("reservation"))?;
            if let Some(reply) = self
                .commit_answer(&mut guard, key, changes, 200, &view)
                .await?
            {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    /// Ends a hold without an order (released, given back or expired): the stock goes back and
    /// the customer's holds shrink.
    pub(super) async fn end_hold(
        &self,
        tenant: &TenantId,
        origin: &Origin,
        reservation: &mut Stream<Reservation>,
        events: Vec<ReservationEvent>,
    ) -> Result<Changes, AppError> {
        let held = reservation
            .state
            .held
            .clone()
            .ok_or(AppError::NotFound("reservation"))?;
        let mut changes = Changes::new(origin.clone());
        self.release_lines(&mut changes, tenant, &held.lines)
            .await?;
        changes.append(reservation, events, self.now_ms())?;
        self.forget_hold(&mut changes, tenant, &held).await?;
        Ok(changes)
    }

    /// The hold no longer counts against its customer, nor waits in the expiry queue.
    pub(super) async fn forget_hold(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        held: &Held,
    ) -> Result<(), AppError> {
        if !held.for_basket {
            let mut holds = self.customer_holds(tenant, &held.owner).await?;
            if holds.state.remove(&held.id) {
                changes.put_versioned(&holds)?;
            }
        }
        changes.delete_read_model(
            self.hold_queue(&held.id),
            keys::hold_sk(held.expires_at, tenant, &held.id),
        );
        Ok(())
    }

    /// The owner sees their reservation; operators see all of their shop's. Anyone else gets 404.
    async fn visible_reservation(
        &self,
        caller: &Caller,
        id: &ReservationId,
    ) -> Result<Stream<Reservation>, AppError> {
        let reservation =
            load::<Reservation, _>(&self.table, keys::reservation(&caller.tenant, id)).await?;
        match &reservation.state.held {
            Some(h) if h.owner == caller.subject || caller.has(Role::Ops) => Ok(reservation),
            _ => Err(AppError::NotFound("reservation")),
        }
    }

    /// The caller's own reservation, for acting on it. Anyone else's is 404, roles regardless.
    pub(super) async fn own_reservation(
        &self,
        caller: &Caller,
        id: &ReservationId,
    ) -> Result<Stream<Reservation>, AppError> {
        let reservation =
            load::<Reservation, _>(&self.table, keys::reservation(&caller.tenant, id)).await?;
        match &reservation.state.held {
            Some(h) if h.owner == caller.subject => Ok(reservation),
            _ => Err(AppError::NotFound("reservation")),
        }
    }
}
