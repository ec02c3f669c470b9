//! The table port on one SQLite file: the embedded default.
//!
//! SQLite takes one writer at a time, so one thread owns the write connection and commits every
//! waiting transaction together: each caller's writes run in their own savepoint (rolled back alone
//! if a condition fails), and the batch shares one `COMMIT` and one fsync. Readers use their own
//! connections; WAL lets them read while the writer writes. The conditions are the same as
//! DynamoDB's, so the shop behaves identically on both.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use commerce_app::clock::now_seconds;
use commerce_app::table::{
    Condition, Item, Page, Query, StoreError, Table, Write, check_transaction, prefix_end,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

/// Most transactions committed together; bounds the latency one batch adds.
const MAX_BATCH: usize = 512;
/// Expired items deleted per writer job.
const PURGE_CHUNK: usize = 500;
/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Above any key the shop writes: the upper bound of an unbounded range.
const TOP: &str = "\u{10FFFF}";

/// What the writer thread is asked to do, and where to send the outcome (rows affected).
struct Job {
    work: Work,
    done: oneshot::Sender<Result<usize, StoreError>>,
}

enum Work {
    Writes(Vec<Write>),
    /// Deletes up to this many expired items.
    PurgeExpired(usize),
}

#[derive(Clone)]
pub struct SqliteTable {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
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
        let path = path.as_ref().to_path_buf();
        let writer = Connection::open(&path).map_err(failure)?;
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA mmap_size = 1073741824;
                 PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE IF NOT EXISTS items (
                     pk TEXT NOT NULL,
                     sk TEXT NOT NULL,
                     version INTEGER NOT NULL,
                     data BLOB NOT NULL,
                     expires_at INTEGER,
                     PRIMARY KEY (pk, sk)
                 );
                 CREATE INDEX IF NOT EXISTS items_expiry ON items (expires_at) WHERE expires_at IS NOT NULL;",
            )
            .map_err(failure)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(writer, queue))
            .map_err(|e| StoreError::Failure(format!("cannot start the writer thread: {e}")))?;
        let checkpointer = Connection::open(&path).map_err(failure)?;
        configure_reader(&checkpointer)?;
        let inner = Arc::new(Inner {
            path,
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

    async fn submit(&self, work: Work) -> Result<usize, StoreError> {
        let (done, result) = oneshot::channel();
        self.inner
            .jobs
            .send(Job { work, done })
            .map_err(|_| StoreError::Failure("the writer thread has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Failure("the writer thread dropped a job".into()))?
    }

    fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StoreError> {
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

impl Table for SqliteTable {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT pk, sk, version, data, expires_at FROM items WHERE pk = ?1 AND sk = ?2 AND (expires_at IS NULL OR expires_at > ?3)")?
                .query_row(params![pk, sk, now_seconds()], row_to_item)
                .optional()
        })
    }

    async fn query(&self, q: Query<'_>) -> Result<Page, StoreError> {
        let upper = if q.prefix.is_empty() {
            TOP.to_owned()
        } else {
            prefix_end(q.prefix).unwrap_or_else(|| TOP.to_owned())
        };
        let fetch = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut items = self.read(|c| {
            let (sql, after) = if q.descending {
                ("SELECT pk, sk, version, data, expires_at FROM items WHERE pk = ?1 AND sk >= ?2 AND sk < ?3 AND sk < ?4 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY sk DESC LIMIT ?6", q.after.unwrap_or(&upper))
            } else {
                ("SELECT pk, sk, version, data, expires_at FROM items WHERE pk = ?1 AND sk >= ?2 AND sk < ?3 AND sk > ?4 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY sk ASC LIMIT ?6", q.after.unwrap_or(""))
            };
            c.prepare_cached(sql)?.query_map(params![q.pk, q.prefix, upper, after, now_seconds(), fetch], row_to_item)?.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let next = if items.len() > q.limit {
            items.truncate(q.limit);
            items.last().map(|item| item.sk.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        check_transaction(&writes)?;
        self.submit(Work::Writes(writes)).await.map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())))
    }
}

fn configure_reader(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(failure)?;
    // Reads go through the map instead of a read() per page.
    conn.execute_batch("PRAGMA mmap_size = 1073741824;")
        .map_err(failure)
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

/// The writer thread: takes every waiting transaction and commits them together.
fn write_loop(mut conn: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch);
        for (job, result) in batch.into_iter().zip(results) {
            // The caller may have gone away (request cancelled); its writes stand either way.
            let _ = job.done.send(result);
        }
    }
}

fn commit_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<usize, StoreError>> {
    let everyone = |e: rusqlite::Error| -> Vec<Result<usize, StoreError>> {
        batch.iter().map(|_| Err(failure_ref(&e))).collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return everyone(e),
    };
    let now = now_seconds();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let outcome = match tx.savepoint() {
            Ok(mut sp) => match &job.work {
                Work::Writes(writes) => match apply(&mut sp, writes, now) {
                    Ok(Ok(())) => sp.commit().map(|()| 0).map_err(failure),
                    Ok(Err(failed)) => Err(failed),
                    Err(e) => Err(failure(e)),
                },
                Work::PurgeExpired(limit) => purge(&sp, *limit, now)
                    .and_then(|n| sp.commit().map(|()| n))
                    .map_err(failure),
            },
            Err(e) => Err(failure(e)),
        };
        results.push(outcome);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => everyone(e),
    }
}

fn failure_ref(e: &rusqlite::Error) -> StoreError {
    StoreError::Failure(format!("commit failed: {e}"))
}

/// Runs one transaction's writes. The outer error is SQLite's; the inner one a failed condition.
fn apply(
    tx: &mut rusqlite::Savepoint<'_>,
    writes: &[Write],
    now: i64,
) -> rusqlite::Result<Result<(), StoreError>> {
    for (index, write) in writes.iter().enumerate() {
        let held = match write {
            Write::Put { item, condition } => put(tx, item, *condition, now)?,
            Write::Delete { pk, sk, condition } => match condition {
                Condition::None => {
                    tx.prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")?.execute(params![pk, sk])?;
                    true
                }
                Condition::VersionIs(v) => {
                    tx.prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2 AND version = ?3 AND (expires_at IS NULL OR expires_at > ?4)")?
                        .execute(params![pk, sk, to_i64(*v), now])?
                        == 1
                }
                Condition::Absent => check(tx, pk, sk, Condition::Absent, now)?,
            },
            Write::Check { pk, sk, condition } => check(tx, pk, sk, *condition, now)?,
        };
        if !held {
            return Ok(Err(StoreError::ConditionFailed { index }));
        }
    }
    Ok(Ok(()))
}

fn purge(tx: &rusqlite::Savepoint<'_>, limit: usize, now: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM items WHERE rowid IN
           (SELECT rowid FROM items WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
    )?
    .execute(params![now, i64::try_from(limit).unwrap_or(i64::MAX)])
}

fn put(
    tx: &rusqlite::Savepoint<'_>,
    item: &Item,
    condition: Condition,
    now: i64,
) -> rusqlite::Result<bool> {
    let version = to_i64(item.version);
    let changed = match condition {
        Condition::None => tx
            .prepare_cached(
                "INSERT INTO items (pk, sk, version, data, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version, data = excluded.data, expires_at = excluded.expires_at",
            )?
            .execute(params![item.pk, item.sk, version, item.data, item.expires_at])?,
        Condition::Absent => tx
            .prepare_cached(
                "INSERT INTO items (pk, sk, version, data, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version, data = excluded.data, expires_at = excluded.expires_at
                 WHERE items.expires_at IS NOT NULL AND items.expires_at <= ?6",
            )?
            .execute(params![item.pk, item.sk, version, item.data, item.expires_at, now])?,
        Condition::VersionIs(expected) => tx
            .prepare_cached(
                "UPDATE items SET version = ?3, data = ?4, expires_at = ?5
                 WHERE pk = ?1 AND sk = ?2 AND version = ?6 AND (expires_at IS NULL OR expires_at > ?7)",
            )?
            .execute(params![item.pk, item.sk, version, item.data, item.expires_at, to_i64(expected), now])?,
    };
    Ok(changed == 1)
}

fn check(
    tx: &rusqlite::Savepoint<'_>,
    pk: &str,
    sk: &str,
    condition: Condition,
    now: i64,
) -> rusqlite::Result<bool> {
    let version: Option<i64> = tx
        .prepare_cached("SELECT version FROM items WHERE pk = ?1 AND sk = ?2 AND (expires_at IS NULL OR expires_at > ?3)")?
        .query_row(params![pk, sk, now], |row| row.get(0))
        .optional()?;
    Ok(match condition {
        Condition::None => true,
        Condition::Absent => version.is_none(),
        Condition::VersionIs(v) => version == Some(to_i64(v)),
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
