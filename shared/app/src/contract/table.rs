//! DynamoDB's semantics as the shop relies on them: conditions (owner tokens included),
//! all-or-nothing transactions, TTL, paging, and the event store's gapless versions under
//! racing writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use commerce_domain::{Inventory, InventoryEvent, Quantity, ReservationId, Sku};

use crate::clock::now_seconds;
use crate::event_store::{Changes, CommitError, Origin, load, read_events, rebuild};
use crate::table::{Condition, Expect, IndexKey, Item, Page, Query, StoreError, Table, Write};

fn item(pk: &str, sk: &str, version: u64) -> Item {
    Item {
        pk: pk.into(),
        sk: sk.into(),
        version,
        data: format!("{{\"v\":{version}}}").into_bytes(),
        expires_at: None,
        owner: None,
        index: None,
    }
}

fn owned(pk: &str, sk: &str, version: u64, owner: &str) -> Item {
    Item {
        owner: Some(owner.into()),
        ..item(pk, sk, version)
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

/// A claim is updated or given up only by the holder of its token, however many versions anyone read.
pub async fn only_the_owner_token_passes_an_owner_condition<T: Table>(table: &T) {
    table
        .transact(vec![put(
            owned("k", "key", 1, "token-a"),
            Condition::Absent,
        )])
        .await
        .unwrap();
    assert_eq!(
        table
            .get("k", "key")
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("token-a"),
        "the owner is stored and read back"
    );
    let by_version = table
        .transact(vec![put(
            owned("k", "key", 2, "token-b"),
            Condition::VersionIs(1),
        )])
        .await;
    assert!(
        by_version.is_ok(),
        "a version condition still works: {by_version:?}"
    );
    let stale = table
        .transact(vec![put(
            owned("k", "key", 3, "token-c"),
            Condition::OwnerIs("token-a".into()),
        )])
        .await;
    assert!(
        matches!(stale, Err(StoreError::ConditionFailed { index: 0 })),
        "the old owner lost its claim: {stale:?}"
    );
    let stale_delete = table
        .transact(vec![Write::Delete {
            pk: "k".into(),
            sk: "key".into(),
            condition: Condition::OwnerIs("token-a".into()),
        }])
        .await;
    assert!(matches!(
        stale_delete,
        Err(StoreError::ConditionFailed { index: 0 })
    ));
    let missing = table
        .transact(vec![put(
            owned("k", "none", 1, "x"),
            Condition::OwnerIs("x".into()),
        )])
        .await;
    assert!(
        matches!(missing, Err(StoreError::ConditionFailed { index: 0 })),
        "an owner condition needs the item"
    );
    table
        .transact(vec![
            Write::Check {
                pk: "k".into(),
                sk: "key".into(),
                condition: Condition::OwnerIs("token-b".into()),
            },
            put(item("k", "other", 1), Condition::None),
        ])
        .await
        .unwrap();
    table
        .transact(vec![put(
            item("k", "key", 4),
            Condition::OwnerIs("token-b".into()),
        )])
        .await
        .unwrap();
    assert_eq!(
        table.get("k", "key").await.unwrap().unwrap().owner,
        None,
        "a put without owner clears the claim"
    );
    table
        .transact(vec![put(owned("k", "key", 5, "token-d"), Condition::None)])
        .await
        .unwrap();
    table
        .transact(vec![Write::Delete {
            pk: "k".into(),
            sk: "key".into(),
            condition: Condition::OwnerIs("token-d".into()),
        }])
        .await
        .unwrap();
    assert_eq!(table.get("k", "key").await.unwrap(), None);
}

/// Personal partitions live apart in the adapter, yet read and commit like any other.
pub async fn personal_partitions_take_part_in_transactions<T: Table>(table: &T) {
    let personal = format!("{}acme#contact", crate::table::PERSONAL);
    table
        .transact(vec![put(item("p", "taken", 1), Condition::Absent)])
        .await
        .unwrap();
    let refused = table
        .transact(vec![
            put(item(&personal, "a", 1), Condition::Absent),
            put(item("p", "taken", 1), Condition::Absent),
        ])
        .await;
    assert!(matches!(
        refused,
        Err(StoreError::ConditionFailed { index: 1 })
    ));
    assert_eq!(
        table.get(&personal, "a").await.unwrap(),
        None,
        "all or nothing"
    );
    table
        .transact(vec![
            put(item(&personal, "a", 1), Condition::Absent),
            put(item("p", "other", 1), Condition::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(
        table.get(&personal, "a").await.unwrap(),
        Some(item(&personal, "a", 1))
    );
    let page = table
        .query(Query {
            pk: &personal,
            prefix: "",
            after: None,
            limit: 10,
            descending: false,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    table
        .transact(vec![Write::Delete {
            pk: personal.clone(),
            sk: "a".into(),
            condition: Condition::VersionIs(1),
        }])
        .await
        .unwrap();
    assert_eq!(table.get(&personal, "a").await.unwrap(), None, "erased");
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

fn listed(pk: &str, index_pk: &str, index_sk: &str) -> Item {
    Item {
        index: Some(IndexKey {
            pk: index_pk.into(),
            sk: index_sk.into(),
        }),
        ..item(pk, "e", 1)
    }
}

/// Every page of an index partition from `after`, read 1, 2 and 3 at a time: index sort keys
/// in order, the same whatever the page size.
async fn index_keys<T: Table>(
    table: &T,
    pk: &str,
    prefix: &str,
    after: Option<String>,
    descending: bool,
) -> Vec<String> {
    let one = index_pages(table, pk, prefix, after.clone(), descending, 1).await;
    for limit in [2, 3] {
        let again = index_pages(table, pk, prefix, after.clone(), descending, limit).await;
        assert_eq!(again, one, "pages of {limit} list what pages of 1 do");
    }
    one
}

async fn index_pages<T: Table>(
    table: &T,
    pk: &str,
    prefix: &str,
    mut after: Option<String>,
    descending: bool,
    limit: usize,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 50, "paging goes on: {seen:?} after {after:?}");
        let page: Page = table
            .query_index(Query {
                pk,
                prefix,
                after: after.as_deref(),
                limit,
                descending,
            })
            .await
            .unwrap();
        assert!(page.items.len() <= limit);
        for found in &page.items {
            let key = found
                .index
                .clone()
                .expect("a listed item has its index key");
            assert_eq!(key.pk, pk);
            assert_eq!(found.sk, "e", "an item comes back under its own key");
            seen.push(key.sk);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return seen,
        }
    }
}

/// The secondary index lists items from many partitions in one, by their index keys; an item
/// that moves or goes leaves it, and one without an index key is never in it.
pub async fn the_index_lists_items_by_their_index_key<T: Table>(table: &T) {
    let mut writes: Vec<Write> = [4, 0, 6, 2, 5, 1, 3]
        .into_iter()
        .map(|n| {
            put(
                listed(&format!("stream#{n}"), "ix", &format!("k{n}")),
                Condition::None,
            )
        })
        .collect();
    writes.push(put(listed("stream#other", "ix", "other"), Condition::None));
    writes.push(put(
        listed("stream#elsewhere", "ix#2", "k1"),
        Condition::None,
    ));
    writes.push(put(item("stream#plain", "e", 1), Condition::None));
    table.transact(writes).await.unwrap();
    let ks = |range: std::ops::RangeInclusive<u32>| -> Vec<String> {
        range.map(|n| format!("k{n}")).collect()
    };

    assert_eq!(index_keys(table, "ix", "k", None, false).await, ks(0..=6));
    let mut newest = ks(0..=6);
    newest.reverse();
    assert_eq!(index_keys(table, "ix", "k", None, true).await, newest);
    assert_eq!(
        index_keys(table, "ix", "k", Some("k2".into()), false).await,
        ks(3..=6)
    );
    assert_eq!(
        index_keys(table, "ix", "k", Some("k2".into()), true).await,
        vec!["k1", "k0"]
    );
    assert_eq!(
        index_keys(table, "ix", "k", Some("a".into()), false).await,
        ks(0..=6),
        "a start before the prefix's range"
    );
    assert_eq!(
        index_keys(table, "ix", "k", Some("z".into()), true).await,
        newest,
        "a start past the prefix's range, newest first"
    );
    assert_eq!(index_keys(table, "ix", "", None, false).await.len(), 8);
    assert_eq!(index_keys(table, "ix#2", "", None, false).await, vec!["k1"]);

    // Moved to another index partition, deleted, or stored without an index key: gone from it.
    table
        .transact(vec![
            put(listed("stream#3", "ix#2", "k3"), Condition::VersionIs(1)),
            Write::Delete {
                pk: "stream#5".into(),
                sk: "e".into(),
                condition: Condition::None,
            },
            put(item("stream#6", "e", 2), Condition::VersionIs(1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        index_keys(table, "ix", "k", None, false).await,
        vec!["k0", "k1", "k2", "k4"]
    );
    assert_eq!(
        index_keys(table, "ix#2", "", None, false).await,
        vec!["k1", "k3"]
    );
}

/// Events stored before they were given index keys (an older build's) are listed under their
/// day when asked, each once however often it is asked; one listed already stays as it is.
pub async fn events_stored_before_the_index_are_listed_when_asked<T: Table>(table: &T) {
    let now = crate::Clock::now_ms(&crate::SystemClock);
    let event = |stream: &str, listed: bool| {
        let envelope = crate::event_store::Envelope {
            id: uuid::Uuid::now_v7(),
            event_type: "StockReceived".to_owned(),
            schema_version: 1,
            tenant: "acme".to_owned(),
            aggregate_type: "inventory".to_owned(),
            aggregate_id: stream.to_owned(),
            aggregate_version: 1,
            occurred_at: crate::views::timestamp(now),
            actor: "system:contract".to_owned(),
            correlation_id: "c".to_owned(),
            causation_id: None,
            data: serde_json::json!({"type": "StockReceived"}),
        };
        let index = listed.then(|| {
            crate::audit::index_key("acme", now, &envelope.id.to_string(), table.shards(16))
        });
        Write::Event {
            item: Item {
                pk: format!("acme#inventory#{stream}"),
                sk: crate::keys::event_sk(1),
                version: 1,
                data: serde_json::to_vec(&envelope).unwrap(),
                expires_at: None,
                owner: None,
                index,
            },
        }
    };
    table
        .transact(vec![
            event("old-1", false),
            event("old-2", false),
            event("new", true),
        ])
        .await
        .unwrap();
    let listed_today = || async {
        let mut streams = Vec::new();
        for pk in crate::audit::day_partitions("acme", &crate::views::day(now)) {
            let page = table
                .query_index(Query {
                    pk: &pk,
                    prefix: "",
                    after: None,
                    limit: 100,
                    descending: false,
                })
                .await
                .unwrap();
            streams.extend(page.items.into_iter().map(|item| item.pk));
        }
        streams.sort();
        streams
    };
    assert_eq!(listed_today().await, vec!["acme#inventory#new"]);

    let done = crate::audit::list_unlisted_events(table, |_| {})
        .await
        .unwrap();
    assert_eq!((done.events, done.listed), (3, 2));
    assert_eq!(
        listed_today().await,
        vec![
            "acme#inventory#new",
            "acme#inventory#old-1",
            "acme#inventory#old-2"
        ]
    );
    let again = crate::audit::list_unlisted_events(table, |_| {})
        .await
        .unwrap();
    assert_eq!((again.events, again.listed), (3, 0), "nothing listed twice");
    let missing = crate::table::IndexKey {
        pk: "ix".into(),
        sk: "k".into(),
    };
    assert!(
        !table
            .list_in_index("acme#inventory#none", "event#000000000001", missing)
            .await
            .unwrap()
    );
}

fn sku() -> Sku {
    Sku::parse("HOT").unwrap_or_else(|_| unreachable!())
}

/// Racing writers on one stream: every append either lands at the next version or is refused.
fn add(pk: &str, numbers: &[(&str, i64)], expect: Vec<Expect>) -> Write {
    Write::Add {
        pk: pk.into(),
        sk: "n".into(),
        add: numbers.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect(),
        expect,
    }
}

async fn numbers<T: Table>(table: &T, pk: &str) -> Option<serde_json::Value> {
    let item = table.get(pk, "n").await.unwrap()?;
    Some(serde_json::from_slice(&item.data).unwrap())
}

pub async fn adds_apply_only_within_their_bounds<T: Table>(table: &T) {
    let at_least = |n: &str, v| Expect::AtLeast(n.into(), v);
    let missing = table
        .transact(vec![add("c", &[("a", 1)], vec![at_least("a", 0)])])
        .await;
    assert!(
        matches!(missing, Err(StoreError::ConditionFailed { index: 0 })),
        "an add needs its item unless it creates it: {missing:?}"
    );
    assert_eq!(numbers(table, "c").await, None);
    table
        .transact(vec![add("c", &[("a", 5), ("b", -2)], vec![Expect::Absent])])
        .await
        .unwrap();
    assert_eq!(
        numbers(table, "c").await,
        Some(serde_json::json!({"a": 5, "b": -2}))
    );
    let twice = table
        .transact(vec![add("c", &[("a", 1)], vec![Expect::Absent])])
        .await;
    assert!(matches!(
        twice,
        Err(StoreError::ConditionFailed { index: 0 })
    ));
    table
        .transact(vec![add(
            "c",
            &[("a", -5), ("b", 3), ("c", 7)],
            vec![at_least("a", 5), Expect::Is("b".into(), -2)],
        )])
        .await
        .unwrap();
    assert_eq!(
        numbers(table, "c").await,
        Some(serde_json::json!({"a": 0, "b": 1, "c": 7})),
        "a number it lacked starts at 0"
    );
    for bound in [
        at_least("a", 1),
        Expect::Is("b".into(), 2),
        at_least("missing", 0),
    ] {
        let refused = table
            .transact(vec![
                put(item("p", "x", 1), Condition::None),
                add("c", &[("a", -1)], vec![bound.clone()]),
            ])
            .await;
        assert!(
            matches!(refused, Err(StoreError::ConditionFailed { index: 1 })),
            "{bound:?}: {refused:?}"
        );
    }
    assert_eq!(
        numbers(table, "c").await,
        Some(serde_json::json!({"a": 0, "b": 1, "c": 7})),
        "a refused add changes nothing"
    );
    assert_eq!(
        table.get("p", "x").await.unwrap(),
        None,
        "nor does its transaction"
    );
}

/// Many writers take from one number at once, each only if one is left: no read, no retry,
/// and exactly what there was is taken.
pub async fn racing_adds_take_exactly_what_there_is<T: Table + Clone>(table: &T) {
    table
        .transact(vec![add("hot", &[("left", 10)], vec![Expect::Absent])])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..32 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let taken = table
                    .transact(vec![
                        put(item("taker", &format!("{n:02}"), 1), Condition::Absent),
                        add(
                            "hot",
                            &[("left", -1), ("taken", 1)],
                            vec![Expect::AtLeast("left".into(), 1)],
                        ),
                    ])
                    .await;
                match taken {
                    Ok(()) => return true,
                    Err(StoreError::ConditionFailed { index: 1 }) => return false,
                    // Two transactions on one item at once: DynamoDB cancels one.
                    Err(StoreError::Conflict) => tokio::task::yield_now().await,
                    Err(other) => panic!("unexpected: {other}"),
                }
            }
        }));
    }
    let mut took = 0;
    for task in tasks {
        took += usize::from(task.await.unwrap());
    }
    assert_eq!(took, 10, "exactly what there was is taken");
    assert_eq!(
        numbers(table, "hot").await,
        Some(serde_json::json!({"left": 0, "taken": 10}))
    );
    let page = table
        .query(Query {
            pk: "taker",
            prefix: "",
            after: None,
            limit: 100,
            descending: false,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 10, "only the takers' own writes landed");
}

pub async fn racing_appends_keep_versions_gapless<T: Table + Clone>(table: &T) {
    let pk = "t#inventory#HOT".to_owned();
    let mut stock = load::<Inventory, _>(table, pk.clone()).await.unwrap();
    let mut changes = Changes::new(Origin::system("contract"));
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
                let mut changes = Changes::new(Origin::system("contract"));
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
    let versions: Vec<u64> = events.iter().map(|e| e.aggregate_version).collect();
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
        let mut changes = Changes::new(Origin::system("contract"));
        let events = stock.state.set_level(5, 0).unwrap();
        changes.append(&mut stock, events, 0).unwrap();
        changes.commit(table).await.unwrap();
    }
    let mut stale_b = load::<Inventory, _>(table, b.clone()).await.unwrap();
    {
        let mut fresh_b = load::<Inventory, _>(table, b.clone()).await.unwrap();
        let mut changes = Changes::new(Origin::system("contract"));
        let events = fresh_b.state.receive(Quantity::new(1).unwrap()).unwrap();
        changes.append(&mut fresh_b, events, 0).unwrap();
        changes.commit(table).await.unwrap();
    }
    let mut stock_a = load::<Inventory, _>(table, a.clone()).await.unwrap();
    let reservation = ReservationId::parse("r1").unwrap();
    let mut changes = Changes::new(Origin::system("contract"));
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

pub async fn scan_events_gives_each_stream_in_version_order<T: Table>(table: &T) {
    for round in 1..=3u32 {
        for sku in ["a", "b", "c", "d"] {
            let pk = format!("acme#inventory#{sku}");
            let mut stock = load::<Inventory, _>(table, pk).await.unwrap();
            let events = stock.state.receive(Quantity::new(round).unwrap()).unwrap();
            let mut changes = Changes::new(Origin::system("contract"));
            changes.append(&mut stock, events, 0).unwrap();
            changes
                .put_read_model("acme#catalog".into(), sku.into(), &round)
                .unwrap();
            changes.commit(table).await.unwrap();
        }
    }
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = table.scan_events(after.as_deref(), 5).await.unwrap();
        for item in &page.items {
            assert!(item.sk.starts_with("event#"), "only events: {item:?}");
            seen.push((item.pk.clone(), item.version));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12, "every event once: {seen:?}");
    let mut streams: Vec<&str> = Vec::new();
    for (pk, version) in &seen {
        if streams.last() != Some(&pk.as_str()) {
            assert!(
                !streams.contains(&pk.as_str()),
                "a stream's events come together: {seen:?}"
            );
            streams.push(pk);
            assert_eq!(*version, 1, "from its first event: {seen:?}");
        }
    }
    for window in seen.windows(2) {
        if window[0].0 == window[1].0 {
            assert_eq!(window[1].1, window[0].1 + 1, "in version order: {seen:?}");
        }
    }
    let estimate = table.estimate_events().await.unwrap();
    assert!(
        estimate.is_none_or(|n| n >= 12) || estimate == Some(0),
        "{estimate:?}"
    );
}
