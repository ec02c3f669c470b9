//! The table port on one SQLite file: the embedded default.
//!
//! SQLite takes one writer at a time, so one thread owns the write connection and commits every
//! waiting transaction together: each caller's conditions are read before any of its writes (a
//! failed one writes nothing of it), and the batch shares one `COMMIT` and one fsync. Readers
//! use their own connections; WAL lets them read while the writer writes. The conditions are
//! the same as DynamoDB's, so the shop behaves identically on both.

mod bus;

pub use bus::{SqliteBus, SqliteQueue};

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use commerce_app::clock::now_seconds;
use commerce_app::outbox::{ChangeFeed, FeedEvent};
use commerce_app::table::{
    Condition, Expect, IndexKey, Item, Page, Query, StoreError, Table, Write, check_transaction,
    prefix_end,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

/// Prepared statements kept per connection: more than the table and the bus use, so none is
/// parsed again (rusqlite keeps 16 by default). Every `LIMIT` is bound as `+?N` for the same
/// reason: SQLite parses a statement with a bare `LIMIT ?N` again each time it runs.
const STATEMENTS: usize = 64;
/// Most writes one transaction may hold here (DynamoDB takes 100; commands keep to that).
/// Larger transactions hold the writer longer for everyone in the batch; 400 measured best.
const MAX_WRITES: usize = 400;
/// Most transactions committed together; bounds the latency one batch adds.
const MAX_BATCH: usize = 512;
/// Expired items deleted per writer job.
const PURGE_CHUNK: usize = 500;
/// How often the WAL is copied back into the database file, off the write path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Once the WAL holds this many bytes, the writer restarts it between two batches. Passive
/// checkpoints alone never restart a WAL that readers keep using, so under sustained load it
/// would grow without bound. Past [`WAL_HARD_BYTES`] the restart waits for readers, and the
/// WAL file is cut back to that size.
const WAL_BOUND_BYTES: i64 = 32 * 1024 * 1024;
/// The most the WAL may hold before the writer waits for its restart.
const WAL_HARD_BYTES: i64 = 48 * 1024 * 1024;
/// How long a connection waits for a lock another holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Above any key the shop writes: the upper bound of an unbounded range.
const TOP: &str = "\u{10FFFF}";

/// macOS only makes a write durable with `F_FULLFSYNC`; elsewhere `fsync` is enough.
#[cfg(target_os = "macos")]
const FULLFSYNC: &str = "PRAGMA fullfsync = ON; PRAGMA checkpoint_fullfsync = ON;";
#[cfg(not(target_os = "macos"))]
const FULLFSYNC: &str = "";

/// Bounds on what the store may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Largest the database file may grow; a write past it fails as on a full disk.
    pub max_size_bytes: Option<u64>,
}

/// What the writer thread is asked to do, and where to send the outcome (rows affected).
struct Job {
    work: Work,
    done: oneshot::Sender<Result<usize, StoreError>>,
}

