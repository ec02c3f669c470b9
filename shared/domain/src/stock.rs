//! A SKU's stock as counted on one item (docs/adr/0013), and the changes decided on it.
//!
//! The store checks a change's bounds as it applies it, so a reservation that stays clear of
//! the low-stock threshold is decided without reading the stock at all ([`Stock::reserve_unread`]).
//! Anything else is decided on the figures read ([`Stock::reserve`] and the rest), and holds
//! only if they are still exactly what was read.

use serde::{Deserialize, Serialize};

use crate::{DomainError, Inventory, InventoryEvent, MAX_STOCK, Quantity, Sku};

/// The figures on a SKU's stock item. `on_hand = available + reserved`, and the low-stock
/// threshold is `available - headroom`, so every figure a change needs to check is one
/// number the store can compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    pub available: u64,
    pub reserved: u64,
    /// Available units above the low-stock threshold; below zero while the SKU is low.
    pub headroom: i64,
    /// How many changes the stock has seen.
    pub changes: u64,
}

/// One of the figures a change adds to or bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Available,
    Reserved,
    Headroom,
    Changes,
}

impl Figure {
    /// Its name on the stock item.
    pub fn name(self) -> &'static str {
        match self {
            Figure::Available => "available",
            Figure::Reserved => "reserved",
            Figure::Headroom => "headroom",
            Figure::Changes => "changes",
        }
    }
}

/// What a change needs of the stored figures when it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    AtLeast(Figure, i64),
    Is(Figure, i64),
}

/// What one change does to a SKU's stock: amounts to add, the bounds they are added under,
/// and the events it records on the SKU's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    pub add: Vec<(Figure, i64)>,
    pub bounds: Vec<Bound>,
    pub events: Vec<InventoryEvent>,
}

impl StockChange {
    fn adding(available: i64, reserved: i64, headroom: i64) -> Vec<(Figure, i64)> {
        [
            (Figure::Available, available),
            (Figure::Reserved, reserved),
            (Figure::Headroom, headroom),
            (Figure::Changes, 1),
        ]
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .collect()
    }

