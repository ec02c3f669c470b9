//! A command that builds on a head still queued is conditioned on that write's token, not on
//! its version: if the write it built on fails, it fails too, even when another writer has
//! meanwhile made the version it expects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use commerce_app::event_store::{Changes, CommitError, Origin, Stream, load};
use commerce_domain::{Inventory, InventoryEvent, Quantity, ReservationId, Sku};
use commerce_sqlite::SqliteTable;

const PK: &str = "acme#inventory#MUG";

fn reserve(stream: &mut Stream<Inventory>, id: &str) -> Vec<InventoryEvent> {
    let sku = Sku::parse("MUG").unwrap();
    let id = ReservationId::parse(id).unwrap();
    stream
        .state
        .reserve(&sku, &id, Quantity::new(1).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_built_on_a_failed_write_fails_whoever_made_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let table = SqliteTable::open(dir.path().join("shop.db")).unwrap();
    let origin = Origin::system("test");
    let mut first = Stream::<Inventory>::fresh(PK.into());
    let mut changes = Changes::new(origin.clone());
    let level = InventoryEvent::StockLevelSet {
        on_hand: 10,
        low_stock_threshold: 0,
    };
    changes.append(&mut first, vec![level], 0).unwrap();
    changes.commit(&table).await.unwrap();
    let seen = Stream::at(PK.to_owned(), first.version, first.state.clone());

    // Another writer moves the stock on from what was stored: version 2.
    let mut other = load::<Inventory, _>(&table, PK.into()).await.unwrap();
    let events = reserve(&mut other, "018f0000-0000-7000-8000-00000000000c");
    let mut changes = Changes::new(origin.clone());
    changes.append(&mut other, events, 0).unwrap();
    changes.commit(&table).await.unwrap();

    // A was built on version 1 before that landed; B on the head A queued (version 2).
    let mut a = seen;
    let events = reserve(&mut a, "018f0000-0000-7000-8000-00000000000a");
    let mut a_changes = Changes::new(origin.clone());
    a_changes.append(&mut a, events, 0).unwrap();
    a_changes.chain_head(PK, "token-a".into(), None).unwrap();
    let mut b = Stream::at(PK.to_owned(), a.version, a.state.clone());
    let events = reserve(&mut b, "018f0000-0000-7000-8000-00000000000b");
    let mut b_changes = Changes::new(origin.clone());
    b_changes.append(&mut b, events, 0).unwrap();
    let by_version = b_changes.clone_writes();
    b_changes
        .chain_head(PK, "token-b".into(), Some("token-a".into()))
        .unwrap();

    assert!(matches!(
        a_changes.commit(&table).await,
        Err(CommitError::StreamConflict)
    ));
    assert!(
        matches!(
            b_changes.commit(&table).await,
            Err(CommitError::StreamConflict)
        ),
        "B built on A, which failed"
    );
    let stored = load::<Inventory, _>(&table, PK.into()).await.unwrap();
    assert_eq!(
        (stored.version, stored.state.reserved),
        (2, 1),
        "only the other writer's"
    );

    // What a version condition would have let through: the version B expects exists.
    commerce_app::Table::transact(&table, by_version)
        .await
        .expect("conditioned on version 2 alone, B commits on a head it never saw");
}
