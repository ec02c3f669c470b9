//! What the API answers: plain serializable views of the aggregates and read models.

use commerce_domain::{
    Held, Line, Money, OrderLine, OrderStatus, PlacedOrder, ProductDetails, ReservationStatus, Sku,
    StepFailure, Stock,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix milliseconds as an RFC 3339 timestamp (UTC), always with milliseconds, so timestamps
/// sort as text in time order.
pub fn timestamp(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default()
}

/// The UTC date (`YYYY-MM-DD`) of Unix milliseconds.
pub fn day(ms: i64) -> String {
    timestamp(ms).get(..10).unwrap_or_default().to_owned()
}

/// An RFC 3339 timestamp as Unix milliseconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProductView {
    pub sku: Sku,
    pub name: String,
    pub price: Money,
}

impl From<&ProductDetails> for ProductView {
    fn from(p: &ProductDetails) -> Self {
        Self {
            sku: p.sku.clone(),
            name: p.name.as_str().to_owned(),
            price: p.price,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InventoryView {
    pub sku: Sku,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub low_stock_threshold: u64,
    pub low_stock: bool,
    /// How many changes the stock has seen.
    pub version: u64,
}

impl InventoryView {
    pub fn new(sku: Sku, stock: &Stock) -> Self {
        Self {
            sku,
            on_hand: stock.on_hand(),
            reserved: stock.reserved,
            available: stock.available,
            low_stock_threshold: stock.low_stock_threshold(),
            low_stock: stock.is_low(),
            version: stock.changes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReservationView {
    pub id: String,
    pub status: ReservationStatus,
    pub lines: Vec<Line>,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

impl From<&Held> for ReservationView {
    fn from(h: &Held) -> Self {
        Self {
            id: h.id.to_string(),
            status: h.status,
            lines: h.lines.clone(),
            expires_at: timestamp(h.expires_at),
            order_id: h.order.as_ref().map(ToString::to_string),
        }
    }
}

/// How to reach the customer about one order. Kept out of events so it can be erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Vec<String>>,
}

impl Contact {
    pub fn check(&self) -> Result<(), commerce_domain::DomainError> {
        let fields = [
            ("contact.name", &self.name),
            ("contact.email", &self.email),
            ("contact.phone", &self.phone),
        ];
        for (field, value) in fields {
            if value.as_ref().is_some_and(|v| {
                v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control)
            }) {
                return Err(commerce_domain::DomainError::Invalid {
                    field,
                    reason: "must be 1 to 200 characters, no control characters".into(),
                });
            }
        }
        if self.email.as_ref().is_some_and(|e| !e.contains('@')) {
            return Err(commerce_domain::DomainError::Invalid {
                field: "contact.email",
                reason: "must be an e-mail address".into(),
            });
        }
        if self.shipping_address.as_ref().is_some_and(|lines| {
            lines.is_empty()
                || lines.len() > 6
                || lines
                    .iter()
                    .any(|l| l.is_empty() || l.chars().count() > 200)
        }) {
            return Err(commerce_domain::DomainError::Invalid {
                field: "contact.shipping_address",
                reason: "must be 1 to 6 lines of 1 to 200 characters".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderView {
    pub id: String,
    pub status: OrderStatus,
    pub customer: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub reservation_id: String,
    pub payment_authorization: String,
    pub payment: PaymentView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<CancellationView>,
    pub placed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
}

/// Money moved for an order, in minor units of its currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentView {
    pub currency: String,
    pub authorized: i64,
    pub captured: i64,
    /// Authorized but never to be captured: voided at the provider, or left out of the capture.
    pub voided: i64,
    pub refunded: i64,
}

/// The order's latest cancellation and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancellationView {
    /// 1 for the first cancellation of the order, then counting.
    pub attempt: u32,
    pub reason: String,
    /// The units this cancellation asked for (none when it retried one that needed attention).
    pub lines: Vec<Line>,
    pub amount: Money,
    pub requested_at: String,
    /// Every cancelled unit is back in stock.
    pub stock_released: bool,
    /// Everything owed for the cancelled units is voided or refunded.
    pub payment_settled: bool,
    /// What failed, when the order needs attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<StepFailure>,
}

impl OrderView {
    pub fn new(o: &PlacedOrder, contact: Option<Contact>) -> Self {
        Self {
            id: o.id.to_string(),
            status: o.status,
            customer: o.customer.to_string(),
            lines: o.lines.clone(),
            total: o.total,
            reservation_id: o.reservation.to_string(),
            payment_authorization: o.payment.id.clone(),
            payment: PaymentView {
                currency: o.total.currency.to_string(),
                authorized: o.payment.amount.amount_minor,
                captured: o.settled.captured,
                voided: o.settled.voided,
                refunded: o.settled.refunded,
            },
            cancellation: o.cancellation.as_ref().map(|c| CancellationView {
                attempt: c.attempt,
                reason: c.reason.clone(),
                lines: c.lines.clone(),
                amount: c.amount,
                requested_at: timestamp(c.requested_at),
                stock_released: o.unreleased().is_empty(),
                payment_settled: o.owed().is_ok_and(|owed| owed <= 0),
                failure: c.failure.clone(),
            }),
            placed_at: timestamp(o.placed_at),
            contact,
        }
    }
}

/// A cancellation that failed for good, for operators to act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertView {
    pub kind: String,
    pub order_id: String,
    pub attempt: u32,
    pub failure: StepFailure,
    pub raised_at: String,
}

/// The summary kept in list partitions, so a page is one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderSummary {
    pub id: String,
    pub status: OrderStatus,
    pub customer: String,
    pub total: Money,
    pub placed_at: String,
}

impl From<&PlacedOrder> for OrderSummary {
    fn from(o: &PlacedOrder) -> Self {
        Self {
            id: o.id.to_string(),
            status: o.status,
            customer: o.customer.to_string(),
            total: o.total,
            placed_at: timestamp(o.placed_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListPage<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One event in the audit trail: its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// UUIDv7.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub tenant: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub aggregate_version: u64,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    /// The JWT subject who caused it, or `system:<component>`.
    pub actor: String,
    /// The id of the request it came from (`X-Request-Id`).
    pub correlation_id: String,
    pub causation_id: Option<String>,
    /// The event itself.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

impl From<crate::event_store::Envelope<serde_json::Value>> for AuditEvent {
    fn from(e: crate::event_store::Envelope<serde_json::Value>) -> Self {
        Self {
            id: e.id.to_string(),
            event_type: e.event_type,
            schema_version: e.schema_version,
            tenant: e.tenant,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            aggregate_version: e.aggregate_version,
            occurred_at: e.occurred_at,
            actor: e.actor,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            data: e.data,
        }
    }
}

/// An RFC 9457 problem: every error the API answers has this shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// `/problems/<name>`, documented in `docs/problems.md`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: u16, name: &str, title: &str, detail: &str) -> Self {
        Self {
            kind: format!("/problems/{name}"),
            title: title.to_owned(),
            status,
            detail: detail.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            super::timestamp(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            super::timestamp(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(
            super::parse_timestamp("2023-11-14T22:13:20.000Z"),
            Some(1_700_000_000_000)
        );
    }
}
