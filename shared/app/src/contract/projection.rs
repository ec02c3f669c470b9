//! Consumers as the shop relies on them, on each store: a redelivered or republished event
//! changes nothing, an ordered projection applies an aggregate's events in version order
//! whatever order they arrive in (one keyed by the event itself, not ordered, records each as
//! it comes), racing projectors apply each event once, and a rebuild run while events keep
//! coming ends equal to the live read model.

use std::collections::BTreeMap;

use commerce_domain::{Inventory, Quantity};
use serde_json::Value;

use crate::bus::FilterPolicy;
use crate::bus::{Delivery, Message};
use crate::event_store::{Changes, Envelope, Origin, load, read_events};
use crate::projection::{
    Draft, Event, Projection, Projector, Verdict, active_generation, partition, rebuild,
};
use crate::table::{Query, StoreError, Table};

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

/// The SKU's stock events as the bus would deliver them.
async fn deliveries<T: Table>(table: &T, sku: &str) -> Vec<Delivery> {
    stream_deliveries(table, &stream(sku)).await
}

/// A stream's events as the bus would deliver them.
async fn stream_deliveries<T: Table>(table: &T, pk: &str) -> Vec<Delivery> {
    let events: Vec<Envelope<Value>> = read_events(table, pk).await.unwrap();
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

/// Projects every event of the SKU's stream with `P`, each done.
async fn project_all<T: Table + Clone, P: Projection>(table: &T, sku: &str) {
    let projector = Projector::<T, P>::new(table.clone());
    let verdicts = projector.handle(&deliveries(table, sku).await).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Done), "{verdicts:?}");
}

/// Rebuilds `P` while each SKU's stream gets four more events, projected live as they come;
/// then the live projector finishes what it could not during the switch. Each SKU starts with
/// three events. Returns the generations readers used before and after.
async fn rebuild_while_events_keep_coming<T: Table + Clone, P: Projection>(
    table: &T,
    skus: &'static [&'static str],
) -> (u32, u32) {
    for sku in skus {
        receipts(table, sku, 3).await;
        project_all::<T, P>(table, sku).await;
    }
    let before = active_generation::<P, _>(table).await.unwrap();
    let live = {
        let table = table.clone();
        tokio::spawn(async move {
            for round in 0..4 {
                for sku in skus {
                    receipts(&table, sku, 1).await;
                    let projector = Projector::<T, P>::new(table.clone());
                    let verdicts = projector.handle(&deliveries(&table, sku).await).await;
                    assert!(
                        verdicts.iter().all(|v| *v != Verdict::Poison),
                        "round {round}: {verdicts:?}"
                    );
                }
            }
        })
    };
    let progress = rebuild::<P, T>(table, |_| {}).await.unwrap();
    live.await.unwrap();
    for sku in skus {
        project_all::<T, P>(table, sku).await;
    }
    let after = active_generation::<P, _>(table).await.unwrap();
    assert_eq!(after, progress.generation);
    assert!(after > before, "readers moved to the rebuilt generation");
    (before, after)
}

/// A projection that is not ordered, for these cases: a copy of each event, keyed by the event
/// itself, so a repeat writes the same item again. An event without a readable time is refused.
#[derive(Debug, Clone, Copy, Default)]
struct Copies;

impl Projection for Copies {
    const NAME: &'static str = "copies";
    const MAX_WRITES: usize = 1;
    const ORDERED: bool = false;

    fn filter() -> FilterPolicy {
        FilterPolicy::default()
    }

    async fn apply<T: Table>(draft: &mut Draft<'_, T>, event: &Event) -> Result<(), StoreError> {
        let at = event
            .occurred_at_ms()
            .ok_or_else(|| StoreError::Failure(format!("event {} has no valid time", event.id)))?;
        let pk = draft.partition(&event.tenant, &event.aggregate_id);
        draft.put(pk, format!("{at:013}#{}", event.id), event)?;
        Ok(())
    }
}

/// The aggregate's copied events (their versions) in the generation readers use.
async fn copied<T: Table>(table: &T, sku: &str) -> Vec<u64> {
    let generation = active_generation::<Copies, _>(table).await.unwrap();
    copied_in(table, sku, generation).await
}

