//! The table contract on the DynamoDB adapter: the real aws-sdk client against moto server
//! (started by scripts/test, or here on first use), one fresh table per case.

use commerce_dynamodb::moto::fresh_table;

commerce_app::table_contract!(async { (fresh_table().await, ()) });
