//! The shop's use cases. Each loads the streams it needs, lets the domain decide, and commits the
//! resulting events, read models and idempotency record in one transaction, retrying from a
//! fresh read when another command got there first.

mod cancellation;
mod catalog;
mod orders;
mod placement;
mod reports;
mod reservations;
mod stock;
mod sweep;

use commerce_domain::{CustomerId, ReservationId, TenantId};
use serde::Serialize;

use std::time::Duration;

use serde::de::DeserializeOwned;

use commerce_domain::HoldLimits;

use crate::AppError;
use crate::clock::Clock;
use crate::cursor::Cursors;
use crate::event_store::{Changes, CommitError, Origin};
use crate::idempotency::{self, Begin, Guard, IdempotencyKey, Outcome};
use crate::payments::PaymentGateway;
use crate::table::{Query, StoreError, Table};
use crate::views::ListPage;

pub use crate::idempotency::Reply;
pub use cancellation::{
    CancelOrder, CancellationTask, PAYMENT_REFUSED, REFUSED, STALE, StepAnswer, StepError,
    TRANSIENT,
};
pub use catalog::NewProduct;
pub use placement::PlaceOrder;
pub use reports::{AuditQuery, MAX_AUDIT_DAYS, MAX_REPORT_DAYS};
pub use reservations::NewReservation;
pub use stock::{StockLevel, StockReceipt};
pub use sweep::SweepSummary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Buys: reservations and their own orders.
    Customer,
    /// Runs the catalog and stock.
    Admin,
    /// Reads everything in its shop.
    Ops,
}

impl Role {
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "customer" => Some(Role::Customer),
            "admin" => Some(Role::Admin),
            "ops" => Some(Role::Ops),
            _ => None,
        }
    }
}

/// Who is asking, from verified token claims, and in which request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub subject: CustomerId,
    pub roles: Vec<Role>,
    /// The request's id, carried into every event it records.
    pub correlation_id: String,
}

impl Caller {
    /// What the events this caller's request records say about where they came from.
    pub fn origin(&self) -> Origin {
        Origin {
            actor: self.subject.to_string(),
            correlation_id: self.correlation_id.clone(),
            causation_id: None,
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    fn require(&self, any_of: &[Role], action: &'static str) -> Result<(), AppError> {
        if any_of.iter().any(|role| self.has(*role)) {
            Ok(())
        } else {
            Err(AppError::Forbidden(action))
        }
    }
}

#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// How long an order's own hold on stock lasts while payment is authorized. A placement
    /// that stops half way keeps the stock no longer than this.
    pub order_hold_seconds: u32,
    /// Attempts at a commit that keeps losing races before answering "contention".
    pub commit_attempts: usize,
    /// How long a command may keep retrying lost races, from its first attempt.
    pub commit_deadline_ms: u64,
    /// Attempts at a commit the store failed, after payment was authorized.
    pub store_attempts: u32,
    /// Attempts at the payment provider when it is unavailable.
    pub payment_attempts: u32,
    /// First back-off between payment attempts; doubles each time.
    pub payment_backoff_ms: u64,
    /// The longest an authorization (all attempts) may take before it counts as unavailable.
    pub payment_deadline_ms: u64,
    /// How long a claim on an idempotency key holds without news from its holder. It must
    /// outlast the payment deadline, so a claim is only taken over from a run that stopped.
    pub lease_ms: i64,
    /// How long a duplicate request waits for the first run to finish before answering 409.
    pub duplicate_wait_ms: u64,
    /// How long a placement may stay unfinished (a retry with its key may resume it meanwhile)
    /// before the reconciler voids its authorization and gives its key back.
    pub reconcile_after_ms: i64,
    /// Most holds and units one customer may keep at once.
    pub limits: HoldLimits,
    /// Seals page cursors; every process serving the same lists needs the same key.
    pub cursors: Cursors,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            order_hold_seconds: 120,
            commit_attempts: 200,
            commit_deadline_ms: 4_000,
            store_attempts: 5,
            payment_attempts: 3,
            payment_backoff_ms: 50,
            payment_deadline_ms: 10_000,
            lease_ms: 30_000,
            duplicate_wait_ms: 3_000,
            reconcile_after_ms: 120_000,
            limits: HoldLimits::default(),
            cursors: Cursors::ephemeral(),
        }
    }
}

#[derive(Debug)]
pub struct Shop<T, P, C> {
    table: T,
    payments: P,
    clock: C,
    config: ShopConfig,
    stock_turns: stock::StockTurns,
    short_skus: std::sync::Arc<stock::ShortSkus>,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    pub fn new(table: T, payments: P, clock: C, config: ShopConfig) -> Self {
        Self {
            table,
            payments,
            clock,
            config,
            stock_turns: stock::StockTurns::new(),
            short_skus: std::sync::Arc::default(),
        }
    }

    /// The store the shop runs on.
    pub fn table(&self) -> &T {
        &self.table
    }

    /// Store reachable: the health check.
    pub async fn health(&self) -> Result<(), AppError> {
        Ok(self.table.ping().await?)
    }