/// Work for the writer thread beyond the table's own: it runs in its own savepoint of a batch,
/// at the batch's `now` (Unix seconds), and counts as one job.
pub(crate) type Task = Box<dyn Fn(&rusqlite::Savepoint<'_>) -> rusqlite::Result<usize> + Send>;

enum Work {
    /// A transaction's writes, with the routing of each event among them, in order.
    Writes(Vec<Write>, Vec<Route>),
    Task(Task),
    /// Forgets the change feed's rows up to and including this position.
    Acknowledge(i64),
    /// Deletes up to this many expired items.
    PurgeExpired(usize),
    /// Aborts the batch's transaction, as SQLite does on some disk-full and I/O errors.
    #[cfg(test)]
    AbortTransaction,
}

/// How an event's message is routed on the local bus: its id and attributes (JSON), as its
/// feed row keeps them. An item that is no envelope still gets a message (its key for an id, no
/// attributes): it fails its consumers and ends in their dead-letter queues, in plain sight,
/// instead of stopping the publisher.
#[derive(Debug, Clone)]
struct Route {
    message_id: String,
    attributes: String,
}

impl Route {
    fn of(item: &Item) -> Self {
        let routing = commerce_app::bus::Routing::of_event(&item.data)
            .ok()
            .and_then(|r| serde_json::to_string(&r.attributes).ok().map(|a| (r.id, a)));
        match routing {
            Some((message_id, attributes)) => Self {
                message_id,
                attributes,
            },
            None => Self {
                message_id: format!("{}/{}", item.pk, item.sk),
                attributes: "{}".into(),
            },
        }
    }
}

#[derive(Clone)]
pub struct SqliteTable {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Woken after a batch that recorded events commits, for the feed's publisher.
    events_committed: Arc<tokio::sync::Notify>,
    /// Dropping the last sender lets the writer thread finish what it has and stop.
    jobs: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTable")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteTable {
    /// Opens (creating if needed) the table in the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Limits::default())
    }

    /// Opens the table with explicit limits (a size cap stands in for a full disk in tests).
    pub fn open_with(path: impl AsRef<Path>, limits: Limits) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let writer = Connection::open(&path).map_err(failure)?;
        writer.set_prepared_statement_cache_capacity(STATEMENTS);
        let wal_limit = WAL_HARD_BYTES;
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA mmap_size = 1073741824;
                 PRAGMA wal_autocheckpoint = 0;
                 PRAGMA journal_size_limit = {wal_limit};
                 {FULLFSYNC}
                 CREATE TABLE IF NOT EXISTS items (
                     pk TEXT NOT NULL,
                     sk TEXT NOT NULL,
                     version INTEGER NOT NULL,
                     data BLOB NOT NULL,
                     expires_at INTEGER,
                     owner TEXT,
                     ipk TEXT,
                     isk TEXT,
                     PRIMARY KEY (pk, sk)
                 );
                 CREATE INDEX IF NOT EXISTS items_expiry ON items (expires_at) WHERE expires_at IS NOT NULL;
                 -- The change feed: one row per event item, written in the event's own transaction and
                 -- deleted once acknowledged. AUTOINCREMENT: a position is never handed out twice.
                 CREATE TABLE IF NOT EXISTS feed (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     pk TEXT NOT NULL,
                     sk TEXT NOT NULL,
                     -- The event's message id and routing attributes (JSON), read before the
                     -- writer takes the transaction, so publishing parses nothing.
                     message_id TEXT,
                     attributes TEXT
                 );"
            ))
            .map_err(failure)?;
        add_owner_column(&writer)?;
        add_index_columns(&writer)?;
        add_feed_routing(&writer)?;
        if let Some(bytes) = limits.max_size_bytes {
            let page_size: i64 = writer
                .query_row("PRAGMA page_size", [], |row| row.get(0))
                .map_err(failure)?;
            let pages = i64::try_from(bytes).unwrap_or(i64::MAX) / page_size.max(1);
            writer
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(failure)?;
        }
        let wal = Writer::new(writer)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let events_committed = Arc::new(tokio::sync::Notify::new());
        let wake = events_committed.clone();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(wal, queue, &wake))
            .map_err(|e| StoreError::Failure(format!("cannot start the writer thread: {e}")))?;
        let checkpointer = Connection::open(&path).map_err(failure)?;
        configure_reader(&checkpointer)?;
        let inner = Arc::new(Inner {
            path,
            events_committed,
            jobs,
            readers: Mutex::new(Vec::new()),
        });
        let alive = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, alive))
            .map_err(|e| StoreError::Failure(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self { inner })
    }

    /// Deletes items whose time is up (they are already invisible); returns how many.
    /// Runs on the writer thread like any write, in bounded chunks, so it never holds the
    /// write lock for long or competes with the writer for it.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let mut purged = 0;
        loop {
            let n = self.submit(Work::PurgeExpired(PURGE_CHUNK)).await?;
            purged += n;
            if n < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }

    /// Resolves once a commit recorded events after this call (or spuriously): the feed's
    /// publisher waits on it instead of polling.
    pub async fn events_committed(&self) {
        self.inner.events_committed.notified().await;
    }

    /// Runs `task` on the writer thread inside a batch's transaction, in its own savepoint.
    pub(crate) async fn run_task(&self, task: Task) -> Result<usize, StoreError> {
        self.submit(Work::Task(task)).await
    }

    /// Runs `f` on a pooled read connection.
    pub(crate) fn read_with<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        self.with_reader(f)
    }

    async fn submit(&self, work: Work) -> Result<usize, StoreError> {
        self.send(work).await
    }

    /// Sends the job now, before the returned future is first polled: jobs reach the writer in
    /// the order of these calls.
    fn send(
        &self,
        work: Work,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send + 'static + use<> {
        let (done, result) = oneshot::channel();
        let sent = self
            .inner
            .jobs
            .send(Job { work, done })
            .map_err(|_| StoreError::Failure("the writer thread has stopped".into()));
        async move {
            sent?;
            result
                .await
                .map_err(|_| StoreError::Failure("the writer thread dropped a job".into()))?
        }
    }

    /// A transaction's writes, checked and queued now; the future waits for the commit.
    fn queue_writes(
        &self,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static + use<> {
        let queued = check_transaction(&writes, MAX_WRITES).map(|()| {
            // Read here, off the writer thread: the feed row carries it to the bus.
            let routes = writes
                .iter()
                .filter_map(|w| match w {
                    Write::Event { item } => Some(Route::of(item)),
                    _ => None,
                })
                .collect();
            self.send(Work::Writes(writes, routes))
        });
        async move { queued?.await.map(|_| ()) }
    }

    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let pooled = self
            .inner
            .readers
            .lock()
            .map_err(|_| StoreError::Failure("reader pool poisoned".into()))?
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(failure)?;
                configure_reader(&conn)?;
                conn
            }
        };
        let result = f(&conn).map_err(failure);
        if let Ok(mut idle) = self.inner.readers.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        result
    }
}

