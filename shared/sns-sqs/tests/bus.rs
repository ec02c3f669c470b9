//! The bus contract on SNS and SQS: the real aws-sdk clients against moto server, a fresh
//! topic and queues per case.

#![allow(clippy::expect_used)]

use commerce_app::contract::{BusUnderTest, contract_subscriptions};
use commerce_dynamodb::moto::sdk_config;
use commerce_sns_sqs::{SnsTopic, SqsQueue, create};

async fn fresh() -> (BusUnderTest<SnsTopic, SqsQueue>, ()) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let config = sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "events-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let (topic, mut queues) = create(&sns, &sqs, &name, &contract_subscriptions())
        .await
        .expect("create the topic and queues in moto");
    let mut queue = |n: &str| queues.remove(n).expect("a subscribed queue");
    let under_test = BusUnderTest {
        everything: queue("everything"),
        everything_dead_letters: queue("everything-dlq"),
        orders: queue("orders"),
        topic,
    };
    (under_test, ())
}

commerce_app::bus_contract!(fresh());
