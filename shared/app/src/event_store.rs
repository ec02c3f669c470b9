//! Event streams on the table port.
//!
//! A stream is one partition: an item per event (`event#000000000001`, …) and a `head` item that
//! holds the stream's version and the state those events fold to. Appending puts the new events
//! (each only if absent) and moves the head on only if it is still at the version the command
//! read, all in one transaction with whatever else the command writes. Versions are therefore
//! gapless, and a lost race fails whole instead of overwriting. The head spares every command a
//! full replay; [`rebuild`] replays to prove the head agrees with history.

use commerce_domain::Aggregate;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::keys::{EVENT_PREFIX, HEAD, event_sk};
use crate::table::{Condition, Expect, Item, Query, StoreError, Table, Write};

/// The version of [`Envelope`]'s own fields; bumped when they change shape, so a consumer can
/// tell an envelope it does not know from a corrupt one.
pub const SCHEMA_VERSION: u32 = 1;

/// An event as stored and as it leaves through the change feed: what happened (`data`, tagged
/// with its `type`), to which aggregate at which version, when, by whom and in answer to what.
/// It carries no personal data: `actor` is the pseudonymous JWT subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<E> {
    /// UUIDv7: unique, and ordered by creation time.
    pub id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub tenant: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Gapless per aggregate, from 1.
    pub aggregate_version: u64,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    /// The JWT subject of the caller, or `system:<component>`.
    pub actor: String,
    pub correlation_id: String,
    /// The event this one was recorded in answer to, if any.
    pub causation_id: Option<String>,
    pub data: E,
}

impl<E> Envelope<E> {
    /// The partition of the stream this event belongs to.
    pub fn stream(&self) -> String {
        crate::keys::stream(&self.tenant, &self.aggregate_type, &self.aggregate_id)
    }

    /// Unix milliseconds of `occurred_at`.
    pub fn occurred_at_ms(&self) -> Option<i64> {
        crate::views::parse_timestamp(&self.occurred_at)
    }
}

/// Who caused a change and in answer to what; every event it records carries this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The JWT subject of the caller, or `system:<component>`.
    pub actor: String,
    /// What ties together everything one request set off: its request id, carried through.
    pub correlation_id: String,
    /// The event this change answers, when a consumer or saga acts on one.
    pub causation_id: Option<String>,
}

impl Origin {
    /// A change the system makes on its own, such as the sweeper's.
    pub fn system(component: &str) -> Self {
        Self {
            actor: format!("system:{component}"),
            correlation_id: uuid::Uuid::now_v7().to_string(),
            causation_id: None,
        }
    }

    /// A change made by `component` in answer to `event`: same correlation, caused by it.
    pub fn answering<E>(component: &str, event: &Envelope<E>) -> Self {
        Self {
            actor: format!("system:{component}"),
            correlation_id: event.correlation_id.clone(),
            causation_id: Some(event.id.to_string()),
        }
    }
}

/// A stream as loaded: its version and current state. Version 0 means no events yet.
#[derive(Debug, Clone)]
pub struct Stream<A> {
    pub pk: String,
    pub version: u64,
    pub state: A,
    loaded_version: u64,
}

impl<A> Stream<A> {
    /// The stream as its commit left it: what was appended is now what the next commit
    /// builds on, without reading it back.
    pub fn committed(mut self) -> Self {
        self.loaded_version = self.version;
        self
    }
}

impl<A: Default> Stream<A> {
    /// A stream for an identity the server has just minted: there is nothing to read. Should
    /// the id be taken after all, the commit fails on the head's `Absent` condition.
    pub fn fresh(pk: String) -> Self {
        Self {
            pk,
            version: 0,
            state: A::default(),
            loaded_version: 0,
        }
    }
}

