use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::{order_body, shop};
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

/// One account cannot lock up a sale: holds, units per SKU, units in all and the longest hold
/// are capped per customer, and a refused hold takes nothing.
#[tokio::test]
async fn hold_limits_stop_one_customer_locking_up_the_stock() {
    let shop = shop();
    shop.stocked("MUG", 500, 10_000).await;
    shop.stocked("CAP", 500, 10_000).await;
    let reserve = |sku: &str, quantity: u32, ttl: u32| json!({"lines": [{"sku": sku, "quantity": quantity}], "ttl_seconds": ttl});
    let big = shop
        .alice
        .post("/v1/reservations", &key(), &reserve("MUG", 100, 600))
        .await;
    assert_eq!(big.status, StatusCode::CREATED, "{big:?}");
    let more = shop
        .alice
        .post("/v1/reservations", &key(), &reserve("MUG", 1, 600))
        .await;
    assert_eq!(more.status, StatusCode::CONFLICT);
    assert_eq!(more.problem(), "hold-limit-reached");
    let by_order = shop
        .alice
        .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
        .await;
    assert_eq!(
        by_order.status,
        StatusCode::CREATED,
        "an order's own hold lasts only while it pays, and is not limited"
    );
    let long = shop
        .bob
        .post("/v1/reservations", &key(), &reserve("CAP", 1, 7200))
        .await;
    assert_eq!(long.status, StatusCode::UNPROCESSABLE_ENTITY, "{long:?}");
    for n in 0..9 {
        let held = shop
            .bob
            .post("/v1/reservations", &key(), &reserve("CAP", 1, 600))
            .await;
        assert_eq!(held.status, StatusCode::CREATED, "hold {n}: {held:?}");
    }
    let tenth = shop
        .bob
        .post("/v1/reservations", &key(), &reserve("MUG", 1, 600))
        .await;
    assert_eq!(tenth.status, StatusCode::CREATED);
    let eleventh = shop
        .bob
        .post("/v1/reservations", &key(), &reserve("MUG", 1, 600))
        .await;
    assert_eq!(eleventh.problem(), "hold-limit-reached");
    assert_eq!(shop.levels("MUG").await, (10_000, 102, 9_898));
    assert_eq!(shop.levels("CAP").await, (10_000, 9, 9_991));

    let released = shop
        .alice
        .post(
            &format!(
                "/v1/reservations/{}/release",
                big.body["id"].as_str().unwrap()
            ),
            &key(),
            &json!({}),
        )
        .await;
    assert_eq!(released.status, StatusCode::OK);
    let again = shop
        .alice
        .post("/v1/reservations", &key(), &reserve("MUG", 100, 600))
        .await;
    assert_eq!(
        again.status,
        StatusCode::CREATED,
        "a released hold counts no more"
    );
}

/// A cart that could never become an order is refused at once, holding nothing.
#[tokio::test]
async fn a_reservation_in_two_currencies_is_refused() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    shop.product("HAT", 700, "USD").await;
    shop.admin
        .put("/v1/inventory/HAT", &json!({"on_hand": 10}))
        .await;
    let mixed = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &json!({"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "HAT", "quantity": 1}]}),
        )
        .await;
    assert_eq!(mixed.status, StatusCode::UNPROCESSABLE_ENTITY, "{mixed:?}");
    assert_eq!(mixed.problem(), "currency-mismatch");
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
    assert_eq!(shop.levels("HAT").await, (10, 0, 10));
}

/// Orders racing for one reservation under different keys: one pays, the others are refused,
/// and the customer is authorized once.
#[tokio::test]
async fn two_keys_cannot_both_pay_for_one_reservation() {
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
    let id = held.body["id"].as_str().unwrap().to_owned();
    let mut racing = Vec::new();
    for _ in 0..8 {
        let (alice, id) = (shop.alice.clone(), id.clone());
        racing.push(tokio::spawn(async move {
            alice
                .post(
                    "/v1/orders",
                    &key(),
                    &json!({"reservation_id": id, "payment_token": "tok_slow"}),
                )
                .await
        }));
    }
    let mut placed = 0;
    for run in racing {
        let answer = run.await.unwrap();
        match answer.status {
            StatusCode::CREATED => placed += 1,
            StatusCode::CONFLICT => assert!(
                ["reservation-in-checkout", "reservation-not-held"].contains(&answer.problem()),
                "{answer:?}"
            ),
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!(placed, 1);
    assert_eq!(
        shop.alice.get("/v1/orders").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(shop.levels("MUG").await, (10, 3, 7));
}

/// A declined payment is the order's failure, not the reservation's: it stays held and can
/// still be ordered with another payment method.
#[tokio::test]
async fn a_declined_order_leaves_its_reservation_held() {
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
    let declined = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_decline"}),
        )
        .await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    let reservation = shop.alice.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(reservation.body["status"], "held");
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));
    let paid = shop
        .alice
        .post(
            "/v1/orders",
            &key(),
            &json!({"reservation_id": id, "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{paid:?}");
}
