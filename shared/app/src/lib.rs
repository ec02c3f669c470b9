//! Use cases of the shop over small ports.
//!
//! The one storage port is [`Table`]: DynamoDB's item model cut down to what the shop needs (get,
//! query one partition, transactional conditional writes). The event store, idempotency and read
//! models are built on it here, once, so the SQLite and DynamoDB adapters only translate items and
//! conditions, and one [`contract`] suite proves both behave the same.

pub mod audit;
pub mod bus;
pub mod clock;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
pub mod cursor;
mod error;
pub mod event_store;
pub mod executions;
pub mod idempotency;
pub mod keys;
pub mod metrics;
pub mod outbox;
pub mod payments;
pub mod projection;
pub mod saga;
pub mod shop;
pub mod table;
pub mod views;

pub use clock::{Clock, SystemClock};
pub use commerce_domain::HoldLimits;
pub use cursor::Cursors;
pub use error::AppError;
pub use idempotency::{IdempotencyKey, Outcome, Reply};
pub use payments::{PaymentError, PaymentGateway, SandboxPayments};
pub use shop::{Caller, PlaceOrder, Role, Shop, ShopConfig};
pub use table::{Condition, Expect, Item, Page, Query, StoreError, Table, Write};

/// Every consumer's queue on the topic: the projections' and the saga starter's.
pub fn subscriptions() -> Vec<bus::Subscription> {
    let mut all = projection::subscriptions();
    all.push(saga::starter_subscription());
    all
}
