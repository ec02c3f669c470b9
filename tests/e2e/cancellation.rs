//! Cancelling orders over HTTP: the request, the saga the local runtime runs from the same
//! ASL file as Step Functions, what the order, the stock and the audit trail show after it,
//! and what happens when a step fails or the server is killed midway.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{Shop, order_body, shop};
use commerce_tests::{Client, Server, key, server_binary};

/// Places an order for alice and answers its id.
async fn place(shop: &Shop, lines: &[(&str, u32)], token: &str) -> String {
    let placed = shop
        .alice
        .post("/v1/orders", &key(), &order_body(lines, token))
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    placed.body["id"].as_str().unwrap().to_owned()
}

async fn cancel(client: &Client, order: &str, body: &Value) -> commerce_tests::Answer {
    client
        .post(&format!("/v1/orders/{order}/cancellation"), &key(), body)
        .await
}

/// Reads the order until `done` holds (or fails the test after 60 s).
async fn order_when(client: &Client, order: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = client.get(&format!("/v1/orders/{order}")).await;
        assert_eq!(read.status, StatusCode::OK, "{read:?}");
        if done(&read.body) {
            return read.body;
        }
        assert!(Instant::now() < deadline, "the order stayed {}", read.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn settled(client: &Client, order: &str) -> Value {
    order_when(client, order, |o| {
        !matches!(o["status"].as_str(), Some("cancelling"))
    })
    .await
}

/// The types of the order's events in the audit trail, once `count` of them are there.
async fn trail(ops: &Client, order: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = ops
            .get(&format!(
                "/v1/audit?aggregate_type=order&aggregate_id={order}&limit=100"
            ))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let types: Vec<String> = page.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        if types.len() >= count {
            return types;
        }
        assert!(Instant::now() < deadline, "the trail stayed {types:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `commerce executions ...` on the server's data directory.
fn executions(data_dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(server_binary())
        .arg("executions")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The executions started for `order`.
fn executions_of(data_dir: &std::path::Path, order: &str) -> Vec<Value> {
    executions(data_dir, &["list", "--max", "100"])
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|e| e["input"]["order_id"] == order)
        .collect()
}

fn history(data_dir: &std::path::Path, name: &str) -> Value {
    serde_json::from_str(&executions(data_dir, &["show", name])).unwrap()
}

#[tokio::test]
async fn cancelling_an_unpaid_order_gives_the_stock_back_and_voids_the_authorization() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    shop.stocked("CAP", 1250, 5).await;
    let order = place(&shop, &[("MUG", 2), ("CAP", 1)], "tok_visa").await;
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));

    let asked = cancel(&shop.alice, &order, &json!({"reason": "changed my mind"})).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");
    assert_eq!(asked.body["status"], "cancelling");
    assert_eq!(asked.body["cancellation"]["attempt"], 1);
    assert_eq!(asked.body["cancellation"]["amount"]["amount_minor"], 2250);

    let done = settled(&shop.alice, &order).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(
        done["payment"],
        json!({"currency": "EUR", "authorized": 2250, "captured": 0, "voided": 2250, "refunded": 0})
    );
    assert_eq!(done["cancellation"]["stock_released"], true);
    assert_eq!(done["cancellation"]["payment_settled"], true);
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
    assert_eq!(shop.levels("CAP").await, (5, 0, 5));
    let list = shop.alice.get("/v1/orders").await;
    assert_eq!(
        list.body["items"][0]["status"], "cancelled",
        "the list says so too"
    );

    let mut types = trail(&shop.ops, &order, 5).await;
    types.sort();
    assert_eq!(
        types,
        [
            "CancellationStockReleased",
            "OrderCancellationRequested",
            "OrderCancelled",
            "OrderPlaced",
            "PaymentVoided"
        ]
    );
    let runs = executions_of(&shop.server.data_dir, &order);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "SUCCEEDED");
}

