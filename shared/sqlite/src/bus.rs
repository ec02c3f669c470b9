//! The local bus: SNS and SQS semantics in the same SQLite file as the table, written by the
//! same writer thread, so publishing and receiving share its group commits and a restart loses
//! nothing. One row per message per queue; a receive hides its rows until `visible_at` and
//! hands each a fresh receipt; a row received `max_receives` times moves to the queue's
//! dead-letter queue when next due, as SQS's redrive policy does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_app::bus::{BusError, Delivery, Message, Queue, Subscription, Topic};
use commerce_app::{Clock, StoreError, SystemClock};
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use crate::SqliteTable;

/// How often an idle receive looks again for messages whose time came (visibility, delay).
const IDLE_LOOK: Duration = Duration::from_millis(100);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS bus_messages (
        seq INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        attributes TEXT NOT NULL,
        body TEXT NOT NULL,
        visible_at INTEGER NOT NULL,
        receives INTEGER NOT NULL DEFAULT 0,
        -- The current receipt's token; a receipt is `seq:token`, so no index is needed.
        receipt TEXT
    );
    CREATE INDEX IF NOT EXISTS bus_due ON bus_messages (queue, visible_at);";

/// The topic and its queues on one SQLite file.
#[derive(Clone)]
pub struct SqliteBus {
    table: SqliteTable,
    subscriptions: Arc<Vec<Subscription>>,
    /// Woken when a queue may have new messages; keyed by queue name.
    arrivals: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl std::fmt::Debug for SqliteBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBus")
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

impl SqliteBus {
    /// The bus in `table`'s file, its topic fanning out to `subscriptions`.
    pub async fn open(
        table: &SqliteTable,
        subscriptions: Vec<Subscription>,
    ) -> Result<Self, StoreError> {
        table
            .run_task(Box::new(|sp| sp.execute_batch(SCHEMA).map(|()| 0)))
            .await?;
        Ok(Self {
            table: table.clone(),
            subscriptions: Arc::new(subscriptions),
            arrivals: Arc::default(),
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
            // A dead-letter queue keeps what it holds until someone redrives or deletes it.
            redrive: (!dead_letters)
                .then(|| (subscription.dead_letters(), subscription.max_receives)),
        })
    }

    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    fn arrival(&self, queue: &str) -> Arc<Notify> {
        let mut arrivals = self
            .arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        arrivals.entry(queue.to_owned()).or_default().clone()
    }

