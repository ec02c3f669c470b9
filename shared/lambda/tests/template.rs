//! `template.yaml` declares what the code assumes about AWS: the stream filter the publisher
//! relies on, each projection's subscription filter and receive limit, and a function for every
//! binary. The code is the source; this keeps the template in step with it.

#![allow(clippy::expect_used, clippy::panic)]

use commerce_app::projection::{MAX_RECEIVES, subscriptions};

fn template() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    std::fs::read_to_string(path).expect("template.yaml at the repository's root")
}

#[test]
fn the_publishers_stream_filter_is_the_adapters() {
    let pattern = format!("Pattern: '{}'", commerce_dynamodb::STREAM_FILTER);
    assert!(
        template().contains(&pattern),
        "template.yaml needs {pattern}"
    );
}

#[test]
fn every_projection_is_subscribed_as_the_code_says() {
    let template = template();
    assert!(template.contains(&format!("maxReceiveCount: {MAX_RECEIVES}")));
    for subscription in subscriptions() {
        let title = {
            let mut chars = subscription.queue.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        };
        let block = template
            .split(&format!("  {title}Subscription:\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("template.yaml has no {title}Subscription"));
        let block = block.split("\n\n").next().unwrap_or_default();
        assert!(
            block.contains("RawMessageDelivery: true"),
            "{title}: {block}"
        );
        if subscription.filter.is_empty() {
            assert!(!block.contains("FilterPolicy"), "{title} takes every event");
        } else {
            let policy = serde_json::to_string(&subscription.filter).expect("json");
            assert!(
                block.contains(&format!("FilterPolicy: '{policy}'")),
                "{title}Subscription needs FilterPolicy: '{policy}'"
            );
        }
        for resource in [
            "Queue",
            "DeadLetters",
            "ProjectorFunction",
            "DeadLettersAlarm",
        ] {
            assert!(
                template.contains(&format!("  {title}{resource}:\n")),
                "template.yaml needs {title}{resource}"
            );
        }
    }
}

#[test]
fn every_function_binary_is_deployed() {
    let template = template();
    let bins = concat!(env!("CARGO_MANIFEST_DIR"), "/../../functions/src/bin");
    for entry in std::fs::read_dir(bins).expect("functions/src/bin") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        let binary = name.trim_end_matches(".rs");
        assert!(
            template.contains(&format!("Binary: {binary}\n")),
            "template.yaml deploys no function with Binary: {binary}"
        );
    }
}