#[tokio::test]
async fn a_captured_order_is_refunded_once_though_the_refund_fails_twice() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let order = place(&shop, &[("MUG", 3)], "tok_refund_unavailable_2").await;
    let captured = shop
        .admin
        .post(&format!("/v1/orders/{order}/capture"), &key(), &json!({}))
        .await;
    assert_eq!(captured.status, StatusCode::OK, "{captured:?}");
    assert_eq!(captured.body["status"], "paid");
    assert_eq!(captured.body["payment"]["captured"], 1500);

    let asked = cancel(
        &shop.alice,
        &order,
        &json!({"reason": "one too many", "lines": [{"sku": "MUG", "quantity": 1}]}),
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");
    let done = settled(&shop.alice, &order).await;
    assert_eq!(done["status"], "partially_cancelled", "{done}");
    assert_eq!(done["payment"]["refunded"], 500);
    assert_eq!(done["payment"]["captured"], 1500);
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));

    let types = trail(&shop.ops, &order, 6).await;
    let refunds = types.iter().filter(|t| *t == "PaymentRefunded").count();
    assert_eq!(refunds, 1, "{types:?}");
    let runs = executions_of(&shop.server.data_dir, &order);
    let shown = history(&shop.server.data_dir, runs[0]["name"].as_str().unwrap());
    let settle: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["state"] == "SettlePayment" && h["type"] != "Waited")
        .map(|h| h["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        settle,
        ["TaskFailed", "TaskFailed", "TaskSucceeded"],
        "{shown}"
    );

    // The rest of the order, later: refunded under the next key.
    let rest = cancel(&shop.alice, &order, &json!({"reason": "all of it"})).await;
    assert_eq!(rest.status, StatusCode::ACCEPTED, "{rest:?}");
    assert_eq!(rest.body["cancellation"]["attempt"], 2);
    let done = settled(&shop.alice, &order).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["payment"]["refunded"], 1500);
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
}

#[tokio::test]
async fn a_refund_that_always_fails_ends_in_needs_attention_with_the_stock_back_and_an_alert() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let order = place(&shop, &[("MUG", 2)], "tok_refund_refused").await;
    let captured = shop
        .admin
        .post(&format!("/v1/orders/{order}/capture"), &key(), &json!({}))
        .await;
    assert_eq!(captured.status, StatusCode::OK, "{captured:?}");
    let asked = cancel(&shop.admin, &order, &json!({"reason": "fraud"})).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");

    let done = settled(&shop.alice, &order).await;
    assert_eq!(done["status"], "needs_attention", "{done}");
    assert_eq!(
        done["cancellation"]["failure"]["error"],
        "Commerce.PaymentRefused"
    );
    assert_eq!(done["cancellation"]["stock_released"], true);
    assert_eq!(done["cancellation"]["payment_settled"], false);
    assert_eq!(done["payment"]["refunded"], 0);
    assert_eq!(
        shop.levels("MUG").await,
        (10, 0, 10),
        "stock still released"
    );

    let alerts = shop.ops.get("/v1/alerts").await;
    assert_eq!(alerts.status, StatusCode::OK, "{alerts:?}");
    assert_eq!(alerts.body["items"][0]["order_id"], order.as_str());
    assert_eq!(
        alerts.body["items"][0]["kind"],
        "cancellation-needs-attention"
    );
    let runs = executions_of(&shop.server.data_dir, &order);
    assert_eq!(
        (runs[0]["status"].as_str(), runs[0]["error"].as_str()),
        (Some("FAILED"), Some("NeedsAttention"))
    );
    assert_eq!(
        cancel(
            &shop.alice,
            &order,
            &json!({"reason": "x", "lines": [{"sku": "MUG", "quantity": 1}]})
        )
        .await
        .problem(),
        "cancellation-in-progress",
        "only a retry of the whole cancellation is taken"
    );
}

#[tokio::test]
async fn cancelling_twice_or_concurrently_runs_one_saga() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let order = place(&shop, &[("MUG", 4)], "tok_visa").await;
    let asks = (0..8).map(|n| {
        let client = if n % 2 == 0 { &shop.alice } else { &shop.admin };
        let order = order.clone();
        async move { cancel(client, &order, &json!({"reason": format!("ask {n}")})).await }
    });
    let answers = futures_util::future::join_all(asks).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
        assert_eq!(answer.body["cancellation"]["attempt"], 1, "{answer:?}");
    }
    let done = settled(&shop.alice, &order).await;
    assert_eq!(done["status"], "cancelled");
    let again = cancel(&shop.alice, &order, &json!({"reason": "again"})).await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "asking again answers how it ended"
    );
    assert_eq!(again.body["status"], "cancelled");

    let types = trail(&shop.ops, &order, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let types_later = trail(&shop.ops, &order, 5).await;
    assert_eq!(types, types_later);
    for once in [
        "OrderCancellationRequested",
        "CancellationStockReleased",
        "PaymentVoided",
        "OrderCancelled",
    ] {
        assert_eq!(types.iter().filter(|t| *t == once).count(), 1, "{types:?}");
    }
    assert_eq!(executions_of(&shop.server.data_dir, &order).len(), 1);
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
}

