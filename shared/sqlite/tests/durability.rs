//! The SQLite adapter under pressure: a full disk, and a WAL that must not grow without bound.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use commerce_app::table::{Condition, Item, Table, Write};
use commerce_sqlite::{Limits, SqliteTable};

fn item(n: usize, size: usize) -> Item {
    Item {
        pk: format!("p{n}"),
        sk: "s".into(),
        version: 1,
        data: format!("\"{}\"", "x".repeat(size)).into_bytes(),
        expires_at: None,
        owner: None,
        index: None,
    }
}

/// Every write reported committed is there after a reopen; every write reported failed is
/// not — whether SQLite rolled back one statement or the whole batch on the full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_full_disk_each_answer_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    let limits = Limits {
        max_size_bytes: Some(256 * 1024),
    };
    let table = SqliteTable::open_with(&path, limits).unwrap();
    let mut outcomes = Vec::new();
    for n in 0..20 {
        let write = Write::Put {
            item: item(n, 3000),
            condition: Condition::Absent,
        };
        outcomes.push((n, table.transact(vec![write]).await.is_ok()));
    }
    let mut tasks = Vec::new();
    for n in 20..300 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let write = Write::Put {
                item: item(n, 3000),
                condition: Condition::Absent,
            };
            (n, table.transact(vec![write]).await.is_ok())
        }));
    }
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let committed = outcomes.iter().filter(|(_, ok)| *ok).count();
    assert!(
        committed > 0 && committed < 300,
        "the cap was hit part way: {committed}"
    );
    drop(table);
    let reopened = SqliteTable::open(&path).unwrap();
    for (n, ok) in outcomes {
        let found = reopened.get(&format!("p{n}"), "s").await.unwrap().is_some();
        assert_eq!(found, ok, "write {n}: reported {ok}, stored {found}");
    }
}

/// Sustained writes while readers keep reading: the WAL file stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_bounded_under_sustained_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let table = SqliteTable::open(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (table, stop) = (table.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                table.get(&format!("p{}", n % 500), "s").await.unwrap();
                n += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let wal = dir.path().join("wal.db-wal");
    let mut peak = 0;
    // 120 MB written in all, 4 KB per item, 64 concurrent writers.
    for round in 0..480 {
        let mut writes = Vec::new();
        for n in 0..64 {
            let table = table.clone();
            let it = item(round * 64 + n, 4000);
            writes.push(tokio::spawn(async move {
                table
                    .transact(vec![Write::Put {
                        item: it,
                        condition: Condition::None,
                    }])
                    .await
                    .unwrap();
            }));
        }
        for w in writes {
            w.await.unwrap();
        }
        peak = peak.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    // 48 MB at the most before a restart, plus the batch that crossed it.
    assert!(peak < 56 * 1024 * 1024, "the WAL peaked at {peak} bytes");
}
