//! The local bus: SNS and SQS semantics in the same SQLite file as the table, written by the
//! same writer thread, so it shares its group commits and a restart loses no message.
//!
//! Publishing appends each message once to a log (`bus_log`). Each subscription's queue reads
//! the log through its filter policy, keeping a durable cursor (`bus_cursors`: everything at or
//! below it is done) and, in memory, what it has handed out and not yet seen deleted. That is
//! the fast path: a message received once and deleted costs no write of its own. A message
//! that is not deleted in time, is put back with `retry_after`, or is sent to the queue
//! directly (a delay, a redrive) becomes a row of its own (`bus_held`) with a durable receive
//! count; a held message received `max_receives` times moves to the dead-letter queue when next
//! due, as SQS's redrive policy does. After a restart the queue resumes from its cursor, so
//! messages that were in flight are delivered again (with a receive count starting over).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_app::bus::{BusError, Delivery, FilterPolicy, Message, Queue, Subscription, Topic};
use commerce_app::{Clock, StoreError, SystemClock};
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use crate::SqliteTable;

/// How often an idle receive looks again for messages whose time came (visibility, delay).
const IDLE_LOOK: Duration = Duration::from_millis(100);
/// Log rows read per look, at most.
const LOG_PAGE: i64 = 500;
/// The log after a position (`?1`), at most `?2` rows. `+?2`: a bare `LIMIT ?2` has SQLite
/// parse the statement again each time it runs.
pub(crate) const READ_LOG: &str = "SELECT seq, message_id, attributes, body, pk, sk FROM bus_log
                                   WHERE seq > ?1 ORDER BY seq LIMIT +?2";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS bus_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL,
        attributes TEXT NOT NULL,
        -- Empty for an event's message: its body is the event item (pk, sk), read from there.
        body TEXT NOT NULL,
        pk TEXT,
        sk TEXT
    );
    CREATE TABLE IF NOT EXISTS bus_cursors (
        queue TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS bus_held (
        seq INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        attributes TEXT NOT NULL,
        body TEXT NOT NULL,
        visible_at INTEGER NOT NULL,
        receives INTEGER NOT NULL,
        -- The current receipt's token; a receipt names its row, so no index is needed.
        receipt TEXT
    );
    CREATE INDEX IF NOT EXISTS bus_held_due ON bus_held (queue, visible_at);";

/// The topic and its queues on one SQLite file.
#[derive(Clone)]
pub struct SqliteBus {
    table: SqliteTable,
    /// Deletes the log messages every subscription is done with.
    prune: Arc<str>,
    subscriptions: Arc<Vec<Subscription>>,
    /// Each subscription's path through the log, shared by everyone receiving from it.
    lanes: Arc<HashMap<String, Mutex<Lane>>>,
    /// Woken when a queue may have new messages; keyed by queue name.
    arrivals: Arc<HashMap<String, Notify>>,
}

impl std::fmt::Debug for SqliteBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBus")
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

/// Where a queue is in the log.
#[derive(Debug, Default)]
struct Lane {
    /// Durable: every log message at or below it is done for this queue.
    cursor: i64,
    /// Log messages at or below it have been looked at (handed out or filtered out).
    scanned: i64,
    /// Handed out and not yet deleted, by log position.
    in_flight: BTreeMap<i64, Flight>,
    /// Leaving the fast path for a held row, not yet durably: the cursor waits for them.
    landing: BTreeMap<i64, ()>,
}

#[derive(Debug)]
struct Flight {
    token: String,
    visible_at: i64,
    receives: u32,
    message: Message,
}

impl Lane {
    /// Where the cursor may move: below the oldest message in flight or landing.
    fn settled(&self) -> i64 {
        let oldest = [self.in_flight.keys().next(), self.landing.keys().next()]
            .into_iter()
            .flatten()
            .min();
        oldest.map_or(self.scanned, |seq| seq - 1)
    }

    /// The flights are durably held now.
    fn landed(&mut self, flights: &[(i64, Flight)]) {
        for (seq, _) in flights {
            self.landing.remove(seq);
        }
    }

    /// Holding them failed: they are in flight again, due at once.
    fn not_landed(&mut self, flights: Vec<(i64, Flight)>, now: i64) {
        for (seq, mut flight) in flights {
            self.landing.remove(&seq);
            flight.visible_at = now;
            self.in_flight.insert(seq, flight);
        }
    }
}

impl SqliteBus {
    /// The bus in `table`'s file, its topic fanning out to `subscriptions`. A new subscription
    /// starts at the end of the log, as an SNS subscription gets only what is published after it.
    pub async fn open(
        table: &SqliteTable,
        subscriptions: Vec<Subscription>,
    ) -> Result<Self, StoreError> {
        let names: Vec<String> = subscriptions.iter().map(|s| s.queue.clone()).collect();
        table
            .run_task(Box::new(move |sp| {
                sp.execute_batch(SCHEMA)?;
                let referenced: i64 = sp.query_row(
                    "SELECT count(*) FROM pragma_table_info('bus_log') WHERE name = 'pk'",
                    [],
                    |row| row.get(0),
                )?;
                if referenced == 0 {
                    sp.execute_batch(
                        "ALTER TABLE bus_log ADD COLUMN pk TEXT; ALTER TABLE bus_log ADD COLUMN sk TEXT;",
                    )?;
                }
                let mut start = sp.prepare_cached(
                    "INSERT OR IGNORE INTO bus_cursors (queue, seq)
                     VALUES (?1, (SELECT coalesce(max(seq), 0) FROM bus_log))",
                )?;
                for name in &names {
                    start.execute(params![name])?;
                }
                Ok(0)
            }))
            .await?;
        let mut lanes = HashMap::new();
        let mut arrivals = HashMap::new();
        for subscription in &subscriptions {
            let name = subscription.queue.clone();
            let cursor: i64 = table.read_with(|c| {
                c.query_row(
                    "SELECT seq FROM bus_cursors WHERE queue = ?1",
                    params![name],
                    |row| row.get(0),
                )
            })?;
            lanes.insert(
                name.clone(),
                Mutex::new(Lane {
                    cursor,
                    scanned: cursor,
                    ..Lane::default()
                }),
            );
            arrivals.insert(name, Notify::new());
            arrivals.insert(subscription.dead_letters(), Notify::new());
        }
        let queues: Vec<String> = subscriptions
            .iter()
            .map(|s| format!("'{}'", s.queue.replace('\'', "''")))
            .collect();
        let prune = format!(
            "DELETE FROM bus_log WHERE seq <= (SELECT min(seq) FROM bus_cursors WHERE queue IN ({}))",
            queues.join(", ")
        );
        Ok(Self {
            table: table.clone(),
            prune: prune.into(),
            subscriptions: Arc::new(subscriptions),
            lanes: Arc::new(lanes),
            arrivals: Arc::new(arrivals),
        })
    }

    /// The queue of a subscription, or its dead-letter queue.
    pub fn queue(&self, name: &str) -> Option<SqliteQueue> {
        let (subscription, dead_letters) = self.subscriptions.iter().find_map(|s| {
            if s.queue == name {
                Some((s, false))
            } else if s.dead_letters() == name {
                Some((s, true))
            } else {
                None
            }
        })?;
        Some(SqliteQueue {
            bus: self.clone(),
            name: name.to_owned(),
            // A dead-letter queue holds what it has until someone redrives or deletes it.
            subscription: (!dead_letters).then(|| subscription.clone()),
        })
    }

    fn announce<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        for queue in queues {
            if let Some(arrival) = self.arrivals.get(queue) {
                arrival.notify_waiters();
            }
        }
    }
}

