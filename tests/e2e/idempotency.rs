use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::{order_body, shop};
use commerce_tests::key;

#[tokio::test]
async fn the_same_key_and_body_replays_and_acts_once() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let k = key();
    let first = shop
        .alice
        .post("/v1/orders", &k, &order_body(&[("MUG", 2)], "tok_visa"))
        .await;
    let second = shop
        .alice
        .post("/v1/orders", &k, &order_body(&[("MUG", 2)], "tok_visa"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        (second.status, &second.body),
        (first.status, &first.body),
        "the replay is the first answer"
    );
    assert_eq!(shop.levels("MUG").await, (10, 2, 8), "stock taken once");
    assert_eq!(
        shop.alice.get("/v1/orders").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let declined_key = key();
    let declined = shop
        .alice
        .post(
            "/v1/orders",
            &declined_key,
            &order_body(&[("MUG", 1)], "tok_decline"),
        )
        .await;
    let replayed = shop
        .alice
        .post(
            "/v1/orders",
            &declined_key,
            &order_body(&[("MUG", 1)], "tok_decline"),
        )
        .await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        (replayed.status, replayed.body),
        (declined.status, declined.body),
        "a decline replays too"
    );
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let k = key();
    assert_eq!(
        shop.alice
            .post("/v1/orders", &k, &order_body(&[("MUG", 2)], "tok_visa"))
            .await
            .status,
        StatusCode::CREATED
    );
    let other = shop
        .alice
        .post("/v1/orders", &k, &order_body(&[("MUG", 3)], "tok_visa"))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.problem(), "idempotency-key-reused");
    let elsewhere = shop
        .alice
        .post(
            "/v1/reservations",
            &k,
            &json!({"lines": [{"sku": "MUG", "quantity": 2}]}),
        )
        .await;
    assert_eq!(
        elsewhere.problem(),
        "idempotency-key-reused",
        "a key belongs to one request, path included"
    );
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));

    let bobs = shop
        .bob
        .post("/v1/orders", &k, &order_body(&[("MUG", 3)], "tok_visa"))
        .await;
    assert_eq!(bobs.status, StatusCode::CREATED, "keys are per caller");
}

#[tokio::test]
async fn concurrent_duplicates_act_once() {
    let shop = shop();
    shop.stocked("MUG", 500, 100).await;
    let k = key();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, k) = (shop.alice.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post("/v1/orders", &k, &order_body(&[("MUG", 1)], "tok_flaky"))
                .await
        }));
    }
    let mut created = HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "duplicates wait for the first request and answer as it did: {answer:?}"
        );
        created.insert(answer.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created.len(), 1, "every answer is the same order");
    assert_eq!(shop.levels("MUG").await, (100, 1, 99), "one unit taken");
    let replay = shop
        .alice
        .post("/v1/orders", &k, &order_body(&[("MUG", 1)], "tok_flaky"))
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert!(created.contains(replay.body["id"].as_str().unwrap()));
}

/// The same JSON is the same request, whatever its spacing or key order.
#[tokio::test]
async fn the_same_json_spelled_differently_replays() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let k = key();
    let spellings = [
        r#"{"lines":[{"sku":"MUG","quantity":2}],"payment_token":"tok_visa"}"#,
        r#"{ "payment_token": "tok_visa",
             "lines": [ { "quantity": 2, "sku": "MUG" } ] }"#,
    ];
    let mut answers = Vec::new();
    for body in spellings {
        answers.push(
            shop.alice
                .post_raw(
                    "/v1/orders",
                    &[
                        ("idempotency-key", &k),
                        ("content-type", "application/json"),
                    ],
                    body.as_bytes().to_vec(),
                )
                .await,
        );
    }
    assert_eq!(answers[0].status, StatusCode::CREATED);
    assert_eq!(answers[1].body, answers[0].body, "replayed, not refused");
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));
}

/// Contact details live in one erasable place: idempotency records keep answers without them,
/// and a replay fetches the contact from where it is kept.
#[tokio::test]
async fn idempotency_records_keep_no_contact_data() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let k = key();
    let mut body = order_body(&[("MUG", 1)], "tok_visa");
    body["contact"] = json!({"name": "Alice Example", "email": "alice@example.test", "phone": "+44 20 0000 0000"});
    let placed = shop.alice.post("/v1/orders", &k, &body).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    assert_eq!(placed.body["contact"]["email"], "alice@example.test");

    let db = rusqlite::Connection::open(shop.server.data_dir.join("commerce.db")).unwrap();
    let records: Vec<String> = db
        .prepare("SELECT CAST(data AS TEXT) FROM items WHERE pk LIKE '%#idempotency#%'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!records.is_empty());
    for record in &records {
        for personal in ["alice@example.test", "Alice Example", "+44 20"] {
            assert!(!record.contains(personal), "personal data in {record}");
        }
    }
    let replay = shop.alice.post("/v1/orders", &k, &body).await;
    assert_eq!(
        replay.body, placed.body,
        "the replay still shows the contact"
    );
}
