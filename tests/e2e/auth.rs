use reqwest::StatusCode;

use crate::{order_body, shop};
use commerce_tests::{Client, key};

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() {
    let shop = shop();
    let base = &shop.server.base;
    let forged = commerce_api::Auth::local(b"another-secret-another-secret-0123")
        .unwrap()
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

/// Being an operator too does not make another customer's hold one's own to release.
#[tokio::test]
async fn an_operator_who_is_also_a_customer_releases_only_their_own_holds() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let held = shop
        .alice
        .post(
            "/v1/reservations",
            &key(),
            &serde_json::json!({"lines": [{"sku": "MUG", "quantity": 2}]}),
        )
        .await;
    let id = held.body["id"].as_str().unwrap();
    let carol = shop.server.client("acme", "carol", &["customer", "ops"]);
    assert_eq!(
        carol.get(&format!("/v1/reservations/{id}")).await.status,
        StatusCode::OK,
        "ops may read it"
    );
    let release = carol
        .post(
            &format!("/v1/reservations/{id}/release"),
            &key(),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(release.status, StatusCode::NOT_FOUND, "{release:?}");
    assert_eq!(
        shop.alice.get(&format!("/v1/reservations/{id}")).await.body["status"],
        "held"
    );
    assert_eq!(shop.levels("MUG").await, (10, 2, 8));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let shop = shop();
    let token = commerce_tests::token("acme", "alice", &["customer"]);
    for scheme in ["Bearer", "bearer", "BEARER", "beARer"] {
        let answer = reqwest::Client::new()
            .get(format!("{}/v1/products", shop.server.base))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{scheme}");
    }
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let shop = shop();
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": "admin-1", "tenant": "acme", "roles": ["admin"], "iss": "commerce-local",
        "aud": "commerce", "iat": now, "exp": now + 3600, "nbf": now + 600,
    });
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(commerce_tests::SECRET.as_bytes()),
    )
    .unwrap();
    let answer = Client::new(&shop.server.base, Some(early))
        .get("/v1/products")
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
}

/// An empty or short signing secret would let anyone mint admin tokens: the server refuses it.
#[test]
fn the_server_refuses_a_short_signing_secret() {
    for secret in ["", "short-secret"] {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(commerce_tests::server_binary())
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("COMMERCE_JWT_SECRET", secret)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{secret:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    }
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The data directory holds contact data and the signing key: only its owner may read it.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let dir = &shop.server.data_dir;
    assert_eq!(mode(dir), 0o700);
    for file in ["commerce.db", "commerce.db-wal"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, "an-old-secret-from-an-earlier-run-0123456789").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = std::process::Command::new(commerce_tests::server_binary())
        .args(["token", "--data-dir"])
        .arg(dir.path())
        .env_remove("COMMERCE_JWT_SECRET")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        mode(&secret),
        0o600,
        "an existing secret file is narrowed too"
    );
    assert_eq!(mode(dir.path()), 0o700);
}
