//! Many clients against one SKU: exactly the stock is sold, every event version once.

use reqwest::StatusCode;

use crate::{order_body, shop};
use commerce_tests::key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_buyers_ten_units() {
    let shop = shop();
    shop.stocked("HOT", 999, 10).await;
    let mut tasks = Vec::new();
    for n in 0..64 {
        let client = shop
            .server
            .client("acme", &format!("buyer-{n}"), &["customer"]);
        tasks.push(tokio::spawn(async move {
            client
                .post("/v1/orders", &key(), &order_body(&[("HOT", 1)], "tok_visa"))
                .await
        }));
    }
    let (mut sold, mut out_of_stock) = (0, 0);
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            StatusCode::CREATED => sold += 1,
            StatusCode::CONFLICT => {
                assert_eq!(answer.problem(), "out-of-stock", "{answer:?}");
                out_of_stock += 1;
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!((sold, out_of_stock), (10, 54));
    assert_eq!(shop.levels("HOT").await, (10, 10, 0));
    assert_eq!(
        shop.ops.get("/v1/orders?limit=100").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    let db = rusqlite::Connection::open(shop.server.data_dir.join("commerce.db")).unwrap();
    let versions: Vec<i64> = db
        .prepare("SELECT version FROM items WHERE pk = 'acme#inventory#HOT' AND sk LIKE 'event#%' ORDER BY sk")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        versions,
        [1],
        "the SKU's stream holds its count; reservations are counted on its stock item"
    );
    let stored: Vec<u8> = db
        .query_row(
            "SELECT data FROM items WHERE pk = 'acme#inventory#HOT' AND sk = 'stock'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&stored).unwrap(),
        serde_json::json!({"available": 0, "reserved": 10, "headroom": 0, "changes": 11}),
        "one count and ten reservations, each once"
    );
    assert_eq!(shop.stock("HOT").await["version"], 11);
}