/// How a range of one partition is read: in the table's key, or in the secondary index's.
struct Range {
    ascending: &'static str,
    descending: &'static str,
    /// The sort key a page resumes after.
    sort_key: fn(&Item) -> Option<&str>,
}

const BY_KEY: Range = Range {
    ascending: "SELECT pk, sk, version, data, expires_at, owner, ipk, isk FROM items WHERE pk = ?1 AND sk >= ?2 AND sk < ?3 AND sk > ?4 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY sk ASC LIMIT +?6",
    descending: "SELECT pk, sk, version, data, expires_at, owner, ipk, isk FROM items WHERE pk = ?1 AND sk >= ?2 AND sk < ?3 AND sk < ?4 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY sk DESC LIMIT +?6",
    sort_key: |item| Some(&item.sk),
};

const BY_INDEX: Range = Range {
    ascending: "SELECT pk, sk, version, data, expires_at, owner, ipk, isk FROM items WHERE ipk = ?1 AND isk >= ?2 AND isk < ?3 AND isk > ?4 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY isk ASC LIMIT +?6",
    descending: "SELECT pk, sk, version, data, expires_at, owner, ipk, isk FROM items WHERE ipk = ?1 AND isk >= ?2 AND isk < ?3 AND isk < ?4 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY isk DESC LIMIT +?6",
    sort_key: |item| item.index.as_ref().map(|key| key.sk.as_str()),
};