#[tokio::test]
async fn a_bad_cancellation_is_refused_and_changes_nothing() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let order = place(&shop, &[("MUG", 2)], "tok_visa").await;
    let path = format!("/v1/orders/{order}/cancellation");
    for (body, problem) in [
        (json!({"reason": ""}), "invalid-request"),
        (
            json!({"reason": "x", "lines": [{"sku": "HAT", "quantity": 1}]}),
            "invalid-request",
        ),
        (
            json!({"reason": "x", "lines": [{"sku": "MUG", "quantity": 3}]}),
            "invalid-request",
        ),
        (json!({"reason": "x", "lines": []}), "invalid-request"),
        (json!({"reason": "x", "refund": true}), "invalid-request"),
    ] {
        let answer = shop.alice.post(&path, &key(), &body).await;
        assert!(answer.status.is_client_error(), "{body}: {answer:?}");
        assert!(
            answer.problem() == problem || answer.problem() == "bad-request",
            "{body}: {answer:?}"
        );
    }
    let missing_key = shop
        .alice
        .post_raw(
            &path,
            &[("content-type", "application/json")],
            br#"{"reason":"x"}"#.to_vec(),
        )
        .await;
    assert_eq!(missing_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        cancel(&shop.bob, &order, &json!({"reason": "not mine"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        cancel(&shop.ops, &order, &json!({"reason": "ops"}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        shop.alice
            .post(&format!("/v1/orders/{order}/capture"), &key(), &json!({}))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "customers do not capture"
    );
    let read = shop.alice.get(&format!("/v1/orders/{order}")).await;
    assert_eq!(read.body["status"], "placed");
    assert!(read.body.get("cancellation").is_none(), "{read:?}");
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));
}

#[tokio::test]
async fn a_saga_killed_midway_resumes_after_a_restart_and_finishes_once() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    // Each void takes the provider 2 seconds: the server is killed while SettlePayment waits
    // for it, after ReleaseStock has finished.
    let order = place(&shop, &[("MUG", 3)], "tok_void_slow").await;
    let asked = cancel(&shop.alice, &order, &json!({"reason": "changed my mind"})).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");
    let data_dir = shop.server.data_dir.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let name = loop {
        let runs = executions_of(&data_dir, &order);
        if let Some(run) = runs.first() {
            let name = run["name"].as_str().unwrap().to_owned();
            let shown = history(&data_dir, &name);
            if shown["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["state"] == "ReleaseStock" && h["type"] == "TaskSucceeded")
            {
                break name;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the saga never released the stock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let before = history(&data_dir, &name);
    assert_eq!(
        before["execution"]["status"], "RUNNING",
        "killed midway: {before}"
    );
    let Shop { server, .. } = shop;
    let keep = server.kill();

    let server = Server::start_in(&data_dir);
    let alice = server.client("acme", "alice", &["customer"]);
    let admin = server.client("acme", "admin-1", &["admin"]);
    let ops = server.client("acme", "ops-1", &["ops"]);
    let done = settled(&alice, &order).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["payment"]["voided"], 1500);
    let stock = admin.get("/v1/inventory/MUG").await.body;
    assert_eq!(
        (stock["on_hand"].as_u64(), stock["reserved"].as_u64()),
        (Some(10), Some(0))
    );

    let types = trail(&ops, &order, 5).await;
    for once in [
        "OrderCancellationRequested",
        "CancellationStockReleased",
        "PaymentVoided",
        "OrderCancelled",
    ] {
        assert_eq!(types.iter().filter(|t| *t == once).count(), 1, "{types:?}");
    }
    let shown = history(&data_dir, &name);
    assert_eq!(shown["execution"]["status"], "SUCCEEDED", "{shown}");
    assert_eq!(
        shown["execution"]["runs"], 2,
        "taken up once more after the restart"
    );
    let released: Vec<&Value> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["state"] == "ReleaseStock")
        .collect();
    assert_eq!(
        released.len(),
        1,
        "stock was released before the kill and not again: {shown}"
    );
    drop(server);
    drop(keep);
}
