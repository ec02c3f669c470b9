//! The Stripe adapter against a local fake of Stripe's API that answers as Stripe documents
//! (PaymentIntents with manual capture, Refunds, idempotency keys, errors) and asserts every
//! request it gets: the secret key, a form body, an `Idempotency-Key` on every POST.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use commerce_app::payments::{PaymentError, PaymentGateway};
use commerce_domain::{Currency, Money, OrderId};
use commerce_sqlite::SqliteTable;
use commerce_stripe::{StripeConfig, StripePayments};
use serde_json::{Value, json};

const SECRET: &str = "sk_test_fake";

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    key: Option<String>,
    form: HashMap<String, String>,
}

#[derive(Default)]
struct Fake {
    intents: HashMap<String, Value>,
    refunds: Vec<Value>,
    /// Idempotency key → (path and form, answer).
    keys: HashMap<String, (String, (u16, Value))>,
    seen: Vec<Seen>,
    /// Requests to act on and then answer 500 as if the answer were lost.
    lose_answers: u32,
    /// Requests to refuse with 503 without acting.
    unavailable: u32,
}

type Shared = Arc<Mutex<Fake>>;

fn error(status: u16, kind: &str, code: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": code}}),
    )
}

impl Fake {
    fn create_intent(&mut self, form: &HashMap<String, String>) -> (u16, Value) {
        for field in ["amount", "currency", "payment_method", "metadata[order_id]"] {
            assert!(
                form.contains_key(field),
                "a PaymentIntent needs {field}: {form:?}"
            );
        }
        assert_eq!(form["capture_method"], "manual", "authorize only");
        assert_eq!(form["confirm"], "true");
        assert_eq!(form["currency"], form["currency"].to_lowercase());
        let status = match form["payment_method"].as_str() {
            "pm_card_chargeDeclined" => {
                return (
                    402,
                    json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline"}}),
                );
            }
            "pm_card_authenticationRequired" => "requires_action",
            _ => "requires_capture",
        };
        let id = format!("pi_{}", self.intents.len() + 1);
        let intent = json!({
            "id": id, "object": "payment_intent", "status": status,
            "amount": form["amount"].parse::<i64>().unwrap(), "amount_received": 0,
            "currency": form["currency"], "latest_charge": null, "metadata": {},
        });
        self.intents.insert(id, intent.clone());
        (200, intent)
    }

    fn capture(&mut self, id: &str, form: &HashMap<String, String>) -> (u16, Value) {
        let Some(intent) = self.intents.get_mut(id) else {
            return error(404, "invalid_request_error", "resource_missing");
        };
        if intent["status"] != "requires_capture" {
            return error(
                400,
                "invalid_request_error",
                "payment_intent_unexpected_state",
            );
        }
        let amount = form["amount_to_capture"].parse::<i64>().unwrap();
        if amount > intent["amount"].as_i64().unwrap() {
            return error(400, "invalid_request_error", "amount_too_large");
        }
        intent["status"] = json!("succeeded");
        intent["amount_received"] = json!(amount);
        intent["latest_charge"] = json!(format!("ch_{id}"));
        for (k, v) in form {
            if let Some(name) = k
                .strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
            {
                intent["metadata"][name] = json!(v);
            }
        }
        (200, intent.clone())
    }

    fn cancel(&mut self, id: &str) -> (u16, Value) {
        let Some(intent) = self.intents.get_mut(id) else {
            return error(404, "invalid_request_error", "resource_missing");
        };
        if intent["status"] != "requires_capture" {
            return error(
                400,
                "invalid_request_error",
                "payment_intent_unexpected_state",
            );
        }
        intent["status"] = json!("canceled");
        (200, intent.clone())
    }

