//! Test harness: the real `commerce` binary on a random port, and a small HTTP client for it.
//!
//! The binary is built (or found up to date) through cargo once per test process, so the tests
//! always run the code in the tree, never a stale build.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use commerce_api::Auth;
use reqwest::StatusCode;
use serde_json::Value;

pub const SECRET: &str = "e2e-test-secret-e2e-test-secret-0123456789";

/// Path to the freshly built `commerce` binary (debug build).
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_server(false))
}

/// Builds the server through cargo (a no-op when it is up to date) and returns its path.
pub fn build_server(release: bool) -> PathBuf {
    build_binary("commerce-server", "commerce", release)
}

/// Builds one Lambda's bootstrap for this machine (debug build) and returns its path.
pub fn build_function(name: &str) -> PathBuf {
    build_binary("commerce-functions", name, false)
}

fn build_binary(package: &str, name: &str, release: bool) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "build",
        "--quiet",
        "-p",
        package,
        "--bin",
        name,
        "--message-format=json",
    ];
    if release {
        args.push("--release");
    }
    let output = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo must be runnable to build the binary under test");
    assert!(output.status.success(), "building {name} failed");
    let suffix = format!("/{name}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|msg| {
            msg["executable"]
                .as_str()
                .filter(|p| p.ends_with(&suffix))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| panic!("cargo did not report the {name} executable"))
}

/// A running local server with its own data directory.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh, empty data directory.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut server = Server::start_in(&path);
        server._dir = Some(dir);
        server
    }

    /// A server on `data_dir`, which may hold an earlier server's data.
    pub fn start_in(data_dir: &Path) -> Server {
        Server::start_binary(server_binary(), data_dir)
    }

    /// A given build of the server on `data_dir`.
    pub fn start_binary(binary: &Path, data_dir: &Path) -> Server {
        Server::start_binary_with(binary, data_dir, &[])
    }

    /// A given build of the server on `data_dir`, with extra environment variables.
    pub fn start_binary_with(binary: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(binary)
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("COMMERCE_JWT_SECRET", SECRET)
            .env("COMMERCE_SWEEP_INTERVAL_MS", "100")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the commerce server");
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        // Keep draining what the server prints, so it never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("the server did not say where it listens: {first:?}"))
            .to_owned();
        Server {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
        }
    }

    /// Kills the process outright (no graceful shutdown), keeping the data directory.
    pub fn kill(mut self) -> Option<tempfile::TempDir> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self._dir.take()
    }

    pub fn client(&self, tenant: &str, sub: &str, roles: &[&str]) -> Client {
        Client::new(&self.base, Some(token(tenant, sub, roles)))
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.base, None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(tenant: &str, sub: &str, roles: &[&str]) -> String {
    Auth::local(SECRET.as_bytes())
        .unwrap()
        .mint(tenant, sub, roles, 3600)
        .unwrap()
}

/// A response as a test reads it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Answer {
    /// The `type` of a problem body, without the `/problems/` prefix.
    pub fn problem(&self) -> &str {
        assert_eq!(
            self.content_type, "application/problem+json",
            "errors are problem+json: {self:?}"
        );
        self.body["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("/problems/")
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            token,
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// A POST with an idempotency key.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("idempotency-key", key)
                .json(body),
        )
        .await
    }

    /// A POST exactly as given, for malformed requests.
    pub async fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.base)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Answer {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server must answer");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            content_type,
            body,
        }
    }
}

/// A unique idempotency key.
pub fn key() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "k-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// One request with `bearer` (and an `Idempotency-Key` if given), for the benchmarks: the
/// status and the JSON body (`null` if none).
pub async fn send_as(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    bearer: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(bearer);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
