use serde::{Deserialize, Serialize};

use crate::{Aggregate, DomainError, Quantity, ReservationId, Sku};

/// Most units one SKU may count, so every figure stays exact in JSON (below 2^53) and no sum
/// can overflow.
pub const MAX_STOCK: u64 = 1_000_000_000_000;

/// A SKU's stream folded: its counts, receipts and alerts, and for streams written before stock
/// was counted on its own item (docs/adr/0013), its reservations too. The shop decides on
/// [`Stock`](crate::Stock); this is what a stored stream's events add up to, and where an older
/// SKU's figures are carried over from. `on_hand` is what is physically there; `reserved` is
/// promised to carts and unshipped orders; `available` is what can still be sold.
/// `on_hand = available + reserved` holds after every event, and none of them can go negative.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub on_hand: u64,
    pub reserved: u64,
    pub low_stock_threshold: u64,
    /// Set by `LowStockDetected`, cleared by `LowStockCleared`: one alert per crossing.
    pub low_stock_flagged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum InventoryEvent {
    /// A stock count (or first stocking): the new on-hand figure and alert threshold.
    StockLevelSet {
        on_hand: u64,
        low_stock_threshold: u64,
    },
    StockReceived {
        quantity: u32,
    },
    StockReserved {
        reservation: ReservationId,
        quantity: u32,
    },
    StockReleased {
        reservation: ReservationId,
        quantity: u32,
    },
    LowStockDetected {
        available: u64,
        threshold: u64,
    },
    LowStockCleared {
        available: u64,
        threshold: u64,
    },
}

impl Inventory {
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Below the threshold means strictly fewer available units than the threshold.
    pub fn is_low(&self) -> bool {
        self.available() < self.low_stock_threshold
    }

    pub fn set_level(
        &self,
        on_hand: u64,
        low_stock_threshold: u64,
    ) -> Result<Vec<InventoryEvent>, DomainError> {
        if on_hand > MAX_STOCK || low_stock_threshold > MAX_STOCK {
            return Err(DomainError::QuantityOverflow);
        }
        if on_hand < self.reserved {
            return Err(DomainError::BelowReserved {
                on_hand,
                reserved: self.reserved,
            });
        }
        if on_hand == self.on_hand && low_stock_threshold == self.low_stock_threshold {
            return Ok(Vec::new());
        }
        Ok(
            self.with_low_stock_check(vec![InventoryEvent::StockLevelSet {
                on_hand,
                low_stock_threshold,
            }]),
        )
    }

    pub fn receive(&self, quantity: Quantity) -> Result<Vec<InventoryEvent>, DomainError> {
        if self.on_hand + u64::from(quantity.get()) > MAX_STOCK {
            return Err(DomainError::QuantityOverflow);
        }
        Ok(
            self.with_low_stock_check(vec![InventoryEvent::StockReceived {
                quantity: quantity.get(),
            }]),
        )
    }

    pub fn reserve(
        &self,
        sku: &Sku,
        reservation: &ReservationId,
        quantity: Quantity,
    ) -> Result<Vec<InventoryEvent>, DomainError> {
        let requested = u64::from(quantity.get());
        if requested > self.available() {
            return Err(DomainError::OutOfStock {
                sku: sku.clone(),
                requested,
                available: self.available(),
            });
        }
        Ok(
            self.with_low_stock_check(vec![InventoryEvent::StockReserved {
                reservation: reservation.clone(),
                quantity: quantity.get(),
            }]),
        )
    }

    pub fn release(
        &self,
        reservation: &ReservationId,
        quantity: Quantity,
    ) -> Result<Vec<InventoryEvent>, DomainError> {
        let requested = u64::from(quantity.get());
        if requested > self.reserved {
            return Err(DomainError::ReleaseExceedsReserved {
                requested,
                reserved: self.reserved,
            });
        }
        Ok(
            self.with_low_stock_check(vec![InventoryEvent::StockReleased {
                reservation: reservation.clone(),
                quantity: quantity.get(),
            }]),
        )
    }

    /// Appends the alert event when the given change crosses the threshold in either direction.
    fn with_low_stock_check(&self, mut events: Vec<InventoryEvent>) -> Vec<InventoryEvent> {
        let mut after = self.clone();
        for event in &events {
            after.apply(event);
        }
        let (available, threshold) = (after.available(), after.low_stock_threshold);
        if after.is_low() && !after.low_stock_flagged {
            events.push(InventoryEvent::LowStockDetected {
                available,
                threshold,
            });
        } else if !after.is_low() && after.low_stock_flagged {
            events.push(InventoryEvent::LowStockCleared {
                available,
                threshold,
            });
        }
        events
    }
}

impl Aggregate for Inventory {
    type Event = InventoryEvent;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockLevelSet {
                on_hand,
                low_stock_threshold,
            } => {
                self.on_hand = *on_hand;
                self.low_stock_threshold = *low_stock_threshold;
            }
            InventoryEvent::StockReceived { quantity } => {
                self.on_hand = self.on_hand.saturating_add(u64::from(*quantity));
            }
            InventoryEvent::StockReserved { quantity, .. } => {
                self.reserved = self.reserved.saturating_add(u64::from(*quantity));
            }
            InventoryEvent::StockReleased { quantity, .. } => {
                self.reserved = self.reserved.saturating_sub(u64::from(*quantity));
            }
            InventoryEvent::LowStockDetected { .. } => self.low_stock_flagged = true,
            InventoryEvent::LowStockCleared { .. } => self.low_stock_flagged = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sku() -> Sku {
        Sku::parse("MUG").unwrap()
    }

