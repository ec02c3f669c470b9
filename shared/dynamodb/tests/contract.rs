//! The table contract on the DynamoDB adapter: the real aws-sdk client against moto server
//! (started by scripts/test, or here on first use), one fresh table per case.

use commerce_dynamodb::moto::{StreamFeed, fresh_table};

commerce_app::table_contract!(async { (fresh_table().await, ()) });

/// The outbox cases: the table's stream, read as the publisher's event source mapping would.
async fn fresh_with_feed() -> (commerce_dynamodb::DynamoTable, StreamFeed, ()) {
    let table = fresh_table().await;
    let feed = StreamFeed::of(&table).await;
    (table, feed, ())
}

commerce_app::feed_contract!(fresh_with_feed());
