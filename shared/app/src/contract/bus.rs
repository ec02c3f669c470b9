//! The bus as consumers rely on it, on SNS/SQS and on the local bus alike: filter policies route,
//! a received message hides for its visibility timeout, a deleted one never returns, one
//! received too often lands in the dead-letter queue, and a redrive brings it back once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::bus::{
    AGGREGATE_TYPE, Delivery, EVENT_TYPE, FilterPolicy, Message, Queue, Subscription, TENANT,
    Topic, redrive,
};

/// Receives allowed before a message is dead-lettered, in the contract's subscriptions.
pub const CONTRACT_MAX_RECEIVES: u32 = 3;

/// The subscriptions a bus under contract is set up with: `everything` (no filter) and
/// `orders` (order events only).
pub fn contract_subscriptions() -> Vec<Subscription> {
    vec![
        Subscription {
            queue: "everything".into(),
            filter: FilterPolicy::default(),
            max_receives: CONTRACT_MAX_RECEIVES,
        },
        Subscription {
            queue: "orders".into(),
            filter: FilterPolicy(BTreeMap::from([(
                AGGREGATE_TYPE.to_owned(),
                vec!["order".to_owned()],
            )])),
            max_receives: CONTRACT_MAX_RECEIVES,
        },
    ]
}

/// A bus set up with [`contract_subscriptions`].
#[derive(Debug)]
pub struct BusUnderTest<T, Q> {
    pub topic: T,
    pub everything: Q,
    pub everything_dead_letters: Q,
    pub orders: Q,
}

fn message(n: usize, aggregate_type: &str) -> Message {
    Message {
        id: format!("m{n}"),
        attributes: BTreeMap::from([
            (EVENT_TYPE.to_owned(), "Something".to_owned()),
            (TENANT.to_owned(), "acme".to_owned()),
            (AGGREGATE_TYPE.to_owned(), aggregate_type.to_owned()),
        ]),
        body: format!(r#"{{"n":{n}}}"#),
    }
}

const HIDE: Duration = Duration::from_secs(1);

/// Everything that becomes visible within `within`, received and deleted.
async fn take_all<Q: Queue>(queue: &Q, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let batch = queue
            .receive(10, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        for delivery in batch {
            queue.delete(&delivery.receipt).await.unwrap();
            got.push(delivery);
        }
    }
    got
}

/// The first delivery within `within`, not deleted.
async fn next<Q: Queue>(queue: &Q, within: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut batch = queue
            .receive(1, HIDE, Duration::from_secs(1))
            .await
            .unwrap();
        if let Some(delivery) = batch.pop() {
            return Some(delivery);
        }
    }
    None
}

