use commerce_domain::{
    DomainError, Inventory, InventoryEvent, Line, Quantity, ReservationId, Sku, TenantId,
};
use serde::Deserialize;

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, PendingHead, Stream, load};
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
            let (mut stock, events) = self.decide_stock(&caller.tenant, sku, &decide).await?;
            self.append_stock(&mut changes, &caller.tenant, sku, &mut stock, events)?;
            let view = InventoryView::new(sku.clone(), &stock.stream.state, stock.stream.version);
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
        // What is stored: a head still on its way to disk may yet fail.
        let stock = load::<Inventory, _>(&self.table, keys::inventory(&caller.tenant, sku)).await?;
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

    /// The SKU's stock (called in its turn): the head the last queued transaction on it wrote,
    /// while one is in flight, else as stored.
    async fn read_stock(&self, tenant: &TenantId, sku: &Sku) -> Result<Stock, AppError> {
        let pk = keys::inventory(tenant, sku);
        if self.table.orders_submissions()
            && let Some(queued) = self.stock_queue.pending_head(&pk).await
        {
            return Ok(queued);
        }
        Ok(Stock {
            stream: load(&self.table, pk).await?,
            queued: None,
        })
    }

    /// Reads the SKU's stock (in its turn) and decides what happens to it. A decision on a head
    /// still on its way to disk that refuses, or changes nothing, may be wrong, as that
    /// transaction may yet fail: it waits until the SKU's queued transactions have settled and
    /// decides again on what is stored.
    async fn decide_stock(
        &self,
        tenant: &TenantId,
        sku: &Sku,
        decide: impl Fn(&Inventory) -> Result<Vec<InventoryEvent>, DomainError>,
    ) -> Result<(Stock, Vec<InventoryEvent>), AppError> {
        loop {
            let stock = self.read_stock(tenant, sku).await?;
            let decided = decide(&stock.stream.state);
            match (decided, &stock.queued) {
                (Ok(events), None) => return Ok((stock, events)),
                (Ok(events), Some(_)) if !events.is_empty() => return Ok((stock, events)),
                (_, Some(_)) => self.stock_queue.settled(&stock.stream.pk).await,
                (Err(refused), None) => return Err(refused.into()),
            }
        }
    }

    /// Appends stock events and keeps the low-stock list in step, in the same transaction.
    pub(super) fn append_stock(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        sku: &Sku,
        stock: &mut Stock,
        events: Vec<InventoryEvent>,
    ) -> Result<(), AppError> {
        let cleared = events
            .iter()
            .any(|e| matches!(e, InventoryEvent::LowStockCleared { .. }));
        let touched = !events.is_empty();
        changes.append(&mut stock.stream, events, self.now_ms())?;
        if touched && self.table.orders_submissions() {
            // This write's own token: whoever builds on it is committed only if it was.
            let token = uuid::Uuid::new_v4().to_string();
            changes.chain_head(&stock.stream.pk, token.clone(), stock.queued.clone())?;
            changes.offer_head(self.stock_queue.offer(&stock.stream, token));
        }
        let stock = &stock.stream;
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
            let (mut stock, events) = self
                .decide_stock(tenant, &line.sku, |stock| {
                    stock.reserve(&line.sku, reservation, line.quantity)
                })
                .await?;
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
            let (mut stock, events) = self
                .decide_stock(tenant, &line.sku, |stock| {
                    stock.release(reservation, line.quantity)
                })
                .await?;
            self.append_stock(changes, tenant, &line.sku, &mut stock, events)?;
        }
        Ok(())
    }
}

/// Commands that change the same SKU's stock in this process take turns, in arrival order,
/// from reading the stock until their transaction is queued (or, on a store that orders
/// nothing, committed). Optimistic concurrency alone stays correct, but on a hot SKU it makes
/// racing commands re-read and retry, and an unlucky one can lose every race; a queue makes a
/// flash sale fair and its latency bounded. Across processes (Lambdas) the conditional commit
/// remains the guard.
///
/// Where the store applies transactions in the order they were queued (SQLite's writer), a
/// command builds on the head the previous one queued, so commands on one SKU share a group
/// commit instead of taking one each. That head is only as good as the transaction under it,
/// so each such head write carries a token of its own, and a command built on it is
/// conditioned on that token rather than on a version (which another writer may also have
/// made): if the write under it fails, so does the command, and every later one on the chain,
/// and they try again. A failed write also withdraws its head: readers wait until every
/// transaction queued on the SKU has settled, then read the table. Heads are kept only while
/// transactions on the SKU are in flight; once settled, the table is read again.
#[derive(Debug)]
pub(super) struct StockQueue {
    lanes: Vec<std::sync::Arc<tokio::sync::Mutex<()>>>,
    heads: std::sync::Arc<std::sync::Mutex<Heads>>,
}

