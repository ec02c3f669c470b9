//! The contract every [`Table`] adapter must meet, run against each of them.
//!
//! An adapter's test file calls [`table_contract!`](crate::table_contract) with an async
//! expression that makes a fresh, empty table (and a guard); every case below then runs on it. The cases are
//! DynamoDB's semantics as the shop relies on them: conditions, all-or-nothing transactions,
//! TTL, paging, and the event store's gapless versions under racing writers.

// Test support: a case that does not hold must panic, as assertions do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use commerce_domain::{Inventory, InventoryEvent, Quantity, ReservationId, Sku};

use crate::clock::now_seconds;
use crate::event_store::{Changes, CommitError, load, read_events, rebuild};
use crate::table::{Condition, Item, Query, StoreError, Table, Write};

fn item(pk: &str, sk: &str, version: u64) -> Item {
    Item {
        pk: pk.into(),
        sk: sk.into(),
        version,
        data: format!("{{\"v\":{version}}}").into_bytes(),
        expires_at: None,
    }
}

fn put(item: Item, condition: Condition) -> Write {
    Write::Put { item, condition }
}

pub async fn put_if_absent_then_read_back<T: Table>(table: &T) {
    table
        .transact(vec![put(item("p", "a", 1), Condition::Absent)])
        .await
        .unwrap();
    assert_eq!(table.get("p", "a").await.unwrap(), Some(item("p", "a", 1)));
    assert_eq!(table.get("p", "missing").await.unwrap(), None);
    let again = table
        .transact(vec![put(item("p", "a", 2), Condition::Absent)])
        .await;
    assert!(
        matches!(again, Err(StoreError::ConditionFailed { index: 0 })),
        "{again:?}"
    );
    assert_eq!(
        table.get("p", "a").await.unwrap(),
        Some(item("p", "a", 1)),
        "a failed put changes nothing"
    );
}

pub async fn version_condition_guards_updates<T: Table>(table: &T) {
    table
        .transact(vec![put(item("p", "a", 1), Condition::Absent)])
        .await
        .unwrap();
    let stale = table
        .transact(vec![put(item("p", "a", 5), Condition::VersionIs(4))])
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::ConditionFailed { index: 0 })
    ));
    table
        .transact(vec![put(item("p", "a", 2), Condition::VersionIs(1))])
        .await
        .unwrap();
    assert_eq!(table.get("p", "a").await.unwrap().unwrap().version, 2);
    let missing = table
        .transact(vec![put(item("p", "b", 2), Condition::VersionIs(1))])
        .await;
    assert!(
        matches!(missing, Err(StoreError::ConditionFailed { index: 0 })),
        "a version condition needs the item"
    );
    table
        .transact(vec![put(item("p", "a", 9), Condition::None)])
        .await
        .unwrap();
    assert_eq!(table.get("p", "a").await.unwrap().unwrap().version, 9);
}

pub async fn transactions_are_all_or_nothing<T: Table>(table: &T) {
    table
        .transact(vec![put(item("p", "taken", 1), Condition::Absent)])
        .await
        .unwrap();
    let result = table
        .transact(vec![
            put(item("p", "x", 1), Condition::Absent),
            put(item("q", "y", 1), Condition::None),
            put(item("p", "taken", 1), Condition::Absent),
        ])
        .await;
    assert!(
        matches!(result, Err(StoreError::ConditionFailed { index: 2 })),
        "{result:?}"
    );
    assert_eq!(table.get("p", "x").await.unwrap(), None);
    assert_eq!(table.get("q", "y").await.unwrap(), None);
}

pub async fn deletes_and_checks_honour_conditions<T: Table>(table: &T) {
    table
        .transact(vec![put(item("p", "a", 3), Condition::Absent)])
        .await
        .unwrap();
    let check = table
        .transact(vec![Write::Check {
            pk: "p".into(),
            sk: "a".into(),
            condition: Condition::VersionIs(2),
        }])
        .await;
    assert!(matches!(
        check,
        Err(StoreError::ConditionFailed { index: 0 })
    ));
    let wrong = table
        .transact(vec![Write::Delete {
            pk: "p".into(),
            sk: "a".into(),
            condition: Condition::VersionIs(2),
        }])
        .await;
    assert!(matches!(
        wrong,
        Err(StoreError::ConditionFailed { index: 0 })
    ));
    table
        .transact(vec![
            Write::Check {
                pk: "p".into(),
                sk: "none".into(),
                condition: Condition::Absent,
            },
            Write::Delete {
                pk: "p".into(),
                sk: "a".into(),
                condition: Condition::VersionIs(3),
            },
        ])
        .await
        .unwrap();
    assert_eq!(table.get("p", "a").await.unwrap(), None);
    table
        .transact(vec![Write::Delete {
            pk: "p".into(),
            sk: "a".into(),
            condition: Condition::None,
        }])
        .await
        .unwrap();
}

