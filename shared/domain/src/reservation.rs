use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use crate::{Aggregate, CustomerId, DomainError, OrderId, ReservationId, Sku};

/// Most lines one reservation or order may hold. It keeps every reservation inside one store
/// transaction: DynamoDB allows 100 items, and a reservation writes up to four per line (stock
/// head, reserved event, low-stock event and index) plus a few of its own.
pub const MAX_LINES: usize = 20;
/// Longest hold a cart may ask for, whatever the shop allows.
pub const MAX_TTL_SECONDS: u32 = 24 * 60 * 60;

/// When a hold starts, how long it asks for, and the longest the shop allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldWindow {
    pub now_ms: i64,
    pub ttl_seconds: u32,
    pub max_ttl_seconds: u32,
}

/// A positive number of units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = u32, minimum = 1, maximum = 1000000))]
pub struct Quantity(u32);

impl Quantity {
    /// Caps a single line at a million units: larger figures are typos, not orders.
    pub fn new(value: u32) -> Result<Self, DomainError> {
        if value == 0 || value > 1_000_000 {
            return Err(DomainError::invalid(
                "quantity",
                "must be between 1 and 1000000",
            ));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Quantity {
    type Error = DomainError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Line {
    pub sku: Sku,
    pub quantity: Quantity,
}

impl Line {
    /// Checks a basket: 1 to [`MAX_LINES`] lines, each SKU once.
    pub fn check_all(lines: &[Line]) -> Result<(), DomainError> {
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(DomainError::invalid(
                "lines",
                format!("must hold 1 to {MAX_LINES} lines"),
            ));
        }
        let mut seen = HashSet::with_capacity(lines.len());
        if let Some(dup) = lines.iter().find(|line| !seen.insert(&line.sku)) {
            return Err(DomainError::invalid(
                "lines",
                format!("{} appears more than once", dup.sku),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReservationStatus {
    Held,
    Confirmed,
    Released,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ReservationEvent {
    ReservationHeld {
        id: ReservationId,
        owner: CustomerId,
        lines: Vec<Line>,
        /// Unix milliseconds.
        expires_at: i64,
        /// Held for this order's checkout from the start (an order placed from a basket).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkout: Option<OrderId>,
    },
    /// An order began paying for the held stock; no other order may until it ends.
    CheckoutStarted {
        order: OrderId,
    },
    /// The order's payment failed; the stock stays held for the customer.
    CheckoutEnded {
        order: OrderId,
    },
    ReservationConfirmed {
        order: OrderId,
    },
    ReservationReleased,
    ReservationExpired,
}

/// A hold on stock for a cart, until it is confirmed by an order, released, or expires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub held: Option<Held>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub id: ReservationId,
    pub owner: CustomerId,
    pub lines: Vec<Line>,
    pub expires_at: i64,
    pub status: ReservationStatus,
    pub order: Option<OrderId>,
    /// The order paying for this hold right now. Its authorization, if any, must be voided
    /// should the hold end without that order.
    #[serde(default)]
    pub checkout: Option<OrderId>,
    /// Made by an order for its basket, not reserved by the customer: it does not count
    /// against the customer's limits.
    #[serde(default)]
    pub for_basket: bool,
}

impl Reservation {
    /// Opens the hold. The stock itself is taken by each SKU's inventory in the same transaction.
    /// `checkout` names the order the hold is made for, if it is one.
    pub fn hold(
        &self,
        id: ReservationId,
        owner: CustomerId,
        lines: Vec<Line>,
        window: HoldWindow,
        checkout: Option<OrderId>,
    ) -> Result<Vec<ReservationEvent>, DomainError> {
        let HoldWindow {
            now_ms,
            ttl_seconds,
            max_ttl_seconds,
        } = window;
        if self.held.is_some() {
            return Err(DomainError::AlreadyExists {
                what: "reservation",
            });
        }
        Line::check_all(&lines)?;
        let longest = max_ttl_seconds.min(MAX_TTL_SECONDS);
        if ttl_seconds == 0 || ttl_seconds > longest {
            return Err(DomainError::invalid(
                "ttl_seconds",
                format!("must be between 1 and {longest}"),
            ));
        }
        let expires_at = now_ms.saturating_add(i64::from(ttl_seconds) * 1000);
        Ok(vec![ReservationEvent::ReservationHeld {
            id,
            owner,
            lines,
            expires_at,
            checkout,
        }])
    }

    /// An order starts paying for the held stock. One order at a time: a second one would
    /// authorize the customer twice for the same goods.
    pub fn start_checkout(
        &self,
        order: OrderId,
        now_ms: i64,
    ) -> Result<Vec<ReservationEvent>, DomainError> {
        let held = self.held_now()?;
        if now_ms >= held.expires_at {
            return Err(DomainError::ReservationExpired);
        }
        match &held.checkout {
            Some(other) if *other != order => Err(DomainError::ReservationInCheckout),
            Some(_) => Ok(Vec::new()),
            None => Ok(vec![ReservationEvent::CheckoutStarted { order }]),
        }
    }

    /// The order's payment failed: the hold stays, free for another checkout.
    pub fn end_checkout(&self, order: &OrderId) -> Result<Vec<ReservationEvent>, DomainError> {
        let held = self.held_now()?;
        match &held.checkout {
            Some(current) if current == order => Ok(vec![ReservationEvent::CheckoutEnded {
                order: order.clone(),
            }]),
            _ => Ok(Vec::new()),
        }
    }

    /// The order in checkout takes the held stock. A hold past its expiry can no longer be
    /// confirmed, even before the sweeper has released it.
    pub fn confirm(
        &self,
        order: OrderId,
        now_ms: i64,
    ) -> Result<Vec<ReservationEvent>, DomainError> {
        let held = self.held_now()?;
        if now_ms >= held.expires_at {
            return Err(DomainError::ReservationExpired);
        }
        if held.checkout.as_ref() != Some(&order) {
            return Err(DomainError::ReservationInCheckout);
        }
        Ok(vec![ReservationEvent::ReservationConfirmed { order }])
    }

    /// The customer lets go of the hold. Not while an order is paying for it: that order's
    /// authorization would be left without goods.
    pub fn release(&self) -> Result<Vec<ReservationEvent>, DomainError> {
        if self.held_now()?.checkout.is_some() {
            return Err(DomainError::ReservationInCheckout);
        }
        Ok(vec![ReservationEvent::ReservationReleased])
    }

    /// The order paying for this hold gives it back (its payment was declined).
    pub fn give_back(&self, order: &OrderId) -> Result<Vec<ReservationEvent>, DomainError> {
        if self.held_now()?.checkout.as_ref() != Some(order) {
            return Err(DomainError::ReservationInCheckout);
        }
        Ok(vec![ReservationEvent::ReservationReleased])
    }

    pub fn expire(&self, now_ms: i64) -> Result<Vec<ReservationEvent>, DomainError> {
        let held = self.held_now()?;
        if now_ms < held.expires_at {
            return Err(DomainError::ReservationNotExpired);
        }
        Ok(vec![ReservationEvent::ReservationExpired])
    }

    fn held_now(&self) -> Result<&Held, DomainError> {
        match &self.held {
            Some(held) if held.status == ReservationStatus::Held => Ok(held),
            Some(held) => Err(DomainError::ReservationNotHeld {
                status: held.status,
            }),
            None => Err(DomainError::invalid("reservation", "does not exist")),
        }
    }
}

impl Aggregate for Reservation {
    type Event = ReservationEvent;

    fn apply(&mut self, event: &ReservationEvent) {
        match (event, self.held.as_mut()) {
            (
                ReservationEvent::ReservationHeld {
                    id,
                    owner,
                    lines,
                    expires_at,
                    checkout,
                },
                _,
            ) => {
                self.held = Some(Held {
                    id: id.clone(),
                    owner: owner.clone(),
                    lines: lines.clone(),
                    expires_at: *expires_at,
                    status: ReservationStatus::Held,
                    order: None,
                    checkout: checkout.clone(),
                    for_basket: checkout.is_some(),
                });
            }
            (ReservationEvent::CheckoutStarted { order }, Some(held)) => {
                held.checkout = Some(order.clone());
            }
            (ReservationEvent::CheckoutEnded { .. }, Some(held)) => held.checkout = None,
            (ReservationEvent::ReservationConfirmed { order }, Some(held)) => {
                held.status = ReservationStatus::Confirmed;
                held.order = Some(order.clone());
            }
            (ReservationEvent::ReservationReleased, Some(held)) => {
                held.status = ReservationStatus::Released
            }
            (ReservationEvent::ReservationExpired, Some(held)) => {
                held.status = ReservationStatus::Expired
            }
            (_, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, q: u32) -> Line {
        Line {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::new(q).unwrap(),
        }
    }

    fn held(ttl: u32) -> Reservation {
        let mut r = Reservation::default();
        let events = r
            .hold(
                ReservationId::parse("r1").unwrap(),
                CustomerId::parse("alice").unwrap(),
                vec![line("MUG", 2)],
                HoldWindow {
                    now_ms: 1_000,
                    ttl_seconds: ttl,
                    max_ttl_seconds: MAX_TTL_SECONDS,
                },
                None,
            )
            .unwrap();
        r.apply_all(events);
        r
    }

    #[test]
    fn quantity_must_be_positive() {
        assert!(Quantity::new(0).is_err());
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert_eq!(serde_json::from_str::<Quantity>("3").unwrap().get(), 3);
    }

    #[test]
    fn baskets_are_checked() {
        assert!(Line::check_all(&[]).is_err());
        assert!(Line::check_all(&[line("A", 1), line("A", 2)]).is_err());
        assert!(Line::check_all(&vec![line("A", 1); 1]).is_ok());
    }

    #[test]
    fn a_hold_expires_at_its_ttl() {
        let r = held(60);
        assert_eq!(r.held.as_ref().unwrap().expires_at, 61_000);
        assert_eq!(r.expire(60_999), Err(DomainError::ReservationNotExpired));
        assert_eq!(
            r.expire(61_000),
            Ok(vec![ReservationEvent::ReservationExpired])
        );
    }

    fn order(id: &str) -> OrderId {
        OrderId::parse(id).unwrap()
    }

    #[test]
    fn an_expired_hold_cannot_be_confirmed() {
        let mut r = held(1);
        r.apply_all(r.start_checkout(order("o1"), 1_500).unwrap());
        assert_eq!(
            r.confirm(order("o1"), 2_000),
            Err(DomainError::ReservationExpired)
        );
        assert_eq!(
            held(1).start_checkout(order("o1"), 2_000),
            Err(DomainError::ReservationExpired)
        );
    }

    #[test]
    fn one_order_at_a_time_pays_for_a_hold() {
        let mut r = held(60);
        assert_eq!(
            r.confirm(order("o1"), 1_500),
            Err(DomainError::ReservationInCheckout),
            "only the order in checkout confirms"
        );
        r.apply_all(r.start_checkout(order("o1"), 1_500).unwrap());
        assert_eq!(
            r.start_checkout(order("o1"), 1_500),
            Ok(vec![]),
            "resuming the same checkout"
        );
        assert_eq!(
            r.start_checkout(order("o2"), 1_500),
            Err(DomainError::ReservationInCheckout)
        );
        assert_eq!(
            r.release(),
            Err(DomainError::ReservationInCheckout),
            "not released under a paying order"
        );
        assert!(r.give_back(&order("o2")).is_err());
        r.apply_all(r.end_checkout(&order("o1")).unwrap());
        assert_eq!(r.held.as_ref().unwrap().status, ReservationStatus::Held);
        r.apply_all(r.start_checkout(order("o2"), 1_500).unwrap());
        r.apply_all(r.confirm(order("o2"), 1_500).unwrap());
        assert_eq!(r.held.as_ref().unwrap().order, Some(order("o2")));
    }

    #[test]
    fn the_longest_hold_is_the_shops_to_choose() {
        let window = |ttl_seconds| HoldWindow {
            now_ms: 0,
            ttl_seconds,
            max_ttl_seconds: 600,
        };
        let hold = |ttl| {
            Reservation::default().hold(
                ReservationId::parse("r1").unwrap(),
                CustomerId::parse("alice").unwrap(),
                vec![line("MUG", 1)],
                window(ttl),
                None,
            )
        };
        assert!(hold(600).is_ok());
        assert!(hold(601).is_err());
        assert!(hold(0).is_err());
    }

    #[test]
    fn a_hold_ends_once() {
        let mut r = held(60);
        r.apply_all(r.release().unwrap());
        assert_eq!(
            r.release(),
            Err(DomainError::ReservationNotHeld {
                status: ReservationStatus::Released
            })
        );
        assert!(r.confirm(order("o1"), 1_500).is_err());
        assert!(r.expire(100_000).is_err());
    }
}