impl SqliteBus {
    /// The local publisher: moves up to `limit` events from the table's change feed onto the
    /// topic in one transaction, and forgets them from the feed in the same transaction, so
    /// each event is published exactly once. A feed row already holds its message's id and
    /// attributes, and the message's body is the event item itself, so nothing is copied here.
    /// As SNS does, a message no subscription's filter policy takes goes nowhere: most events
    /// (a reservation's, say) interest no consumer, and copying them would only have every
    /// queue read past them. Returns how many were published, per tenant.
    pub async fn publish_feed(&self, limit: usize) -> Result<Vec<(String, usize)>, BusError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let prune = self.prune.clone();
        let filters: Vec<FilterPolicy> = self
            .subscriptions
            .iter()
            .map(|s| s.filter.clone())
            .collect();
        // Each event's tenant, for the count.
        let routed: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = routed.clone();
        let appended = self
            .table
            .run_task(Box::new(move |sp| {
                let upto: Option<i64> = sp
                    .prepare_cached(
                        "SELECT max(seq) FROM (SELECT seq FROM feed ORDER BY seq LIMIT +?1)",
                    )?
                    .query_row(params![limit], |row| row.get(0))?;
                let Some(upto) = upto else { return Ok(0) };
                let rows: Vec<(i64, String)> = sp
                    .prepare_cached(
                        "SELECT seq, coalesce(attributes, '{}') FROM feed WHERE seq <= ?1 ORDER BY seq",
                    )?
                    .query_map(params![upto], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut append = sp.prepare_cached(
                    "INSERT INTO bus_log (message_id, attributes, body, pk, sk)
                     SELECT coalesce(message_id, pk || '/' || sk), coalesce(attributes, '{}'),
                            '', pk, sk FROM feed WHERE seq = ?1",
                )?;
                let mut appended = 0;
                let mut tenants = Vec::with_capacity(rows.len());
                for (seq, attributes) in &rows {
                    let parsed = serde_json::from_str::<BTreeMap<String, String>>(attributes);
                    // Unreadable attributes go out, so their consumers report the fault.
                    let wanted = parsed
                        .as_ref()
                        .map_or(true, |a| filters.iter().any(|f| f.matches(a)));
                    if wanted {
                        appended += append.execute(params![seq])?;
                    }
                    tenants.push(
                        parsed
                            .ok()
                            .and_then(|mut a| a.remove(commerce_app::bus::TENANT))
                            .unwrap_or_default(),
                    );
                }
                sp.prepare_cached("DELETE FROM feed WHERE seq <= ?1")?
                    .execute(params![upto])?;
                sp.prepare_cached(&prune)?.execute([])?;
                *lock(&out) = tenants;
                Ok(appended)
            }))
            .await
            .map_err(unavailable)?;
        if appended > 0 {
            self.announce(self.subscriptions.iter().map(|s| s.queue.as_str()));
        }
        let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
        for tenant in std::mem::take(&mut *lock(&routed)) {
            *per_tenant.entry(tenant).or_default() += 1;
        }
        Ok(per_tenant.into_iter().collect())
    }
}

