//! The event pipeline across crashes and rebuilds: `kill -9` under load loses no event and
//! applies none twice, and `commerce replay` run while the server serves rebuilds read models
//! equal to the live ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::events::{all_pages, eventually};
use crate::{order_body, shop};
use commerce_tests::{Client, Server, key, server_binary, token};

/// The audit trail and the sales report as an operator reads them, once the pipeline is idle:
/// the report counts every unit the trail's placed orders sold, and nothing changes any more.
async fn settled(ops: &Client) -> (Vec<Value>, Vec<Value>) {
    let mut last: Option<(Vec<Value>, Vec<Value>)> = None;
    loop {
        let now = (
            all_pages(ops, "/v1/audit").await,
            all_pages(ops, "/v1/reports/sales").await,
        );
        let ordered: u64 = now
            .0
            .iter()
            .filter(|e| e["type"] == "OrderPlaced")
            .flat_map(|e| e["data"]["lines"].as_array().cloned().unwrap_or_default())
            .filter_map(|line| line["quantity"].as_u64())
            .sum();
        let reported: u64 = now.1.iter().filter_map(|row| row["units"].as_u64()).sum();
        if ordered > 0 && reported == ordered && last.as_ref() == Some(&now) {
            return now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_replay_while_serving_rebuilds_read_models_equal_to_the_live_ones() {
    let shop = shop();
    // Every endpoint that changes something, and the reads beside them.
    shop.stocked("MUG", 450, 10).await;
    shop.stocked("PEN", 120, 5).await;
    let receipt = shop
        .admin
        .post(
            "/v1/inventory/PEN/receipts",
            &key(),
            &json!({"quantity": 5}),
        )
        .await;
    assert_eq!(receipt.status, StatusCode::OK, "{receipt:?}");
    for path in [
        "/v1/products",
        "/v1/products/MUG",
        "/v1/inventory/low-stock",
    ] {
        assert_eq!(shop.admin.get(path).await.status, StatusCode::OK, "{path}");
    }
    let reserve = json!({"lines": [{"sku": "MUG", "quantity": 2}], "ttl_seconds": 600});
    let held = shop.alice.post("/v1/reservations", &key(), &reserve).await;
    assert_eq!(held.status, StatusCode::CREATED, "{held:?}");
    let id = held.body["id"].as_str().unwrap();
    assert_eq!(
        shop.alice
            .get(&format!("/v1/reservations/{id}"))
            .await
            .status,
        StatusCode::OK
    );
    let released = shop
        .alice
        .post(
            &format!("/v1/reservations/{id}/release"),
            &key(),
            &json!({}),
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{released:?}");
    let held = shop.alice.post("/v1/reservations", &key(), &reserve).await;
    let id = held.body["id"].as_str().unwrap();
    let from_reservation = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(
        from_reservation.status,
        StatusCode::CREATED,
        "{from_reservation:?}"
    );
    let basket = shop
        .bob
        .post(
            "/v1/orders",
            &key(),
            &order_body(&[("PEN", 3), ("MUG", 1)], "tok_visa"),
        )
        .await;
    assert_eq!(basket.status, StatusCode::CREATED);
    let declined = shop
        .bob
        .post(
            "/v1/orders",
            &key(),
            &order_body(&[("PEN", 1)], "tok_decline"),
        )
        .await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(shop.ops.get("/v1/orders").await.status, StatusCode::OK);

    let live = settled(&shop.ops).await;
    assert!(live.0.len() > 15, "{} events", live.0.len());
    assert_eq!(live.1.len(), 2, "MUG and PEN sold today: {:?}", live.1);

    let replay = std::process::Command::new(server_binary())
        .args(["replay", "--data-dir"])
        .arg(&shop.server.data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one summary per projection: {lines:?}");
    assert_eq!(lines[0]["projection"], "sales");
    assert_eq!(lines[0]["generation"], 2, "{}", lines[0]);
    assert_eq!(lines[0]["events"].as_u64(), Some(live.0.len() as u64));
    // Listing the audit trail's events, named: every one was listed as it was recorded.
    let audit = std::process::Command::new(server_binary())
        .args(["replay", "--projection", "audit", "--data-dir"])
        .arg(&shop.server.data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(audit.status.success(), "{audit:?}");
    let listed: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(
        listed["events"].as_u64(),
        Some(live.0.len() as u64),
        "{listed}"
    );
    assert_eq!(listed["listed"], 0, "{listed}");
    let progress = String::from_utf8_lossy(&replay.stderr);
    assert!(
        progress.contains("events/s") || progress.contains("/s"),
        "a progress line: {progress}"
    );

    let rebuilt = settled(&shop.ops).await;
    assert_eq!(
        rebuilt.0, live.0,
        "the audit trail is the events, unchanged"
    );
    assert_eq!(
        rebuilt.1, live.1,
        "the rebuilt sales report equals the live one"
    );
}

/// Places orders until told to stop, each with its own key, retrying that key through
/// crashes until it gets a final answer. Returns the ids of the orders it was told are placed.
async fn customer(base: Arc<RwLock<String>>, n: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let http = reqwest::Client::new();
    let bearer = token("acme", &format!("buyer-{n}"), &["customer"]);
    let mut placed = Vec::new();
    let mut sku = n;
    while !stop.load(Ordering::SeqCst) {
        sku = (sku + 1) % 8;
        let key = key();
        let body = order_body(&[(&format!("SKU{sku}"), 1)], "tok_visa");
        loop {
            let url = format!("{}/v1/orders", base.read().unwrap().clone());
            let answer = http
                .post(&url)
                .bearer_auth(&bearer)
                .header("idempotency-key", &key)
                .json(&body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    let order: Value = r.json().await.unwrap();
                    placed.push(order["id"].as_str().unwrap().to_owned());
                    break;
                }
                // Still in flight after a restart, or the store busy: the same key, again.
                Ok(r) if r.status() == StatusCode::CONFLICT || r.status().is_server_error() => {}
                Ok(r) => panic!("unexpected answer {}: {:?}", r.status(), r.text().await),
                // The server is down: wait for it.
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_event_and_applies_none_twice() {
    let shop = shop();
    for sku in 0..8 {
        shop.stocked(&format!("SKU{sku}"), 100, 100_000).await;
    }
    let base = Arc::new(RwLock::new(shop.server.base.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let customers: Vec<_> = (0..12)
        .map(|n| tokio::spawn(customer(base.clone(), n, stop.clone())))
        .collect();
    let data_dir = shop.server.data_dir.clone();
    let mut server = shop.server;
    let mut keep = None;
    for crash in 0..4 {
        tokio::time::sleep(Duration::from_millis(300 + 150 * crash)).await;
        keep = server.kill().or(keep);
        server = Server::start_in(&data_dir);
        *base.write().unwrap() = server.base.clone();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = BTreeSet::new();
    for customer in customers {
        for order in customer.await.unwrap() {
            assert!(acknowledged.insert(order), "one order per key");
        }
    }
    assert!(
        acknowledged.len() > 50,
        "the load ran: {} orders",
        acknowledged.len()
    );

    let ops = server.client("acme", "ops-1", &["ops"]);
    let placed = eventually(&ops, "/v1/reports/sales", |b| {
        let orders: u64 = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["orders"].as_u64().unwrap())
            .sum();
        orders >= acknowledged.len() as u64
    })
    .await;
    // The audit trail lists events through the table's index, as they commit: nothing to wait for.
    let trail = all_pages(&ops, "/v1/audit?event_type=OrderPlaced").await;
    let mut audited: BTreeMap<String, usize> = BTreeMap::new();
    for entry in trail {
        *audited
            .entry(entry["aggregate_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        audited.values().all(|n| *n == 1),
        "no event listed twice: {:?}",
        audited.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(
        audited.keys().cloned().collect::<BTreeSet<_>>(),
        acknowledged,
        "the audit trail holds exactly the orders acknowledged"
    );
    let sold: u64 = placed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["orders"].as_u64().unwrap())
        .sum();
    assert_eq!(
        sold,
        acknowledged.len() as u64,
        "the sales report counts each once"
    );
    let mut ids = BTreeSet::new();
    for entry in all_pages(&ops, "/v1/audit").await {
        assert!(
            ids.insert(entry["id"].as_str().unwrap().to_owned()),
            "event ids are unique"
        );
    }
    drop(server);
    drop(keep);
}