    fn announce(&self, queues: impl IntoIterator<Item = String>) {
        for queue in queues {
            self.arrival(&queue).notify_waiters();
        }
    }
}

impl Topic for SqliteBus {
    async fn publish(&self, messages: Vec<Message>) -> Result<(), BusError> {
        let mut rows: Vec<(String, usize)> = Vec::new();
        let mut encoded = Vec::with_capacity(messages.len());
        for (n, message) in messages.iter().enumerate() {
            encoded.push(attributes_text(message)?);
            for subscription in self.subscriptions.iter() {
                if subscription.filter.matches(&message.attributes) {
                    rows.push((subscription.queue.clone(), n));
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let queues: Vec<String> = {
            let mut names: Vec<String> = rows.iter().map(|(q, _)| q.clone()).collect();
            names.sort();
            names.dedup();
            names
        };
        let now = SystemClock.now_ms();
        self.table
            .run_task(Box::new(move |sp| {
                let mut insert = sp.prepare_cached(
                    "INSERT INTO bus_messages (queue, message_id, attributes, body, visible_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (queue, n) in &rows {
                    if let (Some(message), Some(attributes)) = (messages.get(*n), encoded.get(*n)) {
                        insert.execute(params![
                            queue,
                            message.id,
                            attributes,
                            message.body,
                            now
                        ])?;
                    }
                }
                Ok(rows.len())
            }))
            .await
            .map_err(unavailable)?;
        self.announce(queues);
        Ok(())
    }
}

/// One queue of the local bus.
#[derive(Clone, Debug)]
pub struct SqliteQueue {
    bus: SqliteBus,
    name: String,
    /// Where a message goes once received this many times: the dead-letter queue.
    redrive: Option<(String, u32)>,
}

impl SqliteQueue {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Messages in the queue, visible or not: what `commerce dlq list` shows.
    pub fn peek(&self, max: usize) -> Result<Vec<(Message, u32)>, BusError> {
        let name = self.name.clone();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows: Vec<(Stored, u32)> = self
            .bus
            .table
            .read_with(|c| {
                c.prepare_cached(
                    "SELECT message_id, attributes, body, receives FROM bus_messages
                     WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![name, limit], |row| {
                    Ok(((row.get(0)?, row.get(1)?, row.get(2)?), row.get(3)?))
                })?
                .collect()
            })
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(stored, receives)| Ok((decode(stored)?, receives)))
            .collect()
    }

    /// Whether a message is due now, read without the writer.
    fn any_due(&self, now: i64) -> Result<bool, BusError> {
        let name = self.name.clone();
        self.bus
            .table
            .read_with(|c| {
                c.prepare_cached(
                    "SELECT 1 FROM bus_messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1",
                )?
                .query_row(params![name, now], |_| Ok(()))
                .optional()
            })
            .map(|found| found.is_some())
            .map_err(unavailable)
    }

    async fn take_due(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, BusError> {
        let name = self.name.clone();
        let redrive = self.redrive.clone();
        let now = SystemClock.now_ms();
        let hidden_until = now.saturating_add(millis(visibility));
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let taken: Arc<Mutex<Vec<(Stored, String, u32)>>> = Arc::default();
        let out = taken.clone();
        self.bus
            .table
            .run_task(Box::new(move |sp| {
                if let Some((dead_letters, max_receives)) = &redrive {
                    sp.prepare_cached(
                        "UPDATE bus_messages SET queue = ?1, receives = 0, receipt = NULL
                         WHERE queue = ?2 AND visible_at <= ?3 AND receives >= ?4",
                    )?
                    .execute(params![dead_letters, name, now, max_receives])?;
                }
                let due: Vec<(i64, Stored, u32)> = sp
                    .prepare_cached(
                        "SELECT seq, message_id, attributes, body, receives FROM bus_messages
                         WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3",
                    )?
                    .query_map(params![name, now, limit], |row| {
                        Ok((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?), row.get(4)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut hide = sp.prepare_cached(
                    "UPDATE bus_messages SET receives = receives + 1, visible_at = ?1, receipt = ?2 WHERE seq = ?3",
                )?;
                let mut got = Vec::with_capacity(due.len());
                for (seq, stored, receives) in due {
                    let token = format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0);
                    hide.execute(params![hidden_until, token, seq])?;
                    got.push((stored, format!("{seq}:{token}"), receives + 1));
                }
                let n = got.len();
                *out.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = got;
                Ok(n)
            }))
            .await
            .map_err(unavailable)?;
        let taken = std::mem::take(
            &mut *taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        taken
            .into_iter()
            .map(|(stored, receipt, receive_count)| {
                Ok(Delivery {
                    message: decode(stored)?,
                    receipt,
                    receive_count,
                })
            })
            .collect()
    }

    /// Runs one statement that takes a receipt's row as `?1`, its token as `?2` and `value`
    /// as `?3`.
    async fn update(&self, sql: &'static str, receipt: &str, value: i64) -> Result<(), BusError> {
        let (seq, token) = parse_receipt(receipt)?;
        self.bus
            .table
            .run_task(Box::new(move |sp| {
                sp.prepare_cached(sql)?.execute(params![seq, token, value])
            }))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

impl Queue for SqliteQueue {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        let arrival = self.bus.arrival(&self.name);
        loop {
            // Listen before looking, so an arrival between the look and the wait is not missed.
            let notified = arrival.notified();
            if self.any_due(SystemClock.now_ms())? {
                let got = self.take_due(max.max(1), visibility).await?;
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = IDLE_LOOK.min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), BusError> {
        self.delete_all(&[receipt.to_owned()]).await
    }

    async fn delete_all(&self, receipts: &[String]) -> Result<(), BusError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let receipts = receipts
            .iter()
            .map(|r| parse_receipt(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.bus
            .table
            .run_task(Box::new(move |sp| {
                let mut delete =
                    sp.prepare_cached("DELETE FROM bus_messages WHERE seq = ?1 AND receipt = ?2")?;
                let mut n = 0;
                for (seq, token) in &receipts {
                    n += delete.execute(params![seq, token])?;
                }
                Ok(n)
            }))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), BusError> {
        let at = SystemClock.now_ms().saturating_add(millis(delay));
        self.update(
            "UPDATE bus_messages SET visible_at = ?3 WHERE seq = ?1 AND receipt = ?2",
            receipt,
            at,
        )
        .await?;
        if delay.is_zero() {
            self.bus.announce([self.name.clone()]);
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
                sp.prepare_cached(
                    "INSERT INTO bus_messages (queue, message_id, attributes, body, visible_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![name, message.id, attributes, message.body, at])
            }))
            .await
            .map_err(unavailable)?;
        self.bus.announce([self.name.clone()]);
        Ok(())
    }
}

/// A message's id, attributes (JSON) and body, as stored.
type Stored = (String, String, String);

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

/// A receipt is the message's row and the token of that receipt.
fn parse_receipt(receipt: &str) -> Result<(i64, String), BusError> {
    receipt
        .split_once(':')
        .and_then(|(seq, token)| Some((seq.parse().ok()?, token.to_owned())))
        .ok_or_else(|| BusError::Failure(format!("{receipt} is not a receipt of this bus")))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(e: StoreError) -> BusError {
    match e {
        StoreError::Busy(why) => BusError::Unavailable(why),
        other => BusError::Failure(other.to_string()),
    }
}