impl Topic for SqliteBus {
    async fn publish(&self, messages: Vec<Message>) -> Result<(), BusError> {
        let wanted: Vec<(Message, String)> = messages
            .into_iter()
            .filter(|m| {
                self.subscriptions
                    .iter()
                    .any(|s| s.filter.matches(&m.attributes))
            })
            .map(|m| attributes_text(&m).map(|a| (m, a)))
            .collect::<Result<_, _>>()?;
        if wanted.is_empty() {
            return Ok(());
        }
        let prune = self.prune.clone();
        self.table
            .run_task(Box::new(move |sp| {
                let mut append = sp.prepare_cached(
                    "INSERT INTO bus_log (message_id, attributes, body) VALUES (?1, ?2, ?3)",
                )?;
                for (message, attributes) in &wanted {
                    append.execute(params![message.id, attributes, message.body])?;
                }
                // What every queue is done with is gone for good.
                sp.prepare_cached(&prune)?.execute([])?;
                Ok(wanted.len())
            }))
            .await
            .map_err(unavailable)?;
        self.announce(self.subscriptions.iter().map(|s| s.queue.as_str()));
        Ok(())
    }
}

/// One queue of the local bus.
#[derive(Clone, Debug)]
pub struct SqliteQueue {
    bus: SqliteBus,
    name: String,
    /// `None` for a dead-letter queue, which reads no log.
    subscription: Option<Subscription>,
}

/// What one receive found.
struct Found {
    deliveries: Vec<Delivery>,
    /// In-flight messages whose time ran out: they become held, with their receive counts.
    expired: Vec<(i64, Flight)>,
}

impl SqliteQueue {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lane(&self) -> Option<&Mutex<Lane>> {
        self.bus.lanes.get(&self.name)
    }