impl SqliteTable {
    /// One page of a partition, in the table's key or the index's ([`Range`]).
    fn range(&self, q: Query<'_>, range: &Range) -> Result<Page, StoreError> {
        let upper = if q.prefix.is_empty() {
            TOP.to_owned()
        } else {
            prefix_end(q.prefix).unwrap_or_else(|| TOP.to_owned())
        };
        let fetch = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut items = self.with_reader(|c| {
            let (sql, after) = if q.descending {
                (range.descending, q.after.unwrap_or(&upper))
            } else {
                (range.ascending, q.after.unwrap_or(""))
            };
            c.prepare_cached(sql)?
                .query_map(
                    params![q.pk, q.prefix, upper, after, now_seconds(), fetch],
                    row_to_item,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let next = if items.len() > q.limit {
            items.truncate(q.limit);
            items.last().and_then(range.sort_key).map(str::to_owned)
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

/// Events in commit order, as the in-process publisher tails them. A position is the feed
/// row's sequence number; acknowledged rows are deleted, so what is left is what is unpublished.
impl ChangeFeed for SqliteTable {
    async fn read(&self, after: Option<&str>, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let after: i64 = match after {
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Failure(format!("bad feed position {text}")))?,
            None => 0,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(|c| {
            c.prepare_cached(
                "SELECT f.seq, i.data FROM feed f JOIN items i ON i.pk = f.pk AND i.sk = f.sk
                 WHERE f.seq > ?1 ORDER BY f.seq LIMIT +?2",
            )?
            .query_map(params![after, limit], |row| {
                Ok(FeedEvent {
                    position: row.get::<_, i64>(0)?.to_string(),
                    envelope: row.get(1)?,
                })
            })?
            .collect()
        })
    }

    async fn acknowledge(&self, through: &str) -> Result<(), StoreError> {
        let through = through
            .parse()
            .map_err(|_| StoreError::Failure(format!("bad feed position {through}")))?;
        self.submit(Work::Acknowledge(through)).await.map(|_| ())
    }
}

impl Table for SqliteTable {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.with_reader(|c| {
            c.prepare_cached("SELECT pk, sk, version, data, expires_at, owner, ipk, isk FROM items WHERE pk = ?1 AND sk = ?2 AND (expires_at IS NULL OR expires_at > ?3)")?
                .query_row(params![pk, sk, now_seconds()], row_to_item)
                .optional()
        })
    }

    async fn query(&self, q: Query<'_>) -> Result<Page, StoreError> {
        self.range(q, &BY_KEY)
    }

    async fn query_index(&self, q: Query<'_>) -> Result<Page, StoreError> {
        self.range(q, &BY_INDEX)
    }

    async fn list_in_index(&self, pk: &str, sk: &str, key: IndexKey) -> Result<bool, StoreError> {
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        let listed = self
            .run_task(Box::new(move |sp| {
                sp.prepare_cached(
                    "UPDATE items SET ipk = ?3, isk = ?4 WHERE pk = ?1 AND sk = ?2 AND ipk IS NULL",
                )?
                .execute(params![pk, sk, key.pk, key.sk])
            }))
            .await?;
        Ok(listed > 0)
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.queue_writes(writes).await
    }

    /// One partition: a B-tree has no per-partition limit (see [`Table::shards`]).
    fn shards(&self, _wanted: u32) -> u32 {
        1
    }

    async fn scan_events(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let (after_pk, after_sk) = match after {
            Some(cursor) => cursor
                .split_once('\u{1f}')
                .map(|(pk, sk)| (pk.to_owned(), sk.to_owned()))
                .ok_or_else(|| StoreError::Failure(format!("bad scan cursor {cursor}")))?,
            None => (String::new(), String::new()),
        };
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut items = self.with_reader(|c| {
            c.prepare_cached(
                "SELECT i.pk, i.sk, i.version, i.data, i.expires_at, i.owner, i.ipk, i.isk FROM items i
                 WHERE (i.pk, i.sk) > (?1, ?2) AND i.sk >= 'event#' AND i.sk < 'event$'
                 ORDER BY i.pk, i.sk LIMIT +?3",
            )?
            .query_map(params![after_pk, after_sk, fetch], row_to_item)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|i| format!("{}\u{1f}{}", i.pk, i.sk))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn estimate_events(&self) -> Result<Option<u64>, StoreError> {
        self.with_reader(|c| {
            c.query_row(
                "SELECT count(*) FROM items WHERE sk >= 'event#' AND sk < 'event$'",
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .map(|n| u64::try_from(n).ok())
    }

    /// One job in the writer's batch, however many writes: a large one costs little more.
    fn max_transaction_writes(&self) -> usize {
        MAX_WRITES
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_reader(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())))
    }
}

/// Files from before claims had owners gain the column.
fn add_owner_column(conn: &Connection) -> Result<(), StoreError> {
    let has_owner: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('items') WHERE name = 'owner'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(failure)?;
    if !has_owner {
        conn.execute_batch("ALTER TABLE items ADD COLUMN owner TEXT")
            .map_err(failure)?;
    }
    Ok(())
}

/// The secondary index ([`Table::query_index`]): two columns, set on few items, and a
/// partial index over the items that have them. A file made before them gets them, and every
/// event stored without a key (written before the upgrade, or since by an older build) gets
/// the key this build gives it, its audit trail's day. The first open after the upgrade builds
/// the two indexes in one transaction (a scan of the table); after that each step is a short
/// transaction of its own, so an interrupted upgrade resumes at the next open and a process
/// opening the file beside it waits one step; the second partial index finds what is left.
fn add_index_columns(conn: &Connection) -> Result<(), StoreError> {
    /// Events keyed per step: memory and the lock held stay bounded however many there are.
    const CHUNK: i64 = 1000;
    /// Steps between passive checkpoints, which let the WAL start over (no writer thread
    /// bounds it yet) without waiting on another process's readers or holding up its writer.
    const STEPS_PER_CHECKPOINT: u32 = 4;
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(failure)?;
    let has_index: i64 = tx
        .query_row(
            "SELECT count(*) FROM pragma_table_info('items') WHERE name = 'ipk'",
            [],
            |row| row.get(0),
        )
        .map_err(failure)?;
    if has_index == 0 {
        tx.execute_batch(
            "ALTER TABLE items ADD COLUMN ipk TEXT; ALTER TABLE items ADD COLUMN isk TEXT;",
        )
        .map_err(failure)?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS items_index ON items (ipk, isk) WHERE ipk IS NOT NULL;
         CREATE INDEX IF NOT EXISTS items_unindexed_events ON items (sk)
             WHERE ipk IS NULL AND sk >= 'event#' AND sk < 'event$';",
    )
    .map_err(failure)?;
    tx.commit().map_err(failure)?;
    for step in 1u32.. {
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(failure)?;
        let events: Vec<(i64, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT rowid, data FROM items INDEXED BY items_unindexed_events
                 WHERE ipk IS NULL AND sk >= 'event#' AND sk < 'event$' LIMIT +?1",
            )
            .and_then(|mut q| {
                q.query_map(params![CHUNK], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .map_err(failure)?;
        if events.is_empty() {
            return tx.commit().map_err(failure);
        }
        for (rowid, data) in events {
            // An event that is no envelope with a time goes under the empty partition, which no
            // reader asks for, so it is not looked at again.
            let key = serde_json::from_slice::<
                commerce_app::event_store::Envelope<serde_json::Value>,
            >(&data)
            .ok()
            .and_then(|envelope| {
                let at = envelope.occurred_at_ms()?;
                Some(commerce_app::audit::index_key(
                    &envelope.tenant,
                    at,
                    &envelope.id.to_string(),
                    1,
                ))
            })
            .unwrap_or_else(|| IndexKey {
                pk: String::new(),
                sk: format!("{rowid}"),
            });
            tx.prepare_cached("UPDATE items SET ipk = ?2, isk = ?3 WHERE rowid = ?1")
                .and_then(|mut update| update.execute(params![rowid, key.pk, key.sk]))
                .map_err(failure)?;
        }
        tx.commit().map_err(failure)?;
        if step % STEPS_PER_CHECKPOINT == 0 {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(failure)?;
        }
    }
    Ok(())
}

/// Feed rows carry their event's message id and routing attributes (`NULL` in rows written
/// before they did: those are filled in here, from their envelopes). One transaction, so an
/// interrupted upgrade leaves the old schema, and a process opening the file beside it waits.
fn add_feed_routing(conn: &Connection) -> Result<(), StoreError> {
    /// Legacy rows routed per step, so memory stays bounded however long the feed grew.
    const CHUNK: i64 = 1000;
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(failure)?;
    for column in ["message_id", "attributes"] {
        let has: i64 = tx
            .query_row(
                "SELECT count(*) FROM pragma_table_info('feed') WHERE name = ?1",
                [column],
                |row| row.get(0),
            )
            .map_err(failure)?;
        if has == 0 {
            tx.execute_batch(&format!("ALTER TABLE feed ADD COLUMN {column} TEXT"))
                .map_err(failure)?;
        }
    }
    let mut after = 0i64;
    loop {
        let legacy: Vec<(i64, Vec<u8>, String, String)> = tx
            .prepare_cached(
                "SELECT f.seq, coalesce(i.data, x''), f.pk, f.sk FROM feed f
                 LEFT JOIN items i ON i.pk = f.pk AND i.sk = f.sk
                 WHERE f.seq > ?1 AND (f.message_id IS NULL OR f.attributes IS NULL)
                 ORDER BY f.seq LIMIT +?2",
            )
            .and_then(|mut q| {
                q.query_map(params![after, CHUNK], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect()
            })
            .map_err(failure)?;
        let Some(&(last, ..)) = legacy.last() else {
            break;
        };
        for (seq, data, pk, sk) in legacy {
            let route = Route::of(&Item {
                pk,
                sk,
                version: 0,
                data,
                expires_at: None,
                owner: None,
                index: None,
            });
            tx.prepare_cached("UPDATE feed SET message_id = ?2, attributes = ?3 WHERE seq = ?1")
                .and_then(|mut update| {
                    update.execute(params![seq, route.message_id, route.attributes])
                })
                .map_err(failure)?;
        }
        after = last;
    }
    tx.commit().map_err(failure)
}

fn configure_reader(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(failure)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    // No memory map for readers: a read transaction that starts after any commit unmaps the
    // whole file, and under load every one does, so each paid an unmap and a page fault per
    // page it touched. Plain reads measured 8–10 % more orders per second.
    conn.execute_batch("PRAGMA mmap_size = 0;").map_err(failure)
}

/// Copies the WAL back into the database file off the write path, so commits never wait for a
/// checkpoint (the writer's own automatic checkpoints are off). Stops when the table is dropped.
fn checkpoint_loop(conn: Connection, table: std::sync::Weak<Inner>) {
    loop {
        thread::sleep(CHECKPOINT_EVERY);
        if table.strong_count() == 0 {
            return;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed; will retry");
        }
    }
}

fn row_to_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        pk: row.get(0)?,
        sk: row.get(1)?,
        version: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        data: row.get(3)?,
        expires_at: row.get(4)?,
        owner: row.get(5)?,
        index: match (row.get(6)?, row.get(7)?) {
            (Some(pk), Some(sk)) => Some(IndexKey { pk, sk }),
            _ => None,
        },
    })
}

fn failure(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Busy(e.to_string())
        }
        _ => StoreError::Failure(e.to_string()),
    }
}

/// The write connection and what it knows of its WAL.
struct Writer {
    conn: Connection,
    /// Frames in the WAL after the last commit, as SQLite's WAL hook reports them.
    wal_frames: Arc<std::sync::atomic::AtomicI64>,
    page_size: i64,
}

impl Writer {
    fn new(mut conn: Connection) -> Result<Self, StoreError> {
        let wal_frames = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let seen = wal_frames.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: i32| {
            seen.store(i64::from(frames), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }))
        .map_err(failure)?;
        let page_size = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(failure)?;
        Ok(Self {
            conn,
            wal_frames,
            page_size,
        })
    }

    /// Restarts the WAL once it passes its bound, so the next commits write from its start.
    /// A restart must wait for readers still using old frames; waiting would stall every
    /// commit queued behind the writer, so it is first tried without waiting, after each batch,
    /// until it finds a moment with no such reader. Only past the hard bound does it wait.
    fn bound_wal(&mut self) {
        let bytes = self
            .wal_frames
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_mul(self.page_size);
        if bytes < WAL_BOUND_BYTES {
            return;
        }
        let must = bytes >= WAL_HARD_BYTES;
        let wait = if must { BUSY_TIMEOUT } else { Duration::ZERO };
        if let Err(e) = self.conn.busy_timeout(wait) {
            tracing::warn!(error = %e, "cannot set the busy timeout");
            return;
        }
        let restarted = self
            .conn
            .wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::RESTART);
        if let Err(e) = self.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %e, "cannot restore the busy timeout");
        }
        match restarted {
            Ok(_) => self
                .wal_frames
                .store(0, std::sync::atomic::Ordering::Relaxed),
            Err(e) if must => {
                tracing::warn!(error = %e, wal_bytes = bytes, "WAL restart failed; will retry")
            }
            // Readers still on old frames: try again after the next batch.
            Err(_) => {}
        }
    }
}

/// The writer thread: takes every waiting transaction and commits them together.
fn write_loop(
    mut writer: Writer,
    queue: mpsc::Receiver<Job>,
    events_committed: &tokio::sync::Notify,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut writer.conn, &batch);
        let recorded_events = batch.iter().zip(&results).any(|(job, result)| {
            result.is_ok()
                && matches!(&job.work, Work::Writes(w, _) if w.iter().any(|w| matches!(w, Write::Event { .. })))
        });
        if recorded_events {
            events_committed.notify_one();
        }
        for (job, result) in batch.into_iter().zip(results) {
            // The caller may have gone away (request cancelled); its writes stand either way.
            let _ = job.done.send(result);
        }
        writer.bound_wal();
    }
}

/// Runs every job inside one transaction and commits them together. A failed condition
/// writes nothing of its job. An error that leaves part of a job written, or aborts the whole
/// transaction (SQLITE_FULL, an I/O error), fails every job of the batch, those already run
/// included, and the rest are not run: they would otherwise run outside any transaction.
fn commit_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<usize, StoreError>> {
    let everyone = |why: &str| -> Vec<Result<usize, StoreError>> {
        batch
            .iter()
            .map(|_| Err(StoreError::Failure(format!("batch not committed: {why}"))))
            .collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return everyone(&e.to_string()),
    };
    let now = now_seconds();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let why = match run_job(&mut tx, &job.work, now) {
            Ok(n) => {
                results.push(Ok(n));
                continue;
            }
            Err(Failed::Job(e)) if !tx.is_autocommit() => {
                results.push(Err(e));
                continue;
            }
            Err(Failed::Job(e)) => e.to_string(),
            Err(Failed::Batch(why)) => why,
        };
        tracing::error!(error = %why, jobs = batch.len(), "a batch transaction was rolled back");
        return everyone(&why);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => everyone(&e.to_string()),
    }
}

