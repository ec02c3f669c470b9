//! The event pipeline's Lambdas: the publisher, fed by the table's stream through an event
//! source mapping that lets only event inserts through, and one projector per read model,
//! fed by its SQS queue. Both report partial batch failures, so one bad record is retried (and
//! in the end sent to the on-failure destination or dead-letter queue) without holding back
//! the rest.

use std::collections::{BTreeMap, HashMap};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use commerce_app::bus::{Message, Topic};
use commerce_app::projection::{Projection, Projector, Verdict};
use commerce_app::table::Table;
use serde::Deserialize;
use serde_json::Value;

/// Messages SNS takes in one `PublishBatch`; records are published in chunks of this many.
const CHUNK: usize = 10;

/// The part of a DynamoDB stream event the publisher reads. (`aws_lambda_events`'s full model
/// would pull in an attribute-value converter for the one string attribute read here.)
#[derive(Debug, Deserialize)]
pub struct StreamEvent {
    #[serde(rename = "Records", default)]
    pub records: Vec<StreamRecord>,
}

#[derive(Debug, Deserialize)]
pub struct StreamRecord {
    #[serde(rename = "eventName", default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub dynamodb: Option<StreamChange>,
}

#[derive(Debug, Deserialize)]
pub struct StreamChange {
    #[serde(rename = "SequenceNumber", default)]
    pub sequence_number: Option<String>,
    #[serde(rename = "NewImage", default)]
    pub new_image: Option<HashMap<String, Value>>,
}

impl StreamRecord {
    fn sequence_number(&self) -> String {
        self.dynamodb
            .as_ref()
            .and_then(|d| d.sequence_number.clone())
            .unwrap_or_default()
    }

    /// The event envelope of an inserted event item, as the mapping's filter selects them.
    /// `None`: not an event insert (the filter should not have let it through).
    fn envelope(&self) -> Option<Result<Message, String>> {
        let image = self.dynamodb.as_ref()?.new_image.as_ref()?;
        let is_event = image.get("e").and_then(|e| e.get("BOOL")) == Some(&Value::Bool(true));
        if self.event_name.as_deref() != Some("INSERT") || !is_event {
            return None;
        }
        let data = image
            .get("d")
            .and_then(|d| d.get("S"))
            .and_then(Value::as_str);
        Some(match data {
            Some(data) => Message::for_event(data.as_bytes()).map_err(|e| e.to_string()),
            None => Err("an event item without its data".into()),
        })
    }
}

/// Publishes the records' events in order. At the first chunk that fails, that chunk's first
/// record is reported failed: the mapping retries from there (for as long as the stream keeps
/// it), and the records before it are not published again. A record that cannot be read is
/// logged and skipped rather than retried: it would hold back every event behind it, and the
/// event itself stays in the table for a rebuild to read.
pub async fn publish_records<T: Topic>(topic: &T, event: StreamEvent) -> DynamoDbEventResponse {
    let mut messages: Vec<(String, Message)> = Vec::with_capacity(event.records.len());
    for record in &event.records {
        match record.envelope() {
            Some(Ok(message)) => messages.push((record.sequence_number(), message)),
            Some(Err(why)) => {
                tracing::error!(sequence = %record.sequence_number(), %why, "unreadable event record skipped");
            }
            None => {}
        }
    }
    let mut response = DynamoDbEventResponse::default();
    if let Some(sequence) = publish_in_order(topic, &messages).await {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(sequence);
        response.batch_item_failures.push(failure);
    }
    response
}

/// Publishes `messages` chunk by chunk; on a failure, the sequence number to retry from.
async fn publish_in_order<T: Topic>(topic: &T, messages: &[(String, Message)]) -> Option<String> {
    for chunk in messages.chunks(CHUNK) {
        let batch: Vec<Message> = chunk.iter().map(|(_, m)| m.clone()).collect();
        if let Err(e) = topic.publish(batch).await {
            tracing::warn!(error = %e, "publishing failed; the stream will retry");
            return chunk.first().map(|(sequence, _)| sequence.clone());
        }
        for (_, message) in chunk {
            if let Some(tenant) = message.attributes.get(commerce_app::bus::TENANT) {
                commerce_app::metrics::published(tenant, 1);
            }
        }
    }
    None
}

/// Applies an SQS batch to projection `P`; what is not done is reported failed, to come back
/// after its visibility timeout (and, after the queue's receive limit, to its dead-letter queue).
pub async fn project<T: Table, P: Projection>(
    projector: &Projector<T, P>,
    event: SqsEvent,
) -> SqsBatchResponse {
    let mut ids = Vec::with_capacity(event.records.len());
    let mut deliveries = Vec::with_capacity(event.records.len());
    for record in event.records {
        let attributes: BTreeMap<String, String> = record
            .message_attributes
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), value.string_value.clone()?)))
            .collect();
        let receive_count = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let id = record.message_id.clone().unwrap_or_default();
        deliveries.push(commerce_sns_sqs::delivery_from_record(
            record.body.as_deref().unwrap_or_default(),
            record.receipt_handle.as_deref().unwrap_or_default(),
            receive_count,
            attributes,
        ));
        ids.push(id);
    }
    let verdicts = projector.handle(&deliveries).await;
    let mut response = SqsBatchResponse::default();
    for (id, verdict) in ids.into_iter().zip(verdicts) {
        if verdict != Verdict::Done {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}
