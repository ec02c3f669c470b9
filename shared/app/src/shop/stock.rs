use commerce_domain::{
    DomainError, Inventory, InventoryEvent, Line, Quantity, ReservationId, Sku, TenantId,
};
use serde::Deserialize;

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, Stream, load};
use crate::idempotency::Begin;
use crate::keys;
use crate::views::{InventoryView, ListPage};
use crate::{AppError, Clock, IdempotencyKey, PaymentGateway, Table};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockLevel {
    /// Units counted on the shelf.
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    pub on_hand: u64,
    /// Alert when fewer units than this are available (default 0: never).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 1_000_000_000_000_u64))]
    pub low_stock_threshold: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockReceipt {
    pub quantity: Quantity,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Sets the counted stock and the alert threshold (a PUT: the same body twice changes nothing).
    pub async fn set_stock(
        &self,
        caller: &Caller,
        sku: &Sku,
        level: StockLevel,
    ) -> Result<Reply, AppError> {
        self.change_stock(caller, None, sku, |stock| {
            stock.set_level(level.on_hand, level.low_stock_threshold)
        })
        .await
    }

    pub async fn receive_stock(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        sku: &Sku,
        receipt: StockReceipt,
    ) -> Result<Reply, AppError> {
        self.change_stock(caller, key, sku, |stock| stock.receive(receipt.quantity))
            .await
    }

    /// An admin's change to one SKU's stock: `decide` says what happens to the stock as it is now.
    async fn change_stock(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        sku: &Sku,
        decide: impl Fn(&Inventory) -> Result<Vec<InventoryEvent>, DomainError>,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Admin], "change stock")?;
        let mut guard = match self.begin::<()>(key).await? {
            Begin::Replay(outcome) => return outcome.into_reply(),
            Begin::Fresh(guard) => guard,
        };
        self.product(caller, sku).await?;
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut changes = Changes::new(caller.origin());
            self.stock_queue
                .enter(&mut changes, &caller.tenant, std::iter::once(sku))
                .await;
            let mut stock = self.load_stock(&caller.tenant, sku).await?;
            let events = decide(&stock.state)?;
            self.append_stock(&mut changes, &caller.tenant, sku, &mut stock, events)?;
            let view = InventoryView::new(sku.clone(), &stock.state, stock.version);
            if let Some(reply) = self
                .commit_answer(&mut guard, key, changes, 200, &view)
                .await?
            {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    pub async fn inventory(&self, caller: &Caller, sku: &Sku) -> Result<InventoryView, AppError> {
        caller.require(&[Role::Admin, Role::Ops], "read stock")?;
        self.product(caller, sku).await?;
        let stock = self.load_stock(&caller.tenant, sku).await?;
        Ok(InventoryView::new(sku.clone(), &stock.state, stock.version))
    }

    /// SKUs whose available stock is below their threshold, in SKU order.
    pub async fn low_stock(
        &self,
        caller: &Caller,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage<InventoryView>, AppError> {
        caller.require(&[Role::Admin, Role::Ops], "read stock")?;
        let pk = keys::low_stock(&caller.tenant);
        self.list(&pk, cursor, limit, false).await
    }

    pub(super) async fn load_stock(
        &self,
        tenant: &TenantId,
        sku: &Sku,
    ) -> Result<Stream<Inventory>, AppError> {
        Ok(load(&self.table, keys::inventory(tenant, sku)).await?)
    }

    /// Appends stock events and keeps the low-stock list in step, in the same transaction.
    pub(super) fn append_stock(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        sku: &Sku,
        stock: &mut Stream<Inventory>,
        events: Vec<InventoryEvent>,
    ) -> Result<(), AppError> {
        let cleared = events
            .iter()
            .any(|e| matches!(e, InventoryEvent::LowStockCleared { .. }));
        let touched = !events.is_empty();
        changes.append(stock, events, self.now_ms())?;
        if stock.state.low_stock_flagged && touched {
            let view = InventoryView::new(sku.clone(), &stock.state, stock.version);
            changes.put_read_model(keys::low_stock(tenant), sku.to_string(), &view)?;
        } else if cleared {
            changes.delete_read_model(keys::low_stock(tenant), sku.to_string());
        }
        Ok(())
    }

    /// Takes every line's stock for `reservation`, or fails with the first line that is short.
    pub(super) async fn reserve_lines(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        reservation: &ReservationId,
        lines: &[Line],
    ) -> Result<(), AppError> {
        self.stock_queue
            .enter(changes, tenant, lines.iter().map(|l| &l.sku))
            .await;
        for line in lines {
            let mut stock = self.load_stock(tenant, &line.sku).await?;
            let events = stock.state.reserve(&line.sku, reservation, line.quantity)?;
            self.append_stock(changes, tenant, &line.sku, &mut stock, events)?;
        }
        Ok(())
    }

    /// Puts every line's reserved stock back.
    pub(super) async fn release_lines(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        reservation: &ReservationId,
        lines: &[Line],
    ) -> Result<(), AppError> {
        self.stock_queue
            .enter(changes, tenant, lines.iter().map(|l| &l.sku))
            .await;
        for line in lines {
            let mut stock = self.load_stock(tenant, &line.sku).await?;
            let events = stock.state.release(reservation, line.quantity)?;
            self.append_stock(changes, tenant, &line.sku, &mut stock, events)?;
        }
        Ok(())
    }
}

/// Commands that change the same SKU's stock in this process take turns, in arrival order,
/// from reading the stock to committing. Optimistic concurrency alone stays correct, but on a
/// hot SKU it makes racing commands re-read and retry, and an unlucky one can lose every race;
/// a queue makes a flash sale fair and its latency bounded. Across processes (Lambdas) the
/// conditional commit remains the guard.
#[derive(Debug)]
pub(super) struct StockQueue {
    lanes: Vec<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl StockQueue {
    const LANES: usize = 1024;

    pub(super) fn new() -> Self {
        Self {
            lanes: (0..Self::LANES)
                .map(|_| std::sync::Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }
    }

    /// Waits for the turn of every given SKU; the turn is kept by `changes` until they commit.
    /// Lanes are taken in one global order, so two commands never wait on each other.
    pub(super) async fn enter<'a>(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        skus: impl Iterator<Item = &'a Sku>,
    ) {
        if changes.holds_locks() {
            return;
        }
        let mut lanes: Vec<usize> = skus
            .map(|sku| {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                (tenant, sku).hash(&mut hasher);
                (hasher.finish() % Self::LANES as u64) as usize
            })
            .collect();
        lanes.sort_unstable();
        lanes.dedup();
        for lane in lanes {
            if let Some(lock) = self.lanes.get(lane) {
                changes.keep_lock(lock.clone().lock_owned().await);
            }
        }
    }
}