    /// Messages in the queue, visible or not, with their receive counts: what
    /// `commerce dlq list` shows.
    pub fn peek(&self, max: usize) -> Result<Vec<(Message, u32)>, BusError> {
        let name = self.name.clone();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let held: Vec<(Stored, u32)> = self
            .bus
            .table
            .read_with(|c| {
                c.prepare_cached(
                    "SELECT message_id, attributes, body, receives FROM bus_held
                     WHERE queue = ?1 ORDER BY seq LIMIT +?2",
                )?
                .query_map(params![name, limit], |row| {
                    Ok(((row.get(0)?, row.get(1)?, row.get(2)?), row.get(3)?))
                })?
                .collect()
            })
            .map_err(unavailable)?;
        let mut found = held
            .into_iter()
            .map(|(stored, receives)| Ok((decode(stored)?, receives)))
            .collect::<Result<Vec<_>, BusError>>()?;
        if let (Some(subscription), Some(lane)) = (&self.subscription, self.lane()) {
            let cursor = lock(lane).cursor;
            for (_, message) in self.read_log(cursor, limit, &subscription.filter)? {
                if found.len() >= max {
                    break;
                }
                if let Some(message) = message {
                    let receives = lock(lane)
                        .in_flight
                        .values()
                        .find(|f| f.message.id == message.id)
                        .map_or(0, |f| f.receives);
                    found.push((message, receives));
                }
            }
        }
        Ok(found)
    }