/// How a job failed: alone (nothing of it written), or leaving the batch's transaction unusable.
enum Failed {
    Job(StoreError),
    Batch(String),
}

fn run_job(tx: &mut rusqlite::Transaction<'_>, work: &Work, now: i64) -> Result<usize, Failed> {
    let alone = |e: rusqlite::Error| Failed::Job(failure(e));
    match work {
        // No savepoint: conditions are all read before anything is written, so a failed one
        // needs nothing undone, and the batch skips copying every page it touches aside.
        Work::Writes(writes, routes) => match unmet_condition(tx, writes, now) {
            Ok(Some(index)) => Err(Failed::Job(StoreError::ConditionFailed { index })),
            Ok(None) => apply(tx, writes, routes)
                .map(|()| 0)
                .map_err(|e| Failed::Batch(e.to_string())),
            Err(e) => Err(alone(e)),
        },
        Work::Task(task) => {
            let sp = tx.savepoint().map_err(alone)?;
            task(&sp)
                .and_then(|n| sp.commit().map(|()| n))
                .map_err(alone)
        }
        Work::Acknowledge(through) => {
            let sp = tx.savepoint().map_err(alone)?;
            sp.prepare_cached("DELETE FROM feed WHERE seq <= ?1")
                .and_then(|mut delete| delete.execute(params![through]))
                .and_then(|n| sp.commit().map(|()| n))
                .map_err(alone)
        }
        Work::PurgeExpired(limit) => {
            let sp = tx.savepoint().map_err(alone)?;
            purge(&sp, *limit, now)
                .and_then(|n| sp.commit().map(|()| n))
                .map_err(alone)
        }
        #[cfg(test)]
        Work::AbortTransaction => {
            // What SQLite does on some SQLITE_FULL or I/O errors: the whole transaction is gone.
            tx.execute_batch("ROLLBACK").map_err(alone)?;
            Err(Failed::Job(StoreError::Failure(
                "transaction aborted".into(),
            )))
        }
    }
}

