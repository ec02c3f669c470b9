//! The outbox as the shop relies on it: every committed event reaches the change feed, an
//! aggregate's order can be recovered from its versions, and nothing else gets there: no event
//! of a transaction that failed, no plain item, nothing personal.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use commerce_domain::{Inventory, Quantity};
use serde_json::Value;

use crate::event_store::{Changes, CommitError, Envelope, Origin, load};
use crate::outbox::ChangeFeed;
use crate::table::{Condition, Item, StoreError, Table, Write};

/// Everything the feed hands out until `want` events (or a quiet spell) have come.
async fn drain<F: ChangeFeed>(feed: &F, want: usize) -> Vec<Envelope<Value>> {
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_since = Instant::now();
    loop {
        let page = feed.read(after.as_deref(), 100).await.unwrap();
        if let Some(last) = page.last() {
            after = Some(last.position.clone());
            quiet_since = Instant::now();
        }
        for event in page {
            seen.push(serde_json::from_slice(&event.envelope).unwrap());
        }
        let quiet = quiet_since.elapsed() > Duration::from_millis(1500);
        if (seen.len() >= want && quiet) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn origin() -> Origin {
    Origin {
        actor: "alice".into(),
        correlation_id: "req-1".into(),
        causation_id: None,
    }
}

/// Receives `units` into a SKU's stock in one commit of its own.
async fn receive<T: Table>(table: &T, sku: &str, units: u32) -> Result<(), CommitError> {
    let pk = format!("acme#inventory#{sku}");
    let mut stock = load::<Inventory, _>(table, pk).await?;
    let events = stock.state.receive(Quantity::new(units).unwrap()).unwrap();
    let mut changes = Changes::new(origin());
    changes.append(&mut stock, events, 1_700_000_000_000)?;
    changes.commit(table).await
}

pub async fn every_committed_event_reaches_the_feed<T: Table, F: ChangeFeed>(table: &T, feed: &F) {
    for round in 0..3 {
        for sku in ["a", "b", "c"] {
            receive(table, sku, round + 1).await.unwrap();
        }
    }
    let seen = drain(feed, 9).await;
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &seen {
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.aggregate_type, "inventory");
        assert_eq!(event.event_type, "StockReceived");
        assert_eq!(event.actor, "alice");
        assert_eq!(event.correlation_id, "req-1");
        assert_eq!(event.occurred_at, "2023-11-14T22:13:20.000Z");
        assert_eq!(event.id.get_version_num(), 7, "event ids are UUIDv7");
        versions
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event.aggregate_version);
    }
    // At least once: duplicates are allowed, gaps are not; sorting by version recovers order.
    for (sku, mut got) in versions.clone() {
        got.sort_unstable();
        got.dedup();
        assert_eq!(
            got,
            vec![1, 2, 3],
            "every version of {sku} reached the feed"
        );
    }
    assert_eq!(versions.len(), 3, "{versions:?}");
    let stock = load::<Inventory, _>(table, "acme#inventory#a".into())
        .await
        .unwrap();
    assert_eq!(stock.state.available(), 6);
}

pub async fn a_failed_transaction_reaches_no_feed<T: Table, F: ChangeFeed>(table: &T, feed: &F) {
    receive(table, "kept", 1).await.unwrap();
    // An event whose transaction fails on another write's condition.
    let event = Item {
        pk: "acme#inventory#lost".into(),
        sk: "event#000000000001".into(),
        version: 1,
        data: br#"{"id":"x"}"#.to_vec(),
        expires_at: None,
        owner: None,
        index: None,
    };
    let failed = table
        .transact(vec![
            Write::Event { item: event },
            Write::Check {
                pk: "acme#nothing".into(),
                sk: "here".into(),
                condition: Condition::VersionIs(7),
            },
        ])
        .await;
    assert!(
        matches!(failed, Err(StoreError::ConditionFailed { index: 1 })),
        "{failed:?}"
    );
    // And one whose event is a duplicate: the stream has moved on.
    let mut stale = load::<Inventory, _>(table, "acme#inventory#kept".into())
        .await
        .unwrap();
    receive(table, "kept", 1).await.unwrap();
    let events = stale.state.receive(Quantity::new(5).unwrap()).unwrap();
    let mut changes = Changes::new(origin());
    changes.append(&mut stale, events, 0).unwrap();
    assert!(matches!(
        changes.commit(table).await,
        Err(CommitError::StreamConflict)
    ));
    let seen = drain(feed, 2).await;
    let ids: Vec<_> = seen
        .iter()
        .map(|e| (e.aggregate_id.as_str(), e.aggregate_version))
        .collect();
    assert!(
        ids.iter().all(|(id, _)| *id == "kept"),
        "nothing of a failed transaction: {ids:?}"
    );
    let mut versions: Vec<u64> = ids.iter().map(|(_, v)| *v).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions, vec![1, 2]);
    assert!(
        seen.iter()
            .all(|e| e.data["quantity"] == serde_json::json!(1)),
        "the stale commit's event never left: {seen:?}"
    );
}

pub async fn only_events_reach_the_feed<T: Table, F: ChangeFeed>(table: &T, feed: &F) {
    let plain = Item {
        pk: "acme#catalog".into(),
        sk: "a".into(),
        version: 0,
        data: b"{}".to_vec(),
        expires_at: None,
        owner: None,
        index: None,
    };
    let contact = Item {
        pk: "personal#acme#contact#order#o1".into(),
        ..plain.clone()
    };
    table
        .transact(vec![
            Write::Put {
                item: plain,
                condition: Condition::None,
            },
            Write::Put {
                item: contact.clone(),
                condition: Condition::None,
            },
        ])
        .await
        .unwrap();
    let personal_event = table
        .transact(vec![Write::Event {
            item: Item {
                sk: "event#000000000001".into(),
                ..contact
            },
        }])
        .await;
    assert!(
        matches!(personal_event, Err(StoreError::Failure(_))),
        "personal data is never an event: {personal_event:?}"
    );
    receive(table, "last", 2).await.unwrap();
    let seen = drain(feed, 1).await;
    assert!(
        seen.iter().all(|e| e.aggregate_id == "last"),
        "only the event left: {seen:?}"
    );
    assert!(!seen.is_empty());
}
