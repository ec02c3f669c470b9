//! Read models fed from the bus and rebuilt from the event log.
//!
//! A [`Projection`] says what an event changes in its read model; the [`Projector`] does the
//! rest, once for every projection. For an ordered one (most) it applies an aggregate's events
//! strictly in version order (a gap is filled from the event log, never skipped; when the log
//! cannot be read, the message is retried later) and records how far each aggregate got (a
//! position item, written on its version) in the same transaction as the read model's own
//! writes. A redelivered or republished event is behind its position and changes nothing; two
//! deliveries of one event applied at once race on the position, and one of them fails.
//!
//! A read model lives in a generation. A rebuild ([`rebuild`]) fills a fresh one from the
//! event log while the live projector writes to both, then switches readers over in one
//! conditional write; every projector transaction checks the generation record, so none
//! lands in a generation it no longer serves.
//!
//! A projection that writes only items keyed by the event itself is not
//! ordered ([`Projection::ORDERED`]): a repeat or a late event writes the same items, so it
//! needs no positions, and its projector reads nothing but the generation record.

mod draft;
pub mod rebuild;
pub mod sales;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Clock;
use crate::bus::{Delivery, FilterPolicy, Subscription};
use crate::event_store::{Envelope, read_events_after};
use crate::table::{Condition, Item, StoreError, Table, Write};

pub use draft::Draft;

/// An event as projectors take it: the envelope read, its data left as the JSON it came as,
/// for the projection that wants it to parse (most do not).
pub type Event = Envelope<Box<serde_json::value::RawValue>>;
pub use rebuild::{Progress, rebuild};

/// The versions of the events given that a projection held back, by stream.
pub(crate) type Refused = BTreeMap<String, BTreeSet<u64>>;

/// Writes each event costs the projector itself, per generation: its position.
const OWN_WRITES: usize = 1;
/// Tries at a batch whose transactions lost a race.
const PLANS: usize = 8;

/// A read model built from events.
pub trait Projection: Send + Sync + 'static {
    /// Names its queue, its items and its generations.
    const NAME: &'static str;

    /// The most items one event may write: the projector keeps each transaction under the
    /// store's limit with it.
    const MAX_WRITES: usize;

    /// Whether an event's writes depend on the events before it in its aggregate. The
    /// projector then applies each aggregate's events once and in version order, keeping a
    /// position per aggregate. A projection whose writes are keyed by the event alone (an entry
    /// per event, written with [`Draft::put`]) says `false`: a repeat writes the same items and
    /// order does not matter, so the projector keeps no positions and reads nothing for it.
    /// Its draft refuses [`Draft::load`] and [`Draft::store`]: what it read could be applied
    /// twice. Its lag figures count redeliveries too, which it cannot tell apart.
    const ORDERED: bool = true;

    /// The events it is sent: its subscription's filter policy.
    fn filter() -> FilterPolicy;

    /// Adds to `draft` what `event` changes in the read model (in `draft`'s generation).
    fn apply<T: Table>(
        draft: &mut Draft<'_, T>,
        event: &Event,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The subscription a projection's queue is created with.
pub fn subscription<P: Projection>(max_receives: u32) -> Subscription {
    Subscription {
        queue: P::NAME.to_owned(),
        filter: P::filter(),
        max_receives,
    }
}

/// Which generation readers use, and which one a rebuild is filling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    pub active: u32,
    pub building: Option<u32>,
}

impl Default for Generations {
    fn default() -> Self {
        Self {
            active: 1,
            building: None,
        }
    }
}

impl Generations {
    fn targets(&self) -> Vec<u32> {
        std::iter::once(self.active).chain(self.building).collect()
    }
}

/// The generation record as read, with its version for the check every commit carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub generations: Generations,
    pub version: u64,
    /// Which copy of the record was read: the one the commits check.
    pub copy: u32,
}

