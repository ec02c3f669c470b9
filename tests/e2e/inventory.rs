use reqwest::StatusCode;
use serde_json::json;

use crate::{order_body, shop};
use commerce_tests::key;

#[tokio::test]
async fn stock_is_set_received_and_read() {
    let shop = shop();
    shop.product("MUG", 500, "EUR").await;
    let fresh = shop.stock("MUG").await;
    assert_eq!(
        (fresh["on_hand"].as_u64(), fresh["version"].as_u64()),
        (Some(0), Some(0)),
        "a product starts with no stock"
    );
    let set = shop
        .admin
        .put(
            "/v1/inventory/MUG",
            &json!({"on_hand": 5, "low_stock_threshold": 2}),
        )
        .await;
    assert_eq!(set.body["available"], 5);
    let received = shop
        .admin
        .post(
            "/v1/inventory/MUG/receipts",
            &key(),
            &json!({"quantity": 7}),
        )
        .await;
    assert_eq!(received.status, StatusCode::OK, "{received:?}");
    assert_eq!(received.body["on_hand"], 12);
    assert_eq!(shop.levels("MUG").await, (12, 0, 12));
    assert_eq!(
        shop.ops.get("/v1/inventory/MUG").await.status,
        StatusCode::OK,
        "operators read stock"
    );
}

#[tokio::test]
async fn only_admins_change_stock_and_only_for_known_products() {
    let shop = shop();
    shop.stocked("MUG", 500, 5).await;
    assert_eq!(
        shop.alice
            .put("/v1/inventory/MUG", &json!({"on_hand": 99}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        shop.ops
            .post(
                "/v1/inventory/MUG/receipts",
                &key(),
                &json!({"quantity": 1})
            )
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        shop.alice.get("/v1/inventory/MUG").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        shop.admin
            .put("/v1/inventory/GHOST", &json!({"on_hand": 1}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for bad in [
        json!({"quantity": 0}),
        json!({"quantity": -3}),
        json!({"quantity": "3"}),
    ] {
        let answer = shop
            .admin
            .post("/v1/inventory/MUG/receipts", &key(), &bad)
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let negative = shop
        .admin
        .put("/v1/inventory/MUG", &json!({"on_hand": -1}))
        .await;
    assert_eq!(negative.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(shop.levels("MUG").await, (5, 0, 5));
}

#[tokio::test]
async fn on_hand_cannot_drop_below_what_is_reserved() {
    let shop = shop();
    shop.stocked("MUG", 500, 5).await;
    assert_eq!(
        shop.alice
            .post("/v1/orders", &key(), &order_body(&[("MUG", 4)], "tok_visa"))
            .await
            .status,
        StatusCode::CREATED
    );
    let below = shop
        .admin
        .put("/v1/inventory/MUG", &json!({"on_hand": 3}))
        .await;
    assert_eq!(below.status, StatusCode::CONFLICT);
    assert_eq!(below.problem(), "below-reserved");
    assert_eq!(shop.levels("MUG").await, (5, 4, 1));
}

#[tokio::test]
async fn low_stock_is_listed_while_below_threshold() {
    let shop = shop();
    shop.product("MUG", 500, "EUR").await;
    shop.product("CAP", 500, "EUR").await;
    shop.admin
        .put(
            "/v1/inventory/MUG",
            &json!({"on_hand": 10, "low_stock_threshold": 3}),
        )
        .await;
    shop.admin
        .put(
            "/v1/inventory/CAP",
            &json!({"on_hand": 10, "low_stock_threshold": 3}),
        )
        .await;
    let listed = |body: serde_json::Value| {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["sku"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(listed(shop.ops.get("/v1/inventory/low-stock").await.body).is_empty());

    assert_eq!(
        shop.alice
            .post("/v1/orders", &key(), &order_body(&[("MUG", 8)], "tok_visa"))
            .await
            .status,
        StatusCode::CREATED
    );
    let low = shop.ops.get("/v1/inventory/low-stock").await;
    assert_eq!(listed(low.body.clone()), ["MUG"]);
    assert_eq!(low.body["items"][0]["available"], 2);
    assert_eq!(shop.stock("MUG").await["low_stock"], true);

    shop.admin
        .post(
            "/v1/inventory/MUG/receipts",
            &key(),
            &json!({"quantity": 5}),
        )
        .await;
    assert!(
        listed(shop.ops.get("/v1/inventory/low-stock").await.body).is_empty(),
        "restocking clears it"
    );
    assert_eq!(
        shop.alice.get("/v1/inventory/low-stock").await.status,
        StatusCode::FORBIDDEN
    );
}
