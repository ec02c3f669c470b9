use reqwest::StatusCode;
use serde_json::json;

use crate::{order_body, shop};
use commerce_tests::key;

#[tokio::test]
async fn an_order_is_priced_by_the_server_and_holds_stock() {
    let shop = shop();
    shop.stocked("MUG", 1250, 10).await;
    shop.stocked("CAP", 990, 5).await;
    let placed = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &order_body(&[("MUG", 2), ("CAP", 1)], "tok_visa"),
        )
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    assert_eq!(placed.body["status"], "placed");
    assert_eq!(
        placed.body["total"],
        json!({"amount_minor": 3490, "currency": "EUR"})
    );
    assert_eq!(placed.body["lines"][0]["line_total"]["amount_minor"], 2500);
    assert_eq!(placed.body["customer"], "alice");
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));
    assert_eq!(shop.levels("CAP").await, (5, 1, 4));

    let id = placed.body["id"].as_str().unwrap();
    let read = shop.alice.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(
        read.body, placed.body,
        "reading the order gives what placing it answered"
    );
    let reservation = shop
        .alice
        .get(&format!(
            "/v1/reservations/{}",
            placed.body["reservation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (
            reservation.body["status"].as_str(),
            reservation.body["order_id"].as_str()
        ),
        (Some("confirmed"), Some(id))
    );
}

#[tokio::test]
async fn an_order_can_take_over_the_callers_reservation() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let held = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &json!({"lines": [{"sku": "MUG", "quantity": 3}]}),
        )
        .await;
    let id = held.body["id"].as_str().unwrap();
    let bobs = shop
        .bob
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(
        bobs.status,
        StatusCode::NOT_FOUND,
        "bob cannot order alice's hold"
    );
    let placed = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    assert_eq!(placed.body["total"]["amount_minor"], 1500);
    assert_eq!(placed.body["reservation_id"], id);
    assert_eq!(
        shop.levels("MUG").await,
        (10, 3, 7),
        "the held stock is the order's; nothing more is taken"
    );
    let again = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "a reservation becomes one order"
    );
}

#[tokio::test]
async fn a_declined_payment_gives_the_stock_back() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    for token in ["tok_decline", "tok_insufficient_funds", "not-a-token"] {
        let declined = shop
            .alice
            .post("/v1/orders", &key(), &order_body(&[("MUG", 4)], token))
            .await;
        assert_eq!(
            declined.status,
            StatusCode::PAYMENT_REQUIRED,
            "{declined:?}"
        );
        assert_eq!(declined.problem(), "payment-declined");
    }
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
    assert_eq!(shop.alice.get("/v1/orders").await.body["items"], json!([]));
}

#[tokio::test]
async fn an_unavailable_provider_is_retried_then_surfaced() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let flaky = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &order_body(&[("MUG", 1)], "tok_flaky"),
        )
        .await;
    assert_eq!(
        flaky.status,
        StatusCode::CREATED,
        "a transient failure is retried: {flaky:?}"
    );
    let same_key = key();
    let down = shop
        .alice
        .post(
            "/v1/orders",
            &same_key,
            &order_body(&[("MUG", 2)], "tok_unavailable"),
        )
        .await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.problem(), "payment-unavailable");
    assert_eq!(
        shop.levels("MUG").await,
        (10, 1, 9),
        "the basket's stock goes back; a retry with the same key holds it again"
    );
    let retry = shop
        .alice
        .post(
            "/v1/orders",
            &same_key,
            &order_body(&[("MUG", 2)], "tok_unavailable"),
        )
        .await;
    assert_eq!(
        retry.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the key stays usable after a 503"
    );
    assert_eq!(
        shop.levels("MUG").await,
        (10, 1, 9),
        "the retry resumes the same attempt and gives the stock back again"
    );
}

/// A client that gives up while the provider takes its time, then retries with the same key,
/// gets the one order the first request placed.
#[tokio::test]
async fn a_client_that_disconnects_mid_payment_and_retries_gets_one_order() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let k = key();
    let body = order_body(&[("MUG", 2)], "tok_slow");
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let cut = impatient
        .post(format!("{}/v1/orders", shop.server.base))
        .bearer_auth(commerce_tests::token("acme", "alice", &["customer"]))
        .header("idempotency-key", &k)
        .json(&body)
        .send()
        .await;
    assert!(cut.is_err(), "the first request was cut short: {cut:?}");
    let retry = shop.alice.post("/v1/orders", &k, &body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    let listed = shop.alice.get("/v1/orders").await.body["items"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "one order: {listed}");
    assert_eq!(listed[0]["id"], retry.body["id"]);
    assert_eq!(shop.levels("MUG").await, (10, 2, 8), "stock taken once");
}

