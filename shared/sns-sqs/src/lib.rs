//! The bus ports on AWS: [`SnsTopic`] publishes in batches of ten with the routing attributes
//! as SNS message attributes; each consumer's [`SqsQueue`] is subscribed with raw message
//! delivery (the body is the envelope itself) and a filter policy, and has a redrive policy
//! to its dead-letter queue. `template.yaml` declares the same resources; [`create`] makes
//! them for tests and for a deployment-less run against an AWS-API server.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_sns::types::{MessageAttributeValue as SnsAttribute, PublishBatchRequestEntry};
use aws_sdk_sqs::types::{
    MessageAttributeValue as SqsAttribute, MessageSystemAttributeName, QueueAttributeName,
};
use commerce_app::bus::{BusError, Delivery, Message, Queue, Subscription, Topic};

/// The message attribute that carries [`Message::id`] (SQS gives messages ids of its own).
const MESSAGE_ID: &str = "message_id";
/// Most entries SNS takes in one `PublishBatch`.
const BATCH: usize = 10;
/// Longest long poll SQS allows.
const MAX_WAIT_SECONDS: i32 = 20;

#[derive(Debug, Clone)]
pub struct SnsTopic {
    client: aws_sdk_sns::Client,
    arn: String,
}

impl SnsTopic {
    pub fn new(client: aws_sdk_sns::Client, arn: impl Into<String>) -> Self {
        Self {
            client,
            arn: arn.into(),
        }
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }
}

impl Topic for SnsTopic {
    async fn publish(&self, messages: Vec<Message>) -> Result<(), BusError> {
        for chunk in messages.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(n, message)| entry(n, message))
                .collect::<Result<Vec<_>, _>>()?;
            let answer = self
                .client
                .publish_batch()
                .topic_arn(&self.arn)
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_failure(&e))?;
            if let Some(failed) = answer.failed().first() {
                // Publishing the whole chunk again is safe: consumers recognise event ids.
                return Err(BusError::Unavailable(format!(
                    "{} of {} messages not published: {}",
                    answer.failed().len(),
                    chunk.len(),
                    failed.message().unwrap_or(failed.code())
                )));
            }
        }
        Ok(())
    }
}

fn entry(n: usize, message: &Message) -> Result<PublishBatchRequestEntry, BusError> {
    let mut attributes = HashMap::with_capacity(message.attributes.len() + 1);
    for (name, value) in message
        .attributes
        .iter()
        .chain(std::iter::once((&MESSAGE_ID.to_owned(), &message.id)))
    {
        let value = SnsAttribute::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| BusError::Failure(e.to_string()))?;
        attributes.insert(name.clone(), value);
    }
    PublishBatchRequestEntry::builder()
        .id(format!("m{n}"))
        .message(&message.body)
        .set_message_attributes(Some(attributes))
        .build()
        .map_err(|e| BusError::Failure(e.to_string()))
}

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Queue for SqsQueue {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let answer = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .visibility_timeout(seconds(visibility))
            .wait_time_seconds(seconds(wait).min(MAX_WAIT_SECONDS))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_failure(&e))?;
        answer.messages().iter().map(delivery).collect()
    }

    async fn delete(&self, receipt: &str) -> Result<(), BusError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), BusError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(delay))
            .send()
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(())
    }

    async fn send(&self, message: Message, delay: Duration) -> Result<(), BusError> {
        let mut attributes = HashMap::with_capacity(message.attributes.len() + 1);
        for (name, value) in message
            .attributes
            .iter()
            .chain(std::iter::once((&MESSAGE_ID.to_owned(), &message.id)))
        {
            let value = SqsAttribute::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BusError::Failure(e.to_string()))?;
            attributes.insert(name.clone(), value);
        }
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(message.body)
            .set_message_attributes(Some(attributes))
            .delay_seconds(seconds(delay))
            .send()
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(())
    }
}