/// The SKU's copied event versions in a generation, in version order; a version there twice
/// shows twice.
async fn copied_in<T: Table>(table: &T, sku: &str, generation: u32) -> Vec<u64> {
    let pk = partition("acme", Copies::NAME, generation, sku);
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
    let mut versions: Vec<u64> = page
        .items
        .iter()
        .map(|item| {
            let e: Envelope<Value> = serde_json::from_slice(&item.data).unwrap();
            e.aggregate_version
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// An ordered projection for these cases: the versions of each aggregate in the order they
/// were applied, in one item, so an event applied twice or out of order shows.
#[derive(Debug, Clone, Copy, Default)]
struct Applied;

impl Projection for Applied {
    const NAME: &'static str = "applied";
    const MAX_WRITES: usize = 1;

    fn filter() -> FilterPolicy {
        FilterPolicy::default()
    }

    async fn apply<T: Table>(draft: &mut Draft<'_, T>, event: &Event) -> Result<(), StoreError> {
        let pk = draft.partition(&event.tenant, &event.aggregate_id);
        let mut versions: Vec<u64> = draft.load(&pk, "versions").await?;
        versions.push(event.aggregate_version);
        draft.store(&pk, "versions", &versions)
    }
}

/// The versions [`Applied`] applied of the aggregate, in the order applied.
async fn applied<T: Table>(table: &T, aggregate: &str) -> Vec<u64> {
    let generation = active_generation::<Applied, _>(table).await.unwrap();
    applied_in(table, aggregate, generation).await
}

async fn applied_in<T: Table>(table: &T, aggregate: &str, generation: u32) -> Vec<u64> {
    let pk = partition("acme", Applied::NAME, generation, aggregate);
    match table.get(&pk, "versions").await.unwrap() {
        Some(item) => serde_json::from_slice(&item.data).unwrap(),
        None => Vec::new(),
    }
}

/// Hands `batch` to a projector of each kind, which both finish it.
async fn both_handle<T: Table + Clone>(table: &T, batch: &[Delivery]) {
    let done = vec![Verdict::Done; batch.len()];
    let ordered = Projector::<T, Applied>::new(table.clone());
    assert_eq!(ordered.handle(batch).await, done, "ordered");
    let copies = Projector::<T, Copies>::new(table.clone());
    assert_eq!(copies.handle(batch).await, done, "not ordered");
}

pub async fn a_redelivered_event_is_applied_once<T: Table + Clone>(table: &T) {
    receipts(table, "dup", 3).await;
    let all = deliveries(table, "dup").await;
    both_handle(table, &all).await;
    // Redelivered one by one, all at once, and republished twice in one batch.
    for delivery in &all {
        both_handle(table, std::slice::from_ref(delivery)).await;
    }
    let doubled: Vec<Delivery> = all.iter().chain(all.iter()).cloned().collect();
    both_handle(table, &doubled).await;
    assert_eq!(applied(table, "dup").await, vec![1, 2, 3], "each once");
    assert_eq!(copied(table, "dup").await, vec![1, 2, 3], "each once");
}

pub async fn events_out_of_order_apply_in_version_order<T: Table + Clone>(table: &T) {
    receipts(table, "late", 4).await;
    let all = deliveries(table, "late").await;
    // Version 3 arrives first: 1 and 2 are read from the log and applied before it.
    both_handle(table, &all[2..3]).await;
    assert_eq!(
        applied(table, "late").await,
        vec![1, 2, 3],
        "a gap is filled from the log, not skipped"
    );
    // A projection that is not ordered: it records what came, and the rest when it comes.
    assert_eq!(copied(table, "late").await, vec![3]);
    // Then the rest, oldest last.
    let rest = vec![all[3].clone(), all[1].clone(), all[0].clone()];
    both_handle(table, &rest).await;
    assert_eq!(applied(table, "late").await, vec![1, 2, 3, 4]);
    assert_eq!(copied(table, "late").await, vec![1, 2, 3, 4]);
    // It kept no positions for it.
    let generation = active_generation::<Copies, _>(table).await.unwrap();
    let position = partition("acme", Copies::NAME, generation, "position#inventory#late");
    assert_eq!(table.get(&position, "position").await.unwrap(), None);
}

/// Four projectors of `P` at once, each given the events in another order and one twice; one
/// that kept losing races is given its batch again, as the queue would.
async fn race<T: Table + Clone, P: Projection>(table: &T, all: &[Delivery]) {
    let mut runs = Vec::new();
    for n in 0..4 {
        let table = table.clone();
        let mut batch = all.to_vec();
        batch.rotate_left(n);
        batch.push(all[n].clone());
        runs.push(tokio::spawn(async move {
            Projector::<T, P>::new(table).handle(&batch).await
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
    if later > 0 {
        let projector = Projector::<T, P>::new(table.clone());
        assert_eq!(projector.handle(all).await, vec![Verdict::Done; all.len()]);
    }
}

pub async fn racing_projectors_apply_each_event_once<T: Table + Clone>(table: &T) {
    receipts(table, "race", 6).await;
    let all = deliveries(table, "race").await;
    race::<T, Applied>(table, &all).await;
    race::<T, Copies>(table, &all).await;
    assert_eq!(applied(table, "race").await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(copied(table, "race").await, vec![1, 2, 3, 4, 5, 6]);
}

pub async fn a_rebuild_while_events_keep_coming_equals_the_live_model<T: Table + Clone>(table: &T) {
    const SKUS: &[&str] = &["r1", "r2", "r3"];
    let (before, after) = rebuild_while_events_keep_coming::<T, Copies>(table, SKUS).await;
    let mut rebuilt = BTreeMap::new();
    let mut live_model = BTreeMap::new();
    for &sku in SKUS {
        rebuilt.insert(sku, copied_in(table, sku, after).await);
        live_model.insert(sku, copied_in(table, sku, before).await);
        assert_eq!(
            rebuilt[sku],
            (1..=7).collect::<Vec<u64>>(),
            "the rebuilt trail has every event of {sku}, once and in order"
        );
    }
    // The old generation stopped at the switch; what it has, the new one has the same.
    for &sku in SKUS {
        let old = &live_model[sku];
        assert_eq!(old[..], rebuilt[sku][..old.len()], "{sku}");
    }
}

/// The rebuild of an ordered projection, while events keep coming: every event once, in
/// version order, in the generation readers then use.
pub async fn a_rebuild_of_an_ordered_projection_applies_each_event_once_in_order<
    T: Table + Clone,
>(
    table: &T,
) {
    const SKUS: &[&str] = &["o1", "o2"];
    let (_, after) = rebuild_while_events_keep_coming::<T, Applied>(table, SKUS).await;
    for &sku in SKUS {
        let versions = applied_in(table, sku, after).await;
        assert_eq!(versions, (1..=7).collect::<Vec<u64>>(), "{sku}");
    }
}

/// An event a projection that is not ordered cannot take (no valid time) is held back alone:
/// the event after it in its stream is recorded.
pub async fn an_event_refused_where_order_does_not_matter_holds_back_only_itself<
    T: Table + Clone,
>(
    table: &T,
) {
    receipts(table, "refused", 2).await;
    let events: Vec<Envelope<Value>> = read_events(table, &stream("refused")).await.unwrap();
    let mut unreadable = events[0].clone();
    unreadable.occurred_at = "not a time".into();
    let batch: Vec<Delivery> = [&unreadable, &events[1]]
        .iter()
        .map(|e| Delivery {
            message: Message::for_event(&serde_json::to_vec(e).unwrap()).unwrap(),
            receipt: format!("r-{}", e.id),
            receive_count: 1,
        })
        .collect();
    let projector = Projector::<T, Copies>::new(table.clone());
    assert_eq!(
        projector.handle(&batch).await,
        vec![Verdict::Poison, Verdict::Done]
    );
    assert_eq!(copied(table, "refused").await, vec![2]);
}

/// A projector checks its own copy of the generation record, brought in step with the record
/// before its first commit. One that read its copy before a rebuild opened and switched a
/// generation is refused on its next commit, reads again and writes where readers now look. A
/// copy left behind by a rebuild that wrote the record alone (an older build's) is brought in
/// step by the next projector that starts on it.
pub async fn a_projector_on_any_copy_of_the_generation_record_follows_a_rebuild<
    T: Table + Clone,
>(
    table: &T,
) {
    let sku = "copies";
    receipts(table, sku, 2).await;
    let projector = Projector::<T, Copies>::on_copy(table.clone(), 3);
    let verdicts = projector.handle(&deliveries(table, sku).await).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Done), "{verdicts:?}");
    let record = table.get("projection#copies", "generations").await.unwrap();
    let copy = table
        .get("projection#copies#3", "generations")
        .await
        .unwrap();
    let (record, copy) = (
        record.expect("the record"),
        copy.expect("the copy, written"),
    );
    assert_eq!((copy.version, &copy.data), (record.version, &record.data));
    let first = active_generation::<Copies, _>(table).await.unwrap();
    assert_eq!(copied_in(table, sku, first).await, vec![1, 2]);
    for round in 0..2u64 {
        let progress = rebuild::<Copies, T>(table, |_| {}).await.unwrap();
        receipts(table, sku, 1).await;
        // The projector still knows the record as it was before this rebuild.
        let verdicts = projector.handle(&deliveries(table, sku).await).await;
        assert!(verdicts.iter().all(|v| *v == Verdict::Done), "{verdicts:?}");
        assert_eq!(
            copied_in(table, sku, progress.generation).await,
            (1..=3 + round).collect::<Vec<u64>>(),
            "round {round}: every event in the generation readers use"
        );
    }
    // A switch to generation 9 written to the record alone, as a build from before copies
    // would: a projector starting on copy 3 follows the record, not its stale copy.
    let record = table
        .get("projection#copies", "generations")
        .await
        .unwrap()
        .unwrap();
    let switched = crate::table::Write::Put {
        item: crate::table::Item {
            version: record.version + 1,
            data: br#"{"active":9,"building":null}"#.to_vec(),
            ..record.clone()
        },
        condition: crate::table::Condition::VersionIs(record.version),
    };
    table.transact(vec![switched]).await.unwrap();
    receipts(table, sku, 1).await;
    let restarted = Projector::<T, Copies>::on_copy(table.clone(), 3);
    let verdicts = restarted.handle(&deliveries(table, sku).await).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Done), "{verdicts:?}");
    assert_eq!(copied_in(table, sku, 9).await, vec![1, 2, 3, 4, 5]);
}

/// Places an order of `lines` single units (SKU `L0`, `L1`, …, prefixed by `tag`) in a commit.
async fn order_of<T: Table>(table: &T, id: &str, tag: &str, lines: usize) {
    use commerce_domain::{
        Currency, CustomerId, Money, NewOrder, Order, OrderId, OrderLine, PaymentAuthorization,
        ReservationId, Sku,
    };
    let eur = Currency::parse("EUR").unwrap();
    let price = Money::new(100, eur).unwrap();
    let lines: Vec<OrderLine> = (0..lines)
        .map(|n| OrderLine {
            sku: Sku::parse(format!("{tag}{n}")).unwrap(),
            quantity: 1,
            unit_price: price,
            line_total: price,
        })
        .collect();
    let total = Money::new(100 * lines.len() as i64, eur).unwrap();
    let mut order = load::<Order, _>(table, format!("acme#order#{id}"))
        .await
        .unwrap();
    let events = order
        .state
        .place(NewOrder {
            id: OrderId::parse(id).unwrap(),
            customer: CustomerId::parse("alice").unwrap(),
            reservation: ReservationId::parse(format!("r-{id}")).unwrap(),
            lines,
            total,
            payment: PaymentAuthorization {
                id: format!("auth-{id}"),
                amount: total,
            },
            placed_at: now_ms(),
        })
        .unwrap();
    let mut changes = Changes::new(Origin::system("contract"));
    changes.append(&mut order, events, now_ms()).unwrap();
    changes.commit(table).await.unwrap();
}

async fn order_deliveries<T: Table>(table: &T, id: &str) -> Vec<Delivery> {
    stream_deliveries(table, &format!("acme#order#{id}")).await
}

/// Units sold today per SKU, as the sales report's rows say.
async fn units_sold<T: Table>(table: &T) -> BTreeMap<String, u64> {
    use crate::projection::sales::{Sales, SalesRow, day_partition as sales_day};
    let generation = active_generation::<Sales, _>(table).await.unwrap();
    let pk = partition(
        "acme",
        Sales::NAME,
        generation,
        &sales_day(&crate::views::day(now_ms())),
    );
    let mut units = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = table
            .query(Query {
                pk: &pk,
                prefix: "",
                after: after.as_deref(),
                limit: 100,
                descending: false,
            })
            .await
            .unwrap();
        for item in &page.items {
            let row: SalesRow = serde_json::from_slice(&item.data).unwrap();
            units.insert(row.sku, row.units);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return units,
        }
    }
}

pub async fn a_batch_of_large_orders_keeps_each_transaction_within_the_store<T: Table + Clone>(
    table: &T,
) {
    use crate::projection::sales::Sales;
    let mut batch = Vec::new();
    for n in 0..5 {
        let id = format!("big-{n}");
        order_of(table, &id, &format!("B{n}-"), commerce_domain::MAX_LINES).await;
        batch.extend(order_deliveries(table, &id).await);
    }
    let projector = Projector::<T, Sales>::new(table.clone());
    assert_eq!(projector.handle(&batch).await, vec![Verdict::Done; 5]);
    let units = units_sold(table).await;
    assert_eq!(units.len(), 5 * commerce_domain::MAX_LINES, "a row per SKU");
    assert!(units.values().all(|u| *u == 1));
}

pub async fn a_refused_event_holds_back_only_its_own_stream<T: Table + Clone>(table: &T) {
    use crate::projection::sales::Sales;
    order_of(table, "good", "G", 2).await;
    // An OrderPlaced the sales projection cannot read (as from an older schema).
    let bad = Envelope {
        id: uuid::Uuid::now_v7(),
        event_type: "OrderPlaced".to_owned(),
        schema_version: 1,
        tenant: "acme".to_owned(),
        aggregate_type: "order".to_owned(),
        aggregate_id: "bad".to_owned(),
        aggregate_version: 1,
        occurred_at: crate::views::timestamp(now_ms()),
        actor: "alice".to_owned(),
        correlation_id: "c".to_owned(),
        causation_id: None,
        data: serde_json::json!({"type": "OrderPlaced", "lines": "not lines"}),
    };
    // And one after the good order's first event, in its stream.
    let late = Envelope {
        id: uuid::Uuid::now_v7(),
        aggregate_id: "good".to_owned(),
        aggregate_version: 2,
        ..bad.clone()
    };
    for (pk, version, envelope) in [("acme#order#bad", 1, &bad), ("acme#order#good", 2, &late)] {
        table
            .transact(vec![crate::table::Write::Event {
                item: crate::table::Item {
                    pk: pk.into(),
                    sk: crate::keys::event_sk(version),
                    version,
                    data: serde_json::to_vec(envelope).unwrap(),
                    expires_at: None,
                    owner: None,
                    index: None,
                },
            }])
            .await
            .unwrap();
    }
    let mut batch = order_deliveries(table, "bad").await;
    batch.extend(order_deliveries(table, "good").await);
    let projector = Projector::<T, Sales>::new(table.clone());
    assert_eq!(
        projector.handle(&batch).await,
        vec![Verdict::Poison, Verdict::Done, Verdict::Poison],
        "an unreadable event stays behind with what follows it; the rest is applied"
    );
    let units = units_sold(table).await;
    assert_eq!(units.get("G0"), Some(&1));
    assert_eq!(units.get("G1"), Some(&1));
}

pub async fn an_audit_cursor_goes_on_however_late_the_next_page<T: Table + Clone>(table: &T) {
    use crate::contract::HandClock;
    use crate::shop::AuditQuery;
    use crate::{Caller, Role, SandboxPayments, Shop, ShopConfig};
    use commerce_domain::{CustomerId, TenantId};
    receipts(table, "night", 3).await;
    let clock = HandClock::new();
    let shop = Shop::new(
        table.clone(),
        SandboxPayments::default(),
        clock.clone(),
        ShopConfig::default(),
    );
    let ops = Caller {
        tenant: TenantId::parse("acme").unwrap(),
        subject: CustomerId::parse("ops-1").unwrap(),
        roles: vec![Role::Ops],
        correlation_id: "c".into(),
    };
    let page = |cursor: Option<String>| AuditQuery {
        cursor,
        limit: Some(1),
        ..AuditQuery::default()
    };
    let first = shop.audit(&ops, page(None)).await.unwrap();
    let mut versions = Vec::new();
    let mut cursor = None;
    loop {
        let got = shop.audit(&ops, page(cursor)).await.unwrap();
        versions.extend(got.items.iter().map(|e| e.aggregate_version));
        match got.next_cursor {
            // The reader comes back days later: the default week has moved on, the cursor has not.
            Some(next) => {
                clock.advance(8 * 86_400_000);
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(versions, vec![1, 2, 3]);
    // A cursor is bound to its filters too.
    let other = AuditQuery {
        cursor: first.next_cursor,
        filter: crate::audit::AuditFilter {
            actor: Some("someone".into()),
            ..Default::default()
        },
        ..AuditQuery::default()
    };
    assert!(matches!(
        shop.audit(&ops, other).await,
        Err(crate::AppError::BadRequest(_))
    ));
}
