use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::shop;
use commerce_tests::key;

#[tokio::test]
async fn a_reservation_holds_stock_until_released() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let held = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &json!({"lines": [{"sku": "MUG", "quantity": 3}], "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(held.status, StatusCode::CREATED, "{held:?}");
    assert_eq!(held.body["status"], "held");
    let id = held.body["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.levels("MUG").await, (10, 3, 7));

    assert_eq!(
        shop.alice.get(&format!("/v1/reservations/{id}")).await.body["status"],
        "held"
    );
    assert_eq!(
        shop.ops.get(&format!("/v1/reservations/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        shop.bob.get(&format!("/v1/reservations/{id}")).await.status,
        StatusCode::NOT_FOUND,
        "not bob's"
    );
    assert_eq!(
        shop.bob
            .post(
                &format!("/v1/reservations/{id}/release"),
                &key(),
                &json!({})
            )
            .await
            .status,
        StatusCode::NOT_FOUND
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
    assert_eq!(released.body["status"], "released");
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
    let twice = shop
        .alice
        .post(
            &format!("/v1/reservations/{id}/release"),
            &key(),
            &json!({}),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert_eq!(twice.problem(), "reservation-not-held");
    assert_eq!(shop.levels("MUG").await, (10, 0, 10), "released once");
}

#[tokio::test]
async fn a_reservation_is_all_or_nothing() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    shop.stocked("CAP", 500, 1).await;
    let short = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &json!({"lines": [{"sku": "MUG", "quantity": 3}, {"sku": "CAP", "quantity": 2}]}),
        )
        .await;
    assert_eq!(short.status, StatusCode::CONFLICT);
    assert_eq!(short.problem(), "out-of-stock");
    assert_eq!(
        shop.levels("MUG").await,
        (10, 0, 10),
        "no line is held when one is short"
    );
    assert_eq!(shop.levels("CAP").await, (1, 0, 1));
}

#[tokio::test]
async fn expired_reservations_give_their_stock_back() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let held = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &json!({"lines": [{"sku": "MUG", "quantity": 4}], "ttl_seconds": 1}),
        )
        .await;
    assert_eq!(held.status, StatusCode::CREATED);
    let id = held.body["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.levels("MUG").await, (10, 4, 6));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = shop.alice.get(&format!("/v1/reservations/{id}")).await.body["status"].clone();
        if status == "expired" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper never expired the reservation (status {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
    let order = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(
        order.status,
        StatusCode::CONFLICT,
        "an expired hold cannot become an order"
    );
}

#[tokio::test]
async fn reservation_ttl_and_lines_are_checked() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    for bad in [
        json!({"lines": [{"sku": "MUG", "quantity": 1}], "ttl_seconds": 0}),
        json!({"lines": [{"sku": "MUG", "quantity": 1}], "ttl_seconds": 100000}),
        json!({"lines": []}),
    ] {
        assert_eq!(
            shop.alice
                .post("/v1/reservations", &key(), &bad)
                .await
                .status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    assert_eq!(
        shop.alice
            .post(
                "/v1/reservations",
                &key(),
                &json!({"lines": [{"sku": "GHOST", "quantity": 1}]})
            )
            .await
            .problem(),
        "unknown-sku"
    );
    assert_eq!(
        shop.admin
            .post(
                "/v1/reservations",
                &key(),
                &json!({"lines": [{"sku": "MUG", "quantity": 1}]})
            )
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
}