pub async fn load<A, T>(table: &T, pk: String) -> Result<Stream<A>, StoreError>
where
    A: Aggregate + DeserializeOwned,
    T: Table,
{
    match table.get(&pk, HEAD).await? {
        Some(head) => {
            let state = serde_json::from_slice(&head.data)
                .map_err(|e| StoreError::Failure(format!("corrupt head of {pk}: {e}")))?;
            Ok(Stream {
                pk,
                version: head.version,
                state,
                loaded_version: head.version,
            })
        }
        None => Ok(Stream {
            pk,
            version: 0,
            state: A::default(),
            loaded_version: 0,
        }),
    }
}

/// Every event of a stream, oldest first, read page by page.
pub async fn read_events<E, T>(table: &T, pk: &str) -> Result<Vec<Envelope<E>>, StoreError>
where
    E: DeserializeOwned,
    T: Table,
{
    read_events_after(table, pk, 0).await
}

/// A stream's events after version `after`, oldest first.
pub async fn read_events_after<E, T>(
    table: &T,
    pk: &str,
    after: u64,
) -> Result<Vec<Envelope<E>>, StoreError>
where
    E: DeserializeOwned,
    T: Table,
{
    let mut events = Vec::new();
    let mut from = (after > 0).then(|| event_sk(after));
    loop {
        let page = table
            .query(Query {
                pk,
                prefix: EVENT_PREFIX,
                after: from.as_deref(),
                limit: 500,
                descending: false,
            })
            .await?;
        for item in &page.items {
            events.push(
                serde_json::from_slice(&item.data)
                    .map_err(|e| StoreError::Failure(format!("corrupt event in {pk}: {e}")))?,
            );
        }
        match page.next {
            Some(next) => from = Some(next),
            None => return Ok(events),
        }
    }
}

/// The state folded from the stream's events alone, ignoring the head.
pub async fn rebuild<A, T>(table: &T, pk: &str) -> Result<(u64, A), StoreError>
where
    A: Aggregate,
    A::Event: DeserializeOwned,
    T: Table,
{
    let events: Vec<Envelope<A::Event>> = read_events(table, pk).await?;
    let version = events.last().map_or(0, |e| e.aggregate_version);
    Ok((version, A::rebuild(events.iter().map(|e| &e.data))))
}

/// An item that is not a stream yet must not be overwritten blindly, such as a customer's
/// open holds: a command reads it, changes it and writes it back only if nobody did meanwhile.
#[derive(Debug, Clone)]
pub struct Versioned<S> {
    pub pk: String,
    pub sk: String,
    /// 0 when the item does not exist yet.
    pub version: u64,
    pub state: S,
}

pub async fn load_versioned<S, T>(
    table: &T,
    pk: String,
    sk: &str,
) -> Result<Versioned<S>, StoreError>
where
    S: Default + DeserializeOwned,
    T: Table,
{
    let (version, state) = match table.get(&pk, sk).await? {
        Some(item) => (
            item.version,
            serde_json::from_slice(&item.data)
                .map_err(|e| StoreError::Failure(format!("corrupt item {pk}/{sk}: {e}")))?,
        ),
        None => (0, S::default()),
    };
    Ok(Versioned {
        pk,
        sk: sk.to_owned(),
        version,
        state,
    })
}

/// What a write in a [`Changes`] is for, so a failed condition can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A stream's head or a versioned item: failing means another command changed it first.
    StreamHead,
    Event,
    /// The idempotency key's record: failing means the key was used already.
    IdempotencyKey,
    ReadModel,
    /// An add to stock figures: failing means they moved since read, or (unread) that there
    /// was no room for it; either way, decide again.
    Stock,
}

/// Told of an unread stock move whose bound failed, by its partition key.
pub trait Shortfall: Send + Sync + std::fmt::Debug {
    fn short(&self, pk: &str);
}

