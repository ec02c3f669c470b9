//! The audit trail: every event of a shop, with who did it, when and in which request.
//!
//! Events are not copied for it: each event item is listed in the table's secondary index
//! under its shop's day (`{tenant}#audit#YYYY-MM-DD#N`, one of up to [`DAY_SHARDS`] partitions
//! by event id: on DynamoDB one partition takes about 1,000 writes a second, and a shop's
//! every event lands in its day; see [`crate::Table::shards`]), sorted by time then event id; a
//! day is read merged. A query that names one aggregate reads that aggregate's event stream
//! instead, which holds the same envelopes in version order. Filters on actor and event type
//! apply to what is read, so a page may come back short, with a cursor to go on.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event_store::Envelope;
use crate::table::{IndexKey, StoreError, Table};

/// One event as the audit trail shows it: its envelope.
pub type AuditEntry = Envelope<Value>;

/// Partitions one day's entries are spread over, at most.
pub const DAY_SHARDS: u32 = 16;

/// Where the index lists an event recorded at `at_ms`, spread over `shards` partitions a day.
pub fn index_key(tenant: &str, at_ms: i64, event_id: &str, shards: u32) -> IndexKey {
    let day = crate::views::day(at_ms);
    IndexKey {
        pk: day_partition(tenant, &day, day_shard(event_id, shards)),
        sk: entry_sk(at_ms, event_id),
    }
}

/// The same entry's key on a store that spreads a day over `shards` partitions, from its key
/// for [`DAY_SHARDS`]: the event id at the end of the sort key picks the shard again.
pub fn narrowed(key: &IndexKey, shards: u32) -> IndexKey {
    let id = key.sk.split_once('#').map_or("", |(_, id)| id);
    let day = key.pk.rsplit_once('#').map_or("", |(day, _)| day);
    IndexKey {
        pk: format!("{day}#{}", day_shard(id, shards)),
        sk: key.sk.clone(),
    }
}

/// Every index partition a shop's day may be in, whichever store wrote it.
pub fn day_partitions(tenant: &str, day: &str) -> Vec<String> {
    (0..DAY_SHARDS)
        .map(|shard| day_partition(tenant, day, shard))
        .collect()
}

fn day_partition(tenant: &str, day: &str, shard: u32) -> String {
    format!("{tenant}#audit#{day}#{shard}")
}

/// Sorted by time, then by event id (UUIDv7: itself time-ordered).
pub fn entry_sk(at_ms: i64, event_id: &str) -> String {
    format!("{at_ms:013}#{event_id}")
}

/// The first sort key at or after `at_ms` is after this.
pub fn entries_from(at_ms: i64) -> String {
    format!("{at_ms:013}")
}

fn day_shard(event_id: &str, shards: u32) -> u32 {
    event_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % shards.max(1)
}

/// What listing the events stored before the audit trail was an index did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    /// Event items read.
    pub events: u64,
    /// Of them, listed now (the rest were listed already, or are no envelope with a time).
    pub listed: u64,
}

/// Lists every event the index does not list yet under its day, as `Changes` lists new ones:
/// for a store whose events were recorded before the audit trail was an index. It reads the
/// whole table, page by page; run again, it lists nothing twice. `progress` hears after each
/// page.
pub async fn list_unlisted_events<T: Table>(
    table: &T,
    mut progress: impl FnMut(&Listed),
) -> Result<Listed, StoreError> {
    let shards = table.shards(DAY_SHARDS);
    let mut done = Listed::default();
    let mut after: Option<String> = None;
    loop {
        let page = table.scan_events(after.as_deref(), 500).await?;
        for item in &page.items {
            done.events += 1;
            if item.index.is_some() {
                continue;
            }
            let Ok(envelope) = serde_json::from_slice::<AuditEntry>(&item.data) else {
                continue;
            };
            let Some(at) = envelope.occurred_at_ms() else {
                continue;
            };
            let key = index_key(&envelope.tenant, at, &envelope.id.to_string(), shards);
            if table.list_in_index(&item.pk, &item.sk, key).await? {
                done.listed += 1;
            }
        }
        progress(&done);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(done),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_narrowed_to_fewer_shards_is_the_key_made_for_them() {
        let id = "0192f7a0-0000-7000-8000-000000000042";
        let at = 1_795_700_000_123;
        let wide = index_key("acme", at, id, DAY_SHARDS);
        assert_eq!(narrowed(&wide, 1), index_key("acme", at, id, 1));
        assert_eq!(
            narrowed(&wide, 1).pk,
            format!("acme#audit#{}#0", crate::views::day(at))
        );
        assert_eq!(narrowed(&wide, DAY_SHARDS), wide);
        assert_eq!(wide.sk, format!("{at:013}#{id}"));
        assert!(day_partitions("acme", &crate::views::day(at)).contains(&wide.pk));
    }
}
