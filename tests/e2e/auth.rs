use reqwest::StatusCode;

use crate::{order_body, shop};
use commerce_tests::{Client, key};

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() {
    let shop = shop();
    let base = &shop.server.base;
    let forged = commerce_api::Auth::local(b"another-secret-another-secret-0123")
        .mint("acme", "admin-1", &["admin"], 60)
        .unwrap();
    let expired = expired_token();
    for client in [
        Client::new(base, None),
        Client::new(base, Some("not-a-jwt".into())),
        Client::new(base, Some(forged)),
        Client::new(base, Some(expired)),
    ] {
        let answer = client.get("/v1/products").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
        assert_eq!(answer.problem(), "unauthorized");
    }
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_data() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let placed = shop
        .alice
        .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
        .await;
    let order = placed.body["id"].as_str().unwrap();
    let reservation = placed.body["reservation_id"].as_str().unwrap();

    let other_admin = shop.server.client("globex", "admin-9", &["admin"]);
    let other_ops = shop.server.client("globex", "ops-9", &["ops"]);
    let other_alice = shop.server.client("globex", "alice", &["customer"]);
    assert_eq!(
        other_admin.get("/v1/products/MUG").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other_admin.get("/v1/inventory/MUG").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other_admin.get("/v1/products").await.body["items"],
        serde_json::json!([])
    );
    assert_eq!(
        other_ops.get(&format!("/v1/orders/{order}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other_ops.get("/v1/orders").await.body["items"],
        serde_json::json!([])
    );
    assert_eq!(
        other_alice.get(&format!("/v1/orders/{order}")).await.status,
        StatusCode::NOT_FOUND,
        "same subject, other shop"
    );
    assert_eq!(
        other_alice
            .get(&format!("/v1/reservations/{reservation}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let ordering = other_alice
        .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
        .await;
    assert_eq!(
        ordering.problem(),
        "unknown-sku",
        "another shop's catalog is not there"
    );
}

/// A token signed with the right secret whose expiry passed two minutes ago.
fn expired_token() -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = commerce_api::DevClaims {
        sub: "admin-1".into(),
        tenant: "acme".into(),
        roles: vec!["admin".into()],
        iss: "commerce-local".into(),
        aud: "commerce".into(),
        iat: now - 3600,
        exp: now - 120,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(commerce_tests::SECRET.as_bytes()),
    )
    .unwrap()
}