    fn refund(&mut self, form: &HashMap<String, String>) -> (u16, Value) {
        let id = &form["payment_intent"];
        let Some(intent) = self.intents.get(id) else {
            return error(404, "invalid_request_error", "resource_missing");
        };
        let refunded: i64 = self
            .refunds
            .iter()
            .filter(|r| r["payment_intent"] == id.as_str())
            .map(|r| r["amount"].as_i64().unwrap())
            .sum();
        let amount = form["amount"].parse::<i64>().unwrap();
        if intent["status"] != "succeeded" {
            return error(400, "invalid_request_error", "charge_not_captured");
        }
        if refunded + amount > intent["amount_received"].as_i64().unwrap() {
            return error(400, "invalid_request_error", "amount_too_large");
        }
        let metadata: serde_json::Map<String, Value> = form
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                    .map(|k| (k.to_owned(), json!(v)))
            })
            .collect();
        let refund = json!({
            "id": format!("re_{}", self.refunds.len() + 1), "object": "refund",
            "amount": amount, "payment_intent": id, "status": "succeeded", "metadata": metadata,
        });
        self.refunds.push(refund.clone());
        (200, refund)
    }
}

async fn handle(
    State(fake): State<Shared>,
    method: Method,
    path: Option<Path<String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut fake = fake.lock().unwrap();
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {SECRET}").as_str()),
        "every request is signed in with the secret key"
    );
    let form: HashMap<String, String> = url_pairs(&body);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path_text = uri.path().to_owned();
    fake.seen.push(Seen {
        method: method.clone(),
        path: path_text.clone(),
        key: key.clone(),
        form: form.clone(),
    });
    if method == Method::POST {
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/x-www-form-urlencoded"),
            "Stripe takes form bodies"
        );
        let key = key.clone().expect("every POST carries an Idempotency-Key");
        assert!(key.starts_with("commerce:") && key.len() <= 255, "{key}");
    }
    if fake.unavailable > 0 {
        fake.unavailable -= 1;
        return reply((503, json!({"error": {"type": "api_error"}})));
    }
    let fingerprint = format!("{path_text} {:?}", sorted(&form));
    if method == Method::POST
        && let Some(key) = &key
        && let Some((first, answer)) = fake.keys.get(key)
    {
        if *first != fingerprint {
            return reply(error(400, "idempotency_error", "idempotency_key_in_use"));
        }
        return reply(answer.clone());
    }
    let id = path.map(|Path(id)| id).unwrap_or_default();
    let answer = match (method.clone(), path_text.as_str()) {
        (Method::POST, "/v1/payment_intents") => fake.create_intent(&form),
        (Method::POST, p) if p.ends_with("/capture") => fake.capture(&id, &form),
        (Method::POST, p) if p.ends_with("/cancel") => fake.cancel(&id),
        (Method::POST, "/v1/refunds") => fake.refund(&form),
        (Method::GET, "/v1/refunds") => {
            let intent = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| pair.strip_prefix("payment_intent="))
                .unwrap_or_default()
                .to_owned();
            let data: Vec<Value> = fake
                .refunds
                .iter()
                .filter(|r| r["payment_intent"] == intent.as_str())
                .cloned()
                .collect();
            (
                200,
                json!({"object": "list", "data": data, "has_more": false}),
            )
        }
        (Method::GET, _) => match fake.intents.get(&id) {
            Some(intent) => (200, intent.clone()),
            None => error(404, "invalid_request_error", "resource_missing"),
        },
        _ => error(404, "invalid_request_error", "unknown_path"),
    };
    if method == Method::POST
        && let Some(key) = key
    {
        fake.keys.insert(key, (fingerprint, answer.clone()));
    }
    if fake.lose_answers > 0 {
        fake.lose_answers -= 1;
        return reply((500, json!({"error": {"type": "api_error"}})));
    }
    reply(answer)
}

fn reply((status, body): (u16, Value)) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn sorted(form: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = form.clone().into_iter().collect();
    pairs.sort();
    pairs
}

/// Decodes `application/x-www-form-urlencoded` (the fake's only need: `%XX` and `+`).
fn url_pairs(body: &[u8]) -> HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

