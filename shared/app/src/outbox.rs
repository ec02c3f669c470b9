//! The transactional outbox: events leave the store through its change feed.
//!
//! An event is written as [`Write::Event`](crate::table::Write::Event) in the same transaction
//! as the state it explains, and the store hands it to its change feed only if that
//! transaction commits: there is no second write that could be lost or made alone. On DynamoDB
//! the table's stream is the feed (filtered to event inserts); on SQLite, a row the adapter
//! writes in the event's own savepoint. A publisher takes events from the feed to the bus and
//! acknowledges them after; a crash in between publishes them again, which consumers absorb
//! by event id.

use std::future::Future;

use crate::table::StoreError;

/// One committed event as the feed hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// Where the feed stands after this event; opaque to callers.
    pub position: String,
    /// The event's envelope, as stored (JSON).
    pub envelope: Vec<u8>,
}

pub trait ChangeFeed: Send + Sync + 'static {
    /// Up to `limit` committed events after `after` (`None`: from the oldest not acknowledged),
    /// in commit order. Each is handed out at least once; an aggregate's events carry
    /// versions, so its order is recoverable whatever the feed's.
    fn read(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<FeedEvent>, StoreError>> + Send;

    /// Every event up to and including `through` reached the bus: it may be forgotten.
    fn acknowledge(&self, through: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Why events could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Feed(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// Takes up to `limit` unacknowledged events from the feed to the topic, then acknowledges
/// them. A crash between the two publishes them again, which consumers absorb. Returns how many
/// went out (0: the feed is drained).
pub async fn publish_pending<F: ChangeFeed, T: crate::bus::Topic>(
    feed: &F,
    topic: &T,
    limit: usize,
) -> Result<usize, PublishError> {
    let events = feed.read(None, limit).await?;
    let Some(last) = events.last().map(|e| e.position.clone()) else {
        return Ok(0);
    };
    let messages = events
        .iter()
        .map(|e| crate::bus::Message::for_event(&e.envelope))
        .collect::<Result<Vec<_>, _>>()?;
    let mut per_tenant: std::collections::BTreeMap<String, usize> = Default::default();
    for message in &messages {
        if let Some(tenant) = message.attributes.get(crate::bus::TENANT) {
            *per_tenant.entry(tenant.clone()).or_default() += 1;
        }
    }
    topic.publish(messages).await?;
    feed.acknowledge(&last).await?;
    for (tenant, n) in per_tenant {
        crate::metrics::published(&tenant, n);
    }
    Ok(events.len())
}