pub async fn two_writes_to_one_key_are_refused<T: Table>(table: &T) {
    let result = table
        .transact(vec![
            put(item("p", "a", 1), Condition::None),
            put(item("p", "a", 2), Condition::None),
        ])
        .await;
    assert!(matches!(result, Err(StoreError::Failure(_))), "{result:?}");
    assert_eq!(table.get("p", "a").await.unwrap(), None);
}

pub async fn expired_items_are_gone<T: Table>(table: &T) {
    let mut old = item("p", "old", 1);
    old.expires_at = Some(now_seconds() - 1);
    let mut fresh = item("p", "fresh", 1);
    fresh.expires_at = Some(now_seconds() + 3600);
    table
        .transact(vec![
            put(old, Condition::None),
            put(fresh.clone(), Condition::None),
        ])
        .await
        .unwrap();
    assert_eq!(
        table.get("p", "old").await.unwrap(),
        None,
        "expired items cannot be read"
    );
    assert_eq!(table.get("p", "fresh").await.unwrap(), Some(fresh));
    let page = table
        .query(Query {
            pk: "p",
            prefix: "",
            after: None,
            limit: 10,
            descending: false,
        })
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|i| i.sk.as_str()).collect::<Vec<_>>(),
        vec!["fresh"]
    );
    table
        .transact(vec![put(item("p", "old", 2), Condition::Absent)])
        .await
        .unwrap();
    assert_eq!(
        table.get("p", "old").await.unwrap().unwrap().version,
        2,
        "an expired item counts as absent"
    );
    let stale = table
        .transact(vec![put(item("p", "fresh", 2), Condition::Absent)])
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::ConditionFailed { index: 0 })
    ));
}

pub async fn queries_page_through_one_partition<T: Table>(table: &T) {
    let mut writes: Vec<Write> = (0..7)
        .map(|n| put(item("list", &format!("k{n}"), 1), Condition::None))
        .collect();
    writes.push(put(item("list", "other", 1), Condition::None));
    writes.push(put(item("elsewhere", "k1", 1), Condition::None));
    table.transact(writes).await.unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = table
            .query(Query {
                pk: "list",
                prefix: "k",
                after: after.as_deref(),
                limit: 3,
                descending: false,
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|i| i.sk.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|n| format!("k{n}")).collect::<Vec<_>>());

    let newest = table
        .query(Query {
            pk: "list",
            prefix: "k",
            after: None,
            limit: 2,
            descending: true,
        })
        .await
        .unwrap();
    assert_eq!(
        newest
            .items
            .iter()
            .map(|i| i.sk.as_str())
            .collect::<Vec<_>>(),
        vec!["k6", "k5"]
    );
    let next = table
        .query(Query {
            pk: "list",
            prefix: "k",
            after: newest.next.as_deref(),
            limit: 10,
            descending: true,
        })
        .await
        .unwrap();
    assert_eq!(next.items.first().map(|i| i.sk.as_str()), Some("k4"));
    assert_eq!(next.next, None);

    let all = table
        .query(Query {
            pk: "list",
            prefix: "",
            after: None,
            limit: 100,
            descending: false,
        })
        .await
        .unwrap();
    assert_eq!(all.items.len(), 8);
    assert_eq!(all.next, None);
}

fn sku() -> Sku {
    Sku::parse("HOT").unwrap_or_else(|_| unreachable!())
}

