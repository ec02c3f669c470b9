//! The shop's use cases. Each loads the streams it needs, lets the domain decide, and commits the
//! resulting events, read models and idempotency record in one transaction, retrying from a
//! fresh read when another command got there first.

mod catalog;
mod orders;
mod reservations;
mod stock;

use commerce_domain::{CustomerId, TenantId};
use serde::Serialize;

use crate::AppError;
use crate::clock::{Clock, now_seconds};
use crate::event_store::{Changes, CommitError};
use crate::idempotency::{self, IdempotencyKey, Prior, StoredResponse};
use crate::payments::PaymentGateway;
use crate::table::{Query, StoreError, Table};
use crate::views::ListPage;

pub use catalog::NewProduct;
pub use orders::PlaceOrder;
pub use reservations::NewReservation;
pub use stock::{StockLevel, StockReceipt};

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

/// Who is asking, from verified token claims.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub subject: CustomerId,
    pub roles: Vec<Role>,
}

impl Caller {
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
    /// How long an order's own hold on stock lasts while payment is authorized.
    pub order_hold_seconds: u32,
    /// Attempts at a commit that keeps losing races before answering "contention".
    pub commit_attempts: usize,
    /// Attempts at the payment provider when it is unavailable.
    pub payment_attempts: u32,
    /// First back-off between payment attempts; doubles each time.
    pub payment_backoff_ms: u64,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            order_hold_seconds: 600,
            commit_attempts: 200,
            payment_attempts: 3,
            payment_backoff_ms: 50,
        }
    }
}

/// A state-changing command's answer: what to send, and what a replay sends again.
pub type Reply = StoredResponse;

#[derive(Debug)]
pub struct Shop<T, P, C> {
    table: T,
    payments: P,
    clock: C,
    config: ShopConfig,
    stock_queue: stock::StockQueue,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    pub fn new(table: T, payments: P, clock: C, config: ShopConfig) -> Self {
        Self {
            table,
            payments,
            clock,
            config,
            stock_queue: stock::StockQueue::new(),
        }
    }

    /// Store reachable: the health check.
    pub async fn health(&self) -> Result<(), AppError> {
        Ok(self.table.ping().await?)
    }

    fn attempts(&self) -> Attempts {
        Attempts {
            made: 0,
            limit: self.config.commit_attempts,
        }
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// One page of a list partition, each item a stored view.
    async fn list<V: serde::de::DeserializeOwned>(
        &self,
        pk: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
        descending: bool,
    ) -> Result<ListPage<V>, AppError> {
        let page = self
            .table
            .query(Query {
                pk,
                prefix: "",
                after: cursor,
                limit: page_limit(limit),
                descending,
            })
            .await?;
        let items = page
            .items
            .iter()
            .map(|item| {
                serde_json::from_slice(&item.data)
                    .map_err(|e| StoreError::Failure(format!("corrupt list item in {pk}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(ListPage {
            items,
            next_cursor: page.next,
        })
    }

    /// The stored answer if `key` was used for this very request before.
    async fn replay(&self, key: Option<&IdempotencyKey>) -> Result<Option<Reply>, AppError> {
        match key {
            Some(key) => match idempotency::prior(&self.table, key).await? {
                Prior::Replay(reply) => Ok(Some(reply)),
                Prior::Fresh => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Commits a single-transaction command with its response. `Ok(None)` means a stream moved
    /// under us: read again and retry.
    async fn commit_with_reply(
        &self,
        mut changes: Changes,
        key: Option<&IdempotencyKey>,
        status: u16,
        view: &impl Serialize,
    ) -> Result<Option<Reply>, AppError> {
        let reply = Reply {
            status,
            body: serde_json::to_value(view).map_err(|e| StoreError::Failure(e.to_string()))?,
        };
        if let Some(key) = key {
            idempotency::complete(&mut changes, key, reply.clone(), false, now_seconds())?;
        }
        if changes.is_empty() {
            return Ok(Some(reply));
        }
        match changes.commit(&self.table).await {
            Ok(()) => Ok(Some(reply)),
            Err(CommitError::StreamConflict) => Ok(None),
            // Someone used the key between our check and our commit: answer as they were.
            Err(CommitError::KeyTaken) => match self.replay(key).await? {
                Some(reply) => Ok(Some(reply)),
                None => Err(AppError::IdempotencyInFlight),
            },
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }
}

/// Tries at a commit that may lose a race. After a loss it waits a little, a random share of a
/// window that grows with each loss, so racing commands spread out instead of colliding again.
#[derive(Debug)]
struct Attempts {
    made: usize,
    limit: usize,
}

impl Attempts {
    async fn next(&mut self) -> bool {
        if self.made >= self.limit {
            return false;
        }
        if self.made > 0 {
            let window_us = 100 * (self.made.min(16) as u64);
            let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % window_us.max(1);
            tokio::time::sleep(std::time::Duration::from_micros(jitter)).await;
        }
        self.made += 1;
        true
    }
}

/// Page size asked for by a client, bounded.
pub fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(20).clamp(1, 100)
}
