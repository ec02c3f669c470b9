use commerce_domain::{
    Line, Reservation, ReservationEvent, ReservationId, ReservationStatus, TenantId,
};
use serde::Deserialize;

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, Stream, load};
use crate::keys;
use crate::table::{Query, StoreError};
use crate::views::ReservationView;
use crate::{AppError, Clock, IdempotencyKey, PaymentGateway, Table};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewReservation {
    /// Each SKU at most once.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 20))]
    pub lines: Vec<Line>,
    /// How long the stock is held (default 900).
    #[serde(default = "default_ttl")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub ttl_seconds: u32,
}

fn default_ttl() -> u32 {
    15 * 60
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    pub async fn create_reservation(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        new: NewReservation,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer], "reserve stock")?;
        if let Some(reply) = self.replay(key).await? {
            return Ok(reply);
        }
        Line::check_all(&new.lines)?;
        for line in &new.lines {
            match self.product(caller, &line.sku).await {
                Err(AppError::NotFound(_)) => {
                    return Err(AppError::UnknownSku(line.sku.to_string()));
                }
                other => other?,
            };
        }
        let id = ReservationId::parse(uuid::Uuid::now_v7().to_string())?;
        let mut attempts = self.attempts();
        while attempts.next().await {
            let (changes, reservation) = self
                .hold(caller, &id, new.lines.clone(), new.ttl_seconds)
                .await?;
            let view = reservation
                .state
                .held
                .as_ref()
                .map(ReservationView::from)
                .ok_or(AppError::NotFound("reservation"))?;
            if let Some(reply) = self.commit_with_reply(changes, key, 201, &view).await? {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    /// The writes that hold stock for a new reservation: its stream, every line's stock, and its
    /// place in the expiry queue.
    pub(super) async fn hold(
        &self,
        caller: &Caller,
        id: &ReservationId,
        lines: Vec<Line>,
        ttl_seconds: u32,
    ) -> Result<(Changes, Stream<Reservation>), AppError> {
        let mut reservation = Stream::<Reservation>::fresh(keys::reservation(&caller.tenant, id));
        let events = reservation.state.hold(
            id.clone(),
            caller.subject.clone(),
            lines.clone(),
            self.now_ms(),
            ttl_seconds,
        )?;
        let mut changes = Changes::new();
        self.reserve_lines(&mut changes, &caller.tenant, id, &lines)
            .await?;
        changes.append(&mut reservation, events, self.now_ms())?;
        let expires_at = reservation.state.held.as_ref().map_or(0, |h| h.expires_at);
        changes.put_read_model(
            keys::holds(keys::hold_shard(id)),
            keys::hold_sk(expires_at, &caller.tenant, id),
            &(),
        )?;
        Ok((changes, reservation))
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

    pub async fn release_reservation(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        id: &ReservationId,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Customer], "release a reservation")?;
        if let Some(reply) = self.replay(key).await? {
            return Ok(reply);
        }
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation = self.visible_reservation(caller, id).await?;
            let events = reservation.state.release()?;
            let changes = self
                .end_hold(&caller.tenant, &mut reservation, events)
                .await?;
            let view = reservation
                .state
                .held
                .as_ref()
                .map(ReservationView::from)
                .ok_or(AppError::NotFound("reservation"))?;
            if let Some(reply) = self.commit_with_reply(changes, key, 200, &view).await? {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    /// Ends a hold without an order (released or expired): the stock goes back.
    pub(super) async fn end_hold(
        &self,
        tenant: &TenantId,
        reservation: &mut Stream<Reservation>,
        events: Vec<ReservationEvent>,
    ) -> Result<Changes, AppError> {
        let (id, lines, expires_at) = match &reservation.state.held {
            Some(h) => (h.id.clone(), h.lines.clone(), h.expires_at),
            None => return Err(AppError::NotFound("reservation")),
        };
        let mut changes = Changes::new();
        self.release_lines(&mut changes, tenant, &id, &lines)
            .await?;
        changes.append(reservation, events, self.now_ms())?;
        changes.delete_read_model(
            keys::holds(keys::hold_shard(&id)),
            keys::hold_sk(expires_at, tenant, &id),
        );
        Ok(changes)
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

    /// Releases every hold whose time is up; returns how many it expired. Safe to run anywhere,
    /// any number of times at once: each expiry is a conditional commit.
    pub async fn expire_reservations(&self, batch: usize) -> Result<usize, AppError> {
        let now = self.now_ms();
        let mut expired = 0;
        for shard in 0..keys::HOLD_SHARDS {
            let pk = keys::holds(shard);
            let page = self
                .table
                .query(Query {
                    pk: &pk,
                    prefix: "",
                    after: None,
                    limit: batch,
                    descending: false,
                })
                .await?;
            for item in page.items {
                let mut parts = item.sk.splitn(3, '#');
                let (Some(at), Some(tenant), Some(id)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(StoreError::Failure(format!("bad hold key {}", item.sk)).into());
                };
                if at.parse::<i64>().map_or(true, |at| at > now) {
                    break;
                }
                let (tenant, id) = (TenantId::parse(tenant)?, ReservationId::parse(id)?);
                if self.expire_one(&tenant, &id, &pk, &item.sk).await? {
                    expired += 1;
                }
            }
        }
        Ok(expired)
    }

    async fn expire_one(
        &self,
        tenant: &TenantId,
        id: &ReservationId,
        hold_pk: &str,
        hold_sk: &str,
    ) -> Result<bool, AppError> {
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation =
                load::<Reservation, _>(&self.table, keys::reservation(tenant, id)).await?;
            let still_held = reservation
                .state
                .held
                .as_ref()
                .is_some_and(|h| h.status == ReservationStatus::Held);
            let changes = if still_held {
                let events = reservation.state.expire(self.now_ms())?;
                self.end_hold(tenant, &mut reservation, events).await?
            } else {
                // Ended some other way; only the queue entry is left.
                let mut changes = Changes::new();
                changes.delete_read_model(hold_pk.to_owned(), hold_sk.to_owned());
                changes
            };
            match changes.commit(&self.table).await {
                Ok(()) => return Ok(still_held),
                Err(crate::event_store::CommitError::StreamConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }
}
