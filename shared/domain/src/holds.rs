use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DomainError, Line, ReservationId, Sku};

/// What one customer may hold at once, so no account can lock up a sale's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// Longest hold a reservation may ask for, in seconds.
    pub max_ttl_seconds: u32,
    /// Reservations held at once.
    pub max_holds: usize,
    /// Units of one SKU held at once.
    pub max_units_per_sku: u64,
    /// Units of all SKUs held at once.
    pub max_units: u64,
}

impl Default for HoldLimits {
    fn default() -> Self {
        Self {
            max_ttl_seconds: 3_600,
            max_holds: 10,
            max_units_per_sku: 100,
            max_units: 1_000,
        }
    }
}

/// Every hold one customer has open, by reservation: what the limits are checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerHolds {
    holds: BTreeMap<ReservationId, Vec<Line>>,
}

impl CustomerHolds {
    /// Opens a hold if the customer stays within `limits` with it.
    pub fn add(
        &mut self,
        id: &ReservationId,
        lines: &[Line],
        limits: &HoldLimits,
    ) -> Result<(), DomainError> {
        if self.holds.contains_key(id) {
            return Ok(());
        }
        if self.holds.len() >= limits.max_holds {
            return Err(DomainError::HoldLimit {
                limit: format!("at most {} holds at once", limits.max_holds),
            });
        }
        let mut per_sku: BTreeMap<&Sku, u64> = BTreeMap::new();
        for line in self.holds.values().flatten().chain(lines) {
            *per_sku.entry(&line.sku).or_default() += u64::from(line.quantity.get());
        }
        if let Some((sku, units)) = per_sku
            .iter()
            .find(|(_, units)| **units > limits.max_units_per_sku)
        {
            return Err(DomainError::HoldLimit {
                limit: format!(
                    "at most {} units of {sku} held at once (this would make {units})",
                    limits.max_units_per_sku
                ),
            });
        }
        let units: u64 = per_sku.values().sum();
        if units > limits.max_units {
            return Err(DomainError::HoldLimit {
                limit: format!(
                    "at most {} units held at once (this would make {units})",
                    limits.max_units
                ),
            });
        }
        self.holds.insert(id.clone(), lines.to_vec());
        Ok(())
    }

    /// The hold ended (ordered, released or expired); its units count no more. Says whether
    /// it was counted at all.
    pub fn remove(&mut self, id: &ReservationId) -> bool {
        self.holds.remove(id).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quantity;

    fn line(sku: &str, q: u32) -> Line {
        Line {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::new(q).unwrap(),
        }
    }

    fn id(n: u32) -> ReservationId {
        ReservationId::parse(format!("r{n}")).unwrap()
    }

    const LIMITS: HoldLimits = HoldLimits {
        max_ttl_seconds: 60,
        max_holds: 3,
        max_units_per_sku: 10,
        max_units: 15,
    };

    #[test]
    fn holds_are_counted() {
        let mut holds = CustomerHolds::default();
        for n in 0..3 {
            holds.add(&id(n), &[line("A", 1)], &LIMITS).unwrap();
        }
        assert!(matches!(
            holds.add(&id(3), &[line("B", 1)], &LIMITS),
            Err(DomainError::HoldLimit { .. })
        ));
        holds.remove(&id(0));
        holds.add(&id(3), &[line("B", 1)], &LIMITS).unwrap();
    }

    #[test]
    fn units_are_counted_per_sku_and_in_total() {
        let mut holds = CustomerHolds::default();
        holds.add(&id(0), &[line("A", 8)], &LIMITS).unwrap();
        assert!(
            holds.add(&id(1), &[line("A", 3)], &LIMITS).is_err(),
            "11 of A"
        );
        holds
            .add(&id(1), &[line("A", 2), line("B", 5)], &LIMITS)
            .unwrap();
        assert!(
            holds.add(&id(2), &[line("C", 1)], &LIMITS).is_err(),
            "16 in all"
        );
        holds.remove(&id(1));
        holds.add(&id(2), &[line("C", 7)], &LIMITS).unwrap();
    }

    #[test]
    fn adding_the_same_hold_twice_counts_it_once() {
        let mut holds = CustomerHolds::default();
        holds.add(&id(0), &[line("A", 10)], &LIMITS).unwrap();
        holds.add(&id(0), &[line("A", 10)], &LIMITS).unwrap();
        holds.remove(&id(0));
        assert!(holds.is_empty());
    }
}
