//! Bad input gets a clear 4xx problem and changes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::{order_body, shop};
use commerce_tests::key;

#[tokio::test]
async fn malformed_product_requests_are_refused_and_change_nothing() {
    let shop = shop();
    let json_header = [
        ("content-type", "application/json"),
        ("idempotency-key", "k1"),
    ];
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"{not json".to_vec(), StatusCode::BAD_REQUEST, "malformed-json"),
        (br#"{"sku": "MUG", "name": "Mug", "price": {"amount_minor": "12", "currency": "EUR"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (br#"{"sku": "MUG", "name": "Mug", "price": {"amount_minor": -1, "currency": "EUR"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (br#"{"sku": "MUG", "name": "Mug", "price": {"amount_minor": 1, "currency": "euro"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (br#"{"sku": "bad sku", "name": "Mug", "price": {"amount_minor": 1, "currency": "EUR"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (br#"{"sku": "MUG", "name": "", "price": {"amount_minor": 1, "currency": "EUR"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (br#"{"sku": "MUG", "name": "Mug"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (br#"{"sku": "MUG", "name": "Mug", "price": {"amount_minor": 1, "currency": "EUR"}, "extra": 1}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
        (vec![b' '; 70 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "body-too-large"),
    ];
    for (body, status, problem) in cases {
        let answer = shop
            .admin
            .post_raw("/v1/products", &json_header, body)
            .await;
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.problem(), problem);
        assert!(
            answer.body["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "says what is wrong: {answer:?}"
        );
    }
    let untyped = shop
        .admin
        .post_raw(
            "/v1/products",
            &[("idempotency-key", "k2")],
            br#"{"sku":"MUG"}"#.to_vec(),
        )
        .await;
    assert_eq!(untyped.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let keyless = shop
        .admin
        .post_raw(
            "/v1/products",
            &[("content-type", "application/json")],
            br#"{}"#.to_vec(),
        )
        .await;
    assert_eq!(keyless.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        shop.admin.get("/v1/products").await.body["items"],
        json!([]),
        "nothing was created"
    );
}

#[tokio::test]
async fn bad_order_lines_are_refused_and_change_nothing() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    shop.product("HAT", 700, "USD").await;
    shop.admin
        .put("/v1/inventory/HAT", &json!({"on_hand": 10}))
        .await;
    let cases = [
        (
            json!({"lines": [{"sku": "MUG", "quantity": 0}], "payment_token": "tok_visa"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": -2}], "payment_token": "tok_visa"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1.5}], "payment_token": "tok_visa"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"lines": [], "payment_token": "tok_visa"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "MUG", "quantity": 1}], "payment_token": "tok_visa"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            order_body(&[("GHOST", 1)], "tok_visa"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-sku",
        ),
        (
            order_body(&[("MUG", 1), ("HAT", 1)], "tok_visa"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency-mismatch",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "reservation_id": "r1", "payment_token": "tok_visa"}),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            order_body(&[("MUG", 11)], "tok_visa"),
            StatusCode::CONFLICT,
            "out-of-stock",
        ),
    ];
    for (body, status, problem) in cases {
        let answer = shop.alice.post("/v1/orders", &key(), &body).await;
        assert_eq!(answer.status, status, "{body} -> {answer:?}");
        assert_eq!(answer.problem(), problem, "{body}");
    }
    assert_eq!(shop.levels("MUG").await, (10, 0, 10));
    assert_eq!(shop.levels("HAT").await, (10, 0, 10));
    assert_eq!(shop.alice.get("/v1/orders").await.body["items"], json!([]));
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_problems() {
    let shop = shop();
    let missing = shop.alice.get("/v2/nothing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.problem(), "not-found");
    let wrong = shop.alice.put("/v1/orders", &json!({})).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.problem(), "method-not-allowed");
}

#[tokio::test]
async fn health_checks_the_store_and_openapi_is_served() {
    let shop = shop();
    let health = shop.server.anonymous().get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    let doc = shop.server.anonymous().get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
}

/// Every operation the document lists is one the server routes.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let shop = shop();
    let doc = shop.server.anonymous().get("/openapi.json").await.body;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{paths:?}");
    let http = reqwest::Client::new();
    for (path, operations) in paths {
        let concrete = path.replace("{sku}", "MUG").replace("{id}", "nope");
        for method in operations.as_object().unwrap().keys() {
            let response = http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{concrete}", shop.server.base),
                )
                .bearer_auth(commerce_tests::token(
                    "acme",
                    "ops-1",
                    &["ops", "admin", "customer"],
                ))
                .header("idempotency-key", key())
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                body["detail"], "no such resource",
                "{method} {path} is documented but not routed"
            );
        }
    }
}

#[tokio::test]
async fn a_path_segment_that_is_not_utf8_is_a_problem() {
    let shop = crate::shop();
    for path in [
        "/v1/products/%FF",
        "/v1/orders/%C3%28",
        "/v1/reservations/%E2%82/release",
    ] {
        let answer = if path.ends_with("release") {
            shop.alice
                .post(path, &commerce_tests::key(), &serde_json::json!({}))
                .await
        } else {
            shop.alice.get(path).await
        };
        assert_eq!(
            answer.status,
            reqwest::StatusCode::BAD_REQUEST,
            "{path}: {answer:?}"
        );
        assert_eq!(answer.problem(), "bad-request", "{path}");
    }
}

/// Cursors are opaque and sealed to their list: made-up, altered or borrowed ones are 400.
#[tokio::test]
async fn a_cursor_the_api_never_gave_out_is_refused() {
    let shop = crate::shop();
    shop.stocked("MUG", 500, 100).await;
    for _ in 0..3 {
        let placed = shop
            .alice
            .post(
                "/v1/orders",
                &commerce_tests::key(),
                &crate::order_body(&[("MUG", 1)], "tok_visa"),
            )
            .await;
        assert_eq!(placed.status, reqwest::StatusCode::CREATED);
    }
    let first = shop.alice.get("/v1/orders?limit=1").await;
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let next = shop
        .alice
        .get(&format!("/v1/orders?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(
        next.status,
        reqwest::StatusCode::OK,
        "a cursor given out works"
    );
    assert_ne!(next.body["items"][0]["id"], first.body["items"][0]["id"]);

    let id = first.body["items"][0]["id"].as_str().unwrap();
    let (position, tag) = cursor.split_once('.').unwrap();
    let flipped = format!(
        "{position}.{}{}",
        &tag[..tag.len() - 1],
        if tag.ends_with('0') { '1' } else { '0' }
    );
    for bad in [
        id.to_owned(),
        "MUG".to_owned(),
        flipped,
        format!("{position}."),
    ] {
        let answer = shop.alice.get(&format!("/v1/orders?cursor={bad}")).await;
        assert_eq!(
            answer.status,
            reqwest::StatusCode::BAD_REQUEST,
            "{bad}: {answer:?}"
        );
        assert_eq!(answer.problem(), "bad-request");
    }
    let borrowed = shop.bob.get(&format!("/v1/orders?cursor={cursor}")).await;
    assert_eq!(
        borrowed.status,
        reqwest::StatusCode::BAD_REQUEST,
        "a cursor belongs to the list that gave it out"
    );
    let elsewhere = shop
        .alice
        .get(&format!("/v1/products?cursor={cursor}"))
        .await;
    assert_eq!(elsewhere.status, reqwest::StatusCode::BAD_REQUEST);
}