/// The first write whose condition does not hold, read before anything is written. The
/// writer is the only one writing and a transaction never writes one key twice, so what it
/// reads here holds until it writes.
fn unmet_condition(
    tx: &rusqlite::Transaction<'_>,
    writes: &[Write],
    now: i64,
) -> rusqlite::Result<Option<usize>> {
    for (index, write) in writes.iter().enumerate() {
        let holds = match write {
            Write::Put { item, condition } => check(tx, &item.pk, &item.sk, condition, now)?,
            Write::Delete { pk, sk, condition } | Write::Check { pk, sk, condition } => {
                check(tx, pk, sk, condition, now)?
            }
            Write::Event { item } => check(tx, &item.pk, &item.sk, &Condition::Absent, now)?,
            Write::Add { pk, sk, expect, .. } => match numbers(tx, pk, sk, now)? {
                Numbers::Absent => expect.contains(&Expect::Absent),
                // Data that is not numbers is never added to, whatever the bounds.
                Numbers::Other => false,
                Numbers::Found(found) => expect.iter().all(|bound| match bound {
                    Expect::Absent => false,
                    Expect::AtLeast(name, least) => {
                        number(&found, name).is_some_and(|n| n >= *least)
                    }
                    Expect::Is(name, value) => number(&found, name) == Some(*value),
                }),
            },
        };
        if !holds {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// Writes a transaction whose conditions all hold. An event's item goes to the change feed too.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    writes: &[Write],
    routes: &[Route],
) -> rusqlite::Result<()> {
    let mut routes = routes.iter();
    for write in writes {
        match write {
            Write::Put { item, .. } => put(tx, item)?,
            Write::Delete { pk, sk, .. } => {
                tx.prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")?
                    .execute(params![pk, sk])?;
            }
            Write::Check { .. } => {}
            Write::Add { pk, sk, add, .. } => {
                // Its bounds held: the numbers are there, or it is to be created.
                let mut numbers = match numbers(tx, pk, sk, now_seconds())? {
                    Numbers::Found(found) => found,
                    Numbers::Absent | Numbers::Other => serde_json::Map::new(),
                };
                for (name, delta) in add {
                    let sum = number(&numbers, name).unwrap_or(0).saturating_add(*delta);
                    numbers.insert(name.clone(), sum.into());
                }
                let data = serde_json::to_vec(&numbers)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                tx.prepare_cached(
                    "INSERT INTO items (pk, sk, version, data) VALUES (?1, ?2, 0, ?3)
                     ON CONFLICT (pk, sk) DO UPDATE SET data = excluded.data, expires_at = NULL, owner = NULL, ipk = NULL, isk = NULL",
                )?
                .execute(params![pk, sk, data])?;
            }
            Write::Event { item } => {
                let route = routes.next();
                put(tx, item)?;
                tx.prepare_cached(
                    "INSERT INTO feed (pk, sk, message_id, attributes) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    item.pk,
                    item.sk,
                    route.map(|r| &r.message_id),
                    route.map(|r| &r.attributes)
                ])?;
            }
        }
    }
    Ok(())
}

fn purge(tx: &rusqlite::Savepoint<'_>, limit: usize, now: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM items WHERE rowid IN
           (SELECT rowid FROM items WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT +?2)",
    )?
    .execute(params![now, i64::try_from(limit).unwrap_or(i64::MAX)])
}