/// Copies of each projection's generation record. Every projector commit checks one, and on
/// DynamoDB two transactions that touch one item conflict: with a single record, projectors
/// running at once would take turns. Each projector checks a copy of its own; a generation is
/// opened or switched in all copies in one transaction. Copy 0 is the record readers and
/// rebuilds read; a projector brings its copy in step with it before its first commit.
pub(crate) const GENERATION_COPIES: u32 = 8;

pub(crate) fn meta_key(name: &str, copy: u32) -> (String, String) {
    let pk = match copy {
        0 => format!("projection#{name}"),
        copy => format!("projection#{name}#{copy}"),
    };
    (pk, "generations".to_owned())
}

/// The generation record readers and rebuilds go by (copy 0).
pub(crate) async fn load_meta<T: Table>(table: &T, name: &str) -> Result<Meta, StoreError> {
    load_copy(table, name, 0).await.map(|meta| {
        meta.unwrap_or(Meta {
            generations: Generations::default(),
            version: 0,
            copy: 0,
        })
    })
}

/// Copy `copy` of the generation record, in step with the record: a copy that is missing (a
/// record from before copies, or a fresh deployment) or behind the record (a rebuild by an
/// older build) is written from the record first, on the record's version, so projectors
/// spread their checks from their first commit. When that keeps losing races, the record
/// itself.
async fn load_meta_copy<T: Table>(table: &T, name: &str, copy: u32) -> Result<Meta, StoreError> {
    for _ in 0..SEED_TRIES {
        let Some(record) = load_copy(table, name, 0).await? else {
            // A fresh deployment: the record itself comes first.
            let (pk, sk) = meta_key(name, 0);
            let put = Write::Put {
                item: Item {
                    pk,
                    sk,
                    version: 1,
                    data: crate::event_store::to_json(&Generations::default())?,
                    expires_at: None,
                    owner: None,
                    index: None,
                },
                condition: Condition::Absent,
            };
            match table.transact(vec![put]).await {
                Ok(()) | Err(StoreError::ConditionFailed { .. } | StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        };
        if copy == 0 {
            return Ok(record);
        }
        let found = load_copy(table, name, copy).await?;
        if let Some(meta) = found
            && meta.version == record.version
        {
            return Ok(meta);
        }
        let (pk, sk) = meta_key(name, copy);
        let (record_pk, record_sk) = meta_key(name, 0);
        let writes = vec![
            Write::Put {
                item: Item {
                    pk,
                    sk,
                    version: record.version,
                    data: crate::event_store::to_json(&record.generations)?,
                    expires_at: None,
                    owner: None,
                    index: None,
                },
                condition: match found {
                    Some(stale) => Condition::VersionIs(stale.version),
                    None => Condition::Absent,
                },
            },
            Write::Check {
                pk: record_pk,
                sk: record_sk,
                condition: Condition::VersionIs(record.version),
            },
        ];
        match table.transact(writes).await {
            Ok(()) => return Ok(Meta { copy, ..record }),
            // Projectors starting together meet on the record: stagger them.
            Err(StoreError::ConditionFailed { .. } | StoreError::Conflict) => {
                let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 20);
                tokio::time::sleep(std::time::Duration::from_millis(5 + jitter)).await;
            }
            Err(e) => return Err(e),
        }
    }
    load_meta(table, name).await
}

/// Tries at bringing a copy of the generation record in step before checking the record.
const SEED_TRIES: usize = 4;

async fn load_copy<T: Table>(table: &T, name: &str, copy: u32) -> Result<Option<Meta>, StoreError> {
    let (pk, sk) = meta_key(name, copy);
    match table.get(&pk, &sk).await? {
        Some(item) => Ok(Some(Meta {
            generations: serde_json::from_slice(&item.data)
                .map_err(|e| StoreError::Failure(format!("corrupt {pk}: {e}")))?,
            version: item.version,
            copy,
        })),
        None => Ok(None),
    }
}

/// The partition of a projection's item in one generation. Every key starts with the tenant.
pub fn partition(tenant: &str, name: &str, generation: u32, rest: &str) -> String {
    format!("{tenant}#{name}@{generation}#{rest}")
}

/// The generation readers of `P` use now.
pub async fn active_generation<P: Projection, T: Table>(table: &T) -> Result<u32, StoreError> {
    Ok(load_meta(table, P::NAME).await?.generations.active)
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Applied now or before: delete it.
    Done,
    /// Not applied yet (the store was busy, a race kept being lost): try again soon.
    Later,
    /// Not an event this projector can read: it goes on failing until it is dead-lettered.
    Poison,
}

/// Applies a projection's events from the bus; the same code serves a Lambda's SQS batch and
/// the local bus's receive loop.
#[derive(Debug)]
pub struct Projector<T, P> {
    table: T,
    /// What this projector last read or wrote of positions and generations, shared by its
    /// clones. Every commit's conditions check it, so a stale entry costs a lost race (and a
    /// fresh read), never a wrong write.
    known: Arc<Mutex<Known>>,
    /// The copy of the generation record this projector's commits check.
    copy: u32,
    _projection: std::marker::PhantomData<fn() -> P>,
}

impl<T: Clone, P> Clone for Projector<T, P> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            known: self.known.clone(),
            copy: self.copy,
            _projection: std::marker::PhantomData,
        }
    }
}

