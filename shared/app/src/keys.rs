//! Every key the shop writes, in one place. Each starts with the tenant, so no query can cross
//! shops, or with [`PERSONAL`] then the tenant, for personal data. `#` separates parts; no
//! identifier may contain it.

use commerce_domain::{CustomerId, OrderId, ReservationId, Sku, TenantId};

use crate::table::PERSONAL;

pub const HEAD: &str = "head";
pub const EVENT_PREFIX: &str = "event#";
/// A SKU's stock figures, beside its stream's head (docs/adr/0013).
pub const STOCK: &str = "stock";

pub fn event_sk(version: u64) -> String {
    format!("{EVENT_PREFIX}{version:012}")
}

/// The partition of an aggregate's event stream.
pub fn stream(tenant: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{tenant}#{aggregate_type}#{aggregate_id}")
}

/// Tenant, aggregate type and id of a stream's partition, the inverse of [`stream`].
pub fn stream_parts(pk: &str) -> Option<(&str, &str, &str)> {
    let mut parts = pk.splitn(3, '#');
    let tenant = parts.next().filter(|p| !p.is_empty())?;
    let aggregate_type = parts.next().filter(|p| !p.is_empty())?;
    let id = parts.next().filter(|p| !p.is_empty() && !p.contains('#'))?;
    Some((tenant, aggregate_type, id))
}

pub fn product(tenant: &TenantId, sku: &Sku) -> String {
    stream(tenant.as_str(), "product", sku.as_str())
}

pub fn inventory(tenant: &TenantId, sku: &Sku) -> String {
    stream(tenant.as_str(), "inventory", sku.as_str())
}

pub fn reservation(tenant: &TenantId, id: &ReservationId) -> String {
    stream(tenant.as_str(), "reservation", id.as_str())
}

pub fn order(tenant: &TenantId, id: &OrderId) -> String {
    stream(tenant.as_str(), "order", id.as_str())
}

/// Catalog listing: one item per product, sort key = SKU.
pub fn catalog(tenant: &TenantId) -> String {
    format!("{tenant}#catalog")
}

/// SKUs whose available stock is below their threshold, sort key = SKU.
pub fn low_stock(tenant: &TenantId) -> String {
    format!("{tenant}#low-stock")
}

/// Alerts for operators (cancellations that need attention), sort key = time then order.
pub fn alerts(tenant: &TenantId) -> String {
    format!("{tenant}#alerts")
}

/// One customer's orders, sort key = order id (time-ordered).
pub fn customer_orders(tenant: &TenantId, customer: &CustomerId) -> String {
    format!("{tenant}#customer#{customer}#orders")
}

/// The holds one customer has open, checked against the shop's limits.
pub fn customer_holds(tenant: &TenantId, customer: &CustomerId) -> String {
    format!("{tenant}#customer#{customer}#holds")
}

/// All orders of a shop, for operators, spread over up to [`ORDER_LIST_SHARDS`] partitions by
/// order id (see [`crate::Table::shards`]): on DynamoDB one partition takes about 1,000 write
/// units a second, and every order of the shop is written to this list. Sort key = order id
/// (time-ordered); a page merges the shards.
pub const ORDER_LIST_SHARDS: u32 = 16;

pub fn tenant_orders(tenant: &TenantId, shard: u32) -> String {
    format!("{tenant}#orders#{shard}")
}

/// The shard of the order's entry, of the `shards` the store spreads the list over
/// ([`crate::Table::shards`]).
pub fn tenant_order_shard(id: &OrderId, shards: u32) -> u32 {
    spread(id.to_string().as_bytes()) % shards.max(1)
}

/// The list as a whole, the name its page cursors are sealed to, and the partition it was
/// kept in before it was sharded.
pub fn tenant_order_list(tenant: &TenantId) -> String {
    format!("{tenant}#orders")
}

/// Contact details kept apart from events, idempotency records and the change stream, so they
/// can be erased in one place without rewriting history.
pub fn order_contact(tenant: &TenantId, id: &OrderId) -> String {
    format!("{PERSONAL}{tenant}#contact#order#{id}")
}

pub fn idempotency(tenant: &TenantId, customer: &CustomerId, key: &str) -> String {
    format!("{tenant}#idempotency#{customer}#{key}")
}

/// The idempotency record of a step the system takes itself (saga task, webhook delivery).
pub fn step(tenant: &TenantId, step: &str, id: &str) -> String {
    format!("{tenant}#step#{step}#{id}")
}

/// Holds waiting to expire, for every shop of the deployment, spread over up to this many
/// partitions (each order puts and deletes one entry); sort key = expiry then tenant and id.
pub const HOLD_SHARDS: u32 = 64;

pub fn holds(shard: u32) -> String {
    format!("holds#{shard}")
}

/// The shard of the hold's entry, of the `shards` the store spreads the queue over.
pub fn hold_shard(id: &ReservationId, shards: u32) -> u32 {
    spread(id.as_str().as_bytes()) % shards.max(1)
}

/// A stable hash for choosing a shard: the same in every process and release.
fn spread(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)))
}

pub fn hold_sk(expires_at_ms: i64, tenant: &TenantId, id: &ReservationId) -> String {
    format!("{expires_at_ms:015}#{tenant}#{id}")
}

/// Placements in flight, each checked once its time to finish is up; sort key = when it is
/// due, then the partition of its idempotency record. Shared by the deployment, like holds.
pub const ATTEMPT_SHARDS: u32 = 64;

pub fn attempts(shard: u32) -> String {
    format!("attempts#{shard}")
}

/// The shard of the attempt's entry, of the `shards` the store spreads the queue over.
pub fn attempt_shard(record_pk: &str, shards: u32) -> u32 {
    spread(record_pk.as_bytes()) % shards.max(1)
}

pub fn attempt_sk(due_ms: i64, record_pk: &str) -> String {
    format!("{due_ms:015}#{record_pk}")
}
