//! Consumers as the shop relies on them, on each store: a redelivered or republished event
//! changes nothing, an aggregate's events apply in version order whatever order they arrive in,
//! racing projectors apply each event once, and a rebuild run while events keep coming ends
//! equal to the live read model.

use std::collections::BTreeMap;

use commerce_domain::{Inventory, Quantity};
use serde_json::Value;

use crate::bus::{Delivery, Message};
use crate::event_store::{Changes, Envelope, Origin, load, read_events};
use crate::projection::audit::{Audit, aggregate_partition};
use crate::projection::{Projection, Projector, Verdict, active_generation, partition, rebuild};
use crate::table::{Query, Table};

/// Records `count` stock receipts on one SKU, one commit each.
async fn receipts<T: Table>(table: &T, sku: &str, count: u32) {
    for _ in 0..count {
        let mut stock = load::<Inventory, _>(table, stream(sku)).await.unwrap();
        let events = stock.state.receive(Quantity::new(1).unwrap()).unwrap();
        let mut changes = Changes::new(Origin::system("contract"));
        changes.append(&mut stock, events, now_ms()).unwrap();
        changes.commit(table).await.unwrap();
    }
}

fn now_ms() -> i64 {
    crate::Clock::now_ms(&crate::SystemClock)
}

fn stream(sku: &str) -> String {
    format!("acme#inventory#{sku}")
}

/// The stream's events as the bus would deliver them.
async fn deliveries<T: Table>(table: &T, sku: &str) -> Vec<Delivery> {
    let events: Vec<Envelope<Value>> = read_events(table, &stream(sku)).await.unwrap();
    events
        .iter()
        .map(|e| {
            let body = serde_json::to_vec(e).unwrap();
            Delivery {
                message: Message::for_event(&body).unwrap(),
                receipt: format!("r-{}", e.id),
                receive_count: 1,
            }
        })
        .collect()
}

/// The aggregate's audit entries (event versions) in the generation readers use.
async fn audited<T: Table>(table: &T, sku: &str) -> Vec<u64> {
    let generation = active_generation::<Audit, _>(table).await.unwrap();
    audited_in(table, sku, generation).await
}

async fn audited_in<T: Table>(table: &T, sku: &str, generation: u32) -> Vec<u64> {
    let pk = partition(
        "acme",
        Audit::NAME,
        generation,
        &aggregate_partition("inventory", sku),
    );
    let page = table
        .query(Query {
            pk: &pk,
            prefix: "",
            after: None,
            limit: 1000,
            descending: false,
        })
        .await
        .unwrap();
    page.items
        .iter()
        .map(|item| {
            let e: Envelope<Value> = serde_json::from_slice(&item.data).unwrap();
            e.aggregate_version
        })
        .collect()
}

pub async fn a_redelivered_event_is_applied_once<T: Table + Clone>(table: &T) {
    receipts(table, "dup", 3).await;
    let all = deliveries(table, "dup").await;
    let projector = Projector::<T, Audit>::new(table.clone());
    assert_eq!(projector.handle(&all).await, vec![Verdict::Done; 3]);
    // Redelivered one by one, all at once, and republished twice in one batch.
    for delivery in &all {
        assert_eq!(
            projector.handle(std::slice::from_ref(delivery)).await,
            vec![Verdict::Done]
        );
    }
    let doubled: Vec<Delivery> = all.iter().chain(all.iter()).cloned().collect();
    assert_eq!(projector.handle(&doubled).await, vec![Verdict::Done; 6]);
    assert_eq!(audited(table, "dup").await, vec![1, 2, 3], "each once");
}

