use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use commerce_domain::{
    Bound, DomainError, Inventory, Line, Quantity, Sku, Stock, StockChange, TenantId,
};
use serde::Deserialize;

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, Purpose, load};
use crate::idempotency::Begin;
use crate::keys;
use crate::table::{Condition, Expect, StoreError, Write};
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
        decide: impl Fn(&Stock) -> Result<StockChange, DomainError>,
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
            self.stock_turns
                .enter(&mut changes, &caller.tenant, std::iter::once(sku))
                .await;
            let after = self
                .change_exactly(&mut changes, &caller.tenant, sku, &decide)
                .await?;
            let view = InventoryView::new(sku.clone(), &after);
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
        let stock = self.counted(&caller.tenant, sku).await?;
        Ok(InventoryView::new(sku.clone(), &stock))
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

    /// The SKU's stock as stored: its stock item, or for a SKU stored before there were
    /// stock items, the figures its stream's head folded to.
    async fn counted(&self, tenant: &TenantId, sku: &Sku) -> Result<Stock, AppError> {
        let pk = keys::inventory(tenant, sku);
        if let Some(item) = self.table.get(&pk, keys::STOCK).await? {
            return stock_of(&pk, &item.data);
        }
        let history = load::<Inventory, _>(&self.table, pk).await?;
        Ok(Stock::from_history(&history.state, history.version))
    }

    /// Reads the SKU's stock, decides on it, and adds the change to `changes`, to hold only if
    /// the stock is still as read. Returns the stock the change leads to.
    async fn change_exactly(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        sku: &Sku,
        decide: impl Fn(&Stock) -> Result<StockChange, DomainError>,
    ) -> Result<Stock, AppError> {
        let pk = keys::inventory(tenant, sku);
        // The stream first, then the figures: the events this change appends are conditioned
        // on the stream as read, so any count, receipt or alert committed after the figures
        // were read fails this change, which decided on figures from before it.
        let mut stream = load::<Inventory, _>(&self.table, pk.clone()).await?;
        // Without an item of its own yet, the stock is what the stream folded to.
        let (stock, itemless) = match self.table.get(&pk, keys::STOCK).await? {
            Some(item) => (stock_of(&pk, &item.data)?, false),
            None => (Stock::from_history(&stream.state, stream.version), true),
        };
        let change = decide(&stock)?;
        let after = change.applied_to(&stock);
        if change.add.is_empty() {
            return Ok(after);
        }
        let (add, expect) = if itemless {
            // No stock item yet: it is made with the figures after the change, decided on the
            // head as read. An older build may still be moving stock on that head, so the
            // head must be as read too (appending events conditions it anyway).
            if change.events.is_empty() {
                let condition = match stream.version {
                    0 => Condition::Absent,
                    v => Condition::VersionIs(v),
                };
                changes.push(
                    Purpose::StreamHead,
                    Write::Check {
                        pk: pk.clone(),
                        sk: keys::HEAD.to_owned(),
                        condition,
                    },
                );
            }
            (figures(&after), vec![Expect::Absent])
        } else {
            (
                named(&change.add),
                change.bounds.iter().map(expect).collect(),
            )
        };
        changes.add_to(pk.clone(), keys::STOCK.to_owned(), add, expect);
        changes.append(&mut stream, change.events, self.now_ms())?;
        // Every change to or from a low SKU is made this way, so its entry stays current.
        if after.is_low() {
            let view = InventoryView::new(sku.clone(), &after);
            changes.put_read_model(keys::low_stock(tenant), sku.to_string(), &view)?;
        } else if stock.is_low() {
            changes.delete_read_model(keys::low_stock(tenant), sku.to_string());
        }
        Ok(after)
    }

    /// Takes every line's stock, or fails with the first line that is short.
    pub(super) async fn reserve_lines(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        lines: &[Line],
    ) -> Result<(), AppError> {
        self.move_lines(
            changes,
            tenant,
            lines,
            Stock::reserve_unread,
            |stock, line| stock.reserve(&line.sku, line.quantity),
        )
        .await
    }

    /// Puts every line's reserved stock back.
    pub(super) async fn release_lines(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        lines: &[Line],
    ) -> Result<(), AppError> {
        self.move_lines(
            changes,
            tenant,
            lines,
            Stock::release_unread,
            |stock, line| stock.release(line.quantity),
        )
        .await
    }

    /// Moves every line's stock: unread where the SKU had room when last tried, exactly on
    /// what is stored where it did not. An exact move that finds room again clears the note.
    async fn move_lines(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        lines: &[Line],
        unread: fn(Quantity) -> StockChange,
        exact: impl Fn(&Stock, &Line) -> Result<StockChange, DomainError>,
    ) -> Result<(), AppError> {
        let short: Vec<&Line> = lines
            .iter()
            .filter(|line| self.short_skus.noted(&keys::inventory(tenant, &line.sku)))
            .collect();
        self.stock_turns
            .enter(changes, tenant, short.iter().map(|line| &line.sku))
            .await;
        for line in lines {
            let pk = keys::inventory(tenant, &line.sku);
            if short.iter().any(|s| s.sku == line.sku) {
                let after = self
                    .change_exactly(changes, tenant, &line.sku, |stock| exact(stock, line))
                    .await?;
                // Room for another move like this one: the next may go unread again.
                if after.has_room_for(line.quantity) {
                    self.short_skus.clear(&pk);
                }
            } else {
                let change = unread(line.quantity);
                changes.add_unread(
                    pk,
                    keys::STOCK.to_owned(),
                    named(&change.add),
                    change.bounds.iter().map(expect).collect(),
                    self.short_skus.clone(),
                );
            }
        }
        Ok(())
    }
}

