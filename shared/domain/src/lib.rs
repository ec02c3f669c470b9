//! The shop's domain: pure types and rules, no I/O and no async.
//!
//! Every aggregate changes only by applying its own events ([`Aggregate::apply`]); commands are
//! methods that check the rules against the current state and return the events to record. That
//! keeps "rebuild from events" and "decide" one code path, so a replay always gives the state the
//! command saw.

mod error;
mod holds;
mod ids;
mod inventory;
mod money;
mod order;
mod product;
mod reservation;
mod stock;

pub use error::DomainError;
pub use holds::{CustomerHolds, HoldLimits};
pub use ids::{CustomerId, OrderId, ReservationId, Sku, TenantId};
pub use inventory::{Inventory, InventoryEvent, MAX_STOCK};
pub use money::{Currency, MAX_AMOUNT_MINOR, Money};
pub use order::{
    Cancellation, MAX_REASON_CHARS, NewOrder, Order, OrderEvent, OrderLine, OrderStatus,
    PaymentAuthorization, PlacedOrder, STALLED_AFTER_MS, Settled, Settlement, StepFailure,
};
pub use product::{Product, ProductDetails, ProductEvent, ProductName};
pub use reservation::{
    Held, HoldWindow, Line, MAX_LINES, MAX_TTL_SECONDS, Quantity, Reservation, ReservationEvent,
    ReservationStatus,
};
pub use stock::{Bound, Figure, Stock, StockChange};

/// A consistency boundary whose state is a left fold of its events.
pub trait Aggregate: Default {
    /// The facts this aggregate records.
    type Event;

    /// Moves the state forward by one recorded fact. Never fails: a recorded event is history.
    fn apply(&mut self, event: &Self::Event);

    /// Rebuilds the state from a stream of events, oldest first.
    fn rebuild<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    /// Applies freshly decided events and hands them back, so a caller records exactly what it applied.
    fn apply_all(&mut self, events: Vec<Self::Event>) -> Vec<Self::Event> {
        for event in &events {
            self.apply(event);
        }
        events
    }
}