/// A received SQS message as a delivery.
fn delivery(message: &aws_sdk_sqs::types::Message) -> Result<Delivery, BusError> {
    let mut attributes: BTreeMap<String, String> = message
        .message_attributes()
        .map(|all| {
            all.iter()
                .filter_map(|(name, value)| Some((name.clone(), value.string_value()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let id = attributes.remove(MESSAGE_ID).unwrap_or_default();
    let receive_count = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    Ok(Delivery {
        message: Message {
            id,
            attributes,
            body: message.body().unwrap_or_default().to_owned(),
        },
        receipt: message
            .receipt_handle()
            .ok_or_else(|| BusError::Failure("a message without a receipt handle".into()))?
            .to_owned(),
        receive_count,
    })
}

/// A Lambda's SQS event record as a delivery: the same shape a queue's receive gives.
pub fn delivery_from_record(
    body: &str,
    receipt: &str,
    receive_count: u32,
    attributes: BTreeMap<String, String>,
) -> Delivery {
    let mut attributes = attributes;
    let id = attributes.remove(MESSAGE_ID).unwrap_or_default();
    Delivery {
        message: Message {
            id,
            attributes,
            body: body.to_owned(),
        },
        receipt: receipt.to_owned(),
        receive_count,
    }
}

/// The topic and each subscription's queue and dead-letter queue, as the template declares
/// them; returns the topic and the queues by name (dead-letter queues included).
pub async fn create(
    sns: &aws_sdk_sns::Client,
    sqs: &aws_sdk_sqs::Client,
    topic_name: &str,
    subscriptions: &[Subscription],
) -> Result<(SnsTopic, BTreeMap<String, SqsQueue>), BusError> {
    let topic = sns
        .create_topic()
        .name(topic_name)
        .send()
        .await
        .map_err(|e| sdk_failure(&e))?;
    let topic_arn = topic.topic_arn().unwrap_or_default().to_owned();
    let mut queues = BTreeMap::new();
    for subscription in subscriptions {
        let (dlq_url, dlq_arn) = make_queue(
            sqs,
            &format!("{topic_name}-{}", subscription.dead_letters()),
            None,
        )
        .await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": subscription.max_receives,
        })
        .to_string();
        let (url, arn) = make_queue(
            sqs,
            &format!("{topic_name}-{}", subscription.queue),
            Some(redrive),
        )
        .await?;
        let mut subscribe = sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(&arn)
            .attributes("RawMessageDelivery", "true");
        if !subscription.filter.is_empty() {
            let policy = serde_json::to_string(&subscription.filter)
                .map_err(|e| BusError::Failure(e.to_string()))?;
            subscribe = subscribe.attributes("FilterPolicy", policy);
        }
        subscribe.send().await.map_err(|e| sdk_failure(&e))?;
        queues.insert(subscription.queue.clone(), SqsQueue::new(sqs.clone(), url));
        queues.insert(
            subscription.dead_letters(),
            SqsQueue::new(sqs.clone(), dlq_url),
        );
    }
    Ok((SnsTopic::new(sns.clone(), topic_arn), queues))
}

async fn make_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    redrive: Option<String>,
) -> Result<(String, String), BusError> {
    let mut create = sqs.create_queue().queue_name(name);
    if let Some(policy) = redrive {
        create = create.attributes(QueueAttributeName::RedrivePolicy, policy);
    }
    let url = create
        .send()
        .await
        .map_err(|e| sdk_failure(&e))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| sdk_failure(&e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default();
    Ok((url, arn))
}

/// Whole seconds, rounded up, as SQS takes them.
fn seconds(d: Duration) -> i32 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(whole).unwrap_or(i32::MAX)
}

fn sdk_failure<E>(e: &E) -> BusError
where
    E: std::error::Error + 'static,
{
    let text = format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e));
    let busy = [
        "Throttl",
        "ServiceUnavailable",
        "InternalError",
        "dispatch",
        "timeout",
    ];
    if busy.iter().any(|b| text.contains(b)) {
        BusError::Unavailable(text)
    } else {
        BusError::Failure(text)
    }
}
