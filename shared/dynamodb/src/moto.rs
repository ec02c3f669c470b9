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

/// SDK configuration for moto, with throwaway credentials: any service's client takes it.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

/// A DynamoDB client for moto.
pub async fn client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
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

/// The table's stream read as the publisher's event source mapping reads it: every shard from
/// its start, keeping only what [`STREAM_FILTER`](crate::STREAM_FILTER) lets through (inserts of
/// event items). A position is the last sequence number seen per shard.
#[derive(Debug, Clone)]
pub struct StreamFeed {
    client: aws_sdk_dynamodbstreams::Client,
    arn: String,
}

impl StreamFeed {
    pub async fn of(table: &DynamoTable) -> Self {
        let described = client()
            .await
            .describe_table()
            .table_name(table.names().0)
            .send()
            .await
            .unwrap();
        let arn = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .expect("the main table has a stream")
            .to_owned();
        Self {
            client: aws_sdk_dynamodbstreams::Client::new(&sdk_config().await),
            arn,
        }
    }
}

impl StreamFeed {
    /// Every stream record after the positions in `after` (shard → last sequence number read),
    /// each with its shard, in order per shard.
    async fn records(
        &self,
        after: &std::collections::BTreeMap<String, String>,
    ) -> Vec<(String, aws_sdk_dynamodbstreams::types::Record)> {
        use aws_sdk_dynamodbstreams::types::ShardIteratorType;
        let stream = self
            .client
            .describe_stream()
            .stream_arn(&self.arn)
            .send()
            .await
            .unwrap();
        let shards = stream
            .stream_description()
            .map(|d| d.shards().to_vec())
            .unwrap_or_default();
        let mut records = Vec::new();
        for shard in shards {
            let id = shard.shard_id().unwrap_or_default().to_owned();
            let request = self
                .client
                .get_shard_iterator()
                .stream_arn(&self.arn)
                .shard_id(&id);
            let request = match after.get(&id) {
                Some(sequence) => request
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(sequence),
                None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            };
            let mut iterator = request.send().await.unwrap().shard_iterator;
            while let Some(current) = iterator.take() {
                let page = self
                    .client
                    .get_records()
                    .shard_iterator(current)
                    .send()
                    .await
                    .unwrap();
                if page.records().is_empty() {
                    break;
                }
                records.extend(page.records().iter().map(|r| (id.clone(), r.clone())));
                iterator = page.next_shard_iterator;
            }
        }
        records
    }

    /// Every record of the stream so far, unfiltered, shaped as the DynamoDB stream event a
    /// Lambda receives (`Records[].eventName`, `.dynamodb.SequenceNumber`, `.dynamodb.NewImage`
    /// with the attributes the publisher reads).
    pub async fn lambda_event(&self) -> serde_json::Value {
        use aws_sdk_dynamodbstreams::types::AttributeValue;
        let mut records = Vec::new();
        for (_, record) in self.records(&Default::default()).await {
            let change = record.dynamodb();
            let mut image = serde_json::Map::new();
            for (name, value) in change.and_then(|c| c.new_image()).into_iter().flatten() {
                let value = match value {
                    AttributeValue::S(s) => serde_json::json!({"S": s}),
                    AttributeValue::N(n) => serde_json::json!({"N": n}),
                    AttributeValue::Bool(b) => serde_json::json!({"BOOL": b}),
                    _ => continue,
                };
                image.insert(name.clone(), value);
            }
            records.push(serde_json::json!({
                "eventName": record.event_name().map(|n| n.as_str()),
                "dynamodb": {
                    "SequenceNumber": change.and_then(|c| c.sequence_number()),
                    "NewImage": image,
                },
            }));
        }
        serde_json::json!({ "Records": records })
    }
}

impl commerce_app::outbox::ChangeFeed for StreamFeed {
    async fn read(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<commerce_app::outbox::FeedEvent>, commerce_app::StoreError> {
        use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType};
        let mut seen: std::collections::BTreeMap<String, String> = after
            .map(|text| serde_json::from_str(text).unwrap())
            .unwrap_or_default();
        let mut events = Vec::new();
        for (shard, record) in self.records(&seen.clone()).await {
            let Some(change) = record.dynamodb() else {
                continue;
            };
            if let Some(sequence) = change.sequence_number() {
                seen.insert(shard, sequence.to_owned());
            }
            let image = change.new_image();
            let is_event = image
                .and_then(|i| i.get("e"))
                .is_some_and(|e| matches!(e, AttributeValue::Bool(true)));
            let inserted = record.event_name() == Some(&OperationType::Insert);
            let data = image.and_then(|i| i.get("d")).and_then(|d| d.as_s().ok());
            if let (true, true, Some(data)) = (inserted, is_event, data) {
                events.push(commerce_app::outbox::FeedEvent {
                    position: serde_json::to_string(&seen).unwrap(),
                    envelope: data.clone().into_bytes(),
                });
            }
        }
        events.truncate(limit);
        Ok(events)
    }

    /// The stream keeps records for a day whatever readers do; nothing to forget.
    async fn acknowledge(&self, _through: &str) -> Result<(), commerce_app::StoreError> {
        Ok(())
    }
}
