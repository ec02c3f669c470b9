//! Events reach the audit trail (through the table's index) and the sales report (fed from the
//! bus), over HTTP on the real server.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{order_body, shop};
use commerce_tests::{Client, key};

/// Polls `path` until `done` holds for its body (or fails after a while, loudly).
pub async fn eventually(client: &Client, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = client.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
        if done(&answer.body) {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed what was expected: {:?}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every item of a list, following cursors, 100 a page.
pub async fn all_pages(client: &Client, path: &str) -> Vec<Value> {
    pages_of(client, path, 100).await
}

/// Every item of a list, following cursors, `limit` a page.
pub async fn pages_of(client: &Client, path: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(c) => format!("{path}{separator}limit={limit}&cursor={c}"),
            None => format!("{path}{separator}limit={limit}"),
        };
        let page = client.get(&page_path).await;
        assert_eq!(page.status, StatusCode::OK, "{page_path}: {page:?}");
        items.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn a_placed_order_reaches_the_audit_trail_and_the_sales_report() {
    let shop = shop();
    shop.stocked("MUG", 450, 10).await;
    let body = serde_json::to_vec(&order_body(&[("MUG", 2)], "tok_visa")).unwrap();
    let placed = shop
        .alice
        .post_raw(
            "/v1/orders",
            &[
                ("idempotency-key", &key()),
                ("content-type", "application/json"),
                ("x-request-id", "checkout-42"),
            ],
            body,
        )
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let order = placed.body["id"].as_str().unwrap().to_owned();
    let started = Instant::now();

    let trail = eventually(&shop.ops, "/v1/audit?event_type=OrderPlaced", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    eprintln!(
        "OrderPlaced was in the audit trail after {:?}",
        started.elapsed()
    );
    let entry = &trail["items"][0];
    assert_eq!(entry["type"], "OrderPlaced");
    assert_eq!(entry["aggregate_type"], "order");
    assert_eq!(entry["aggregate_id"], order.as_str());
    assert_eq!(entry["aggregate_version"], 1);
    assert_eq!(entry["actor"], "alice", "who did it");
    assert_eq!(entry["correlation_id"], "checkout-42", "in which request");
    assert_eq!(entry["tenant"], "acme");
    assert_eq!(entry["schema_version"], 1);
    assert_eq!(entry["data"]["total"]["amount_minor"], 900);
    assert!(entry["data"].get("contact").is_none(), "no personal data");

    let report = eventually(&shop.ops, "/v1/reports/sales", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        report["items"],
        json!([{"date": entry["occurred_at"].as_str().unwrap()[..10], "sku": "MUG", "units": 2, "orders": 1, "revenue_minor": 900, "currency": "EUR"}])
    );

    // The order's whole story, by aggregate; the stock's, by actor and type.
    let story = all_pages(
        &shop.ops,
        &format!("/v1/audit?aggregate_type=order&aggregate_id={order}"),
    )
    .await;
    assert_eq!(story.len(), 1);
    // The trail is applied in no particular order: the stock's events may land after the order's.
    eventually(&shop.admin, "/v1/audit?actor=admin-1", |b| {
        b["items"].as_array().unwrap().len() >= 2
    })
    .await;
    let admin_did = all_pages(&shop.admin, "/v1/audit?actor=admin-1").await;
    let types: Vec<&str> = admin_did
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ProductCreated", "StockLevelSet"]);

    let metrics = shop.ops.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("commerce_events_applied_total{projection=\"sales\"} 1"),
        "{text}"
    );

    assert_eq!(
        shop.alice.get("/v1/audit").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        shop.admin.get("/v1/reports/sales").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        shop.alice.get("/metrics").await.status,
        StatusCode::FORBIDDEN
    );
    let other_shop = shop.server.client("globex", "ops-9", &["ops"]);
    assert_eq!(
        other_shop.get("/v1/audit").await.body["items"],
        json!([]),
        "a tenant never sees another's trail"
    );
}

#[tokio::test]
async fn the_audit_trail_filters_pages_and_refuses_bad_queries() {
    let shop = shop();
    shop.stocked("MUG", 450, 10).await;
    shop.stocked("PEN", 100, 10).await;
    for _ in 0..3 {
        let placed = shop
            .bob
            .post("/v1/orders", &key(), &order_body(&[("PEN", 1)], "tok_visa"))
            .await;
        assert_eq!(placed.status, StatusCode::CREATED);
    }
    for _ in 0..2 {
        let received = shop
            .admin
            .post(
                "/v1/inventory/PEN/receipts",
                &key(),
                &json!({"quantity": 5}),
            )
            .await;
        assert_eq!(received.status, StatusCode::OK);
    }
    // 2 products × 2 events, then per order: reservation held and confirmed, order placed; then
    // two receipts. Reservations are counted on the stock, not recorded on its stream.
    let everything = eventually(&shop.ops, "/v1/audit?limit=100", |b| {
        b["items"].as_array().unwrap().len() == 4 + 3 * 3 + 2
    })
    .await;
    let paged = pages_of(&shop.ops, "/v1/audit", 3).await;
    assert_eq!(paged, everything["items"].as_array().unwrap().clone());
    let times: Vec<&str> = paged
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");

    let pen = pages_of(
        &shop.ops,
        "/v1/audit?aggregate_type=inventory&aggregate_id=PEN",
        1,
    )
    .await;
    let versions: Vec<u64> = pen
        .iter()
        .map(|e| e["aggregate_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3], "set, then two receipts");
    let placed = pages_of(&shop.ops, "/v1/audit?actor=bob&event_type=OrderPlaced", 2).await;
    assert_eq!(placed.len(), 3);

    let future = all_pages(
        &shop.ops,
        "/v1/audit?from=2999-01-01T00:00:00Z&to=2999-01-02T00:00:00Z",
    )
    .await;
    assert!(future.is_empty());
    let until_first = all_pages(
        &shop.ops,
        &format!(
            "/v1/audit?from=2020-01-01T00:00:00Z&to={}&aggregate_type=inventory&aggregate_id=PEN",
            times[0]
        ),
    )
    .await;
    assert!(
        until_first.is_empty(),
        "`to` is exclusive and before every PEN event"
    );

    for bad in [
        "/v1/audit?aggregate_id=PEN",
        "/v1/audit?aggregate_type=idempotency&aggregate_id=alice",
        "/v1/audit?aggregate_type=order&aggregate_id=a%23b",
        "/v1/audit?from=yesterday",
        "/v1/audit?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
        "/v1/audit?cursor=nonsense",
        "/v1/audit?limit=0",
        "/v1/audit?colour=red",
        "/v1/reports/sales?from=2026-02-30",
        "/v1/reports/sales?from=2026-03-02&to=2026-03-01",
    ] {
        let answer = shop.ops.get(bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
        assert_eq!(answer.content_type, "application/problem+json", "{bad}");
    }
    // A cursor from one query does not fit another.
    let first = shop.ops.get("/v1/audit?limit=2").await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let elsewhere = shop
        .ops
        .get(&format!("/v1/reports/sales?cursor={cursor}"))
        .await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST);
}