    /// Up to `limit` log messages after `after`, each with its message when it passes `filter`
    /// (`None`: it does not, and its body is never read).
    fn read_log(
        &self,
        after: i64,
        limit: i64,
        filter: &FilterPolicy,
    ) -> Result<Vec<(i64, Option<Message>)>, BusError> {
        let rows: Vec<(i64, Option<Stored>)> = self
            .bus
            .table
            .read_with(|c| {
                let rows: Vec<LogRow> = c
                    .prepare_cached(READ_LOG)?
                    .query_map(params![after, limit], |row| {
                        let pk: Option<String> = row.get(4)?;
                        let sk: Option<String> = row.get(5)?;
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            pk.zip(sk),
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut item =
                    c.prepare_cached("SELECT data FROM items WHERE pk = ?1 AND sk = ?2")?;
                let mut found = Vec::with_capacity(rows.len());
                for (seq, id, attributes, body, event) in rows {
                    // Unreadable attributes pass, so decoding them reports the fault.
                    let wanted =
                        serde_json::from_str(&attributes).map_or(true, |a| filter.matches(&a));
                    if !wanted {
                        found.push((seq, None));
                        continue;
                    }
                    let body = match event {
                        // An event's item is never deleted; were it gone (or not UTF-8), the
                        // empty body fails its consumers and the message is dead-lettered.
                        Some((pk, sk)) => item
                            .query_row(params![pk, sk], |row| row.get::<_, Vec<u8>>(0))
                            .optional()?
                            .and_then(|data| String::from_utf8(data).ok())
                            .unwrap_or_default(),
                        None => body,
                    };
                    found.push((seq, Some((id, attributes, body))));
                }
                Ok(found)
            })
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(seq, stored)| Ok((seq, stored.map(decode).transpose()?)))
            .collect()
    }

    /// Whether a held message is due now, read without the writer.
    fn held_due(&self, now: i64) -> Result<bool, BusError> {
        let name = self.name.clone();
        self.bus
            .table
            .read_with(|c| {
                c.prepare_cached(
                    "SELECT 1 FROM bus_held WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1",
                )?
                .query_row(params![name, now], |_| Ok(()))
                .optional()
            })
            .map(|found| found.is_some())
            .map_err(unavailable)
    }

    /// Hands out what is due: held messages first, then the log, through the filter.
    fn look(&self, max: usize, visibility: Duration) -> Result<Found, BusError> {
        let mut found = Found {
            deliveries: Vec::new(),
            expired: Vec::new(),
        };
        let (Some(subscription), Some(lane)) = (&self.subscription, self.lane()) else {
            return Ok(found);
        };
        let now = SystemClock.now_ms();
        let hidden_until = now.saturating_add(millis(visibility));
        let scanned = lock(lane).scanned;
        let limit = LOG_PAGE.min(i64::try_from(max.saturating_mul(4)).unwrap_or(LOG_PAGE));
        // Read before anything leaves the lane, so a failed read loses nothing.
        let page = self.read_log(scanned, limit, &subscription.filter)?;
        let mut lane = lock(lane);
        let expired: Vec<i64> = lane
            .in_flight
            .iter()
            .filter(|(_, f)| f.visible_at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(flight) = lane.in_flight.remove(&seq) {
                lane.landing.insert(seq, ());
                found.expired.push((seq, flight));
            }
        }
        for (seq, message) in page {
            if found.deliveries.len() >= max {
                break;
            }
            // Another receiver may have looked at it meanwhile.
            if seq <= lane.scanned {
                continue;
            }
            lane.scanned = seq;
            let Some(message) = message else { continue };
            let token = new_token();
            found.deliveries.push(Delivery {
                message: message.clone(),
                receipt: format!("L{seq}:{token}"),
                receive_count: 1,
            });
            lane.in_flight.insert(
                seq,
                Flight {
                    token,
                    visible_at: hidden_until,
                    receives: 1,
                    message,
                },
            );
        }
        Ok(found)
    }

    /// Makes expired in-flight messages held rows (keeping their receive counts) and hands out
    /// due held ones, moving those received too often to the dead-letter queue; then moves the
    /// cursor as far as it may go.
    async fn take_held(
        &self,
        expired: Vec<(i64, Flight)>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let name = self.name.clone();
        let redrive = self
            .subscription
            .as_ref()
            .map(|s| (s.dead_letters(), s.max_receives));
        let now = SystemClock.now_ms();
        let hidden_until = now.saturating_add(millis(visibility));
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let moved = held_rows(&expired)?;
        let cursor = self.cursor_to_save();
        let saving = cursor.clone();
        let taken: Arc<Mutex<Vec<Taken>>> = Arc::default();
        let out = taken.clone();
        let task: crate::Task = Box::new(move |sp| {
            hold(sp, &name, &moved, now)?;
            if let Some((dead_letters, max_receives)) = &redrive {
                sp.prepare_cached(
                    "UPDATE bus_held SET queue = ?1, receipt = NULL
                         WHERE queue = ?2 AND visible_at <= ?3 AND receives >= ?4",
                )?
                .execute(params![dead_letters, name, now, max_receives])?;
            }
            let due: Vec<(i64, Stored, u32)> = sp
                .prepare_cached(
                    "SELECT seq, message_id, attributes, body, receives FROM bus_held
                         WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT +?3",
                )?
                .query_map(params![name, now, limit], |row| {
                    Ok((
                        row.get(0)?,
                        (row.get(1)?, row.get(2)?, row.get(3)?),
                        row.get(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut hide = sp.prepare_cached(
                    "UPDATE bus_held SET receives = receives + 1, visible_at = ?1, receipt = ?2 WHERE seq = ?3",
                )?;
            let mut got = Vec::with_capacity(due.len());
            for (seq, stored, receives) in due {
                let token = new_token();
                hide.execute(params![hidden_until, token, seq])?;
                got.push((seq, stored, token, receives + 1));
            }
            save_cursor(sp, saving.as_ref())?;
            let n = got.len();
            *lock(&out) = got;
            Ok(n)
        });
        self.run_settled(task, expired, cursor, now).await?;
        let taken = std::mem::take(&mut *lock(&taken));
        taken
            .into_iter()
            .map(|(seq, stored, token, receive_count)| {
                Ok(Delivery {
                    message: decode(stored)?,
                    receipt: format!("H{seq}:{token}"),
                    receive_count,
                })
            })
            .collect()
    }

    /// The cursor to write, if the lane may move it.
    fn cursor_to_save(&self) -> Option<(String, i64)> {
        let lane = lock(self.lane()?);
        let settled = lane.settled();
        (settled > lane.cursor).then(|| (self.name.clone(), settled))
    }

    /// Runs `task` on the writer and settles the lane after it, in a task of its own: a caller
    /// that goes away meanwhile (a timeout, a dropped future) cannot leave flights landing, and
    /// the cursor held back, for ever.
    async fn run_settled(
        &self,
        task: crate::Task,
        flights: Vec<(i64, Flight)>,
        cursor: Option<(String, i64)>,
        now: i64,
    ) -> Result<(), BusError> {
        let queue = self.clone();
        tokio::spawn(async move {
            let result = queue.bus.table.run_task(task).await;
            queue.settle(flights, cursor, result, now)
        })
        .await
        .map_err(|e| BusError::Failure(format!("the bus task stopped: {e}")))?
    }

    /// After a task that held `flights` and saved `cursor`: on success they have landed and
    /// the cursor moved; on failure they are in flight again.
    fn settle(
        &self,
        flights: Vec<(i64, Flight)>,
        cursor: Option<(String, i64)>,
        result: Result<usize, StoreError>,
        now: i64,
    ) -> Result<(), BusError> {
        let Some(lane) = self.lane() else {
            return result.map(|_| ()).map_err(unavailable);
        };
        let mut lane = lock(lane);
        match result {
            Ok(_) => {
                lane.landed(&flights);
                if let Some((_, seq)) = cursor {
                    lane.cursor = lane.cursor.max(seq);
                }
                Ok(())
            }
            Err(e) => {
                lane.not_landed(flights, now);
                Err(unavailable(e))
            }
        }
    }

    /// Takes in-flight log messages named by `receipts` off the lane (those whose receipt is
    /// still current), returning them; the rest of `receipts` are held rows. Deleted ones are
    /// done; with `landing`, they are on their way to a held row and hold the cursor back.
    fn take_flights(&self, receipts: &[Receipt], landing: bool) -> Vec<(i64, Flight)> {
        let Some(lane) = self.lane() else {
            return Vec::new();
        };
        let mut lane = lock(lane);
        let mut taken = Vec::new();
        for receipt in receipts {
            if let Receipt::Log(seq, token) = receipt {
                let current = lane.in_flight.get(seq).is_some_and(|f| &f.token == token);
                if let Some(flight) = current.then(|| lane.in_flight.remove(seq)).flatten() {
                    if landing {
                        lane.landing.insert(*seq, ());
                    }
                    taken.push((*seq, flight));
                }
            }
        }
        taken
    }
}

impl Queue for SqliteQueue {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait;
        let arrival = self.bus.arrivals.get(&self.name);
        loop {
            // Listen before looking, so an arrival between the look and the wait is not missed.
            let notified = arrival.map(Notify::notified);
            let Found {
                mut deliveries,
                expired,
            } = self.look(max, visibility)?;
            let now = SystemClock.now_ms();
            // A failed look at the held rows counts as "maybe due": taking them then either
            // works or puts the expired flights back in flight.
            let held_due = deliveries.len() < max && self.held_due(now).unwrap_or(true);
            if !expired.is_empty() || held_due {
                let room = max - deliveries.len();
                match self.take_held(expired, room, visibility).await {
                    Ok(held) => deliveries.extend(held),
                    // What the log gave is handed out all the same: its receive counted.
                    Err(e) if deliveries.is_empty() => return Err(e),
                    Err(e) => {
                        tracing::warn!(queue = %self.name, error = %e, "held messages not taken; will retry");
                    }
                }
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = IDLE_LOOK.min(deadline - now);
            match notified {
                Some(notified) => {
                    let _ = tokio::time::timeout(nap, notified).await;
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), BusError> {
        self.delete_all(&[receipt.to_owned()]).await
    }

    async fn delete_all(&self, receipts: &[String]) -> Result<(), BusError> {
        let receipts = receipts
            .iter()
            .map(|r| Receipt::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.take_flights(&receipts, false);
        let held: Vec<(i64, String)> = receipts
            .into_iter()
            .filter_map(|r| match r {
                Receipt::Held(seq, token) => Some((seq, token)),
                Receipt::Log(..) => None,
            })
            .collect();
        let cursor = self.cursor_to_save();
        if held.is_empty() && cursor.is_none() {
            return Ok(());
        }
        let saving = cursor.clone();
        let task: crate::Task = Box::new(move |sp| {
            let mut delete =
                sp.prepare_cached("DELETE FROM bus_held WHERE seq = ?1 AND receipt = ?2")?;
            let mut n = 0;
            for (seq, token) in &held {
                n += delete.execute(params![seq, token])?;
            }
            save_cursor(sp, saving.as_ref())?;
            Ok(n)
        });
        // Deleted log messages are done whether or not the cursor was saved: a later save
        // covers them, and a crash before it only delivers them again.
        self.run_settled(task, Vec::new(), cursor, SystemClock.now_ms())
            .await
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), BusError> {
        let receipt = Receipt::parse(receipt)?;
        let at = SystemClock.now_ms().saturating_add(millis(delay));
        let flights = self.take_flights(std::slice::from_ref(&receipt), true);
        let moved = held_rows(&flights)?;
        let name = self.name.clone();
        let cursor = self.cursor_to_save();
        let saving = cursor.clone();
        let task: crate::Task = Box::new(move |sp| {
            hold(sp, &name, &moved, at)?;
            if let Receipt::Held(seq, token) = &receipt {
                sp.prepare_cached(
                    "UPDATE bus_held SET visible_at = ?3 WHERE seq = ?1 AND receipt = ?2",
                )?
                .execute(params![seq, token, at])?;
            }
            save_cursor(sp, saving.as_ref())?;
            Ok(0)
        });
        self.run_settled(task, flights, cursor, SystemClock.now_ms())
            .await?;
        if delay.is_zero() {
            self.bus.announce([self.name.as_str()]);
        }
        Ok(())
    }

    async fn send(&self, message: Message, delay: Duration) -> Result<(), BusError> {
        let attributes = attributes_text(&message)?;
        let name = self.name.clone();
        let at = SystemClock.now_ms().saturating_add(millis(delay));
        self.bus
            .table
            .run_task(Box::new(move |sp| {
                hold(sp, &name, &[(message.clone(), attributes.clone(), 0)], at)?;
                Ok(1)
            }))
            .await
            .map_err(unavailable)?;
        self.bus.announce([self.name.as_str()]);
        Ok(())
    }
}

/// The held rows flights become: their messages and receive counts.
fn held_rows(flights: &[(i64, Flight)]) -> Result<Vec<(Message, String, u32)>, BusError> {
    flights
        .iter()
        .map(|(_, f)| attributes_text(&f.message).map(|a| (f.message.clone(), a, f.receives)))
        .collect()
}

/// Adds messages to a queue as held rows, visible at `at`, with the receives they had.
fn hold(
    sp: &rusqlite::Savepoint<'_>,
    queue: &str,
    messages: &[(Message, String, u32)],
    at: i64,
) -> rusqlite::Result<()> {
    let mut insert = sp.prepare_cached(
        "INSERT INTO bus_held (queue, message_id, attributes, body, visible_at, receives)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (message, attributes, receives) in messages {
        insert.execute(params![
            queue,
            message.id,
            attributes,
            message.body,
            at,
            receives
        ])?;
    }
    Ok(())
}

fn save_cursor(
    sp: &rusqlite::Savepoint<'_>,
    cursor: Option<&(String, i64)>,
) -> rusqlite::Result<()> {
    if let Some((queue, seq)) = cursor {
        sp.prepare_cached("UPDATE bus_cursors SET seq = max(seq, ?2) WHERE queue = ?1")?
            .execute(params![queue, seq])?;
    }
    Ok(())
}

/// A receipt names a log message (`L<seq>:<token>`, the fast path) or a held row
/// (`H<seq>:<token>`), and the receive it came from.
#[derive(Debug, Clone)]
enum Receipt {
    Log(i64, String),
    Held(i64, String),
}

impl Receipt {
    fn parse(text: &str) -> Result<Self, BusError> {
        let bad = || BusError::Failure(format!("{text} is not a receipt of this bus"));
        let (kind, rest) = text.split_at_checked(1).ok_or_else(bad)?;
        let (seq, token) = rest.split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        match kind {
            "L" => Ok(Self::Log(seq, token.to_owned())),
            "H" => Ok(Self::Held(seq, token.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// A log row: its position, message id, attributes (JSON), body, and the event item that is
/// its body instead, if any.
type LogRow = (i64, String, String, String, Option<(String, String)>);

/// A message's id, attributes (JSON) and body, as stored.
type Stored = (String, String, String);

/// A held row handed out: its row, message, receipt token and receive count.
type Taken = (i64, Stored, String, u32);

fn decode((id, attributes, body): Stored) -> Result<Message, BusError> {
    Ok(Message {
        id,
        attributes: serde_json::from_str(&attributes)
            .map_err(|e| BusError::Failure(format!("corrupt message attributes: {e}")))?,
        body,
    })
}

fn attributes_text(message: &Message) -> Result<String, BusError> {
    serde_json::to_string(&message.attributes)
        .map_err(|e| BusError::Failure(format!("cannot encode message attributes: {e}")))
}

fn new_token() -> String {
    format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(e: StoreError) -> BusError {
    match e {
        StoreError::Busy(why) => BusError::Unavailable(why),
        StoreError::Conflict => BusError::Unavailable("conflict".into()),
        other => BusError::Failure(other.to_string()),
    }
}
