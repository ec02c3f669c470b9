//! Sweeper benchmark: holds `--holds` reservations for one second each (from `--clients`
//! concurrent customers over `--skus` SKUs) on a release server whose sweeper is idle, stops
//! it with `kill -9` once every hold is due, and starts it again: the sweeper then finds the
//! whole backlog due at once. Times the restart until every SKU reads nothing reserved.
//!
//! Prints a summary, then one JSON line: holds, seconds, expiries_per_s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use clap::Parser;
use commerce_tests::{Server, build_server, send_as, token};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Time the sweeper clearing a backlog of expired holds")]
struct Args {
    #[arg(long, default_value_t = 4000)]
    holds: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 20)]
    skus: usize,
    /// A server binary to run instead of building the release one.
    #[arg(long)]
    server: Option<std::path::PathBuf>,
}

/// Units reserved over every SKU.
async fn reserved(http: &reqwest::Client, base: &str, admin: &str, skus: usize) -> u64 {
    let mut total = 0;
    for n in 0..skus {
        let url = format!("{base}/v1/inventory/SKU-{n}");
        let (status, body) = send_as(http, reqwest::Method::GET, url, admin, None, None).await;
        assert_eq!(status, 200, "{body}");
        total += body["reserved"].as_u64().unwrap();
    }
    total
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    eprintln!("building and starting the release server…");
    let dir = tempfile::tempdir().unwrap();
    let binary = args.server.clone().unwrap_or_else(|| build_server(true));
    // The sweeper looks once at start and then not for ten minutes: nothing expires meanwhile.
    let idle = [("COMMERCE_SWEEP_INTERVAL_MS", "600000")];
    let server = Server::start_binary_with(&binary, dir.path(), &idle);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let admin = token("bench", "admin", &["admin"]);
    for n in 0..args.skus {
        let sku = format!("SKU-{n}");
        let product =
            json!({"sku": sku, "name": sku, "price": {"amount_minor": 100, "currency": "EUR"}});
        let url = format!("{}/v1/products", server.base);
        let (status, body) = send_as(
            &http,
            reqwest::Method::POST,
            url,
            &admin,
            Some(&sku),
            Some(&product),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let url = format!("{}/v1/inventory/{sku}", server.base);
        let level = json!({"on_hand": 1_000_000});
        let (status, body) =
            send_as(&http, reqwest::Method::PUT, url, &admin, None, Some(&level)).await;
        assert_eq!(status, 200, "{body}");
    }

    eprintln!("holding {} reservations for one second…", args.holds);
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let (http, base, holds, skus) = (http.clone(), server.base.clone(), args.holds, args.skus);
        clients.push(tokio::spawn(async move {
            for n in (client..holds).step_by(args.clients) {
                // A customer of its own per reservation, so no hold limit is reached.
                let buyer = token("bench", &format!("buyer-{n}"), &["customer"]);
                let body = json!({"lines": [{"sku": format!("SKU-{}", n % skus), "quantity": 1}], "ttl_seconds": 1});
                let url = format!("{base}/v1/reservations");
                let (status, body) = send_as(&http, reqwest::Method::POST, url, &buyer, Some(&format!("r-{n}")), Some(&body)).await;
                assert_eq!(status, 201, "{body}");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        reserved(&http, &server.base, &admin, args.skus).await,
        args.holds as u64
    );
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    eprintln!("restarting: every hold is due…");
    let started = Instant::now();
    let server = Server::start_binary(&binary, dir.path());
    loop {
        if reserved(&http, &server.base, &admin, args.skus).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_s = args.holds as f64 / seconds;
    eprintln!(
        "{} holds expired in {seconds:.2} s after the restart: {per_s:.0}/s",
        args.holds
    );
    println!(
        "{}",
        json!({"holds": args.holds, "seconds": (seconds * 1000.0).round() / 1000.0, "expiries_per_s": per_s.round()})
    );
}