fn stock_of(pk: &str, data: &[u8]) -> Result<Stock, AppError> {
    Ok(serde_json::from_slice(data)
        .map_err(|e| StoreError::Failure(format!("stock of {pk}: {e}")))?)
}

fn named(add: &[(commerce_domain::Figure, i64)]) -> Vec<(String, i64)> {
    add.iter()
        .map(|(figure, n)| (figure.name().to_owned(), *n))
        .collect()
}

fn figures(stock: &Stock) -> Vec<(String, i64)> {
    use commerce_domain::Figure;
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    named(&[
        (Figure::Available, signed(stock.available)),
        (Figure::Reserved, signed(stock.reserved)),
        (Figure::Headroom, stock.headroom),
        (Figure::Changes, signed(stock.changes)),
    ])
}

fn expect(bound: &Bound) -> Expect {
    match *bound {
        Bound::AtLeast(figure, n) => Expect::AtLeast(figure.name().to_owned(), n),
        Bound::Is(figure, n) => Expect::Is(figure.name().to_owned(), n),
    }
}

/// SKUs this process last found without room for an unread move (out of stock, near or below
/// their threshold, or without a stock item yet): their next moves read the stock first, so a
/// sold-out SKU answers at once instead of failing a commit each time. The note is a hint: a
/// wrong one costs a read or a retry, never a wrong answer.
#[derive(Debug, Default)]
pub(super) struct ShortSkus {
    noted: Mutex<HashSet<String>>,
}

impl ShortSkus {
    /// Most SKUs noted at once; past it the notes start afresh.
    const MOST: usize = 4096;

    fn noted(&self, pk: &str) -> bool {
        self.noted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(pk)
    }

    fn clear(&self, pk: &str) {
        self.noted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pk);
    }
}

impl crate::event_store::Shortfall for ShortSkus {
    fn short(&self, pk: &str) {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        if noted.len() >= Self::MOST {
            noted.clear();
        }
        noted.insert(pk.to_owned());
    }
}

/// Exact changes to the same SKU's stock in this process take turns, in arrival order, from
/// reading the stock until their commit is done: each holds only on the figures it read, so
/// racing ones would fail each other and retry, and an unlucky one could lose every race.
/// Unread moves take no turn: the store checks their bounds as it applies them. Across
/// processes (Lambdas) the conditions remain the guard.
#[derive(Debug)]
pub(super) struct StockTurns {
    lanes: Vec<Arc<tokio::sync::Mutex<()>>>,
}

impl StockTurns {
    const LANES: usize = 1024;

    pub(super) fn new() -> Self {
        Self {
            lanes: (0..Self::LANES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }
    }

    /// Waits for the turn of every given SKU; `changes` keeps the turns until their commit is
    /// done. Lanes are taken in one global order, so two commands never wait on each other.
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
