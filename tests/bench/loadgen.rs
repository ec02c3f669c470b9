//! Load benchmark: starts the release server on a fresh data directory and drives it over
//! HTTP with concurrent clients placing orders.
//!
//! * `--mode spread` (default): orders across many SKUs with ample stock; measures throughput
//!   and latency.
//! * `--mode hot`: every client buys one SKU with limited stock until it is sold out; checks
//!   that no unit is sold twice.
//! * `--mode soak`: spread for at least 60 seconds, watching the SQLite WAL's size: sustained
//!   load must not make it grow without bound.
//!
//! While orders are placed, the event pipeline runs: events go from the change feed to the
//! bus to the projectors. Its throughput and commit-to-consume latency come from the server's
//! `/metrics` (the sales projection, which sees every order event), taken at the start and end
//! of the measured window. `--no-bus` runs the same load with the pipeline off, for comparison.
//!
//! Prints a summary, then one JSON line: orders_per_s, p50_ms, p95_ms, p99_ms, oversold,
//! wal_peak_mb, events_per_s, p99_commit_to_consume_ms.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use commerce_tests::{Server, build_server, token};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Drive the local server with concurrent order placement")]
struct Args {
    /// Concurrent clients, each with one connection, one request at a time.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to measure (spread mode), after warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, value_enum, default_value_t = Mode::Spread)]
    mode: Mode,
    /// SKUs in the catalog (spread mode).
    #[arg(long, default_value_t = 1000)]
    skus: usize,
    /// Units of the one SKU (hot mode).
    #[arg(long, default_value_t = 3000)]
    hot_stock: u64,
    /// Run the server without its event pipeline (events wait in the change feed).
    #[arg(long)]
    no_bus: bool,
    /// Drive this build of the server instead of building the tree's (to compare two builds,
    /// or to profile one built with frame pointers).
    #[arg(long)]
    server: Option<std::path::PathBuf>,
}

/// What the server's `/metrics` says about the sales projection (which every order event reaches).
#[derive(Debug, Clone, Default)]
struct Pipeline {
    applied: u64,
    /// (upper bound in ms, cumulative count) of the commit-to-apply histogram.
    buckets: Vec<(f64, u64)>,
}

impl Pipeline {
    async fn scrape(http: &reqwest::Client, base: &str, bearer: &str) -> Pipeline {
        let text = http
            .get(format!("{base}/metrics"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut pipeline = Pipeline::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if name == "commerce_events_applied_total{projection=\"sales\"}" {
                pipeline.applied = value as u64;
            } else if let Some(bound) = name
                .strip_prefix("commerce_commit_to_apply_ms_bucket{projection=\"sales\",le=\"")
                .and_then(|rest| rest.strip_suffix("\"}"))
            {
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().unwrap()
                };
                pipeline.buckets.push((bound, value as u64));
            }
        }
        pipeline
    }

    /// Events applied between two scrapes, and the bucket bound under which 99 % of them fell.
    fn since(&self, before: &Pipeline) -> (u64, Option<f64>) {
        let applied = self.applied.saturating_sub(before.applied);
        let total = self
            .buckets
            .last()
            .map_or(0, |b| b.1)
            .saturating_sub(before.buckets.last().map_or(0, |b| b.1));
        let p99 = self.buckets.iter().find_map(|(bound, count)| {
            let earlier = before
                .buckets
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0, |b| b.1);
            let within = count.saturating_sub(earlier);
            (total > 0 && within as f64 >= 0.99 * total as f64).then_some(*bound)
        });
        (applied, p99)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Spread,
    Hot,
    Soak,
}

