use reqwest::StatusCode;
use serde_json::json;

use crate::shop;
use commerce_tests::key;

#[tokio::test]
async fn admins_create_products_everyone_in_the_shop_reads_them() {
    let shop = shop();
    shop.product("MUG", 1250, "EUR").await;
    for reader in [&shop.admin, &shop.alice, &shop.ops] {
        let got = reader.get("/v1/products/MUG").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.body,
            json!({"sku": "MUG", "name": "Product MUG", "price": {"amount_minor": 1250, "currency": "EUR"}})
        );
    }
    assert_eq!(
        shop.alice.get("/v1/products/NOPE").await.problem(),
        "not-found"
    );
}

#[tokio::test]
async fn a_sku_is_created_once() {
    let shop = shop();
    shop.product("MUG", 100, "EUR").await;
    let again = shop.admin.post("/v1/products", &key(), &json!({"sku": "MUG", "name": "Other", "price": {"amount_minor": 1, "currency": "EUR"}})).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.problem(), "already-exists");
    assert_eq!(
        shop.admin.get("/v1/products/MUG").await.body["name"],
        "Product MUG"
    );
}

#[tokio::test]
async fn customers_and_operators_cannot_change_the_catalog() {
    let shop = shop();
    for client in [&shop.alice, &shop.ops] {
        let denied = client.post("/v1/products", &key(), &json!({"sku": "MUG", "name": "Mug", "price": {"amount_minor": 1, "currency": "EUR"}})).await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(denied.problem(), "forbidden");
    }
    assert_eq!(
        shop.admin.get("/v1/products/MUG").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_catalog_pages_in_sku_order() {
    let shop = shop();
    for sku in ["E", "A", "C", "B", "D"] {
        shop.product(sku, 100, "EUR").await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/products?limit=2".to_owned();
    loop {
        let page = shop.alice.get(&path).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["sku"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/products?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["A", "B", "C", "D", "E"]);
    assert_eq!(
        shop.alice.get("/v1/products?limit=0").await.problem(),
        "bad-request"
    );
    assert_eq!(
        shop.alice.get("/v1/products?limit=abc").await.problem(),
        "bad-request"
    );
}
