//! moto server, the AWS-API emulator the DynamoDB adapter is tested against (feature `moto`,
//! for tests only).
//!
//! `MOTO_ENDPOINT` points at a running one (the test script starts one for the whole run).
//! Without it, the first test in a process starts its own on a free port, and a shell watchdog
//! stops it when the test process exits. No moto means a loud failure, never a skipped test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::DynamoTable;
use aws_sdk_dynamodb::config::{Credentials, Region};

static OWN_SERVER: Mutex<Option<Child>> = Mutex::new(None);

/// Where moto answers.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
            return endpoint;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = moto_binary();
        let script = format!(
            "{} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid",
            binary.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("cannot start moto_server");
        *OWN_SERVER.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server ({}) did not start on port {port}",
                binary.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        format!("http://127.0.0.1:{port}")
    })
}

fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    match on_path {
        Some(output) => PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()),
        None => panic!(
            "moto_server not found: run scripts/test (it installs moto into .tools/), or set MOTO_SERVER or MOTO_ENDPOINT"
        ),
    }
}

/// A DynamoDB client for moto, with throwaway credentials.
pub async fn client() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// New, empty tables (main and personal) with unique names.
pub async fn fresh_table() -> DynamoTable {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Process ids come back across runs, and a moto server may outlive one: add the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "commerce-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let table = DynamoTable::new(client().await, &name, format!("{name}-personal"));
    table.create().await.expect("cannot create a table in moto");
    table
}