pub async fn events_out_of_order_apply_in_version_order<T: Table + Clone>(table: &T) {
    receipts(table, "late", 4).await;
    let all = deliveries(table, "late").await;
    let projector = Projector::<T, Audit>::new(table.clone());
    // Version 3 arrives first: 1 and 2 are read from the log and applied before it.
    assert_eq!(
        projector.handle(&all[2..3]).await,
        vec![Verdict::Done],
        "a gap is filled from the log, not skipped"
    );
    assert_eq!(audited(table, "late").await, vec![1, 2, 3]);
    // Then the rest, newest first.
    let mut rest = vec![all[3].clone(), all[1].clone(), all[0].clone()];
    rest.reverse();
    assert_eq!(projector.handle(&rest).await, vec![Verdict::Done; 3]);
    assert_eq!(audited(table, "late").await, vec![1, 2, 3, 4]);
}

pub async fn racing_projectors_apply_each_event_once<T: Table + Clone>(table: &T) {
    receipts(table, "race", 6).await;
    let all = deliveries(table, "race").await;
    let mut runs = Vec::new();
    for n in 0..4 {
        let table = table.clone();
        // Each projector gets the events in another order, some twice.
        let mut batch = all.clone();
        batch.rotate_left(n);
        batch.push(all[n].clone());
        runs.push(tokio::spawn(async move {
            Projector::<T, Audit>::new(table).handle(&batch).await
        }));
    }
    let mut later = 0;
    for run in runs {
        later += run
            .await
            .unwrap()
            .iter()
            .filter(|v| **v != Verdict::Done)
            .count();
    }
    // A projector that kept losing races asks for its batch again; that run then finishes it.
    if later > 0 {
        let projector = Projector::<T, Audit>::new(table.clone());
        assert_eq!(projector.handle(&all).await, vec![Verdict::Done; 6]);
    }
    assert_eq!(audited(table, "race").await, vec![1, 2, 3, 4, 5, 6]);
}

pub async fn a_rebuild_while_events_keep_coming_equals_the_live_model<T: Table + Clone>(table: &T) {
    let skus = ["r1", "r2", "r3"];
    for sku in skus {
        receipts(table, sku, 3).await;
        let projector = Projector::<T, Audit>::new(table.clone());
        assert!(
            projector
                .handle(&deliveries(table, sku).await)
                .await
                .iter()
                .all(|v| *v == Verdict::Done)
        );
    }
    let before = active_generation::<Audit, _>(table).await.unwrap();
    // Events keep being recorded and projected while the rebuild runs.
    let live = {
        let table = table.clone();
        tokio::spawn(async move {
            for round in 0..4 {
                for sku in skus {
                    receipts(&table, sku, 1).await;
                    let projector = Projector::<T, Audit>::new(table.clone());
                    let batch = deliveries(&table, sku).await;
                    let verdicts = projector.handle(&batch).await;
                    assert!(
                        verdicts.iter().all(|v| *v != Verdict::Poison),
                        "round {round}: {verdicts:?}"
                    );
                }
            }
        })
    };
    let progress = rebuild::<Audit, T>(table, |_| {}).await.unwrap();
    live.await.unwrap();
    // Whatever the live projector could not finish during the switch, it finishes now.
    let projector = Projector::<T, Audit>::new(table.clone());
    for sku in skus {
        assert!(
            projector
                .handle(&deliveries(table, sku).await)
                .await
                .iter()
                .all(|v| *v == Verdict::Done)
        );
    }
    let after = active_generation::<Audit, _>(table).await.unwrap();
    assert_eq!(after, progress.generation);
    assert!(after > before, "readers moved to the rebuilt generation");
    let mut rebuilt = BTreeMap::new();
    let mut live_model = BTreeMap::new();
    for sku in skus {
        rebuilt.insert(sku, audited_in(table, sku, after).await);
        live_model.insert(sku, audited_in(table, sku, before).await);
        assert_eq!(
            rebuilt[sku],
            (1..=7).collect::<Vec<u64>>(),
            "the rebuilt trail has every event of {sku}, once and in order"
        );
    }
    // The old generation stopped at the switch; what it has, the new one has the same.
    for sku in skus {
        let old = &live_model[sku];
        assert_eq!(old[..], rebuilt[sku][..old.len()], "{sku}");
    }
}