    fn res(n: u32) -> ReservationId {
        ReservationId::parse(format!("r{n}")).unwrap()
    }

    fn qty(n: u32) -> Quantity {
        Quantity::new(n).unwrap()
    }

    fn given(events: Vec<InventoryEvent>) -> Inventory {
        Inventory::rebuild(&events)
    }

    #[test]
    fn reserving_more_than_available_is_out_of_stock() {
        let stock = given(vec![InventoryEvent::StockLevelSet {
            on_hand: 3,
            low_stock_threshold: 0,
        }]);
        let err = stock.reserve(&sku(), &res(1), qty(4)).unwrap_err();
        assert_eq!(
            err,
            DomainError::OutOfStock {
                sku: sku(),
                requested: 4,
                available: 3
            }
        );
    }

    #[test]
    fn crossing_below_threshold_alerts_once_until_restocked() {
        let mut stock = given(vec![InventoryEvent::StockLevelSet {
            on_hand: 10,
            low_stock_threshold: 5,
        }]);
        let first = stock.apply_all(stock.reserve(&sku(), &res(1), qty(6)).unwrap());
        assert!(matches!(
            first.last(),
            Some(InventoryEvent::LowStockDetected {
                available: 4,
                threshold: 5
            })
        ));
        let second = stock.apply_all(stock.reserve(&sku(), &res(2), qty(1)).unwrap());
        assert_eq!(second.len(), 1, "still low: no second alert");
        let restock = stock.apply_all(stock.receive(qty(10)).unwrap());
        assert!(matches!(
            restock.last(),
            Some(InventoryEvent::LowStockCleared { .. })
        ));
        let again = stock.apply_all(stock.reserve(&sku(), &res(3), qty(9)).unwrap());
        assert!(
            matches!(again.last(), Some(InventoryEvent::LowStockDetected { .. })),
            "re-armed"
        );
    }

    #[test]
    fn on_hand_cannot_be_counted_below_reserved() {
        let mut stock = given(vec![InventoryEvent::StockLevelSet {
            on_hand: 5,
            low_stock_threshold: 0,
        }]);
        stock.apply_all(stock.reserve(&sku(), &res(1), qty(4)).unwrap());
        assert_eq!(
            stock.set_level(3, 0),
            Err(DomainError::BelowReserved {
                on_hand: 3,
                reserved: 4
            })
        );
    }

    #[test]
    fn stock_figures_are_bounded() {
        let stock = given(vec![InventoryEvent::StockLevelSet {
            on_hand: MAX_STOCK,
            low_stock_threshold: 0,
        }]);
        assert_eq!(stock.receive(qty(1)), Err(DomainError::QuantityOverflow));
        assert_eq!(
            Inventory::default().set_level(MAX_STOCK + 1, 0),
            Err(DomainError::QuantityOverflow)
        );
        assert_eq!(
            Inventory::default().set_level(1, MAX_STOCK + 1),
            Err(DomainError::QuantityOverflow)
        );
    }

    #[test]
    fn setting_the_same_level_records_nothing() {
        let stock = given(vec![InventoryEvent::StockLevelSet {
            on_hand: 5,
            low_stock_threshold: 1,
        }]);
        assert_eq!(stock.set_level(5, 1), Ok(vec![]));
    }

    #[derive(Debug, Clone)]
    enum Command {
        Set(u64, u64),
        Receive(u32),
        Reserve(u32),
        Release(u32),
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0u64..50, 0u64..20).prop_map(|(a, b)| Command::Set(a, b)),
            (1u32..30).prop_map(Command::Receive),
            (1u32..30).prop_map(Command::Reserve),
            (1u32..30).prop_map(Command::Release),
        ]
    }

    proptest! {
        /// Whatever commands arrive, accepted or refused, the books balance and a replay agrees.
        #[test]
        fn stock_invariants_hold_under_any_commands(commands in proptest::collection::vec(command(), 0..60)) {
            let mut stock = Inventory::default();
            let mut history = Vec::new();
            for (n, command) in commands.into_iter().enumerate() {
                let before = stock.clone();
                let n = u32::try_from(n).unwrap();
                let decided = match command {
                    Command::Set(on_hand, threshold) => stock.set_level(on_hand, threshold),
                    Command::Receive(q) => stock.receive(qty(q)),
                    Command::Reserve(q) => stock.reserve(&sku(), &res(n), qty(q)),
                    Command::Release(q) => stock.release(&res(n), qty(q)),
                };
                match decided {
                    Ok(events) => history.extend(stock.apply_all(events)),
                    Err(_) => prop_assert_eq!(&stock, &before, "a refused command changes nothing"),
                }
                prop_assert!(stock.reserved <= stock.on_hand, "reserved never exceeds on hand");
                prop_assert_eq!(stock.on_hand, stock.available() + stock.reserved);
                prop_assert_eq!(stock.low_stock_flagged, stock.is_low(), "alert state follows the level");
            }
            prop_assert_eq!(Inventory::rebuild(&history), stock);
            let alerts: Vec<bool> = history.iter().filter_map(|e| match e {
                InventoryEvent::LowStockDetected { .. } => Some(true),
                InventoryEvent::LowStockCleared { .. } => Some(false),
                _ => None,
            }).collect();
            prop_assert!(alerts.windows(2).all(|w| w[0] != w[1]), "detected and cleared alternate");
        }
    }
}