/// Stock heads by stream key.
type Heads = std::collections::HashMap<String, Head>;

/// A SKU's stock as a command read it.
#[derive(Debug)]
pub(super) struct Stock {
    pub(super) stream: Stream<Inventory>,
    /// Read from a transaction still queued: the token that transaction writes on the head,
    /// which the command's own write is conditioned on.
    queued: Option<String>,
}

#[derive(Debug)]
struct Head {
    /// The head every queued transaction on the SKU leads to, with the token its write
    /// carries; `None` once one of them failed.
    stock: Option<(u64, Inventory, String)>,
    /// Transactions on the SKU queued and not yet settled.
    queued: u32,
    /// Woken when the last queued transaction on the SKU settles.
    drained: std::sync::Arc<tokio::sync::Notify>,
}

impl StockQueue {
    const LANES: usize = 1024;

    pub(super) fn new() -> Self {
        Self {
            lanes: (0..Self::LANES)
                .map(|_| std::sync::Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            heads: std::sync::Arc::default(),
        }
    }

    /// The head the last queued command on `pk` left, while transactions on the SKU are in
    /// flight. While a failed one is being withdrawn, waits for them all to settle and answers
    /// `None`: the stored head is then the truth.
    async fn pending_head(&self, pk: &str) -> Option<Stock> {
        loop {
            let drained = {
                let heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
                let head = heads.get(pk)?;
                if let Some((version, stock, token)) = &head.stock {
                    return Some(Stock {
                        stream: Stream::at(pk.to_owned(), *version, stock.clone()),
                        queued: Some(token.clone()),
                    });
                }
                Self::wake_when_drained(head)
            };
            drained.await;
        }
    }

    /// Waits until no transaction on `pk` is queued.
    async fn settled(&self, pk: &str) {
        loop {
            let drained = {
                let heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
                match heads.get(pk) {
                    Some(head) if head.queued > 0 => Self::wake_when_drained(head),
                    _ => return,
                }
            };
            drained.await;
        }
    }

    /// Registered while the heads are locked, so the wake-up cannot be missed.
    fn wake_when_drained(head: &Head) -> std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>> {
        let mut notified = Box::pin(head.drained.clone().notified_owned());
        notified.as_mut().enable();
        notified
    }

    /// What a command that appended to `stock`, writing `token` on its head, offers the
    /// commands after it.
    fn offer(&self, stock: &Stream<Inventory>, token: String) -> Box<dyn PendingHead> {
        Box::new(OfferedHead {
            heads: self.heads.clone(),
            pk: stock.pk.clone(),
            base: stock.loaded_version(),
            version: stock.version,
            token,
            stock: Some(stock.state.clone()),
            ordered: false,
            committed: false,
        })
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

#[derive(Debug)]
struct OfferedHead {
    heads: std::sync::Arc<std::sync::Mutex<Heads>>,
    pk: String,
    /// The version it was built on.
    base: u64,
    version: u64,
    token: String,
    /// Taken when offered.
    stock: Option<Inventory>,
    ordered: bool,
    committed: bool,
}

impl PendingHead for OfferedHead {
    fn ordered(&mut self) {
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        self.ordered = true;
        let offered = self
            .stock
            .take()
            .map(|stock| (self.version, stock, self.token.clone()));
        match heads.get_mut(&self.pk) {
            // Nothing queued on the SKU: it was built on the stored head (or on a queued one
            // that has settled since; if that failed, so does this, on its condition).
            None => {
                heads.insert(
                    self.pk.clone(),
                    Head {
                        stock: offered,
                        queued: 1,
                        drained: std::sync::Arc::default(),
                    },
                );
            }
            Some(head) => {
                head.queued += 1;
                // Built on the head before it (in the SKU's turn), unless that one was
                // withdrawn meanwhile: then this transaction fails too, and offers nothing.
                let on_it = matches!(head.stock, Some((version, ..)) if version == self.base);
                head.stock = if on_it { offered } else { None };
            }
        }
    }

    fn settled(mut self: Box<Self>, committed: bool) {
        self.committed = committed;
    }
}

/// Settles the head when its outcome is known, or as failed if it never will be (the task
/// that waited for it was dropped).
impl Drop for OfferedHead {
    fn drop(&mut self) {
        if !self.ordered {
            return;
        }
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let Some(head) = heads.get_mut(&self.pk) else {
            return;
        };
        head.queued = head.queued.saturating_sub(1);
        if !self.committed {
            head.stock = None;
        }
        if head.queued == 0 {
            // Settled: the table is the truth again, for whoever reads next.
            head.drained.notify_waiters();
            heads.remove(&self.pk);
        }
    }
}