/// The writes of one command, committed together or not at all.
#[derive(Debug)]
pub struct Changes {
    /// Stamped on every event appended.
    origin: Origin,
    writes: Vec<Write>,
    purposes: Vec<Purpose>,
    /// In-process turns this command holds until its transaction is done.
    locks: Vec<tokio::sync::OwnedMutexGuard<()>>,
    /// Unread stock moves, by write, and whom to tell if one has no room.
    unread: Vec<(usize, std::sync::Arc<dyn Shortfall>)>,
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("a stream changed since it was read")]
    StreamConflict,
    #[error("the idempotency key is already taken")]
    KeyTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Changes {
    pub fn new(origin: Origin) -> Self {
        Self {
            origin,
            writes: Vec::new(),
            purposes: Vec::new(),
            locks: Vec::new(),
            unread: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Applies `events` to the stream's state and queues them, each in its envelope, with the
    /// new head.
    pub fn append<A>(
        &mut self,
        stream: &mut Stream<A>,
        events: Vec<A::Event>,
        now_ms: i64,
    ) -> Result<(), StoreError>
    where
        A: Aggregate + Serialize,
        A::Event: Serialize,
    {
        if events.is_empty() {
            return Ok(());
        }
        let (tenant, aggregate_type, aggregate_id) = crate::keys::stream_parts(&stream.pk)
            .ok_or_else(|| StoreError::Failure(format!("{} is not a stream", stream.pk)))?;
        let occurred_at = crate::views::timestamp(now_ms);
        for event in stream.state.apply_all(events) {
            stream.version += 1;
            let data = serde_json::to_value(&event)
                .map_err(|e| StoreError::Failure(format!("cannot encode: {e}")))?;
            let event_type = data
                .get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let envelope = Envelope {
                id: uuid::Uuid::now_v7(),
                event_type,
                schema_version: SCHEMA_VERSION,
                tenant: tenant.to_owned(),
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                aggregate_version: stream.version,
                occurred_at: occurred_at.clone(),
                actor: self.origin.actor.clone(),
                correlation_id: self.origin.correlation_id.clone(),
                causation_id: self.origin.causation_id.clone(),
                data,
            };
            // Listed in the audit trail's day; a store that spreads over fewer partitions
            // narrows the key when it commits.
            let index = crate::audit::index_key(
                tenant,
                now_ms,
                &envelope.id.to_string(),
                crate::audit::DAY_SHARDS,
            );
            self.push(
                Purpose::Event,
                Write::Event {
                    item: Item {
                        pk: stream.pk.clone(),
                        sk: event_sk(stream.version),
                        version: stream.version,
                        data: to_json(&envelope)?,
                        expires_at: None,
                        owner: None,
                        index: Some(index),
                    },
                },
            );
        }
        let expected = match stream.loaded_version {
            0 => Condition::Absent,
            v => Condition::VersionIs(v),
        };
        // One head write per stream per commit: replace an earlier one if the stream was appended twice.
        let head = Item {
            pk: stream.pk.clone(),
            sk: HEAD.to_owned(),
            version: stream.version,
            data: to_json(&stream.state)?,
            expires_at: None,
            owner: None,
            index: None,
        };
        if let Some(at) = self
            .writes
            .iter()
            .position(|w| w.key() == (stream.pk.as_str(), HEAD))
        {
            if let Some(slot) = self.writes.get_mut(at) {
                *slot = Write::Put {
                    item: head,
                    condition: expected,
                };
            }
        } else {
            self.push(
                Purpose::StreamHead,
                Write::Put {
                    item: head,
                    condition: expected,
                },
            );
        }
        Ok(())
    }

    pub fn put_read_model(
        &mut self,
        pk: String,
        sk: String,
        data: &impl Serialize,
    ) -> Result<(), StoreError> {
        let item = Item {
            pk,
            sk,
            version: 0,
            data: to_json(data)?,
            expires_at: None,
            owner: None,
            index: None,
        };
        self.push(
            Purpose::ReadModel,
            Write::Put {
                item,
                condition: Condition::None,
            },
        );
        Ok(())
    }

    /// Writes the item back at the next version, if it is still at the version it was read at.
    pub fn put_versioned<S: Serialize>(&mut self, item: &Versioned<S>) -> Result<(), StoreError> {
        let condition = match item.version {
            0 => Condition::Absent,
            v => Condition::VersionIs(v),
        };
        self.push(
            Purpose::StreamHead,
            Write::Put {
                item: Item {
                    pk: item.pk.clone(),
                    sk: item.sk.clone(),
                    version: item.version + 1,
                    data: to_json(&item.state)?,
                    expires_at: None,
                    owner: None,
                    index: None,
                },
                condition,
            },
        );
        Ok(())
    }

    pub fn delete_read_model(&mut self, pk: String, sk: String) {
        self.push(
            Purpose::ReadModel,
            Write::Delete {
                pk,
                sk,
                condition: Condition::None,
            },
        );
    }

    pub fn push(&mut self, purpose: Purpose, write: Write) {
        self.writes.push(write);
        self.purposes.push(purpose);
    }

    /// Keeps `lock` until this command's commit is done (or the changes are dropped).
    pub fn keep_lock(&mut self, lock: tokio::sync::OwnedMutexGuard<()>) {
        self.locks.push(lock);
    }

    pub fn holds_locks(&self) -> bool {
        !self.locks.is_empty()
    }

    /// Adds to a stock item's figures, if `expect` holds when the store applies it.
    pub fn add_to(&mut self, pk: String, sk: String, add: Vec<(String, i64)>, expect: Vec<Expect>) {
        self.push(
            Purpose::Stock,
            Write::Add {
                pk,
                sk,
                add,
                expect,
            },
        );
    }

    /// An add decided without reading the figures: if its bound fails, `shortfall` is told.
    pub fn add_unread(
        &mut self,
        pk: String,
        sk: String,
        add: Vec<(String, i64)>,
        expect: Vec<Expect>,
        shortfall: std::sync::Arc<dyn Shortfall>,
    ) {
        self.unread.push((self.writes.len(), shortfall));
        self.add_to(pk, sk, add, expect);
    }

    /// The writes as they stand, for a test to commit them another way.
    #[cfg(feature = "contract")]
    pub fn clone_writes(&self) -> Vec<Write> {
        self.writes.clone()
    }

    /// Commits the writes, keeping the turns until the commit is done.
    pub async fn commit<T: Table>(self, table: &T) -> Result<(), CommitError> {
        let Self {
            mut writes,
            purposes,
            locks,
            unread,
            ..
        } = self;
        let shards = table.shards(crate::audit::DAY_SHARDS);
        if shards < crate::audit::DAY_SHARDS {
            for write in &mut writes {
                if let Write::Event { item } = write
                    && let Some(key) = &item.index
                {
                    item.index = Some(crate::audit::narrowed(key, shards));
                }
            }
        }
        // Kept apart: the writes go to the store.
        let unread: Vec<(usize, String, std::sync::Arc<dyn Shortfall>)> = unread
            .into_iter()
            .filter_map(|(at, to_tell)| Some((at, writes.get(at)?.key().0.to_owned(), to_tell)))
            .collect();
        let outcome = table.transact(writes).await;
        drop(locks);
        if let Err(StoreError::ConditionFailed { index }) = &outcome
            && let Some((_, pk, to_tell)) = unread.iter().find(|(at, ..)| at == index)
        {
            to_tell.short(pk);
        }
        match outcome {
            Ok(()) => Ok(()),
            Err(StoreError::ConditionFailed { index }) => match purposes.get(index) {
                Some(Purpose::IdempotencyKey) => Err(CommitError::KeyTaken),
                Some(Purpose::StreamHead | Purpose::Event | Purpose::Stock) => {
                    Err(CommitError::StreamConflict)
                }
                _ => Err(CommitError::Store(StoreError::ConditionFailed { index })),
            },
            Err(StoreError::Conflict) => Err(CommitError::StreamConflict),
            Err(other) => Err(CommitError::Store(other)),
        }
    }
}

pub(crate) fn to_json(value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Failure(format!("cannot encode: {e}")))
}
