//! The bus events travel on once they leave the store: one topic that fans out to a queue per
//! consumer, as SNS and SQS do. A subscription's filter policy picks what reaches its queue; a
//! received message stays invisible for a while and comes back unless deleted; a message
//! received too often moves to its queue's dead-letter queue. SNS/SQS and the local SQLite bus
//! implement the same ports, and one contract suite holds both to these rules.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Message attributes every event carries, for filter policies to route on.
pub const EVENT_TYPE: &str = "event_type";
pub const TENANT: &str = "tenant";
pub const AGGREGATE_TYPE: &str = "aggregate_type";

/// What travels: the event's envelope as the body, routing attributes beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The event id: unique per event, so a publisher's retry is recognisable downstream.
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus refused for now (throttled, unreachable); the same call may succeed later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus failure: {0}")]
    Failure(String),
}

impl Message {
    /// The message for a stored event envelope (JSON), attributes taken from the envelope.
    pub fn for_event(envelope: &[u8]) -> Result<Self, BusError> {
        let Routing { id, attributes } = Routing::of_event(envelope)?;
        let body = String::from_utf8(envelope.to_vec())
            .map_err(|_| BusError::Failure("an envelope is UTF-8 JSON".into()))?;
        Ok(Self {
            id,
            attributes,
            body,
        })
    }
}

/// What a message of an event is routed by: its id and attributes, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}

impl Routing {
    /// Read from a stored event envelope (JSON).
    pub fn of_event(envelope: &[u8]) -> Result<Self, BusError> {
        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
            #[serde(rename = "type", borrow)]
            event_type: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            tenant: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            aggregate_type: std::borrow::Cow<'a, str>,
        }
        let fields: Fields<'_> = serde_json::from_slice(envelope)
            .map_err(|e| BusError::Failure(format!("not an event envelope: {e}")))?;
        Ok(Self {
            id: fields.id.into_owned(),
            attributes: BTreeMap::from([
                (EVENT_TYPE.to_owned(), fields.event_type.into_owned()),
                (TENANT.to_owned(), fields.tenant.into_owned()),
                (
                    AGGREGATE_TYPE.to_owned(),
                    fields.aggregate_type.into_owned(),
                ),
            ]),
        })
    }
}

/// A subscription's filter policy, in SNS's syntax for string attributes: each named attribute
/// must be present with one of the listed values; an empty policy takes everything. Only exact
/// string matches are used (and supported), which SNS and the local bus treat alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FilterPolicy(pub BTreeMap<String, Vec<String>>);

impl FilterPolicy {
    pub fn matches(&self, attributes: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(name, allowed)| {
            attributes
                .get(name)
                .is_some_and(|value| allowed.iter().any(|a| a == value))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A consumer's queue on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The queue's name; its dead-letter queue is this with `-dlq` appended.
    pub queue: String,
    pub filter: FilterPolicy,
    /// Receives after which a message not deleted moves to the dead-letter queue.
    pub max_receives: u32,
}

impl Subscription {
    pub fn dead_letters(&self) -> String {
        format!("{}-dlq", self.queue)
    }
}

/// One receipt of a message from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Message,
    /// What deletes or delays this receipt; a later receipt of the same message has another.
    pub receipt: String,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
}

pub trait Topic: Send + Sync + 'static {
    /// Publishes every message, or fails as a whole (some may have gone out: publishing again
    /// is safe, consumers recognise event ids).
    fn publish(&self, messages: Vec<Message>) -> impl Future<Output = Result<(), BusError>> + Send;
}

pub trait Queue: Send + Sync + 'static {
    /// Up to `max` visible messages, each then hidden for `visibility`; waits up to `wait`
    /// for the first one.
    fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, BusError>> + Send;

    /// The message was handled: it never comes back.
    fn delete(&self, receipt: &str) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Deletes several at once, as one call where the bus allows.
    fn delete_all(&self, receipts: &[String]) -> impl Future<Output = Result<(), BusError>> + Send {
        async move {
            for receipt in receipts {
                self.delete(receipt).await?;
            }
            Ok(())
        }
    }

    /// The message was not handled: it comes back after `delay` instead of its full timeout.
    fn retry_after(
        &self,
        receipt: &str,
        delay: Duration,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Puts a message on the queue directly, visible after `delay` (used to redrive).
    fn send(
        &self,
        message: Message,
        delay: Duration,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Moves up to `max` messages from a dead-letter queue back to the queue they came from, each
/// deleted from the dead letters only once sent. Returns how many moved.
pub async fn redrive<D: Queue, Q: Queue>(
    dead_letters: &D,
    queue: &Q,
    max: usize,
) -> Result<usize, BusError> {
    let mut moved = 0;
    while moved < max {
        let batch = dead_letters
            .receive(
                (max - moved).min(10),
                Duration::from_secs(30),
                Duration::ZERO,
            )
            .await?;
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            queue.send(delivery.message, Duration::ZERO).await?;
            dead_letters.delete(&delivery.receipt).await?;
            moved += 1;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_filter_policy_needs_every_named_attribute_with_an_allowed_value() {
        let orders: FilterPolicy =
            serde_json::from_str(r#"{"aggregate_type": ["order", "reservation"]}"#).unwrap();
        assert!(orders.matches(&attributes(&[("aggregate_type", "order")])));
        assert!(orders.matches(&attributes(&[
            ("aggregate_type", "reservation"),
            ("tenant", "acme")
        ])));
        assert!(!orders.matches(&attributes(&[("aggregate_type", "inventory")])));
        assert!(!orders.matches(&attributes(&[("tenant", "acme")])));
        assert!(FilterPolicy::default().matches(&attributes(&[])));
    }

    #[test]
    fn an_event_message_carries_its_routing_attributes() {
        let envelope = br#"{"id":"0190","type":"OrderPlaced","tenant":"acme","aggregate_type":"order","data":{}}"#;
        let message = Message::for_event(envelope).unwrap();
        assert_eq!(message.id, "0190");
        assert_eq!(message.attributes[EVENT_TYPE], "OrderPlaced");
        assert_eq!(message.attributes[TENANT], "acme");
        assert_eq!(message.attributes[AGGREGATE_TYPE], "order");
        assert_eq!(message.body.as_bytes(), envelope);
        assert!(Message::for_event(b"{}").is_err());
    }
}