struct Stripe {
    fake: Shared,
    payments: StripePayments<SqliteTable>,
    _dir: tempfile::TempDir,
}

async fn stripe() -> Stripe {
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/v1/payment_intents", post(handle))
        .route("/v1/payment_intents/{id}", get(handle))
        .route("/v1/payment_intents/{id}/capture", post(handle))
        .route("/v1/payment_intents/{id}/cancel", post(handle))
        .route("/v1/refunds", post(handle).get(handle))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let table = SqliteTable::open(dir.path().join("commerce.db")).unwrap();
    let payments = StripePayments::new(
        StripeConfig {
            base_url: format!("http://{addr}"),
            secret_key: SECRET.into(),
            timeout: Duration::from_secs(5),
        },
        table,
    )
    .unwrap();
    Stripe {
        fake,
        payments,
        _dir: dir,
    }
}

fn eur(amount: i64) -> Money {
    Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
}

#[tokio::test]
async fn the_stripe_adapter_keeps_the_payment_gateway_contract() {
    let stripe = stripe().await;
    commerce_app::contract::payment_gateway_contract(
        &stripe.payments,
        "pm_card_visa",
        "pm_card_chargeDeclined",
        "stripe",
    )
    .await;
}

#[tokio::test]
async fn each_operation_is_the_request_stripe_documents() {
    let stripe = stripe().await;
    let order = OrderId::parse("o-1").unwrap();
    let authorization = stripe
        .payments
        .authorize(&order, eur(1250), "pm_card_visa")
        .await
        .unwrap();
    stripe
        .payments
        .capture(&authorization, eur(1250), "o-1:capture:1")
        .await
        .unwrap();
    stripe
        .payments
        .refund(&authorization, eur(250), "o-1:refund:1")
        .await
        .unwrap();
    let seen = stripe.fake.lock().unwrap().seen.clone();
    let summary: Vec<(String, Option<String>)> = seen
        .iter()
        .filter(|s| s.method == Method::POST)
        .map(|s| (format!("{} {}", s.method, s.path), s.key.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "POST /v1/payment_intents".into(),
                Some("commerce:o-1:authorize".into())
            ),
            (
                "POST /v1/payment_intents/pi_1/capture".into(),
                Some("commerce:o-1:capture:1".into())
            ),
            (
                "POST /v1/refunds".into(),
                Some("commerce:o-1:refund:1".into())
            ),
        ]
    );
    let seen: Vec<Seen> = seen
        .into_iter()
        .filter(|s| s.method == Method::POST)
        .collect();
    assert_eq!(seen[0].form["amount"], "1250");
    assert_eq!(seen[0].form["currency"], "eur");
    assert_eq!(seen[0].form["metadata[order_id]"], "o-1");
    assert_eq!(seen[1].form["amount_to_capture"], "1250");
    assert_eq!(seen[2].form["payment_intent"], "pi_1");
    assert_eq!(seen[2].form["amount"], "250");
}

#[tokio::test]
async fn a_lost_answer_asked_again_gives_the_intent_stripe_made() {
    let stripe = stripe().await;
    let order = OrderId::parse("o-lost").unwrap();
    stripe.fake.lock().unwrap().lose_answers = 1;
    assert!(matches!(
        stripe
            .payments
            .authorize(&order, eur(900), "pm_card_visa")
            .await,
        Err(PaymentError::Unavailable(_))
    ));
    let again = stripe
        .payments
        .authorize(&order, eur(900), "pm_card_visa")
        .await
        .unwrap();
    assert_eq!(again.id, "pi_1");
    assert_eq!(stripe.fake.lock().unwrap().intents.len(), 1, "one intent");
}