/// Racing writers on one stream: every append either lands at the next version or is refused.
pub async fn racing_appends_keep_versions_gapless<T: Table + Clone>(table: &T) {
    let pk = "t#inventory#HOT".to_owned();
    let mut stock = load::<Inventory, _>(table, pk.clone()).await.unwrap();
    let mut changes = Changes::new();
    let events = stock.state.set_level(10, 0).unwrap();
    changes.append(&mut stock, events, 0).unwrap();
    changes.commit(table).await.unwrap();

    let sold = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..24u32 {
        let (table, pk, sold, refused) = (table.clone(), pk.clone(), sold.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let reservation = ReservationId::parse(format!("r{n}")).unwrap();
            loop {
                let mut stock = load::<Inventory, _>(&table, pk.clone()).await.unwrap();
                let Ok(events) =
                    stock
                        .state
                        .reserve(&sku(), &reservation, Quantity::new(1).unwrap())
                else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let mut changes = Changes::new();
                changes.append(&mut stock, events, 0).unwrap();
                match changes.commit(&table).await {
                    Ok(()) => {
                        sold.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Err(CommitError::StreamConflict) => tokio::task::yield_now().await,
                    Err(other) => panic!("unexpected: {other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(sold.load(Ordering::SeqCst), 10, "exactly the stock is sold");
    assert_eq!(refused.load(Ordering::SeqCst), 14);

    let events = read_events::<InventoryEvent, _>(table, &pk).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=versions.len() as u64).collect::<Vec<_>>(),
        "no version skipped or repeated"
    );
    let head = load::<Inventory, _>(table, pk.clone()).await.unwrap();
    let (version, replayed) = rebuild::<Inventory, _>(table, &pk).await.unwrap();
    assert_eq!(
        (head.version, &head.state),
        (version, &replayed),
        "the head is what the events fold to"
    );
    assert_eq!(
        (replayed.on_hand, replayed.reserved, replayed.available()),
        (10, 10, 0)
    );
}

/// A commit over several streams lands whole or not at all: one stale stream stops the others.
pub async fn a_stale_stream_stops_the_whole_commit<T: Table>(table: &T) {
    let (a, b) = ("t#inventory#A".to_owned(), "t#inventory#B".to_owned());
    for pk in [&a, &b] {
        let mut stock = load::<Inventory, _>(table, pk.clone()).await.unwrap();
        let mut changes = Changes::new();
        let events = stock.state.set_level(5, 0).unwrap();
        changes.append(&mut stock, events, 0).unwrap();
        changes.commit(table).await.unwrap();
    }
    let mut stale_b = load::<Inventory, _>(table, b.clone()).await.unwrap();
    {
        let mut fresh_b = load::<Inventory, _>(table, b.clone()).await.unwrap();
        let mut changes = Changes::new();
        let events = fresh_b.state.receive(Quantity::new(1).unwrap()).unwrap();
        changes.append(&mut fresh_b, events, 0).unwrap();
        changes.commit(table).await.unwrap();
    }
    let mut stock_a = load::<Inventory, _>(table, a.clone()).await.unwrap();
    let reservation = ReservationId::parse("r1").unwrap();
    let mut changes = Changes::new();
    let events = stock_a
        .state
        .reserve(&sku(), &reservation, Quantity::new(2).unwrap())
        .unwrap();
    changes.append(&mut stock_a, events, 0).unwrap();
    let events = stale_b
        .state
        .reserve(&sku(), &reservation, Quantity::new(2).unwrap())
        .unwrap();
    changes.append(&mut stale_b, events, 0).unwrap();
    assert!(matches!(
        changes.commit(table).await,
        Err(CommitError::StreamConflict)
    ));
    let a_now = load::<Inventory, _>(table, a).await.unwrap();
    assert_eq!(
        (a_now.version, a_now.state.reserved),
        (1, 0),
        "A is untouched"
    );
}

/// Generates one `#[tokio::test]` per contract case. `$make` is an async expression giving a
/// fresh table and a guard kept alive until the case ends (a temp dir, say, or `()`).
#[macro_export]
macro_rules! table_contract {
    ($make:expr) => {
        $crate::table_contract!(@cases $make;
            put_if_absent_then_read_back,
            version_condition_guards_updates,
            transactions_are_all_or_nothing,
            deletes_and_checks_honour_conditions,
            two_writes_to_one_key_are_refused,
            expired_items_are_gone,
            queries_page_through_one_partition,
            racing_appends_keep_versions_gapless,
            a_stale_stream_stops_the_whole_commit,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (table, _guard) = $make.await;
                $crate::contract::$case(&table).await;
            }
        )*
    };
}
