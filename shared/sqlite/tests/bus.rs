//! The bus contract on the local bus, one fresh database file per case.

#![allow(clippy::expect_used)]

use commerce_app::contract::{BusUnderTest, contract_subscriptions};
use commerce_sqlite::{SqliteBus, SqliteQueue, SqliteTable};

async fn fresh() -> (BusUnderTest<SqliteBus, SqliteQueue>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = SqliteTable::open(dir.path().join("shop.db")).expect("open");
    let bus = SqliteBus::open(&table, contract_subscriptions())
        .await
        .expect("bus");
    let queue = |name: &str| bus.queue(name).expect("a subscribed queue");
    let under_test = BusUnderTest {
        everything: queue("everything"),
        everything_dead_letters: queue("everything-dlq"),
        orders: queue("orders"),
        topic: bus,
    };
    (under_test, dir)
}

commerce_app::bus_contract!(fresh());

/// A restart loses nothing: published messages, in-flight ones (they come back once their
/// timeout passes) and dead letters are all in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_message() {
    use commerce_app::bus::{Message, Queue, Topic};
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let message = |n: u32| Message {
        id: format!("m{n}"),
        attributes: [("aggregate_type".to_owned(), "order".to_owned())].into(),
        body: format!("{n}"),
    };
    {
        let table = SqliteTable::open(&path).expect("open");
        let bus = SqliteBus::open(&table, contract_subscriptions())
            .await
            .expect("bus");
        bus.publish(vec![message(1), message(2)])
            .await
            .expect("publish");
        let orders = bus.queue("orders").expect("queue");
        let taken = orders
            .receive(1, Duration::from_secs(1), Duration::ZERO)
            .await
            .expect("receive");
        assert_eq!(taken.len(), 1, "one in flight when the process stops");
    }
    let table = SqliteTable::open(&path).expect("reopen");
    let bus = SqliteBus::open(&table, contract_subscriptions())
        .await
        .expect("bus");
    let orders = bus.queue("orders").expect("queue");
    let mut bodies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bodies.len() < 2 && std::time::Instant::now() < deadline {
        for delivery in orders
            .receive(10, Duration::from_secs(30), Duration::from_millis(500))
            .await
            .expect("receive")
        {
            bodies.push(delivery.message.body);
        }
    }
    bodies.sort();
    assert_eq!(bodies, vec!["1", "2"]);
    assert_eq!(
        bus.queue("everything")
            .expect("queue")
            .peek(10)
            .expect("peek")
            .len(),
        2,
        "the other subscription kept its copies too"
    );
}

/// A receive whose held-row write fails (a full disk) still hands out what it took from the
/// log: no message is hidden and charged a receive its caller never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_during_a_receive_swallows_no_message() {
    use commerce_app::bus::{Message, Queue, Topic};
    use commerce_sqlite::Limits;
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = Limits {
        max_size_bytes: Some(400_000),
    };
    let table = SqliteTable::open_with(dir.path().join("shop.db"), limits).expect("open");
    let bus = SqliteBus::open(&table, contract_subscriptions())
        .await
        .expect("bus");
    let message = |n: u32| Message {
        id: format!("m{n}"),
        attributes: [("aggregate_type".to_owned(), "order".to_owned())].into(),
        body: "x".repeat(20_000),
    };
    // Fill the file, so the next write fails as on a full disk.
    let mut published = 0;
    while bus.publish(vec![message(published)]).await.is_ok() {
        published += 1;
    }
    assert!(published > 3, "{published}");
    let orders = bus.queue("orders").expect("queue");
    let first = orders
        .receive(1, Duration::from_millis(50), Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Its visibility ran out: taking it back needs a write, which fails.
    let handed = orders
        .receive(5, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("what the log gave is handed out");
    assert!(!handed.is_empty());
    let charged: Vec<String> = orders
        .peek(100)
        .expect("peek")
        .into_iter()
        .filter(|(_, receives)| *receives > 0)
        .map(|(m, _)| m.id)
        .collect();
    let given: Vec<String> = handed.iter().map(|d| d.message.id.clone()).collect();
    assert!(
        charged.iter().all(|id| given.contains(id) || id == "m0"),
        "in flight only what was handed out (and the first, back in flight): {charged:?} vs {given:?}"
    );
}
