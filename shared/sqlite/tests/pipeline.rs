//! The event pipeline on the embedded default, as the local server runs it: change feed →
//! publisher → SQLite bus → projector, with a consumer that keeps failing.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use commerce_app::bus::Subscription;
use commerce_app::bus::{FilterPolicy, Queue, redrive};
use commerce_app::event_store::{Changes, Envelope, Origin, load};
use commerce_app::outbox::publish_pending;
use commerce_app::projection::{Draft, Event, Projection, Projector, consume_once, subscription};
use commerce_app::table::{Query, StoreError, Table};
use commerce_domain::{Inventory, Quantity};
use commerce_sqlite::{SqliteBus, SqliteTable};
use serde_json::Value;

/// A copy of each event, failing while `BROKEN` is set.
struct Flaky;

static BROKEN: AtomicBool = AtomicBool::new(true);
static FAILURES: AtomicU32 = AtomicU32::new(0);

impl Projection for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_WRITES: usize = 1;

    fn filter() -> FilterPolicy {
        FilterPolicy::default()
    }

    async fn apply<T: Table>(draft: &mut Draft<'_, T>, event: &Event) -> Result<(), StoreError> {
        if BROKEN.load(Ordering::SeqCst) {
            FAILURES.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Failure(
                "the consumer is broken for the test".into(),
            ));
        }
        Everything::apply(draft, event).await
    }
}

/// A copy of each event, keyed by the event: a queue that takes everything published.
struct Everything;

impl Projection for Everything {
    const NAME: &'static str = "everything";
    const MAX_WRITES: usize = 1;
    const ORDERED: bool = false;

    fn filter() -> FilterPolicy {
        FilterPolicy::default()
    }

    async fn apply<T: Table>(draft: &mut Draft<'_, T>, event: &Event) -> Result<(), StoreError> {
        let pk = draft.partition(&event.tenant, "events");
        draft.put(pk, event.id.to_string(), event)
    }
}