pub async fn the_topic_routes_by_filter_policy<T: Topic, Q: Queue>(bus: &BusUnderTest<T, Q>) {
    let sent = vec![
        message(1, "order"),
        message(2, "inventory"),
        message(3, "order"),
    ];
    bus.topic.publish(sent.clone()).await.unwrap();
    let everything = take_all(&bus.everything, Duration::from_secs(3)).await;
    let orders = take_all(&bus.orders, Duration::from_secs(2)).await;
    let bodies =
        |d: &[Delivery]| -> BTreeSet<String> { d.iter().map(|d| d.message.body.clone()).collect() };
    assert_eq!(
        bodies(&everything),
        sent.iter().map(|m| m.body.clone()).collect(),
        "no filter: every message"
    );
    assert_eq!(
        bodies(&orders),
        BTreeSet::from([r#"{"n":1}"#.to_owned(), r#"{"n":3}"#.to_owned()]),
        "the order filter lets only order events through"
    );
    let first = orders
        .iter()
        .find(|d| d.message.body == r#"{"n":1}"#)
        .unwrap();
    assert_eq!(first.message.attributes, sent[0].attributes);
    assert_eq!(first.message.id, "m1");
    assert_eq!(first.receive_count, 1);
}

pub async fn a_received_message_stays_hidden_until_its_timeout<T: Topic, Q: Queue>(
    bus: &BusUnderTest<T, Q>,
) {
    // Long enough that a loaded machine still looks again before it ends.
    let in_flight = Duration::from_secs(3);
    bus.topic.publish(vec![message(1, "order")]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut first = None;
    while first.is_none() && Instant::now() < deadline {
        first = bus
            .orders
            .receive(1, in_flight, Duration::from_secs(1))
            .await
            .unwrap()
            .pop();
    }
    let first = first.expect("the message arrives");
    assert_eq!(first.receive_count, 1);
    let hidden = bus.orders.receive(10, HIDE, Duration::ZERO).await.unwrap();
    assert!(hidden.is_empty(), "hidden while in flight: {hidden:?}");
    let again = next(&bus.orders, Duration::from_secs(8)).await.unwrap();
    assert_eq!(again.message, first.message);
    assert_eq!(again.receive_count, 2, "its receives are counted");
    assert_ne!(again.receipt, first.receipt, "each receipt is its own");
}

pub async fn a_deleted_message_never_comes_back<T: Topic, Q: Queue>(bus: &BusUnderTest<T, Q>) {
    bus.topic.publish(vec![message(1, "order")]).await.unwrap();
    let first = next(&bus.orders, Duration::from_secs(3)).await.unwrap();
    bus.orders.delete(&first.receipt).await.unwrap();
    assert!(
        next(&bus.orders, Duration::from_secs(3)).await.is_none(),
        "gone for good"
    );
}

pub async fn retry_after_brings_a_message_back_sooner<T: Topic, Q: Queue>(
    bus: &BusUnderTest<T, Q>,
) {
    bus.topic.publish(vec![message(1, "order")]).await.unwrap();
    let first = bus
        .orders
        .receive(1, Duration::from_secs(60), Duration::from_secs(2))
        .await
        .unwrap();
    let first = first.first().expect("delivered");
    bus.orders
        .retry_after(&first.receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = next(&bus.orders, Duration::from_secs(3))
        .await
        .expect("back well before its 60 s timeout");
    assert_eq!(again.message, first.message);
}

pub async fn a_message_received_too_often_is_dead_lettered_and_redriven_once<T: Topic, Q: Queue>(
    bus: &BusUnderTest<T, Q>,
) {
    bus.topic
        .publish(vec![message(7, "inventory")])
        .await
        .unwrap();
    for receive in 1..=CONTRACT_MAX_RECEIVES {
        let delivery = next(&bus.everything, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("receive {receive} came"));
        assert_eq!(delivery.receive_count, receive);
    }
    assert!(
        next(&bus.everything, Duration::from_secs(3))
            .await
            .is_none(),
        "after {CONTRACT_MAX_RECEIVES} receives it left the queue"
    );
    let moved = redrive(&bus.everything_dead_letters, &bus.everything, 100)
        .await
        .unwrap();
    assert_eq!(moved, 1, "it was waiting in the dead-letter queue");
    let back = take_all(&bus.everything, Duration::from_secs(3)).await;
    assert_eq!(back.len(), 1, "redriven once: {back:?}");
    assert_eq!(back[0].message.body, r#"{"n":7}"#);
    assert_eq!(
        back[0].message.attributes,
        message(7, "inventory").attributes
    );
    assert_eq!(
        redrive(&bus.everything_dead_letters, &bus.everything, 100)
            .await
            .unwrap(),
        0,
        "nothing is left to redrive"
    );
}

pub async fn a_delayed_send_stays_hidden_until_due<T: Topic, Q: Queue>(bus: &BusUnderTest<T, Q>) {
    bus.orders
        .send(message(5, "order"), Duration::from_secs(2))
        .await
        .unwrap();
    let early = bus.orders.receive(10, HIDE, Duration::ZERO).await.unwrap();
    assert!(early.is_empty(), "not before its delay: {early:?}");
    // Generous: on a loaded machine the emulator can take seconds to answer a receive.
    let due = next(&bus.orders, Duration::from_secs(20))
        .await
        .expect("the delayed message is delivered once due");
    assert_eq!(due.message.body, r#"{"n":5}"#);
}
