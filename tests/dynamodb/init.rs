//! A Lambda's cold start: the real `orders` bootstrap, run against a Runtime API played here,
//! with DynamoDB (moto) behind a proxy that counts what reaches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Forwards every connection to `upstream`, counting the answers that come back.
async fn counting_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answers = Arc::new(AtomicUsize::new(0));
    let counted = answers.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let (upstream, counted) = (upstream.clone(), counted.clone());
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut in_read, mut in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                let requests = tokio::io::copy(&mut in_read, &mut out_write);
                let answers = async {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        use tokio::io::AsyncReadExt;
                        let n = out_read.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        if buffer[..n].starts_with(b"HTTP/1.1 ") {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        if in_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::join!(requests, answers);
            });
        }
    });
    (format!("http://{address}"), answers)
}

/// What the fake Runtime API saw.
struct Runtime {
    event: String,
    served: AtomicUsize,
    /// DynamoDB answers counted at the function's first poll for an event.
    at_first_poll: mpsc::UnboundedSender<usize>,
    answers: Arc<AtomicUsize>,
    responses: mpsc::UnboundedSender<serde_json::Value>,
}

async fn next(State(runtime): State<Arc<Runtime>>) -> (HeaderMap, String) {
    if runtime.served.fetch_add(1, Ordering::SeqCst) > 0 {
        // One event per process: its next poll is never answered; the test ends the process.
        std::future::pending::<()>().await;
    }
    let _ = runtime
        .at_first_poll
        .send(runtime.answers.load(Ordering::SeqCst));
    let mut headers = HeaderMap::new();
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 30_000;
    for (name, value) in [
        ("lambda-runtime-aws-request-id", "request-1".to_owned()),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:orders".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    (headers, runtime.event.clone())
}

async fn respond(State(runtime): State<Arc<Runtime>>, body: String) -> &'static str {
    let _ = runtime
        .responses
        .send(serde_json::from_str(&body).unwrap_or(serde_json::Value::Null));
    "{}"
}

/// The connection to DynamoDB is made during init: by the time the function first asks for an
/// event, DynamoDB has already answered it, so the first customer does not pay for the
/// handshake. Then the event (an authorized `GET /v1/orders`) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_opens_its_table_connection_before_its_first_event() {
    let bootstrap = commerce_tests::build_function("orders");
    let table = commerce_dynamodb::moto::fresh_table().await;
    let upstream = commerce_dynamodb::moto::endpoint()
        .trim_start_matches("http://")
        .to_owned();
    let (proxy, answers) = counting_proxy(upstream).await;
    let claims = serde_json::json!({"sub": "alice", "tenant": "acme", "roles": "[customer]"});
    let event = crate::gateway_event("GET", "/v1/orders", Some(claims), &serde_json::Value::Null);
    let (at_first_poll, mut first_poll) = mpsc::unbounded_channel();
    let (responses, mut response) = mpsc::unbounded_channel();
    let runtime = Arc::new(Runtime {
        event,
        served: AtomicUsize::new(0),
        at_first_poll,
        answers,
        responses,
    });
    let app = axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(respond),
        )
        .with_state(runtime);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (main, personal) = table.names();
    let mut function = tokio::process::Command::new(bootstrap)
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_ENDPOINT_URL", &proxy)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_LAMBDA_FUNCTION_NAME", "orders")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("TABLE_NAME", main)
        .env("PERSONAL_TABLE_NAME", personal)
        .env("CURSOR_SECRET", "cursor-secret-cursor-secret-cursor-secret")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), first_poll.recv())
        .await
        .expect("the function never asked for an event")
        .unwrap();
    assert!(
        seen >= 1,
        "DynamoDB had answered nothing when the function asked for its first event"
    );
    let answer = tokio::time::timeout(Duration::from_secs(30), response.recv())
        .await
        .expect("the function never answered")
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    function.kill().await.unwrap();

    // The request's log line says what it cost: the customer's order list is one consistent
    // query of an empty partition, one read unit.
    let mut log = String::new();
    let mut stdout = function.stdout.take().unwrap();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut log)
        .await
        .unwrap();
    let request = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "request")
        .unwrap_or_else(|| panic!("no request line in the function's log:\n{log}"));
    let fields = &request["fields"];
    assert_eq!(fields["route"], "/v1/orders", "{request}");
    assert_eq!(fields["dynamodb_calls"], 1, "{request}");
    assert_eq!(fields["dynamodb_read_units"], 1.0, "{request}");
    assert_eq!(fields["dynamodb_write_units"], 0.0, "{request}");
}
