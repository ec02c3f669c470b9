//! The table contract on the SQLite adapter, one fresh database file per case.

#![allow(clippy::expect_used)]

use commerce_sqlite::SqliteTable;

async fn fresh() -> (SqliteTable, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = SqliteTable::open(dir.path().join("shop.db")).expect("open");
    (table, dir)
}

commerce_app::table_contract!(fresh());

/// The outbox cases: the table is its own change feed.
async fn fresh_with_feed() -> (SqliteTable, SqliteTable, tempfile::TempDir) {
    let (table, dir) = fresh().await;
    (table.clone(), table, dir)
}

commerce_app::feed_contract!(fresh_with_feed());