/// The shortest soak that shows whether the WAL stays bounded.
const SOAK_SECONDS: u64 = 60;

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    placed: u64,
    out_of_stock: u64,
    other: u64,
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.mode == Mode::Soak {
        args.seconds = args.seconds.max(SOAK_SECONDS);
    }
    eprintln!("building and starting the release server…");
    let dir = tempfile::tempdir().unwrap();
    let env: &[(&str, &str)] = if args.no_bus {
        &[("COMMERCE_NO_BUS", "true")]
    } else {
        &[]
    };
    let binary = args.server.clone().unwrap_or_else(|| build_server(true));
    let server = Server::start_binary_with(&binary, dir.path(), env);
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let admin = token("bench", "admin", &["admin"]);
    let ops = token("bench", "ops", &["ops"]);

    let skus: Vec<String> = match args.mode {
        Mode::Spread | Mode::Soak => (0..args.skus).map(|n| format!("SKU-{n:05}")).collect(),
        Mode::Hot => vec!["HOT".to_owned()],
    };
    let stock = if args.mode == Mode::Hot {
        args.hot_stock
    } else {
        100_000_000
    };
    eprintln!("stocking {} SKU(s)…", skus.len());
    for sku in &skus {
        let product =
            json!({"sku": sku, "name": sku, "price": {"amount_minor": 1999, "currency": "EUR"}});
        let created = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(&admin)
            .header("idempotency-key", format!("p-{sku}"))
            .json(&product)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "creating {sku}");
        let stocked = http
            .put(format!("{base}/v1/inventory/{sku}"))
            .bearer_auth(&admin)
            .json(&json!({"on_hand": stock}))
            .send()
            .await
            .unwrap();
        assert_eq!(stocked.status(), 200, "stocking {sku}");
    }

    let warmup = if args.mode == Mode::Hot {
        Duration::ZERO
    } else {
        Duration::from_secs(2)
    };
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + Duration::from_secs(args.seconds);
    let sold_out = Arc::new(AtomicBool::new(false));
    let next_key = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let (http, base, skus, sold_out, next_key) = (
            http.clone(),
            base.clone(),
            skus.clone(),
            sold_out.clone(),
            next_key.clone(),
        );
        let bearer = token("bench", &format!("customer-{client}"), &["customer"]);
        let mode = args.mode;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut seed = client as u64 * 7919 + 1;
            loop {
                let now = Instant::now();
                if (mode != Mode::Hot && now >= stop_at)
                    || (mode == Mode::Hot && sold_out.load(Ordering::Relaxed))
                {
                    return tally;
                }
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let sku = &skus[(seed >> 33) as usize % skus.len()];
                let n = next_key.fetch_add(1, Ordering::Relaxed);
                let body =
                    json!({"lines": [{"sku": sku, "quantity": 1}], "payment_token": "tok_visa"});
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&bearer)
                    .header("idempotency-key", format!("o-{n}"))
                    .json(&body)
                    .send()
                    .await;
                let status = match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await.unwrap_or_default();
                        if status == 409 && !body.windows(12).any(|w| w == b"out-of-stock") {
                            // Only "sold out" ends a hot run; other conflicts are errors.
                            tally.other += 1;
                            eprintln!("unexpected conflict: {}", String::from_utf8_lossy(&body));
                            continue;
                        }
                        if status != 201 && status != 409 {
                            eprintln!(
                                "unexpected answer {status}: {}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                        status
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        0
                    }
                };
                let took = sent.elapsed();
                let counted = mode == Mode::Hot || sent >= measure_from;
                match status {
                    201 => tally.placed += 1,
                    409 => {
                        tally.out_of_stock += 1;
                        sold_out.store(true, Ordering::Relaxed);
                    }
                    _ => tally.other += 1,
                }
                if counted && status == 201 {
                    tally.latencies_us.push(took.as_micros() as u64);
                } else if !counted && status == 201 {
                    tally.placed -= 1;
                }
            }
        }));
    }
    let wal = dir.path().join("commerce.db-wal");
    let wal_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (wal, wal_peak, sold_out) = (wal.clone(), wal_peak.clone(), sold_out.clone());
        tokio::spawn(async move {
            while Instant::now() < stop_at && !sold_out.load(Ordering::Relaxed) {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                wal_peak.fetch_max(size, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let scraper = {
        let (http, base, ops) = (http.clone(), base.clone(), ops.clone());
        let measured = args.mode != Mode::Hot && !args.no_bus;
        tokio::spawn(async move {
            if !measured {
                return None;
            }
            tokio::time::sleep_until(measure_from.into()).await;
            let before = Pipeline::scrape(&http, &base, &ops).await;
            tokio::time::sleep_until(stop_at.into()).await;
            let after = Pipeline::scrape(&http, &base, &ops).await;
            Some(after.since(&before))
        })
    };
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        all.latencies_us.extend(t.latencies_us);
        all.placed += t.placed;
        all.out_of_stock += t.out_of_stock;
        all.other += t.other;
    }
    sold_out.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let pipeline = scraper.await.unwrap();
    let wal_peak_mb = wal_peak.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
    let elapsed = match args.mode {
        Mode::Spread | Mode::Soak => Duration::from_secs(args.seconds),
        Mode::Hot => started.elapsed(),
    };

    let mut oversold = 0;
    if args.mode == Mode::Hot {
        let level: serde_json::Value = http
            .get(format!("{base}/v1/inventory/HOT"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reserved = level["reserved"].as_u64().unwrap();
        oversold =
            all.placed.saturating_sub(args.hot_stock) + reserved.saturating_sub(args.hot_stock);
        assert_eq!(
            reserved, all.placed,
            "every accepted order holds exactly its unit"
        );
        eprintln!(
            "hot SKU: {} units, {} orders accepted, {} refused out of stock, reserved {}",
            args.hot_stock, all.placed, all.out_of_stock, reserved
        );
    }
    drop(server);

    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let at = ((all.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, all.latencies_us.len())
            - 1;
        all.latencies_us[at] as f64 / 1000.0
    };
    let per_second = all.placed as f64 / elapsed.as_secs_f64();
    let mode = match args.mode {
        Mode::Hot => "hot",
        Mode::Spread => "spread",
        Mode::Soak => "soak",
    };
    println!(
        "mode {mode}, {} clients, {:.1} s: {} orders placed ({:.0} orders/s), {} out of stock, {} other answers",
        args.clients,
        elapsed.as_secs_f64(),
        all.placed,
        per_second,
        all.out_of_stock,
        all.other
    );
    println!(
        "latency of placed orders: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        pct(0.50),
        pct(0.95),
        pct(0.99)
    );
    println!("WAL peak: {wal_peak_mb:.1} MB");
    let (events_per_s, p99_consume) = match pipeline {
        Some((applied, p99)) => {
            let rate = applied as f64 / elapsed.as_secs_f64();
            println!(
                "event pipeline: {applied} order events applied ({rate:.0} events/s), 99 % within {} ms of their commit",
                p99.map_or("?".to_owned(), |p| p.to_string())
            );
            (Some(rate.round()), p99)
        }
        None => (None, None),
    };
    println!(
        "{}",
        json!({"mode": mode, "clients": args.clients, "bus": !args.no_bus, "orders_per_s": per_second.round(), "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "oversold": oversold, "errors": all.other, "wal_peak_mb": (wal_peak_mb * 10.0).round() / 10.0, "events_per_s": events_per_s, "p99_commit_to_consume_ms": p99_consume})
    );
}
