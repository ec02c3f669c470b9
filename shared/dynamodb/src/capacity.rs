//! Capacity units per operation, counted two ways: as the service reports them
//! (`ReturnConsumedCapacity=TOTAL` on every call) and as sized from the request and the items
//! read, by DynamoDB's published rules. The service's figure is the bill; the sized one is known
//! everywhere, emulators included, and is what the capacity model in `docs/capacity.md` is built
//! from. Sizing cannot see an item a write replaces or deletes, so for those it counts the new
//! item, or one unit: a floor where that item is larger than 1 KB.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity};

/// The DynamoDB calls the adapter makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    GetItem,
    Query,
    Scan,
    PutItem,
    UpdateItem,
    DeleteItem,
    TransactWriteItems,
}

/// What calls of one operation used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Units {
    /// Calls that reached the table, whether their conditions held or not: a failed condition
    /// is billed like a write.
    pub calls: u64,
    /// Read units sized from the items read.
    pub read: f64,
    /// Write units sized from the items written.
    pub write: f64,
    /// Units the service reported, when it did (emulators may leave them out).
    pub reported: f64,
}

impl Units {
    fn add(&mut self, other: &Units) {
        self.calls += other.calls;
        self.read += other.read;
        self.write += other.write;
        self.reported += other.reported;
    }
}

#[derive(Debug, Default)]
struct Counts {
    units: BTreeMap<Operation, Units>,
    /// The IAM actions needed, each with whether it was on the personal-data table.
    actions: BTreeSet<(&'static str, bool)>,
    /// The IAM actions needed on the main table's index (its resource is the index's own).
    index_actions: BTreeSet<&'static str>,
    /// The partition keys called on, once asked for: a test's, never a serving process's,
    /// whose set would only grow.
    keys: Option<BTreeSet<String>>,
}

/// Counts per operation, and the IAM actions the calls needed, shared by clones of one table
/// handle.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<Mutex<Counts>>);

impl Counter {
    /// Notes a call about to be made: the IAM action it needs, on partition `pk`.
    pub(crate) fn called(&self, action: &'static str, pk: &str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .actions
            .insert((action, commerce_app::table::is_personal(pk)));
        if let Some(keys) = counts.keys.as_mut() {
            keys.insert(pk.to_owned());
        }
    }

    /// Notes a call on the main table's index about to be made: the IAM action it needs. Its
    /// partition key is the index's, which no `dynamodb:LeadingKeys` of the table covers.
    pub(crate) fn called_on_index(&self, action: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.index_actions.insert(action);
    }

    /// The IAM actions the calls so far needed on the main table's index.
    pub fn actions_on_index(&self) -> BTreeSet<&'static str> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.index_actions.clone()
    }

    /// The IAM actions the calls so far needed, on the personal-data table or on the main one.
    pub fn actions_on(&self, personal: bool) -> BTreeSet<&'static str> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .actions
            .iter()
            .filter(|(_, on_personal)| *on_personal == personal)
            .map(|(action, _)| *action)
            .collect()
    }

    /// The IAM actions the calls so far needed, on either table.
    pub fn actions(&self) -> BTreeSet<&'static str> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.actions.iter().map(|(action, _)| *action).collect()
    }

    /// From now on, notes the partition key of every call ([`Counter::keys`]).
    pub fn note_keys(&self) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.keys.get_or_insert_with(BTreeSet::new);
    }

    /// The partition keys called on since [`Counter::note_keys`].
    pub fn keys(&self) -> BTreeSet<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .clone()
            .unwrap_or_default()
    }

    pub(crate) fn record(&self, operation: Operation, units: Units) {
        tracing::trace!(
            ?operation,
            read = units.read,
            write = units.write,
            reported = units.reported,
            "capacity"
        );
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.units.entry(operation).or_default().add(&units);
    }

    /// What was used so far.
    pub fn snapshot(&self) -> Consumed {
        Consumed(
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .units
                .clone(),
        )
    }
}

/// A snapshot of units used, per operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consumed(BTreeMap<Operation, Units>);

impl Consumed {
    pub fn get(&self, operation: Operation) -> Units {
        self.0.get(&operation).copied().unwrap_or_default()
    }

    /// All operations together.
    pub fn total(&self) -> Units {
        let mut total = Units::default();
        for units in self.0.values() {
            total.add(units);
        }
        total
    }

    /// What was used between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Consumed) -> Consumed {
        let mut out = BTreeMap::new();
        for (operation, now) in &self.0 {
            let before = earlier.get(*operation);
            let delta = Units {
                calls: now.calls.saturating_sub(before.calls),
                read: now.read - before.read,
                write: now.write - before.write,
                reported: now.reported - before.reported,
            };
            if delta.calls > 0 {
                out.insert(*operation, delta);
            }
        }
        Consumed(out)
    }
}

/// An item's size as DynamoDB counts it: each attribute's name plus its value.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(list) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// One byte per two significant digits, plus one.
fn number_size(n: &str) -> usize {
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// Write units of one item: one per started KB; a transaction writes each item twice.
pub fn write_units(size: usize, transactional: bool) -> f64 {
    let units = size.div_ceil(1024).max(1) as f64;
    if transactional { units * 2.0 } else { units }
}

/// Read units of one read of `size` bytes in all: one per started 4 KB when consistent, half
/// that when not. Reading nothing still costs the minimum.
pub fn read_units(size: usize, consistent: bool) -> f64 {
    let units = size.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

/// The units a response reports, summed over its tables.
pub fn reported<'a>(capacity: impl IntoIterator<Item = &'a ConsumedCapacity>) -> f64 {
    capacity
        .into_iter()
        .filter_map(ConsumedCapacity::capacity_units)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_published_rules() {
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("acme#order#1".into())),
            ("v".to_owned(), AttributeValue::N("12".into())),
            ("e".to_owned(), AttributeValue::Bool(true)),
        ]);
        // "pk" + 12 bytes, "v" + one byte for two digits + 1, "e" + 1.
        assert_eq!(item_size(&item), 2 + 12 + 1 + 2 + 1 + 1);
        assert_eq!(number_size("1700000000"), 2);
        assert_eq!(number_size("-0.0012300"), 3);
        assert_eq!(number_size("0"), 1);
    }

    #[test]
    fn units_round_up_per_kilobyte_written_and_four_read() {
        assert_eq!(write_units(1, false), 1.0);
        assert_eq!(write_units(1024, false), 1.0);
        assert_eq!(write_units(1025, false), 2.0);
        assert_eq!(write_units(1025, true), 4.0);
        assert_eq!(read_units(0, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(100, false), 0.5);
    }

    #[test]
    fn a_delta_keeps_only_what_was_called() {
        let counter = Counter::default();
        counter.record(
            Operation::GetItem,
            Units {
                calls: 1,
                read: 1.0,
                ..Units::default()
            },
        );
        let before = counter.snapshot();
        counter.record(
            Operation::PutItem,
            Units {
                calls: 1,
                write: 2.0,
                reported: 2.0,
                ..Units::default()
            },
        );
        let delta = counter.snapshot().since(&before);
        assert_eq!(delta.get(Operation::GetItem), Units::default());
        assert_eq!(delta.get(Operation::PutItem).write, 2.0);
        assert_eq!(delta.total().calls, 1);
    }
}