/// Puts the item, replacing whatever is there (its condition was checked already).
fn put(tx: &rusqlite::Transaction<'_>, item: &Item) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO items (pk, sk, version, data, expires_at, owner, ipk, isk) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version, data = excluded.data, expires_at = excluded.expires_at, owner = excluded.owner, ipk = excluded.ipk, isk = excluded.isk",
    )?
    .execute(params![
        item.pk,
        item.sk,
        to_i64(item.version),
        item.data,
        item.expires_at,
        item.owner,
        item.index.as_ref().map(|k| &k.pk),
        item.index.as_ref().map(|k| &k.sk)
    ])?;
    Ok(())
}

fn check(
    tx: &rusqlite::Transaction<'_>,
    pk: &str,
    sk: &str,
    condition: &Condition,
    now: i64,
) -> rusqlite::Result<bool> {
    if *condition == Condition::None {
        return Ok(true);
    }
    let found: Option<(i64, Option<String>)> = tx
        .prepare_cached("SELECT version, owner FROM items WHERE pk = ?1 AND sk = ?2 AND (expires_at IS NULL OR expires_at > ?3)")?
        .query_row(params![pk, sk, now], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(match condition {
        Condition::None => true,
        Condition::Absent => found.is_none(),
        Condition::VersionIs(v) => found.is_some_and(|(version, _)| version == to_i64(*v)),
        Condition::OwnerIs(token) => {
            found.is_some_and(|(_, owner)| owner.as_deref() == Some(token.as_str()))
        }
    })
}

/// What a live item holds for [`Write::Add`].
enum Numbers {
    Absent,
    Found(serde_json::Map<String, serde_json::Value>),
    /// Data that is not a JSON object.
    Other,
}

fn numbers(
    tx: &rusqlite::Transaction<'_>,
    pk: &str,
    sk: &str,
    now: i64,
) -> rusqlite::Result<Numbers> {
    let data: Option<Vec<u8>> = tx
        .prepare_cached("SELECT data FROM items WHERE pk = ?1 AND sk = ?2 AND (expires_at IS NULL OR expires_at > ?3)")?
        .query_row(params![pk, sk, now], |row| row.get(0))
        .optional()?;
    Ok(match data.map(|data| serde_json::from_slice(&data)) {
        None => Numbers::Absent,
        Some(Ok(found)) => Numbers::Found(found),
        Some(Err(_)) => Numbers::Other,
    })
}

fn number(numbers: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<i64> {
    numbers.get(name).and_then(serde_json::Value::as_i64)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn job(writes: Vec<Write>) -> (Job, oneshot::Receiver<Result<usize, StoreError>>) {
        let (done, result) = oneshot::channel();
        (
            Job {
                work: Work::Writes(writes, Vec::new()),
                done,
            },
            result,
        )
    }

    fn put(pk: &str, bytes: usize, condition: Condition) -> Write {
        Write::Put {
            item: Item {
                pk: pk.into(),
                sk: "s".into(),
                version: 1,
                data: vec![b'x'; bytes],
                expires_at: None,
                owner: None,
                index: None,
            },
            condition,
        }
    }

    /// A new table's file, opened on a connection of the test's own.
    fn fresh_store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(SqliteTable::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        (dir, conn)
    }

    fn rows(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT pk FROM items ORDER BY pk")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Jobs run without savepoints, so a failed condition must be found before its job writes.
    #[test]
    fn a_failed_condition_writes_nothing_of_its_job_and_the_others_commit() {
        let (_dir, mut conn) = fresh_store();
        let (first, _) = job(vec![put("taken", 10, Condition::Absent)]);
        // Its second write's condition fails: its first, checked fine, must not be written.
        let (second, _) = job(vec![
            put("fresh", 10, Condition::Absent),
            put("taken", 10, Condition::Absent),
        ]);
        let (third, _) = job(vec![put("after", 10, Condition::Absent)]);
        let results = commit_batch(&mut conn, &[first, second, third]);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(
            results[1],
            Err(StoreError::ConditionFailed { index: 1 })
        ));
        assert_eq!(rows(&conn), ["after", "taken"]);
    }

    /// A job that fails part way through its writes, its conditions having held, cannot be
    /// undone alone: the whole batch fails, and none of it is stored. SQLite's own statement
    /// rollback (a trigger's `RAISE(ABORT)` here, as on some full-disk errors) keeps the
    /// transaction open with the job's first write in it.
    #[test]
    fn a_job_failing_part_way_through_its_writes_fails_the_batch_and_writes_nothing() {
        let (_dir, mut conn) = fresh_store();
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON items WHEN NEW.pk = 'refused'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        let (before, _) = job(vec![put("before", 10, Condition::Absent)]);
        let (failing, _) = job(vec![
            put("written", 10, Condition::Absent),
            put("refused", 10, Condition::Absent),
        ]);
        let (after, _) = job(vec![put("after", 10, Condition::Absent)]);
        let results = commit_batch(&mut conn, &[before, failing, after]);
        assert!(results.iter().all(Result::is_err), "{results:?}");
        assert!(rows(&conn).is_empty(), "{:?}", rows(&conn));
        assert!(conn.is_autocommit());
    }

    /// A bare `LIMIT ?N` made SQLite parse the bus's log read again on every run: 2 % of the
    /// server's CPU under load.
    #[test]
    fn the_bus_log_read_is_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let table = SqliteTable::open(&path).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime
            .block_on(SqliteBus::open(&table, Vec::new()))
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        for (after, limit) in [(0, 10), (5, 20), (5, 10)] {
            let mut statement = conn.prepare_cached(bus::READ_LOG).unwrap();
            let rows: Vec<i64> = statement
                .query_map(params![after, limit], |row| row.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(rows.is_empty());
            assert_eq!(
                statement.get_status(rusqlite::StatementStatus::RePrepare),
                0
            );
        }
    }

    #[test]
    fn a_batch_whose_transaction_aborts_fails_every_job_and_writes_nothing() {
        let (_dir, mut conn) = fresh_store();
        let (before, _) = job(vec![put("before", 2, Condition::Absent)]);
        let (after, _) = job(vec![put("after", 2, Condition::Absent)]);
        let (abort, _) = oneshot::channel();
        let batch = [
            before,
            Job {
                work: Work::AbortTransaction,
                done: abort,
            },
            after,
        ];
        let results = commit_batch(&mut conn, &batch);
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_err), "{results:?}");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            rows, 0,
            "nothing of the batch was committed, before or after"
        );
        assert!(conn.is_autocommit());
    }
}