/// Positions remembered at most; past it the memory starts over.
const KNOWN_POSITIONS: usize = 100_000;

#[derive(Debug, Default)]
struct Known {
    meta: Option<Meta>,
    /// Position partition → (item version, version applied).
    positions: HashMap<String, (u64, u64)>,
}

impl<T: Table, P: Projection> Projector<T, P> {
    /// A projector on a copy of the generation record picked at random, so projectors
    /// running at once (one per Lambda instance) mostly check different items.
    pub fn new(table: T) -> Self {
        let copy = u32::from(uuid::Uuid::new_v4().as_bytes()[0]) % GENERATION_COPIES;
        Self::on_copy(table, copy)
    }

    pub(crate) fn on_copy(table: T, copy: u32) -> Self {
        Self {
            table,
            known: Arc::default(),
            copy: copy % GENERATION_COPIES,
            _projection: std::marker::PhantomData,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self) {
        let mut known = self.known();
        known.meta = None;
        known.positions.clear();
    }

    /// Applies what `deliveries` carry; one verdict per delivery, in order.
    pub async fn handle(&self, deliveries: &[Delivery]) -> Vec<Verdict> {
        let mut verdicts = vec![Verdict::Done; deliveries.len()];
        let mut streams: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for (n, delivery) in deliveries.iter().enumerate() {
            match serde_json::from_str::<Event>(&delivery.message.body) {
                Ok(event) => streams.entry(event.stream()).or_default().push(event),
                Err(e) => {
                    tracing::error!(projection = P::NAME, error = %e, "not an event envelope");
                    if let Some(v) = verdicts.get_mut(n) {
                        *v = Verdict::Poison;
                    }
                }
            }
        }
        // Boxed: the applying future is deep, and callers' futures stay small.
        match Box::pin(self.apply_streams(streams, None)).await {
            Ok(refused) if refused.is_empty() => {}
            Ok(refused) => {
                // Only what the projection held back stays behind.
                for (delivery, verdict) in deliveries.iter().zip(verdicts.iter_mut()) {
                    let event = serde_json::from_str::<Envelope<serde::de::IgnoredAny>>(
                        &delivery.message.body,
                    );
                    let held_back = event.is_ok_and(|e| {
                        refused
                            .get(&e.stream())
                            .is_some_and(|held| held.contains(&e.aggregate_version))
                    });
                    if held_back {
                        *verdict = Verdict::Poison;
                    }
                }
            }
            Err(e) => {
                let tenants: BTreeSet<&str> = streams_tenants(deliveries);
                for tenant in tenants {
                    crate::metrics::batch_failed(tenant, P::NAME);
                }
                tracing::warn!(projection = P::NAME, error = %e, "batch not applied; will retry");
                for verdict in &mut verdicts {
                    if *verdict == Verdict::Done {
                        *verdict = Verdict::Later;
                    }
                }
            }
        }
        verdicts
    }

    /// Brings every stream up to the highest version given for it (an unordered projection:
    /// applies the events given), in every generation served (or only in `only`, for a
    /// rebuild). Returns what it held back of the events given, by stream, when the projection
    /// refused one (a [`StoreError::Failure`] from [`Projection::apply`]): an ordered stream
    /// stops at the refused event, an unordered one holds back only that event; the other
    /// streams go on.
    pub(crate) async fn apply_streams(
        &self,
        mut streams: BTreeMap<String, Vec<Event>>,
        only: Option<u32>,
    ) -> Result<Refused, StoreError> {
        for events in streams.values_mut() {
            events.sort_by_key(|e| e.aggregate_version);
            events.dedup_by_key(|e| e.aggregate_version);
        }
        let mut last = StoreError::Busy("no plan tried".into());
        for plan in 0..PLANS {
            // The first plan trusts what this projector knows; after a lost race, it reads.
            let trusting = plan == 0;
            let cached = if trusting { self.known().meta } else { None };
            let meta = match cached {
                Some(meta) => meta,
                None => {
                    let meta = load_meta_copy(&self.table, P::NAME, self.copy).await?;
                    self.known().meta = Some(meta);
                    meta
                }
            };
            let generations = match only {
                Some(generation) => vec![generation],
                None => meta.generations.targets(),
            };
            match self
                .apply_once(&meta, &generations, &streams, trusting)
                .await
            {
                Ok(refused) => return Ok(refused),
                // A race lost (another projector, a rebuild, a generation switch): plan again.
                Err(StoreError::ConditionFailed { index }) => {
                    self.forget();
                    last = StoreError::Busy(format!("a race lost on write {index}"));
                }
                Err(e) => {
                    self.forget();
                    return Err(e);
                }
            }
        }
        Err(last)
    }

    async fn apply_once(
        &self,
        meta: &Meta,
        generations: &[u32],
        streams: &BTreeMap<String, Vec<Event>>,
        trusting: bool,
    ) -> Result<Refused, StoreError> {
        if !P::ORDERED {
            return self.apply_unordered(meta, generations, streams).await;
        }
        let mut chunk = Chunk::new(&self.table, P::NAME, P::ORDERED, meta);
        let mut refused = BTreeMap::new();
        let mut learned: Vec<(String, (u64, u64))> = Vec::new();
        // What one event may add, in every generation, plus the chunk's generation check.
        let per_event = generations.len() * (P::MAX_WRITES + OWN_WRITES);
        if per_event + 1 > self.table.max_transaction_writes() {
            return Err(StoreError::Failure(format!(
                "an event of {} may need {per_event} writes, more than a transaction takes",
                P::NAME
            )));
        }
        for (stream, given) in streams {
            let Some(newest) = given.last() else { continue };
            let mut positions = Vec::with_capacity(generations.len());
            for &generation in generations {
                let pk = Position::key(P::NAME, generation, newest);
                let known = self.known().positions.get(&pk).copied();
                let first = given.first().map_or(0, |e| e.aggregate_version);
                let position = match known {
                    Some((version, applied)) if trusting => Position::at(pk, version, applied),
                    // A stream seen from its first event most likely has no position yet: the
                    // write's Absent condition tells if it had.
                    None if trusting && first == 1 => Position::at(pk, 0, 0),
                    _ => Position::load(&self.table, pk).await?,
                };
                positions.push(position);
            }
            let from = positions.iter().map(|p| p.applied).min().unwrap_or(0);
            if from >= newest.aggregate_version {
                continue;
            }
            let events = self.events_between(stream, from, given).await?;
            for event in &events {
                if chunk.len() + per_event > self.table.max_transaction_writes() {
                    chunk.commit().await?;
                    for position in &mut positions {
                        position.committed();
                    }
                }
                let mark = chunk.mark(&positions);
                match self
                    .apply_event(&mut chunk, &mut positions, generations, meta, event)
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::Failure(why)) => {
                        tracing::error!(projection = P::NAME, %stream, version = event.aggregate_version, %why, "event refused; its stream stops here");
                        chunk.rollback(mark, &mut positions);
                        let from = event.aggregate_version;
                        let held = given.iter().map(|e| e.aggregate_version);
                        refused.insert(stream.clone(), held.filter(|v| *v >= from).collect());
                        break;
                    }
                    Err(other) => return Err(other),
                }
            }
            learned.extend(positions.iter().map(|p| {
                let version = p.version + u64::from(p.moved);
                (p.pk.clone(), (version, p.applied))
            }));
        }
        chunk.commit().await?;
        let mut known = self.known();
        if known.positions.len() + learned.len() > KNOWN_POSITIONS {
            known.positions.clear();
        }
        known.positions.extend(learned);
        Ok(refused)
    }

    /// Applies every event given, as it comes, in each generation: no positions to read or
    /// write, no gaps to fill (a missing event is applied when it is delivered).
    async fn apply_unordered(
        &self,
        meta: &Meta,
        generations: &[u32],
        streams: &BTreeMap<String, Vec<Event>>,
    ) -> Result<Refused, StoreError> {
        let mut chunk = Chunk::new(&self.table, P::NAME, P::ORDERED, meta);
        let mut refused = BTreeMap::new();
        let per_event = generations.len() * P::MAX_WRITES;
        if per_event + 1 > self.table.max_transaction_writes() {
            return Err(StoreError::Failure(format!(
                "an event of {} may need {per_event} writes, more than a transaction takes",
                P::NAME
            )));
        }
        for (stream, events) in streams {
            for event in events {
                if chunk.len() + per_event > self.table.max_transaction_writes() {
                    chunk.commit().await?;
                }
                let mark = chunk.mark(&[]);
                let mut applied = Ok(());
                for &generation in generations {
                    chunk.draft.generation = generation;
                    applied = P::apply(&mut chunk.draft, event).await;
                    if applied.is_err() {
                        break;
                    }
                }
                match applied {
                    Ok(()) if generations.contains(&meta.generations.active) => {
                        chunk.first_applied(event);
                    }
                    Ok(()) => {}
                    // Only this event stays behind: the others do not depend on it.
                    Err(StoreError::Failure(why)) => {
                        tracing::error!(projection = P::NAME, %stream, version = event.aggregate_version, %why, "event refused");
                        chunk.rollback(mark, &mut []);
                        let held: &mut BTreeSet<u64> = refused.entry(stream.clone()).or_default();
                        held.insert(event.aggregate_version);
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        chunk.commit().await?;
        Ok(refused)
    }

    /// Applies one event in each generation still before it.
    async fn apply_event(
        &self,
        chunk: &mut Chunk<'_, T>,
        positions: &mut [Position],
        generations: &[u32],
        meta: &Meta,
        event: &Event,
    ) -> Result<(), StoreError> {
        for (position, &generation) in positions.iter_mut().zip(generations) {
            if event.aggregate_version != position.applied + 1 {
                continue;
            }
            chunk.draft.generation = generation;
            P::apply(&mut chunk.draft, event).await?;
            if generation == meta.generations.active {
                chunk.first_applied(event);
            }
            position.applied = event.aggregate_version;
            chunk.moved(position);
        }
        Ok(())
    }

    /// The stream's events after version `from` up to the newest given, in order and without
    /// gaps: the given ones, and what is missing read from the event log.
    async fn events_between(
        &self,
        stream: &str,
        from: u64,
        given: &[Event],
    ) -> Result<Vec<Event>, StoreError> {
        let newest = given.last().map_or(0, |e| e.aggregate_version);
        let wanted: Vec<&Event> = given
            .iter()
            .filter(|e| e.aggregate_version > from)
            .collect();
        let contiguous = wanted
            .iter()
            .enumerate()
            .all(|(n, e)| e.aggregate_version == from + 1 + n as u64);
        if contiguous {
            return Ok(wanted.into_iter().cloned().collect());
        }
        let mut events =
            read_events_after::<Box<serde_json::value::RawValue>, _>(&self.table, stream, from)
                .await?;
        events.retain(|e| e.aggregate_version <= newest);
        if events.last().map(|e| e.aggregate_version) != Some(newest) {
            return Err(StoreError::Busy(format!(
                "{stream} does not show version {newest} yet"
            )));
        }
        Ok(events)
    }
}

/// How far one aggregate got in one generation of a projection.
#[derive(Debug)]
struct Position {
    pk: String,
    /// The position item's version as read (0: absent), for its write's condition.
    version: u64,
    applied: u64,
    /// Whether this chunk moved it.
    moved: bool,
}

impl Position {
    fn key(name: &str, generation: u32, event: &Event) -> String {
        partition(
            &event.tenant,
            name,
            generation,
            &format!("position#{}#{}", event.aggregate_type, event.aggregate_id),
        )
    }

    fn at(pk: String, version: u64, applied: u64) -> Self {
        Self {
            pk,
            version,
            applied,
            moved: false,
        }
    }

    async fn load<T: Table>(table: &T, pk: String) -> Result<Self, StoreError> {
        let (version, applied) = match table.get(&pk, POSITION).await? {
            Some(item) => {
                let applied: u64 = serde_json::from_slice::<Value>(&item.data)
                    .ok()
                    .and_then(|v| v.get("applied").and_then(Value::as_u64))
                    .ok_or_else(|| StoreError::Failure(format!("corrupt position {pk}")))?;
                (item.version, applied)
            }
            None => (0, 0),
        };
        Ok(Self {
            pk,
            version,
            applied,
            moved: false,
        })
    }

    fn committed(&mut self) {
        if self.moved {
            self.version += 1;
            self.moved = false;
        }
    }
}

const POSITION: &str = "position";

/// The writes of one projector transaction: the draft's, the positions moved, and a check that
/// the generations are still those it was planned for.
struct Chunk<'a, T> {
    draft: Draft<'a, T>,
    meta: Meta,
    positions: BTreeMap<String, Write>,
    /// Whose events this chunk applies to the readers' generation, and when they were recorded.
    recorded_at_ms: Vec<(String, i64)>,
}

impl<'a, T: Table> Chunk<'a, T> {
    fn new(table: &'a T, name: &'static str, ordered: bool, meta: &Meta) -> Self {
        Self {
            draft: Draft::new(table, name, ordered, meta.generations.active),
            meta: *meta,
            positions: BTreeMap::new(),
            recorded_at_ms: Vec::new(),
        }
    }

    fn first_applied(&mut self, event: &Event) {
        if let Some(at) = event.occurred_at_ms() {
            self.recorded_at_ms.push((event.tenant.clone(), at));
        }
    }

    fn moved(&mut self, position: &mut Position) {
        position.moved = true;
        let condition = match position.version {
            0 => Condition::Absent,
            v => Condition::VersionIs(v),
        };
        self.positions.insert(
            position.pk.clone(),
            Write::Put {
                item: Item {
                    pk: position.pk.clone(),
                    sk: POSITION.into(),
                    version: position.version + 1,
                    data: format!(r#"{{"applied":{}}}"#, position.applied).into_bytes(),
                    expires_at: None,
                    owner: None,
                    index: None,
                },
                condition,
            },
        );
    }

    fn len(&self) -> usize {
        self.draft.len() + self.positions.len() + 1
    }

    /// Where the chunk stands before an event, to undo that event alone.
    fn mark(&mut self, positions: &[Position]) -> ChunkMark {
        ChunkMark {
            draft: self.draft.mark(),
            // An event moves only its own stream's positions.
            positions: positions
                .iter()
                .map(|p| (p.pk.clone(), self.positions.get(&p.pk).cloned()))
                .collect(),
            recorded: self.recorded_at_ms.len(),
            applied: positions.iter().map(|p| (p.applied, p.moved)).collect(),
        }
    }

    fn rollback(&mut self, mark: ChunkMark, positions: &mut [Position]) {
        self.draft.rollback(mark.draft);
        for (pk, write) in mark.positions {
            match write {
                Some(write) => self.positions.insert(pk, write),
                None => self.positions.remove(&pk),
            };
        }
        self.recorded_at_ms.truncate(mark.recorded);
        for (position, (applied, moved)) in positions.iter_mut().zip(mark.applied) {
            position.applied = applied;
            position.moved = moved;
        }
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        if self.positions.is_empty() && self.draft.is_empty() {
            return Ok(());
        }
        let (pk, sk) = meta_key(self.draft.projection(), self.meta.copy);
        let mut writes = self.draft.take_writes();
        writes.extend(std::mem::take(&mut self.positions).into_values());
        writes.push(Write::Check {
            pk,
            sk,
            condition: match self.meta.version {
                0 => Condition::Absent,
                v => Condition::VersionIs(v),
            },
        });
        self.draft.table().transact(writes).await?;
        self.draft.committed();
        let now = crate::clock::SystemClock.now_ms();
        let mut by_tenant: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (tenant, at) in &self.recorded_at_ms {
            by_tenant.entry(tenant).or_default().push(*at);
        }
        for (tenant, recorded) in by_tenant {
            crate::metrics::applied(tenant, self.draft.projection(), &recorded, now);
        }
        self.recorded_at_ms.clear();
        Ok(())
    }
}

/// The tenants whose events a batch carries.
fn streams_tenants(deliveries: &[Delivery]) -> BTreeSet<&str> {
    deliveries
        .iter()
        .filter_map(|d| {
            d.message
                .attributes
                .get(crate::bus::TENANT)
                .map(String::as_str)
        })
        .collect()
}

/// A chunk as it was before an event.
struct ChunkMark {
    draft: draft::Mark,
    /// The stream's position writes as they were (`None`: not in the chunk).
    positions: Vec<(String, Option<Write>)>,
    recorded: usize,
    applied: Vec<(u64, bool)>,
}

/// Most messages one receive asks for on the local bus.
pub const LOCAL_BATCH: usize = 100;

/// One round of a projector on its queue: receive, apply, then delete what is done and bring
/// back soon what is not. A poison message is left to come back at its timeout until the
/// queue dead-letters it. Returns how many messages were received.
pub async fn consume_once<Q: crate::bus::Queue, T: Table, P: Projection>(
    queue: &Q,
    projector: &Projector<T, P>,
    visibility: std::time::Duration,
    wait: std::time::Duration,
) -> Result<usize, crate::bus::BusError> {
    let deliveries = queue.receive(LOCAL_BATCH, visibility, wait).await?;
    if deliveries.is_empty() {
        return Ok(0);
    }
    let verdicts = projector.handle(&deliveries).await;
    let mut done = Vec::new();
    for (delivery, verdict) in deliveries.iter().zip(&verdicts) {
        match verdict {
            Verdict::Done => done.push(delivery.receipt.clone()),
            Verdict::Later => {
                let backoff =
                    std::time::Duration::from_millis(100u64 << delivery.receive_count.min(6));
                queue.retry_after(&delivery.receipt, backoff).await?;
            }
            Verdict::Poison => {}
        }
    }
    queue.delete_all(&done).await?;
    Ok(deliveries.len())
}

/// Receives after which a projector's message moves to its dead-letter queue.
pub const MAX_RECEIVES: u32 = 5;

/// Every projection's subscription on the topic, as the local bus and the template set them up.
pub fn subscriptions() -> Vec<Subscription> {
    vec![subscription::<sales::Sales>(MAX_RECEIVES)]
}