    /// The figures after the change, from the figures it was decided on.
    pub fn applied_to(&self, stock: &Stock) -> Stock {
        let mut after = *stock;
        for (figure, n) in &self.add {
            match figure {
                Figure::Available => after.available = after.available.saturating_add_signed(*n),
                Figure::Reserved => after.reserved = after.reserved.saturating_add_signed(*n),
                Figure::Headroom => after.headroom = after.headroom.saturating_add(*n),
                Figure::Changes => after.changes = after.changes.saturating_add_signed(*n),
            }
        }
        after
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Stock {
    /// The figures of a SKU whose stock was kept only as its stream's head.
    pub fn from_history(stock: &Inventory, version: u64) -> Self {
        let available = stock.available();
        Self {
            available,
            reserved: stock.reserved,
            headroom: signed(available) - signed(stock.low_stock_threshold),
            changes: version,
        }
    }

    pub fn on_hand(&self) -> u64 {
        self.available.saturating_add(self.reserved)
    }

    pub fn low_stock_threshold(&self) -> u64 {
        u64::try_from(signed(self.available).saturating_sub(self.headroom)).unwrap_or(0)
    }

    pub fn is_low(&self) -> bool {
        self.headroom < 0
    }

    /// Whether reserving `quantity` leaves the SKU clear of its threshold, so that
    /// [`Stock::reserve_unread`] would have been applied.
    pub fn has_room_for(&self, quantity: Quantity) -> bool {
        self.headroom >= i64::from(quantity.get())
    }

    /// Reserves `quantity` if that leaves the SKU at or above its threshold, whatever the
    /// figures are now. If the bound fails, decide again on the figures read.
    pub fn reserve_unread(quantity: Quantity) -> StockChange {
        let n = i64::from(quantity.get());
        StockChange {
            add: StockChange::adding(-n, n, -n),
            bounds: vec![Bound::AtLeast(Figure::Headroom, n)],
            events: Vec::new(),
        }
    }

    /// Releases `quantity` if that much is reserved and the SKU is not low (so it stays not
    /// low), whatever the figures are now. If the bound fails, decide again on the figures read.
    pub fn release_unread(quantity: Quantity) -> StockChange {
        let n = i64::from(quantity.get());
        StockChange {
            add: StockChange::adding(n, -n, n),
            bounds: vec![
                Bound::AtLeast(Figure::Reserved, n),
                Bound::AtLeast(Figure::Headroom, 0),
            ],
            events: Vec::new(),
        }
    }

    pub fn reserve(&self, sku: &Sku, quantity: Quantity) -> Result<StockChange, DomainError> {
        let requested = u64::from(quantity.get());
        if requested > self.available {
            return Err(DomainError::OutOfStock {
                sku: sku.clone(),
                requested,
                available: self.available,
            });
        }
        let n = i64::from(quantity.get());
        Ok(self.exactly(StockChange::adding(-n, n, -n), Vec::new()))
    }

    pub fn release(&self, quantity: Quantity) -> Result<StockChange, DomainError> {
        let requested = u64::from(quantity.get());
        if requested > self.reserved {
            return Err(DomainError::ReleaseExceedsReserved {
                requested,
                reserved: self.reserved,
            });
        }
        let n = i64::from(quantity.get());
        Ok(self.exactly(StockChange::adding(n, -n, n), Vec::new()))
    }

    /// A stock count: the new on-hand figure and alert threshold. The same figures again
    /// change nothing.
    pub fn set_level(
        &self,
        on_hand: u64,
        low_stock_threshold: u64,
    ) -> Result<StockChange, DomainError> {
        if on_hand > MAX_STOCK || low_stock_threshold > MAX_STOCK {
            return Err(DomainError::QuantityOverflow);
        }
        if on_hand < self.reserved {
            return Err(DomainError::BelowReserved {
                on_hand,
                reserved: self.reserved,
            });
        }
        if on_hand == self.on_hand() && low_stock_threshold == self.low_stock_threshold() {
            return Ok(StockChange {
                add: Vec::new(),
                bounds: Vec::new(),
                events: Vec::new(),
            });
        }
        let available = signed(on_hand) - signed(self.on_hand());
        let headroom =
            signed(on_hand - self.reserved) - signed(low_stock_threshold) - self.headroom;
        Ok(self.exactly(
            StockChange::adding(available, 0, headroom),
            vec![InventoryEvent::StockLevelSet {
                on_hand,
                low_stock_threshold,
            }],
        ))
    }

    pub fn receive(&self, quantity: Quantity) -> Result<StockChange, DomainError> {
        if self.on_hand() + u64::from(quantity.get()) > MAX_STOCK {
            return Err(DomainError::QuantityOverflow);
        }
        let n = i64::from(quantity.get());
        Ok(self.exactly(
            StockChange::adding(n, 0, n),
            vec![InventoryEvent::StockReceived {
                quantity: quantity.get(),
            }],
        ))
    }

    /// A change decided on these figures, recording the alert when it crosses the threshold.
    /// One that stays clear of the threshold holds wherever the figures have moved meanwhile,
    /// as long as none goes below zero and the SKU stays clear: reservations moving all the
    /// time do not hold up a receipt. One that crosses, or stays low, holds only on exactly
    /// the figures read.
    fn exactly(&self, add: Vec<(Figure, i64)>, mut events: Vec<InventoryEvent>) -> StockChange {
        let mut change = StockChange {
            add,
            bounds: Vec::new(),
            events: Vec::new(),
        };
        let after = change.applied_to(self);
        change.bounds = if !self.is_low() && !after.is_low() {
            let added = |figure| {
                change
                    .add
                    .iter()
                    .find(|(f, _)| *f == figure)
                    .map_or(0, |(_, n)| *n)
            };
            let mut bounds = vec![Bound::AtLeast(
                Figure::Headroom,
                added(Figure::Headroom).min(0).saturating_neg(),
            )];
            for figure in [Figure::Available, Figure::Reserved] {
                if added(figure) < 0 {
                    bounds.push(Bound::AtLeast(figure, added(figure).saturating_neg()));
                }
            }
            bounds
        } else {
            vec![
                Bound::Is(Figure::Available, signed(self.available)),
                Bound::Is(Figure::Reserved, signed(self.reserved)),
                Bound::Is(Figure::Headroom, self.headroom),
            ]
        };
        let (available, threshold) = (after.available, after.low_stock_threshold());
        if after.is_low() && !self.is_low() {
            events.push(InventoryEvent::LowStockDetected {
                available,
                threshold,
            });
        } else if !after.is_low() && self.is_low() {
            events.push(InventoryEvent::LowStockCleared {
                available,
                threshold,
            });
        }
        change.events = events;
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aggregate;
    use proptest::prelude::*;

    fn sku() -> Sku {
        Sku::parse("MUG").unwrap()
    }

    fn qty(n: u32) -> Quantity {
        Quantity::new(n).unwrap()
    }

    /// Applies a change as the store would: only if its bounds hold.
    fn apply(stock: &Stock, change: &StockChange) -> Option<Stock> {
        let figure = |f: Figure| match f {
            Figure::Available => signed(stock.available),
            Figure::Reserved => signed(stock.reserved),
            Figure::Headroom => stock.headroom,
            Figure::Changes => signed(stock.changes),
        };
        let holds = change.bounds.iter().all(|bound| match *bound {
            Bound::AtLeast(f, n) => figure(f) >= n,
            Bound::Is(f, n) => figure(f) == n,
        });
        holds.then(|| change.applied_to(stock))
    }

    fn stocked(on_hand: u64, threshold: u64) -> Stock {
        let change = Stock::default().set_level(on_hand, threshold).unwrap();
        apply(&Stock::default(), &change).unwrap()
    }

    #[test]
    fn an_unread_reservation_holds_only_clear_of_the_threshold() {
        let stock = stocked(10, 3);
        let take = Stock::reserve_unread(qty(7));
        let after = apply(&stock, &take).unwrap();
        assert_eq!((after.available, after.reserved, after.headroom), (3, 7, 0));
        assert!(!after.is_low());
        assert_eq!(
            apply(&after, &Stock::reserve_unread(qty(1))),
            None,
            "would go low"
        );
    }

    #[test]
    fn an_exact_reservation_alerts_once_when_it_crosses() {
        let stock = stocked(10, 5);
        let first = stock.reserve(&sku(), qty(6)).unwrap();
        assert!(matches!(
            first.events.as_slice(),
            [InventoryEvent::LowStockDetected {
                available: 4,
                threshold: 5
            }]
        ));
        let low = apply(&stock, &first).unwrap();
        assert!(low.is_low());
        assert!(
            low.reserve(&sku(), qty(1)).unwrap().events.is_empty(),
            "still low"
        );
        let back = low.release(qty(6)).unwrap();
        assert!(matches!(
            back.events.as_slice(),
            [InventoryEvent::LowStockCleared { .. }]
        ));
        assert_eq!(
            apply(&low, &Stock::release_unread(qty(6))),
            None,
            "low: read first"
        );
    }

    #[test]
    fn a_change_clear_of_the_threshold_holds_while_reservations_move() {
        let stock = stocked(10, 2);
        let receipt = stock.receive(qty(5)).unwrap();
        let count = stock.set_level(8, 2).unwrap();
        let moved = apply(&stock, &Stock::reserve_unread(qty(3))).unwrap();
        let after = apply(&moved, &receipt).unwrap();
        assert_eq!(
            (after.on_hand(), after.reserved, after.available),
            (15, 3, 12)
        );
        let counted = apply(&moved, &count).unwrap();
        assert_eq!(
            (counted.on_hand(), counted.reserved, counted.available),
            (8, 3, 5)
        );
        // Counted down below what is now reserved: refused, not negative.
        let tight = stock.set_level(4, 0).unwrap();
        let held = apply(&stock, &Stock::reserve_unread(qty(7))).unwrap();
        assert_eq!(apply(&held, &tight), None);
        // Crossing the threshold needs the figures it was decided on.
        let crossing = stock.reserve(&sku(), qty(9)).unwrap();
        assert_eq!(crossing.events.len(), 1);
        assert_eq!(apply(&moved, &crossing), None);
    }

    #[test]
    fn reserving_more_than_available_is_out_of_stock() {
        assert_eq!(
            stocked(3, 0).reserve(&sku(), qty(4)),
            Err(DomainError::OutOfStock {
                sku: sku(),
                requested: 4,
                available: 3
            })
        );
    }

    #[test]
    fn on_hand_cannot_be_counted_below_reserved() {
        let stock = apply(&stocked(5, 0), &Stock::reserve_unread(qty(4))).unwrap();
        assert_eq!(
            stock.set_level(3, 0),
            Err(DomainError::BelowReserved {
                on_hand: 3,
                reserved: 4
            })
        );
        let same = stock.set_level(5, 0).unwrap();
        assert!(same.add.is_empty() && same.events.is_empty());
    }

    #[test]
    fn figures_of_a_stream_carry_over() {
        let mut history = Inventory::default();
        history.apply_all(history.set_level(10, 4).unwrap());
        let reservation = crate::ReservationId::parse("r1").unwrap();
        history.apply_all(history.reserve(&sku(), &reservation, qty(7)).unwrap());
        let stock = Stock::from_history(&history, 3);
        assert_eq!(
            (stock.on_hand(), stock.reserved, stock.low_stock_threshold()),
            (10, 7, 4)
        );
        assert_eq!(
            (stock.is_low(), stock.changes),
            (history.low_stock_flagged, 3)
        );
    }

    #[derive(Debug, Clone)]
    enum Command {
        Set(u64, u64),
        Receive(u32),
        Reserve(u32, bool),
        Release(u32, bool),
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0u64..50, 0u64..20).prop_map(|(a, b)| Command::Set(a, b)),
            (1u32..30).prop_map(Command::Receive),
            (1u32..30, any::<bool>()).prop_map(|(q, u)| Command::Reserve(q, u)),
            (1u32..30, any::<bool>()).prop_map(|(q, u)| Command::Release(q, u)),
        ]
    }

    proptest! {
        /// Whatever changes arrive, read or unread, accepted or refused: the books balance,
        /// nothing goes negative, and alerts alternate with the level.
        #[test]
        fn stock_invariants_hold_under_any_changes(commands in proptest::collection::vec(command(), 0..80)) {
            let mut stock = Stock::default();
            let mut alerts = Vec::new();
            for command in commands {
                let unread = matches!(command, Command::Reserve(_, true) | Command::Release(_, true));
                let decided = match command {
                    Command::Set(on_hand, threshold) => stock.set_level(on_hand, threshold),
                    Command::Receive(q) => stock.receive(qty(q)),
                    Command::Reserve(q, true) => Ok(Stock::reserve_unread(qty(q))),
                    Command::Reserve(q, false) => stock.reserve(&sku(), qty(q)),
                    Command::Release(q, true) => Ok(Stock::release_unread(qty(q))),
                    Command::Release(q, false) => stock.release(qty(q)),
                };
                let Ok(change) = decided else { continue };
                let Some(after) = apply(&stock, &change) else {
                    prop_assert!(unread, "a change decided on the figures as they are holds");
                    continue;
                };
                for event in &change.events {
                    match event {
                        InventoryEvent::LowStockDetected { .. } => alerts.push(true),
                        InventoryEvent::LowStockCleared { .. } => alerts.push(false),
                        _ => {}
                    }
                }
                prop_assert_eq!(after.low_stock_threshold(), signed(after.available).saturating_sub(after.headroom).max(0) as u64);
                prop_assert!(after.headroom <= signed(after.available), "a threshold is never negative");
                prop_assert_eq!(alerts.last().copied().unwrap_or(false), after.is_low(), "the last alert says where the level is");
                stock = after;
            }
            prop_assert!(alerts.windows(2).all(|w| w[0] != w[1]), "detected and cleared alternate");
        }
    }
}