/// The shop's subscriptions, and one that takes everything.
fn subscriptions() -> Vec<Subscription> {
    let mut all = commerce_app::projection::subscriptions();
    all.push(subscription::<Everything>(5));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_keeps_failing_dead_letters_the_event_and_a_redrive_applies_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let table = SqliteTable::open(dir.path().join("shop.db")).unwrap();
    let max_receives = 3;
    let bus = SqliteBus::open(&table, vec![subscription::<Flaky>(max_receives)])
        .await
        .unwrap();
    let queue = bus.queue("flaky").unwrap();
    let dead_letters = bus.queue("flaky-dlq").unwrap();

    stock_received(&table, "mug", 5).await;
    assert_eq!(publish_pending(&table, &bus, 100).await.unwrap(), 1);
    assert_eq!(
        publish_pending(&table, &bus, 100).await.unwrap(),
        0,
        "acknowledged events are not published again"
    );

    let projector = Projector::<SqliteTable, Flaky>::new(table.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dead_letters.peek(10).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        // A refused event comes back when its visibility timeout ends.
        consume_once(
            &queue,
            &projector,
            Duration::from_millis(300),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        FAILURES.load(Ordering::SeqCst),
        max_receives,
        "tried once per receive"
    );
    assert!(
        queue.peek(10).unwrap().is_empty(),
        "it left the consumer's queue"
    );
    assert!(
        applied(&table).await.is_empty(),
        "nothing applied while broken"
    );

    BROKEN.store(false, Ordering::SeqCst);
    assert_eq!(redrive(&dead_letters, &queue, 100).await.unwrap(), 1);
    // Redriven twice by mistake: still applied once.
    let copy = queue
        .receive(1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    queue
        .send(copy[0].message.clone(), Duration::ZERO)
        .await
        .unwrap();
    queue
        .retry_after(&copy[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    while !queue.peek(10).unwrap().is_empty() {
        consume_once(
            &queue,
            &projector,
            Duration::from_secs(30),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    }
    assert_eq!(applied(&table).await, vec![1], "applied once");
    assert!(dead_letters.peek(10).unwrap().is_empty());
}

/// Records `quantity` units of `sku` received: one event on the SKU's stream.
async fn stock_received(table: &SqliteTable, sku: &str, quantity: u32) {
    let mut stock = load::<Inventory, _>(table, format!("acme#inventory#{sku}"))
        .await
        .unwrap();
    let events = stock
        .state
        .receive(Quantity::new(quantity).unwrap())
        .unwrap();
    let mut changes = Changes::new(Origin::system("test"));
    changes
        .append(&mut stock, events, 1_800_000_000_000)
        .unwrap();
    changes.commit(table).await.unwrap();
}

/// The versions of the mug's stream the flaky projection copied (generation 1), sorted; a
/// version there twice shows twice.
async fn applied(table: &SqliteTable) -> Vec<u64> {
    let page = table
        .query(Query {
            pk: "acme#flaky@1#events",
            prefix: "",
            after: None,
            limit: 100,
            descending: false,
        })
        .await
        .unwrap();
    let mut versions: Vec<u64> = page
        .items
        .iter()
        .map(|item| {
            serde_json::from_slice::<Envelope<Value>>(&item.data)
                .unwrap()
                .aggregate_version
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// The local publisher moves committed events from the feed onto the topic in one transaction:
/// each once, with its routing attributes, and only events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_publisher_moves_each_event_once() {
    use commerce_app::bus::Queue;
    let dir = tempfile::tempdir().unwrap();
    let table = SqliteTable::open(dir.path().join("shop.db")).unwrap();
    let bus = SqliteBus::open(&table, subscriptions()).await.unwrap();
    for sku in ["cup", "pot"] {
        stock_received(&table, sku, 2).await;
    }
    assert_eq!(
        bus.publish_feed(100).await.unwrap(),
        vec![("acme".to_owned(), 2)]
    );
    assert!(
        bus.publish_feed(100).await.unwrap().is_empty(),
        "the feed is empty now"
    );
    let everything = bus.queue("everything").unwrap();
    let got = everything
        .receive(10, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    for delivery in &got {
        let envelope: Envelope<Value> = serde_json::from_str(&delivery.message.body).unwrap();
        assert_eq!(delivery.message.id, envelope.id.to_string());
        assert_eq!(delivery.message.attributes["event_type"], "StockReceived");
        assert_eq!(delivery.message.attributes["aggregate_type"], "inventory");
        assert_eq!(delivery.message.attributes["tenant"], "acme");
    }
    let sales = bus.queue("sales").unwrap();
    assert!(
        sales
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "the sales filter takes order events only"
    );
}

/// As on SNS, an event no subscription's filter policy takes goes nowhere: it leaves the feed,
/// counts as published, and no queue has it to read past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_subscription_takes_leaves_the_feed_and_reaches_no_queue() {
    use commerce_app::bus::Queue;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let table = SqliteTable::open(&path).unwrap();
    // The sales projection's subscription takes order events only.
    let bus = SqliteBus::open(&table, commerce_app::projection::subscriptions())
        .await
        .unwrap();
    stock_received(&table, "cup", 2).await;
    assert_eq!(
        bus.publish_feed(100).await.unwrap(),
        vec![("acme".to_owned(), 1)]
    );
    assert!(
        bus.publish_feed(100).await.unwrap().is_empty(),
        "the feed is empty"
    );
    let rows = |table_name: &str| -> i64 {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table_name}"), [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(rows("feed"), 0);
    assert_eq!(rows("bus_log"), 0, "nothing on the log for no one");
    assert!(
        bus.queue("sales")
            .unwrap()
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

/// An item written as an event that is no envelope is still published, with its key for an id
/// and no attributes: its consumers refuse it (and dead-letter it), and the events after it go
/// through. It never stops the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_item_that_is_no_envelope_is_refused_downstream_and_stops_nothing() {
    use commerce_app::bus::Queue;
    use commerce_app::projection::Verdict;
    use commerce_app::table::{Item, Write};
    let dir = tempfile::tempdir().unwrap();
    let table = SqliteTable::open(dir.path().join("shop.db")).unwrap();
    let bus = SqliteBus::open(&table, subscriptions()).await.unwrap();
    table
        .transact(vec![Write::Event {
            item: Item {
                pk: "acme#inventory#junk".into(),
                sk: "event#000000000001".into(),
                version: 1,
                data: b"not an envelope".to_vec(),
                expires_at: None,
                owner: None,
                index: None,
            },
        }])
        .await
        .unwrap();
    stock_received(&table, "cup", 2).await;

    let published = bus.publish_feed(100).await.unwrap();
    assert_eq!(
        published.iter().map(|(_, n)| n).sum::<usize>(),
        2,
        "both published"
    );
    let everything = bus.queue("everything").unwrap();
    let got = everything
        .receive(10, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].message.id, "acme#inventory#junk/event#000000000001");
    assert_eq!(got[0].message.body, "not an envelope");
    assert!(got[0].message.attributes.is_empty());
    let projector = Projector::<SqliteTable, Everything>::new(table.clone());
    assert_eq!(
        projector.handle(&got).await,
        vec![Verdict::Poison, Verdict::Done],
        "the junk is refused, the event after it applied"
    );
}

/// Feed rows and bus messages written by a build that kept no routing in the feed (and copied
/// bodies into the log) are read after an upgrade: the feed's rows get their routing from their
/// envelopes, and old and new messages come in publishing order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_older_build_left_in_the_feed_and_on_the_bus_is_delivered_after_an_upgrade() {
    use commerce_app::bus::Queue;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    {
        let table = SqliteTable::open(&path).unwrap();
        stock_received(&table, "cup", 2).await;
    }
    // The older schema: a feed of keys only, and a log with its bodies inline, holding one
    // message published before the upgrade and not yet received.
    let old = rusqlite::Connection::open(&path).unwrap();
    old.busy_timeout(Duration::from_secs(5)).unwrap();
    old.execute_batch(
        r#"ALTER TABLE feed DROP COLUMN message_id;
           ALTER TABLE feed DROP COLUMN attributes;
           CREATE TABLE bus_log (
               seq INTEGER PRIMARY KEY AUTOINCREMENT,
               message_id TEXT NOT NULL,
               attributes TEXT NOT NULL,
               body TEXT NOT NULL
           );
           CREATE TABLE bus_cursors (queue TEXT PRIMARY KEY, seq INTEGER NOT NULL);
           INSERT INTO bus_cursors VALUES ('everything', 0), ('sales', 0);
           INSERT INTO bus_log (message_id, attributes, body)
           VALUES ('before', '{"tenant":"acme"}', '{"old":true}');"#,
    )
    .unwrap();
    drop(old);

    let table = SqliteTable::open(&path).unwrap();
    let bus = SqliteBus::open(&table, subscriptions()).await.unwrap();
    assert_eq!(
        bus.publish_feed(100).await.unwrap(),
        vec![("acme".to_owned(), 1)]
    );
    let got = bus
        .queue("everything")
        .unwrap()
        .receive(10, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].message.id, "before");
    assert_eq!(got[0].message.body, r#"{"old":true}"#);
    let envelope: Envelope<Value> = serde_json::from_str(&got[1].message.body).unwrap();
    assert_eq!(got[1].message.id, envelope.id.to_string());
    assert_eq!(got[1].message.attributes["event_type"], "StockReceived");
    assert_eq!(got[1].message.attributes["tenant"], "acme");
}

/// An upgrade interrupted after adding one of the feed's routing columns (as an earlier build's
/// two statements could be) is finished at the next open, and events are written and published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_upgrade_interrupted_halfway_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    drop(SqliteTable::open(&path).unwrap());
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(
        "ALTER TABLE feed DROP COLUMN message_id;
         ALTER TABLE feed DROP COLUMN attributes;
         ALTER TABLE feed ADD COLUMN message_id TEXT;",
    )
    .unwrap();
    drop(old);
    let table = SqliteTable::open(&path).unwrap();
    let bus = SqliteBus::open(&table, subscriptions()).await.unwrap();
    stock_received(&table, "cup", 2).await;
    assert_eq!(
        bus.publish_feed(100).await.unwrap(),
        vec![("acme".to_owned(), 1)]
    );
}

/// An event item whose bytes are not UTF-8 reaches its consumers with an empty body (they
/// refuse it), and the event after it is delivered all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_item_that_is_not_text_holds_up_no_other_message() {
    use commerce_app::bus::Queue;
    use commerce_app::table::{Item, Write};
    let dir = tempfile::tempdir().unwrap();
    let table = SqliteTable::open(dir.path().join("shop.db")).unwrap();
    let bus = SqliteBus::open(&table, subscriptions()).await.unwrap();
    table
        .transact(vec![Write::Event {
            item: Item {
                pk: "acme#inventory#bytes".into(),
                sk: "event#000000000001".into(),
                version: 1,
                data: vec![0xff, 0xfe, 0x00],
                expires_at: None,
                owner: None,
                index: None,
            },
        }])
        .await
        .unwrap();
    stock_received(&table, "cup", 2).await;
    bus.publish_feed(100).await.unwrap();
    let got = bus
        .queue("everything")
        .unwrap()
        .receive(10, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].message.body, "");
    assert!(got[1].message.body.contains("StockReceived"));
}

/// A feed row without routing (written by anything but this build's writer) is published with
/// its key for an id and no attributes, instead of stopping every publish behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_row_without_routing_does_not_stop_the_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let table = SqliteTable::open(&path).unwrap();
    let bus = SqliteBus::open(&table, subscriptions()).await.unwrap();
    stock_received(&table, "cup", 2).await;
    let other = rusqlite::Connection::open(&path).unwrap();
    other.busy_timeout(Duration::from_secs(5)).unwrap();
    other
        .execute(
            "INSERT INTO feed (pk, sk) VALUES ('acme#inventory#cup', 'event#000000000001')",
            [],
        )
        .unwrap();
    drop(other);
    let published: usize = bus
        .publish_feed(100)
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(published, 2);
}

/// A file from a build before the secondary index: opening it adds the index, and lists every
/// event it already held under its audit trail's day, as this build lists new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_an_older_build_recorded_are_listed_by_day_after_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    {
        let table = SqliteTable::open(&path).unwrap();
        stock_received(&table, "cup", 2).await;
    }
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(
        "DROP INDEX items_index;
         DROP INDEX items_unindexed_events;
         ALTER TABLE items DROP COLUMN ipk;
         ALTER TABLE items DROP COLUMN isk;",
    )
    .unwrap();
    drop(old);

    let table = SqliteTable::open(&path).unwrap();
    stock_received(&table, "pot", 3).await;
    drop(table);
    // An older build run again on the upgraded file writes its event without a key (as its
    // upsert did), beside one that is no envelope; the next open keys the first.
    let old = rusqlite::Connection::open(&path).unwrap();
    let pan: Vec<u8> = old
        .query_row(
            "SELECT data FROM items WHERE pk = 'acme#inventory#pot' AND sk LIKE 'event#%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let mut pan: Envelope<Value> = serde_json::from_slice(&pan).unwrap();
    pan.id = uuid::Uuid::now_v7();
    pan.aggregate_id = "pan".into();
    old.execute(
        "INSERT INTO items (pk, sk, version, data) VALUES ('acme#inventory#pan', 'event#000000000001', 1, ?1)",
        [serde_json::to_vec(&pan).unwrap()],
    )
    .unwrap();
    old.execute(
        "INSERT INTO items (pk, sk, version, data) VALUES ('acme#inventory#junk', 'event#000000000001', 1, x'00')",
        [],
    )
    .unwrap();
    drop(old);
    let table = SqliteTable::open(&path).unwrap();
    let day = commerce_app::views::day(1_800_000_000_000);
    let mut listed = Vec::new();
    for pk in commerce_app::audit::day_partitions("acme", &day) {
        let page = table
            .query_index(Query {
                pk: &pk,
                prefix: "",
                after: None,
                limit: 10,
                descending: false,
            })
            .await
            .unwrap();
        listed.extend(page.items.into_iter().map(|item| item.pk));
    }
    assert_eq!(
        listed,
        [
            "acme#inventory#cup",
            "acme#inventory#pot",
            "acme#inventory#pan"
        ],
        "the old events and the new, in time order"
    );
}
