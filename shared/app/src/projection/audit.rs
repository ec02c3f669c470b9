//! The audit trail: every event of a shop, with who did it, when and in which request.
//!
//! Each event is kept in the shop's day of its generation, in one of up to [`DAY_SHARDS`]
//! partitions by event id (`day#YYYY-MM-DD#N`: on DynamoDB one partition takes about 1,000
//! writes a second, and a shop's every event lands in its day; see [`crate::Table::shards`]), sorted
//! by time then event id; a day is read merged. A query that names one aggregate reads that
//! aggregate's event stream instead, which holds the same envelopes in version order; any
//! other query reads the days of its time range. Filters on actor and event type apply to what is read, so a page may come
//! back short, with a cursor to go on.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Draft, Event, Projection};
use crate::bus::FilterPolicy;
use crate::event_store::Envelope;
use crate::table::{StoreError, Table};

#[derive(Debug, Clone, Copy, Default)]
pub struct Audit;

impl Projection for Audit {
    const NAME: &'static str = "audit";
    const MAX_WRITES: usize = 1;
    /// An entry per event, keyed by the event: a repeat writes it again, the same.
    const ORDERED: bool = false;

    fn filter() -> FilterPolicy {
        FilterPolicy::default()
    }

    async fn apply<T: Table>(draft: &mut Draft<'_, T>, event: &Event) -> Result<(), StoreError> {
        let at = event
            .occurred_at_ms()
            .ok_or_else(|| StoreError::Failure(format!("event {} has no valid time", event.id)))?;
        let sk = entry_sk(at, &event.id.to_string());
        let id = event.id.to_string();
        let shards = draft.table().shards(DAY_SHARDS);
        let day = day_partition(&crate::views::day(at), day_shard(&id, shards));
        draft.put(draft.partition(&event.tenant, &day), sk, event)?;
        Ok(())
    }
}

/// Sorted by time, then by event id (UUIDv7: itself time-ordered).
pub fn entry_sk(at_ms: i64, event_id: &str) -> String {
    format!("{at_ms:013}#{event_id}")
}

/// The first sort key at or after `at_ms` is after this.
pub fn entries_from(at_ms: i64) -> String {
    format!("{at_ms:013}")
}

/// Partitions one day's entries are spread over, at most.
pub const DAY_SHARDS: u32 = 16;

pub fn day_partition(day: &str, shard: u32) -> String {
    format!("day#{day}#{shard}")
}

/// Every partition a day's entries may be in: its shards, then the single partition days were
/// kept in before they were sharded.
pub fn day_partitions(day: &str) -> Vec<String> {
    (0..DAY_SHARDS)
        .map(|shard| day_partition(day, shard))
        .chain([format!("day#{day}")])
        .collect()
}

fn day_shard(event_id: &str, shards: u32) -> u32 {
    event_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % shards.max(1)
}

/// One event as the audit trail shows it: its envelope.
pub type AuditEntry = Envelope<Value>;

/// What an operator asks the trail for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuditFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub actor: Option<String>,
    pub event_type: Option<String>,
}

impl AuditFilter {
    pub fn admits(&self, entry: &AuditEntry) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        same(&self.aggregate_type, &entry.aggregate_type)
            && same(&self.aggregate_id, &entry.aggregate_id)
            && same(&self.actor, &entry.actor)
            && same(&self.event_type, &entry.event_type)
    }
}
