//! End-to-end: the real server binary on a random port, spoken to over HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod asl;
mod auth;
mod cancellation;
mod catalog;
mod errors;
mod events;
mod idempotency;
mod inventory;
mod orders;
mod pipeline;
mod race;
mod reservations;
mod restart;

use commerce_tests::{Client, Server, key};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A shop "acme" with one admin, two customers and an operator.
#[derive(Debug)]
pub struct Shop {
    pub server: Server,
    pub admin: Client,
    pub alice: Client,
    pub bob: Client,
    pub ops: Client,
}

pub fn shop() -> Shop {
    let server = Server::start();
    Shop {
        admin: server.client("acme", "admin-1", &["admin"]),
        alice: server.client("acme", "alice", &["customer"]),
        bob: server.client("acme", "bob", &["customer"]),
        ops: server.client("acme", "ops-1", &["ops"]),
        server,
    }
}

impl Shop {
    /// Adds a product priced in EUR and stocks it.
    pub async fn stocked(&self, sku: &str, price: i64, on_hand: u64) {
        self.product(sku, price, "EUR").await;
        let stock = self
            .admin
            .put(
                &format!("/v1/inventory/{sku}"),
                &json!({"on_hand": on_hand}),
            )
            .await;
        assert_eq!(stock.status, StatusCode::OK, "{stock:?}");
    }

    pub async fn product(&self, sku: &str, price: i64, currency: &str) {
        let created = self
            .admin
            .post("/v1/products", &key(), &json!({"sku": sku, "name": format!("Product {sku}"), "price": {"amount_minor": price, "currency": currency}}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    }

    pub async fn stock(&self, sku: &str) -> Value {
        let answer = self.admin.get(&format!("/v1/inventory/{sku}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body
    }

    /// (on hand, reserved, available) of a SKU.
    pub async fn levels(&self, sku: &str) -> (u64, u64, u64) {
        let s = self.stock(sku).await;
        (
            s["on_hand"].as_u64().unwrap(),
            s["reserved"].as_u64().unwrap(),
            s["available"].as_u64().unwrap(),
        )
    }
}

pub fn order_body(lines: &[(&str, u32)], token: &str) -> Value {
    json!({
        "lines": lines.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
        "payment_token": token,
    })
}