/// The provider is down for a reservation's order: the reservation stays held, and the retry
/// with the same key orders it once the provider is back.
#[tokio::test]
async fn a_reservation_outlives_a_provider_outage_and_the_retry_orders_it() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let held = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &json!({"lines": [{"sku": "MUG", "quantity": 2}]}),
        )
        .await;
    let id = held.body["id"].as_str().unwrap();
    let k = key();
    let body = json!({"reservation_id": id, "payment_token": "tok_outage"});
    let down = shop.alice.post("/v1/orders", &k, &body).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{down:?}");
    let reservation = shop.alice.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(
        reservation.body["status"], "held",
        "a failure leaves the reservation held"
    );
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));
    let back = shop.alice.post("/v1/orders", &k, &body).await;
    assert_eq!(back.status, StatusCode::CREATED, "{back:?}");
    assert_eq!(back.body["reservation_id"], id);
    assert_eq!(
        shop.levels("MUG").await,
        (10, 2, 8),
        "the reservation's stock became the order's"
    );
    let again = shop.alice.post("/v1/orders", &k, &body).await;
    assert_eq!(again.body, back.body);
}

/// The order ids `client` is listed, two to a page.
async fn order_ids(client: &commerce_tests::Client) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = "/v1/orders?limit=2".to_owned();
    loop {
        let page = client.get(&path).await;
        ids.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/orders?limit=2&cursor={cursor}"),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn customers_see_only_their_orders_and_operators_see_all() {
    let shop = shop();
    shop.stocked("MUG", 500, 100).await;
    let mut alices = Vec::new();
    for _ in 0..5 {
        let placed = shop
            .alice
            .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
            .await;
        alices.push(placed.body["id"].as_str().unwrap().to_owned());
    }
    let bobs = shop
        .bob
        .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
        .await;
    let bob_id = bobs.body["id"].as_str().unwrap();

    let listed = order_ids(&shop.alice).await;
    alices.reverse();
    assert_eq!(listed, alices, "alice's orders, newest first");

    assert_eq!(
        shop.bob
            .get(&format!("/v1/orders/{}", alices[0]))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        shop.alice.get(&format!("/v1/orders/{bob_id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        shop.ops.get(&format!("/v1/orders/{bob_id}")).await.status,
        StatusCode::OK
    );
    // The shop's list is kept in shards; its pages merge them, newest first, each order once.
    let everyone = order_ids(&shop.ops).await;
    let mut placed: Vec<String> = alices.iter().rev().cloned().collect();
    placed.push(bob_id.to_owned());
    placed.reverse();
    assert_eq!(everyone, placed, "the shop's orders, newest first");
    assert_eq!(
        shop.ops.get("/v1/orders?limit=100").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        shop.admin.get("/v1/orders").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn contact_details_are_kept_out_of_events() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let mut body = order_body(&[("MUG", 1)], "tok_visa");
    body["contact"] = json!({"name": "Alice Example", "email": "alice@example.test", "shipping_address": ["1 Test Street", "Testville"]});
    let placed = shop.alice.post("/v1/orders", &key(), &body).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let id = placed.body["id"].as_str().unwrap();
    assert_eq!(
        shop.alice.get(&format!("/v1/orders/{id}")).await.body["contact"]["email"],
        "alice@example.test"
    );

    let db = rusqlite::Connection::open(shop.server.data_dir.join("commerce.db")).unwrap();
    let events: Vec<String> = db
        .prepare("SELECT CAST(data AS TEXT) FROM items WHERE sk LIKE 'event#%'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(events.iter().any(|e| e.contains("OrderPlaced")));
    for event in &events {
        assert!(
            !event.contains("alice@example.test")
                && !event.contains("Test Street")
                && !event.contains("Alice Example"),
            "personal data in an event: {event}"
        );
    }

    let mut bad = order_body(&[("MUG", 1)], "tok_visa");
    bad["contact"] = json!({"email": "not-an-address"});
    assert_eq!(
        shop.alice.post("/v1/orders", &key(), &bad).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}
