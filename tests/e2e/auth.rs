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

/// Each role may do exactly what it is for: every endpoint, every role.
#[tokio::test]
async fn roles_allow_exactly_their_work() {
    let shop = shop();
    shop.stocked("MUG", 500, 100).await;
    let held = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &serde_json::json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
        )
        .await;
    let reservation = held.body["id"].as_str().unwrap().to_owned();
    let placed = shop
        .alice
        .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
        .await;
    let order = placed.body["id"].as_str().unwrap().to_owned();

    let product = serde_json::json!({"sku": "CAP", "name": "Cap", "price": {"amount_minor": 1, "currency": "EUR"}});
    let cases: Vec<(&str, String, serde_json::Value, &[&str])> = vec![
        ("POST", "/v1/products".into(), product, &["admin"]),
        (
            "GET",
            "/v1/products".into(),
            serde_json::Value::Null,
            &["admin", "customer", "ops"],
        ),
        (
            "GET",
            "/v1/products/MUG".into(),
            serde_json::Value::Null,
            &["admin", "customer", "ops"],
        ),
        (
            "PUT",
            "/v1/inventory/MUG".into(),
            serde_json::json!({"on_hand": 100}),
            &["admin"],
        ),
        (
            "POST",
            "/v1/inventory/MUG/receipts".into(),
            serde_json::json!({"quantity": 1}),
            &["admin"],
        ),
        (
            "GET",
            "/v1/inventory/MUG".into(),
            serde_json::Value::Null,
            &["admin", "ops"],
        ),
        (
            "GET",
            "/v1/inventory/low-stock".into(),
            serde_json::Value::Null,
            &["admin", "ops"],
        ),
        (
            "POST",
            "/v1/reservations".into(),
            serde_json::json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
            &["customer"],
        ),
        (
            "POST",
            format!("/v1/reservations/{reservation}/release"),
            serde_json::json!({}),
            &["customer"],
        ),
        (
            "POST",
            "/v1/orders".into(),
            order_body(&[("MUG", 1)], "tok_visa"),
            &["customer"],
        ),
        (
            "GET",
            "/v1/orders".into(),
            serde_json::Value::Null,
            &["customer", "ops"],
        ),
        (
            "GET",
            format!("/v1/orders/{order}"),
            serde_json::Value::Null,
            &["customer", "ops"],
        ),
    ];
    for (method, path, body, allowed) in &cases {
        for role in ["admin", "customer", "ops"] {
            // The customer is alice, who owns the reservation and the order.
            let sub = if role == "customer" { "alice" } else { role };
            let client = shop.server.client("acme", sub, &[role]);
            let answer = match *method {
                "GET" => client.get(path).await,
                "PUT" => client.put(path, body).await,
                _ => client.post(path, &key(), body).await,
            };
            let forbidden = answer.status == StatusCode::FORBIDDEN;
            assert_eq!(
                forbidden,
                !allowed.contains(&role),
                "{role} {method} {path}: {answer:?}"
            );
            assert!(
                answer.status.is_success() || forbidden,
                "{role} {method} {path} should work: {answer:?}"
            );
        }
    }
}
