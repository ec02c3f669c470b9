//! Cancellation benchmark: starts the release server on a fresh data directory, places
//! `--orders` orders (every other one captured, so half the sagas void and half refund), then
//! cancels them all with `--clients` concurrent clients and waits for every saga to end.
//!
//! Measures the cancellation request (202) latency, and the time from each request to its
//! order reading `cancelled` (each order is read every 20 ms until it does). Prints a summary,
//! then one JSON line: cancellations_per_s, request_p50_ms, request_p99_ms, settled_p50_ms,
//! settled_p99_ms, not_cancelled.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use clap::Parser;
use commerce_tests::{Server, build_server, token};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Cancel many orders at once and time their sagas")]
struct Args {
    #[arg(long, default_value_t = 400)]
    orders: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// A server binary to run instead of building the release one.
    #[arg(long)]
    server: Option<std::path::PathBuf>,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        commerce_tests::send_as(&self.http, method, url, bearer, key, body).await
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    eprintln!("building and starting the release server…");
    let dir = tempfile::tempdir().unwrap();
    let binary = args.server.clone().unwrap_or_else(|| build_server(true));
    let server = Server::start_binary_with(&binary, dir.path(), &[]);
    let client = std::sync::Arc::new(Client {
        http: reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap(),
        base: server.base.clone(),
    });
    let admin = token("bench", "admin", &["admin"]);
    let buyer = token("bench", "buyer", &["customer"]);
    let post = reqwest::Method::POST;

    let (status, _) = client
        .send(post.clone(), "/v1/products", &admin, Some("p-mug"), Some(&json!({"sku": "MUG", "name": "Mug", "price": {"amount_minor": 1250, "currency": "EUR"}})))
        .await;
    assert_eq!(status, 201);
    let (status, _) = client
        .send(
            reqwest::Method::PUT,
            "/v1/inventory/MUG",
            &admin,
            None,
            Some(&json!({"on_hand": 1_000_000})),
        )
        .await;
    assert_eq!(status, 200);

    eprintln!("placing {} orders…", args.orders);
    let mut orders = Vec::with_capacity(args.orders);
    for n in 0..args.orders {
        let (status, body) = client
            .send(
                post.clone(),
                "/v1/orders",
                &buyer,
                Some(&format!("o-{n}")),
                Some(
                    &json!({"lines": [{"sku": "MUG", "quantity": 2}], "payment_token": "tok_visa"}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        if n % 2 == 1 {
            let (status, body) = client
                .send(
                    post.clone(),
                    &format!("/v1/orders/{id}/capture"),
                    &admin,
                    Some(&format!("c-{n}")),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        orders.push(id);
    }

    eprintln!("cancelling them with {} clients…", args.clients);
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = orders
        .chunks(orders.len().div_ceil(args.clients))
        .map(<[String]>::to_vec)
        .collect();
    let mut workers = Vec::new();
    for chunk in chunks {
        let (client, buyer) = (client.clone(), buyer.clone());
        workers.push(tokio::spawn(async move {
            let mut timings = Vec::new();
            for id in chunk {
                let asked = Instant::now();
                let (status, body) = client
                    .send(
                        reqwest::Method::POST,
                        &format!("/v1/orders/{id}/cancellation"),
                        &buyer,
                        Some(&format!("x-{id}")),
                        Some(&json!({"reason": "bench"})),
                    )
                    .await;
                assert_eq!(status, 202, "{body}");
                let request = asked.elapsed();
                let deadline = asked + Duration::from_secs(120);
                let cancelled = loop {
                    let (_, order) = client
                        .send(
                            reqwest::Method::GET,
                            &format!("/v1/orders/{id}"),
                            &buyer,
                            None,
                            None,
                        )
                        .await;
                    if order["status"] == "cancelled" {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                timings.push((request, asked.elapsed(), cancelled));
            }
            timings
        }));
    }
    let mut requests = Vec::new();
    let mut settled = Vec::new();
    let mut not_cancelled = 0;
    for worker in workers {
        for (request, done, cancelled) in worker.await.unwrap() {
            requests.push(request.as_secs_f64() * 1000.0);
            settled.push(done.as_secs_f64() * 1000.0);
            if !cancelled {
                not_cancelled += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    requests.sort_by(f64::total_cmp);
    settled.sort_by(f64::total_cmp);
    let rate = orders.len() as f64 / elapsed;
    eprintln!(
        "{} cancellations in {elapsed:.1} s: {rate:.0}/s; request p50 {:.1} ms, p99 {:.1} ms; request to cancelled p50 {:.1} ms, p99 {:.1} ms; {not_cancelled} not cancelled",
        orders.len(),
        percentile(&requests, 0.5),
        percentile(&requests, 0.99),
        percentile(&settled, 0.5),
        percentile(&settled, 0.99),
    );
    println!(
        "{}",
        json!({
            "cancellations_per_s": rate.round(),
            "request_p50_ms": percentile(&requests, 0.5),
            "request_p99_ms": percentile(&requests, 0.99),
            "settled_p50_ms": percentile(&settled, 0.5),
            "settled_p99_ms": percentile(&settled, 0.99),
            "not_cancelled": not_cancelled,
        })
    );
    drop(server);
}