#[tokio::test]
async fn a_void_after_a_lost_answer_cancels_what_stripe_made() {
    let stripe = stripe().await;
    let order = OrderId::parse("o-void").unwrap();
    stripe.fake.lock().unwrap().lose_answers = 1;
    assert!(
        stripe
            .payments
            .authorize(&order, eur(900), "pm_card_visa")
            .await
            .is_err()
    );
    stripe.payments.void(&order).await.unwrap();
    assert_eq!(
        stripe.fake.lock().unwrap().intents["pi_1"]["status"],
        "canceled"
    );
    assert!(matches!(
        stripe.payments.authorize(&order, eur(900), "pm_card_visa").await,
        Err(PaymentError::Declined(code)) if code == "order_voided"
    ));
}

#[tokio::test]
async fn stripe_down_is_unavailable_and_a_card_that_needs_the_customer_is_declined() {
    let stripe = stripe().await;
    stripe.fake.lock().unwrap().unavailable = 1;
    let order = OrderId::parse("o-down").unwrap();
    assert!(matches!(
        stripe
            .payments
            .authorize(&order, eur(100), "pm_card_visa")
            .await,
        Err(PaymentError::Unavailable(_))
    ));
    assert!(
        stripe
            .payments
            .authorize(&order, eur(100), "pm_card_visa")
            .await
            .is_ok()
    );
    let strong = OrderId::parse("o-3ds").unwrap();
    assert!(matches!(
        stripe.payments.authorize(&strong, eur(100), "pm_card_authenticationRequired").await,
        Err(PaymentError::Declined(code)) if code == "intent_requires_action"
    ));
}

#[tokio::test]
async fn stripe_out_of_reach_is_unavailable_not_a_declined_card() {
    let stripe = stripe().await;
    let wrong = StripePayments::new(
        StripeConfig {
            base_url: "http://127.0.0.1:9".into(),
            secret_key: "sk_wrong".into(),
            timeout: Duration::from_millis(500),
        },
        SqliteTable::open(stripe._dir.path().join("other.db")).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        wrong
            .authorize(&OrderId::parse("o-x").unwrap(), eur(100), "pm_card_visa")
            .await,
        Err(PaymentError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_refund_asked_again_after_its_key_expired_is_found_not_made_twice() {
    let stripe = stripe().await;
    let order = OrderId::parse("o-late").unwrap();
    let authorization = stripe
        .payments
        .authorize(&order, eur(1000), "pm_card_visa")
        .await
        .unwrap();
    stripe
        .payments
        .capture(&authorization, eur(1000), "o-late:capture:1")
        .await
        .unwrap();
    // The refund is made, its answer lost; a day later Stripe has forgotten the key.
    stripe.fake.lock().unwrap().lose_answers = 1;
    assert!(
        stripe
            .payments
            .refund(&authorization, eur(400), "o-late:refund:1")
            .await
            .is_err()
    );
    stripe.fake.lock().unwrap().keys.clear();
    let again = stripe
        .payments
        .refund(&authorization, eur(400), "o-late:refund:1")
        .await
        .unwrap();
    assert_eq!(again.id, "re_1");
    assert_eq!(stripe.fake.lock().unwrap().refunds.len(), 1, "one refund");
}

#[tokio::test]
async fn a_capture_asked_again_after_its_key_expired_is_found_not_refused() {
    let stripe = stripe().await;
    let order = OrderId::parse("o-cap-late").unwrap();
    let authorization = stripe
        .payments
        .authorize(&order, eur(1500), "pm_card_visa")
        .await
        .unwrap();
    stripe.fake.lock().unwrap().lose_answers = 1;
    assert!(
        stripe
            .payments
            .capture(&authorization, eur(1500), "o-cap-late:capture:1")
            .await
            .is_err()
    );
    stripe.fake.lock().unwrap().keys.clear();
    let again = stripe
        .payments
        .capture(&authorization, eur(1500), "o-cap-late:capture:1")
        .await
        .unwrap();
    assert_eq!(again.amount, eur(1500));
    assert!(matches!(
        stripe
            .payments
            .capture(&authorization, eur(1500), "o-cap-late:capture:2")
            .await,
        Err(PaymentError::Declined(_))
    ));
}