    fn attempts(&self) -> Attempts {
        Attempts {
            made: 0,
            limit: self.config.commit_attempts,
            until: std::time::Instant::now()
                + std::time::Duration::from_millis(self.config.commit_deadline_ms),
        }
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The expiry queue partition this store keeps the hold's entry in ([`Table::shards`]).
    fn hold_queue(&self, id: &ReservationId) -> String {
        let shards = self.table.shards(crate::keys::HOLD_SHARDS);
        crate::keys::holds(crate::keys::hold_shard(id, shards))
    }

    /// The reconciler's queue partition this store keeps the attempt's entry in, by the
    /// partition of its idempotency record.
    fn attempt_queue(&self, record_pk: &str) -> String {
        let shards = self.table.shards(crate::keys::ATTEMPT_SHARDS);
        crate::keys::attempts(crate::keys::attempt_shard(record_pk, shards))
    }

    /// One page of a list partition, each item a stored view. Cursors are sealed to the list.
    async fn list<V: serde::de::DeserializeOwned>(
        &self,
        pk: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
        descending: bool,
    ) -> Result<ListPage<V>, AppError> {
        self.list_sharded(pk, &[pk.to_owned()], cursor, limit, descending)
            .await
    }

    /// One list kept in several partitions (`shards`, each sorted by the same key): each
    /// shard's next page after the cursor, merged ([`Shop::query_merged`]). The cursor is
    /// sealed to `list`, the list's own name; a page may come back short of `limit` with a
    /// cursor.
    async fn list_sharded<V: serde::de::DeserializeOwned>(
        &self,
        list: &str,
        shards: &[String],
        cursor: Option<&str>,
        limit: Option<usize>,
        descending: bool,
    ) -> Result<ListPage<V>, AppError> {
        let after = cursor
            .map(|c| self.config.cursors.open(list, c))
            .transpose()?;
        let page = self
            .query_merged(
                shards,
                "",
                after.as_deref(),
                page_limit(limit),
                descending,
                false,
            )
            .await?;
        let items = page
            .items
            .iter()
            .map(|item| {
                serde_json::from_slice(&item.data)
                    .map_err(|e| StoreError::Failure(format!("corrupt list item in {list}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ListPage {
            items,
            next_cursor: page.next.map(|next| self.config.cursors.seal(list, &next)),
        })
    }

    /// The next items after `after` of partitions sorted alike, read at once and merged
    /// ([`Page::merge`](crate::table::Page::merge)): an item found in several is kept from the
    /// first of `pks` that has it. One partition is one query.
    pub(crate) async fn query_merged(
        &self,
        pks: &[String],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        descending: bool,
        index: bool,
    ) -> Result<crate::table::Page, StoreError> {
        let query = |pk| Query {
            pk,
            prefix,
            after,
            limit,
            descending,
        };
        let read = |pk| async move {
            if index {
                self.table.query_index(query(pk)).await
            } else {
                self.table.query(query(pk)).await
            }
        };
        if let [pk] = pks {
            return read(pk).await;
        }
        let pages = futures_util::future::try_join_all(pks.iter().map(|pk| read(pk))).await?;
        Ok(if index {
            crate::table::Page::merge_index(pages, limit, descending)
        } else {
            crate::table::Page::merge(pages, limit, descending)
        })
    }

    /// What an earlier use of `key` means for this request (see [`idempotency`]).
    async fn begin<S: DeserializeOwned>(
        &self,
        key: Option<&IdempotencyKey>,
    ) -> Result<Begin<S>, AppError> {
        let wait = Duration::from_millis(self.config.duplicate_wait_ms);
        idempotency::begin(&self.table, &self.clock, key, wait).await
    }

    /// Commits a one-transaction command with its answer under its key. `Ok(None)` means a
    /// stream moved under us: read again and retry.
    async fn commit_answer(
        &self,
        guard: &mut Guard<()>,
        key: Option<&IdempotencyKey>,
        changes: Changes,
        status: u16,
        view: &impl Serialize,
    ) -> Result<Option<Reply>, AppError> {
        let reply = Reply {
            status,
            body: serde_json::to_value(view).map_err(|e| StoreError::Failure(e.to_string()))?,
        };
        let outcome = Outcome::Done(reply.clone());
        match guard
            .finish(&self.table, changes, outcome, self.now_ms())
            .await
        {
            Ok(()) => Ok(Some(reply)),
            Err(CommitError::StreamConflict) => Ok(None),
            // The same key was used between our look and our commit: answer as that run did.
            Err(CommitError::KeyTaken) => match self.begin::<()>(key).await? {
                Begin::Replay(outcome) => outcome.into_reply().map(Some),
                Begin::Fresh(_) => Err(AppError::IdempotencyInFlight),
            },
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }
}

/// Tries at a commit that may lose a race. After a loss it waits a little, a random share of a
/// window that grows with each loss, so racing commands spread out instead of colliding again.
#[derive(Debug)]
/// Tries at a commit that lost a race: each waits a random time up to a window that doubles
/// from [`Attempts::FIRST_WINDOW_US`] to [`Attempts::MAX_WINDOW_US`] ("full jitter"), so racers
/// spread out instead of colliding again, and none waits past the command's deadline.
struct Attempts {
    made: usize,
    limit: usize,
    until: std::time::Instant,
}

impl Attempts {
    const FIRST_WINDOW_US: u64 = 500;
    const MAX_WINDOW_US: u64 = 25_000;

    async fn next(&mut self) -> bool {
        if self.made >= self.limit {
            return false;
        }
        if self.made > 0 {
            let doublings = u32::try_from(self.made - 1).unwrap_or(u32::MAX).min(16);
            let window_us = (Self::FIRST_WINDOW_US << doublings).min(Self::MAX_WINDOW_US);
            let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % window_us;
            let wait = std::time::Duration::from_micros(jitter);
            if std::time::Instant::now() + wait > self.until {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
        self.made += 1;
        true
    }
}

/// Page size asked for by a client, bounded.
pub fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(20).clamp(1, 100)
}
