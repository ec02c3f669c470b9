//! Conditional writes whose success was lost on the way back: the SDK sends the call again, and
//! the repeat must succeed rather than fail its own condition. moto does not keep client request
//! tokens, so a proxy in front of it does what DynamoDB does with them: the first answer to a
//! token is lost (a 500, which the SDK retries), and a repeat of the token gets that first
//! answer back without running the transaction again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use commerce_app::Table;
use commerce_app::table::{Condition, Item, Write};
use commerce_dynamodb::DynamoTable;
use commerce_dynamodb::moto::{endpoint, fresh_table, sdk_config};

#[derive(Default)]
struct Tokens {
    /// The first answer to each token, as moto gave it.
    answers: HashMap<String, (u16, Bytes)>,
    /// Writes sent without a token, whose first answer was lost too.
    untokened: HashSet<Bytes>,
    lost: usize,
    replayed: usize,
    /// Repeats of a token answered "still in progress", as DynamoDB answers while the first
    /// call runs.
    in_progress: usize,
}

struct Proxy {
    http: reqwest::Client,
    tokens: Mutex<Tokens>,
    /// Answer a token's first repeat "still in progress" before replaying its answer.
    slow: bool,
}

const WRITES: [&str; 3] = [".PutItem", ".DeleteItem", ".TransactWriteItems"];

/// Loses the first answer to every write, as a network would; a repeat of a token gets the
/// first answer back, and a repeat without one runs again, as in DynamoDB.
async fn forward(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let write = WRITES.iter().any(|w| target.ends_with(w));
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let token = request["ClientRequestToken"].as_str().map(str::to_owned);
    let first = token.as_ref().and_then(|token| {
        let mut tokens = proxy.tokens.lock().unwrap();
        let first = tokens.answers.get(token).cloned()?;
        if proxy.slow && tokens.in_progress == tokens.replayed {
            tokens.in_progress += 1;
            return Some(Err(()));
        }
        tokens.replayed += 1;
        Some(Ok(first))
    });
    match first {
        Some(Ok((status, answer))) => {
            return (
                StatusCode::from_u16(status).unwrap(),
                json_headers(),
                answer,
            );
        }
        Some(Err(())) => {
            let running = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionInProgressException","message":"the transaction with this token is in progress"}"#;
            return (
                StatusCode::BAD_REQUEST,
                json_headers(),
                Bytes::from_static(running.as_bytes()),
            );
        }
        None => {}
    }
    let mut upstream = proxy.http.post(endpoint()).body(body.clone());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.unwrap();
    let status = answer.status().as_u16();
    let answer = answer.bytes().await.unwrap();
    let lose = {
        let mut tokens = proxy.tokens.lock().unwrap();
        let lose = match token {
            Some(token) => tokens
                .answers
                .insert(token, (status, answer.clone()))
                .is_none(),
            None => write && tokens.untokened.insert(body),
        };
        tokens.lost += usize::from(lose);
        lose
    };
    if lose {
        let lost = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"the answer was lost"}"#;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            json_headers(),
            Bytes::from_static(lost.as_bytes()),
        );
    }
    (
        StatusCode::from_u16(status).unwrap(),
        json_headers(),
        answer,
    )
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/x-amz-json-1.0".parse().unwrap(),
    );
    headers
}

/// The tables of `on`, reached through a proxy that loses the first answer to every token.
async fn through_lossy_proxy(
    on: &DynamoTable,
    slow: bool,
) -> (DynamoTable, aws_sdk_dynamodb::Client, Arc<Proxy>) {
    let proxy = Arc::new(Proxy {
        http: reqwest::Client::new(),
        tokens: Mutex::new(Tokens::default()),
        slow,
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk_config().await)
        .endpoint_url(format!("http://{address}"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let (main, personal) = on.names();
    let table = DynamoTable::new(client.clone(), main, personal);
    (table, client, proxy)
}

fn item(sk: &str, version: u64) -> Item {
    Item {
        pk: "acme#retry".into(),
        sk: sk.into(),
        version,
        data: br#"{"n":1}"#.to_vec(),
        expires_at: None,
        owner: None,
        index: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_whose_answer_was_lost_succeeds_on_the_retry() {
    let direct = fresh_table().await;
    let (table, plain, proxy) = through_lossy_proxy(&direct, false).await;

    // A lone put on an absent item: without the token, its retry would find its own item.
    table
        .transact(vec![Write::Put {
            item: item("a", 1),
            condition: Condition::Absent,
        }])
        .await
        .expect("a put whose answer was lost is retried to success");
    // A lone delete on a version.
    table
        .transact(vec![Write::Delete {
            pk: "acme#retry".into(),
            sk: "a".into(),
            condition: Condition::VersionIs(1),
        }])
        .await
        .expect("a delete whose answer was lost is retried to success");
    // A transaction of two writes.
    table
        .transact(vec![
            Write::Put {
                item: item("b", 1),
                condition: Condition::Absent,
            },
            Write::Put {
                item: item("c", 1),
                condition: Condition::Absent,
            },
        ])
        .await
        .expect("a transaction whose answer was lost is retried to success");

    // A lone unconditional put is sent plain; its repeat writes the same item again.
    table
        .transact(vec![Write::Put {
            item: item("d", 1),
            condition: Condition::None,
        }])
        .await
        .expect("an unconditional put whose answer was lost is retried to success");

    let (lost, replayed) = {
        let tokens = proxy.tokens.lock().unwrap();
        (tokens.lost, tokens.replayed)
    };
    assert_eq!(
        (lost, replayed),
        (4, 3),
        "each call lost its first answer once"
    );
    assert!(direct.get("acme#retry", "a").await.unwrap().is_none());
    assert!(direct.get("acme#retry", "b").await.unwrap().is_some());
    assert!(direct.get("acme#retry", "c").await.unwrap().is_some());
    assert!(direct.get("acme#retry", "d").await.unwrap().is_some());

    // The same loss on a plain conditional PutItem, as the adapter once sent a lone write: the
    // SDK's repeat finds the item its first attempt wrote, and the caller is told it lost.
    let (main, _) = direct.names();
    let repeated = plain
        .put_item()
        .table_name(main)
        .item("pk", AttributeValue::S("acme#retry".into()))
        .item("sk", AttributeValue::S("e".into()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    let error = repeated.expect_err("the repeat of a plain conditional put fails its condition");
    assert_eq!(error.code(), Some("ConditionalCheckFailedException"));
}

/// The SDK's repeat of a transaction meets it still running under its token (DynamoDB answers
/// `TransactionInProgressException`, which the SDK does not retry): the adapter asks again
/// with the same token after a pause, and learns that it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_still_running_under_its_token_is_asked_again_until_it_settles() {
    let direct = fresh_table().await;
    let (table, _, proxy) = through_lossy_proxy(&direct, true).await;
    table
        .transact(vec![
            Write::Put {
                item: item("f", 1),
                condition: Condition::Absent,
            },
            Write::Put {
                item: item("g", 1),
                condition: Condition::Absent,
            },
        ])
        .await
        .expect("the transaction is found committed");
    let counts = {
        let tokens = proxy.tokens.lock().unwrap();
        (tokens.lost, tokens.in_progress, tokens.replayed)
    };
    assert_eq!(counts, (1, 1, 1), "lost, in progress, replayed");
    assert!(direct.get("acme#retry", "f").await.unwrap().is_some());
}
