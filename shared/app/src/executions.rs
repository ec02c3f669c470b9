//! State machine executions: the port the saga starter uses, and the local runtime that runs
//! the same ASL files as Step Functions, durably, on the table port.
//!
//! A local execution is a partition: its record (`head`: input, status, outcome, and the
//! owner token of whoever runs it) and a journal item per task answer and per wait. Running
//! it means replaying the definition from the start: a task whose answer is in the journal is
//! not invoked again but answered from it, and a wait ends when its recorded time is up. So an
//! execution stopped anywhere (a crash, `kill -9`, a restart) resumes where it was, and a task
//! it finished is never run twice; one it was running when it stopped runs again, which every
//! task allows, being idempotent.
//!
//! Whoever runs an execution holds its claim: a fresh token written to the record. Every
//! journal write checks that token in the same transaction, so a runner that lost its claim
//! (another took over) can record nothing, and stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_asl::{Definition, Failure, TaskCall, Tasks};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::event_store::to_json;
use crate::table::{Condition, Item, Query, StoreError, Table, Write};
use crate::views::timestamp;

/// Why an execution could not be started or read.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The same name was started with another input.
    #[error("execution {0} exists with another input")]
    AlreadyExists(String),
    #[error("no state machine {0}")]
    UnknownStateMachine(String),
    /// The service refused for now; the same call may succeed later.
    #[error("state machines unavailable: {0}")]
    Unavailable(String),
    #[error("state machines failed: {0}")]
    Failure(String),
}

impl From<StoreError> for ExecutionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy(why) => Self::Unavailable(why),
            StoreError::Conflict => Self::Unavailable("conflict with another transaction".into()),
            other => Self::Failure(other.to_string()),
        }
    }
}

/// Starts executions: Step Functions on AWS, [`LocalExecutions`] locally.
pub trait StateMachines: Send + Sync + 'static {
    /// Starts `machine` on `input` under `name`. A name already started with the same input
    /// is that execution, not a new one, running or not: a repeated start is harmless. The
    /// same name with another input is [`ExecutionError::AlreadyExists`].
    fn start(
        &self,
        machine: &str,
        name: &str,
        input: &Value,
    ) -> impl Future<Output = Result<(), ExecutionError>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
}

/// An execution as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionRecord {
    pub state_machine: String,
    pub name: String,
    pub input: Value,
    pub status: ExecutionStatus,
    /// Unix milliseconds.
    pub started_at: i64,
    #[serde(default)]
    pub stopped_at: Option<i64>,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub cause: Option<String>,
    /// How many times a runner took it up: 1, plus one per resume.
    #[serde(default)]
    pub runs: u32,
    /// Signs the execution's callback tokens, so only a token it handed out answers a task.
    #[serde(default)]
    pub callback_secret: String,
}

impl ExecutionRecord {
    /// The record without its callback secret, for lists and operators.
    pub fn public(&self) -> Self {
        Self {
            callback_secret: String::new(),
            ..self.clone()
        }
    }
}

/// One journal entry: a task's answer or a wait, in the order they happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    /// Unix milliseconds.
    pub at: i64,
    /// Names the invocation or wait within the execution (state, visit, retry, branch).
    pub key: String,
    pub state: String,
    #[serde(flatten)]
    pub what: Happened,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Happened {
    TaskSucceeded {
        output: Value,
    },
    TaskFailed {
        error: String,
        cause: String,
    },
    /// A `.waitForTaskToken` task was invoked and handed out its token; its answer comes
    /// with the token (`commerce executions succeed|fail`).
    TaskScheduled {},
    /// The task waiting for its token said it is still at work.
    Heartbeat {},
    /// A Wait state or a retry's interval, until this time (Unix milliseconds).
    Waited {
        until: i64,
    },
}

const HEAD: &str = "head";
const STEP: &str = "step#";
/// Executions not finished yet, one item each, for resuming them.
const RUNNING: &str = "executions#running";
/// Tries at a journal write the store refused for now, before the runner stops.
const WRITE_TRIES: u32 = 5;
/// Suffixes of a callback task's journal items besides its answer.
const SCHEDULED: &str = ":scheduled";
const HEARTBEAT: &str = ":heartbeat";
/// How often a callback task's runner looks for its answer.
const CALLBACK_POLL: Duration = Duration::from_millis(100);
/// Looks for an answer between two checks that the run still holds its claim.
const CLAIM_CHECK_POLLS: u32 = 20;

fn execution_pk(name: &str) -> String {
    format!("execution#{name}")
}

fn listing_pk(machine: &str) -> String {
    format!("executions#{machine}")
}

fn listing_sk(record: &ExecutionRecord) -> String {
    format!("{}#{}", timestamp(record.started_at), record.name)
}

/// Runs state machines in this process, durably. Cheap to clone; clones share one runtime.
pub struct LocalExecutions<T, K> {
    inner: Arc<Inner<T, K>>,
}

impl<T, K> std::fmt::Debug for LocalExecutions<T, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalExecutions")
            .field("machines", &self.inner.machines.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<T, K> Clone for LocalExecutions<T, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T, K> {
    table: T,
    tasks: K,
    machines: BTreeMap<String, Definition>,
    /// Executions a runner of this process is running now.
    running: Mutex<HashSet<String>>,
}

impl<T: Table, K: Tasks + 'static> LocalExecutions<T, K> {
    /// `machines` are the definitions this runtime knows, by state machine name; `tasks`
    /// runs their Task states.
    pub fn new(table: T, tasks: K, machines: BTreeMap<String, Definition>) -> Self {
        Self {
            inner: Arc::new(Inner {
                table,
                tasks,
                machines,
                running: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub async fn describe(&self, name: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        describe(&self.inner.table, name).await
    }

    /// Takes up every execution left running that no runner of this process runs: at start,
    /// those a stopped process left; later, any whose runner gave up. Returns how many.
    pub async fn resume_all(&self) -> Result<usize, StoreError> {
        let mut resumed = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .table
                .query(Query {
                    pk: RUNNING,
                    prefix: "",
                    after: after.as_deref(),
                    limit: 100,
                    descending: false,
                })
                .await?;
            for item in &page.items {
                if self.spawn(item.sk.clone()) {
                    resumed += 1;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(resumed),
            }
        }
    }

    /// Runs the execution in a task of its own, unless this process runs it already.
    fn spawn(&self, name: String) -> bool {
        if !self.inner.claim_locally(&name) {
            return false;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _running = Running {
                inner: &inner,
                name: &name,
            };
            if let Err(e) = inner.drive(&name).await {
                tracing::error!(execution = %name, error = %e, "execution stopped; it resumes later");
            }
        });
        true
    }
}

impl<T: Table, K: Tasks + 'static> StateMachines for LocalExecutions<T, K> {
    async fn start(&self, machine: &str, name: &str, input: &Value) -> Result<(), ExecutionError> {
        if !self.inner.machines.contains_key(machine) {
            return Err(ExecutionError::UnknownStateMachine(machine.to_owned()));
        }
        let record = ExecutionRecord {
            state_machine: machine.to_owned(),
            name: name.to_owned(),
            input: input.clone(),
            status: ExecutionStatus::Running,
            started_at: now_ms(),
            stopped_at: None,
            output: None,
            error: None,
            cause: None,
            runs: 0,
            callback_secret: uuid::Uuid::new_v4().simple().to_string(),
        };
        let writes = vec![
            Write::Put {
                item: item(execution_pk(name), HEAD.into(), 1, &record, None)?,
                condition: Condition::Absent,
            },
            Write::Put {
                item: item(RUNNING.into(), name.into(), 1, &Value::Null, None)?,
                condition: Condition::None,
            },
            Write::Put {
                item: item(
                    listing_pk(machine),
                    listing_sk(&record),
                    1,
                    &record.public(),
                    None,
                )?,
                condition: Condition::None,
            },
        ];
        match self.inner.table.transact(writes).await {
            Ok(()) => {
                self.spawn(name.to_owned());
                Ok(())
            }
            Err(StoreError::ConditionFailed { index: 0 }) => {
                match describe(&self.inner.table, name).await? {
                    Some(existing)
                        if existing.input == *input && existing.state_machine == machine =>
                    {
                        Ok(())
                    }
                    _ => Err(ExecutionError::AlreadyExists(name.to_owned())),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// An execution's record, read from the store (whether or not this process runs it).
pub async fn describe<T: Table>(
    table: &T,
    name: &str,
) -> Result<Option<ExecutionRecord>, StoreError> {
    match table.get(&execution_pk(name), HEAD).await? {
        Some(item) => Ok(Some(decode(&item)?)),
        None => Ok(None),
    }
}

/// What the execution did so far, in order.
pub async fn history<T: Table>(table: &T, name: &str) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut entries: Vec<HistoryEntry> = journal(table, name).await?.into_values().collect();
    entries.sort_by(|a, b| (a.at, &a.key).cmp(&(b.at, &b.key)));
    Ok(entries)
}

/// A state machine's executions, newest first, a page at a time.
pub async fn list<T: Table>(
    table: &T,
    machine: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<ExecutionRecord>, Option<String>), StoreError> {
    let pk = listing_pk(machine);
    let page = table
        .query(Query {
            pk: &pk,
            prefix: "",
            after,
            limit,
            descending: true,
        })
        .await?;
    let records = page.items.iter().map(decode).collect::<Result<_, _>>()?;
    Ok((records, page.next))
}

async fn journal<T: Table>(
    table: &T,
    name: &str,
) -> Result<HashMap<String, HistoryEntry>, StoreError> {
    let pk = execution_pk(name);
    let mut entries = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = table
            .query(Query {
                pk: &pk,
                prefix: STEP,
                after: after.as_deref(),
                limit: 500,
                descending: false,
            })
            .await?;
        for item in &page.items {
            let entry: HistoryEntry = decode(item)?;
            entries.insert(entry.key.clone(), entry);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(entries),
        }
    }
}

/// Marks an execution as run by this process for as long as it lives.
struct Running<'a, T, K> {
    inner: &'a Inner<T, K>,
    name: &'a str,
}

impl<T, K> Drop for Running<'_, T, K> {
    fn drop(&mut self) {
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(self.name);
    }
}

impl<T: Table, K: Tasks> Inner<T, K> {
    fn claim_locally(&self, name: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned())
    }

    /// Claims the execution with a fresh token, replays it to its end and records how it
    /// ended. Leaves it running (to be resumed) if the claim is lost or the store fails.
    async fn drive(&self, name: &str) -> Result<(), StoreError> {
        let pk = execution_pk(name);
        let token = uuid::Uuid::new_v4().to_string();
        let mut record = loop {
            let Some(head) = self.table.get(&pk, HEAD).await? else {
                return Ok(());
            };
            let mut record: ExecutionRecord = decode(&head)?;
            if record.status != ExecutionStatus::Running {
                return Ok(());
            }
            record.runs += 1;
            if record.callback_secret.is_empty() {
                // Started before tokens were signed: it gets a secret now.
                record.callback_secret = uuid::Uuid::new_v4().simple().to_string();
            }
            let claim = Write::Put {
                item: item(
                    pk.clone(),
                    HEAD.into(),
                    head.version + 1,
                    &record,
                    Some(&token),
                )?,
                condition: Condition::VersionIs(head.version),
            };
            match self.table.transact(vec![claim]).await {
                Ok(()) => break record,
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        };
        let outcome = match self.machines.get(&record.state_machine) {
            None => Err(Failure::new(
                commerce_asl::run::RUNTIME,
                format!("no state machine {}", record.state_machine),
            )),
            Some(definition) => {
                let journal = Journal {
                    table: &self.table,
                    tasks: &self.tasks,
                    pk: &pk,
                    name,
                    secret: &record.callback_secret,
                    token: &token,
                    recorded: Mutex::new(journal(&self.table, name).await?),
                    stopped: AtomicBool::new(false),
                };
                let execution = commerce_asl::Execution {
                    id: format!("local:execution:{}:{name}", record.state_machine),
                    name: name.to_owned(),
                    state_machine: record.state_machine.clone(),
                    started: OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(record.started_at) * 1_000_000,
                    )
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    input: record.input.clone(),
                };
                let outcome = commerce_asl::run(definition, &execution, &journal, &journal).await;
                if journal.stopped.load(Ordering::SeqCst) {
                    return Err(StoreError::Failure(format!(
                        "the runner of {name} lost its claim or could not record"
                    )));
                }
                outcome
            }
        };
        record.stopped_at = Some(now_ms());
        match outcome {
            Ok(output) => {
                record.status = ExecutionStatus::Succeeded;
                record.output = Some(output);
            }
            Err(failure) => {
                tracing::warn!(execution = %name, error = %failure.error, cause = %failure.cause, "execution failed");
                record.status = ExecutionStatus::Failed;
                record.error = Some(failure.error);
                record.cause = Some(failure.cause);
            }
        }
        let version = self
            .table
            .get(&pk, HEAD)
            .await?
            .map_or(0, |head| head.version);
        let finish = vec![
            Write::Put {
                item: item(pk.clone(), HEAD.into(), version + 1, &record, None)?,
                condition: Condition::OwnerIs(token),
            },
            Write::Delete {
                pk: RUNNING.into(),
                sk: name.into(),
                condition: Condition::None,
            },
            Write::Put {
                item: item(
                    listing_pk(&record.state_machine),
                    listing_sk(&record),
                    1,
                    &record.public(),
                    None,
                )?,
                condition: Condition::None,
            },
        ];
        self.table.transact(finish).await
    }
}

/// The journal of one run: answers tasks and waits from what is recorded, and records what
/// is new under the run's claim. Once a write fails, it stops the run.
struct Journal<'a, T, K> {
    table: &'a T,
    tasks: &'a K,
    pk: &'a str,
    name: &'a str,
    secret: &'a str,
    token: &'a str,
    recorded: Mutex<HashMap<String, HistoryEntry>>,
    stopped: AtomicBool,
}

impl<T: Table, K: Tasks> Journal<'_, T, K> {
    fn recorded(&self, key: &str) -> Option<HistoryEntry> {
        self.recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn stop(&self) -> Failure {
        self.stopped.store(true, Ordering::SeqCst);
        Failure::new(
            commerce_asl::run::RUNTIME,
            "the runner stopped: its claim was taken or the store failed",
        )
    }

    /// A `.waitForTaskToken` task: invoked once (recorded as scheduled after it has handed
    /// its token on, so a crash in between invokes it again, with the same token), then
    /// waited for until its answer is in the journal, from whichever process took it.
    async fn callback(&self, call: TaskCall) -> Result<Value, Failure> {
        let key = call.key.clone();
        let state = call.state.clone();
        let heartbeat = call.heartbeat;
        let timeout = call.timeout;
        let scheduled_key = format!("{key}{SCHEDULED}");
        let scheduled_at = match self.recorded(&scheduled_key) {
            Some(entry) => entry.at,
            None => {
                match self.tasks.invoke(call).await {
                    Ok(_) => {}
                    Err(failure) if failure.error == commerce_asl::run::RUNTIME => {
                        return Err(failure);
                    }
                    Err(failure) => {
                        self.record(HistoryEntry {
                            at: now_ms(),
                            key,
                            state,
                            what: Happened::TaskFailed {
                                error: failure.error.clone(),
                                cause: failure.cause.clone(),
                            },
                        })
                        .await?;
                        return Err(failure);
                    }
                }
                let at = now_ms();
                self.record(HistoryEntry {
                    at,
                    key: scheduled_key,
                    state: state.clone(),
                    what: Happened::TaskScheduled {},
                })
                .await?;
                at
            }
        };
        let mut polls: u32 = 0;
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return Err(self.stop());
            }
            let answer = self
                .table
                .get(self.pk, &format!("{STEP}{key}"))
                .await
                .ok()
                .flatten()
                .and_then(|item| decode::<HistoryEntry>(&item).ok());
            match answer.map(|entry| entry.what) {
                Some(Happened::TaskSucceeded { output }) => return Ok(output),
                Some(Happened::TaskFailed { error, cause }) => {
                    return Err(Failure { error, cause });
                }
                _ => {}
            }
            let waited = now_ms().saturating_sub(scheduled_at);
            if waited > i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX) {
                let failure = Failure::new(
                    commerce_asl::run::TIMEOUT,
                    format!("{state} ran longer than {} s", timeout.as_secs()),
                );
                // Recorded like an answer: a late answer is refused, and a replay times out
                // the same way. An answer written first wins.
                let recorded = self
                    .record_if_unanswered(HistoryEntry {
                        at: now_ms(),
                        key: key.clone(),
                        state: state.clone(),
                        what: Happened::TaskFailed {
                            error: failure.error.clone(),
                            cause: failure.cause.clone(),
                        },
                    })
                    .await?;
                if recorded {
                    return Err(failure);
                }
                continue;
            }
            if let Some(limit) = heartbeat {
                let last = self
                    .table
                    .get(self.pk, &format!("{STEP}{key}{HEARTBEAT}"))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|item| decode::<HistoryEntry>(&item).ok())
                    .map_or(scheduled_at, |beat| beat.at.max(scheduled_at));
                let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
                if now_ms().saturating_sub(last) > limit_ms {
                    let failure = Failure::new(
                        commerce_asl::callback::HEARTBEAT_TIMEOUT,
                        format!("no heartbeat for {} s", limit.as_secs()),
                    );
                    // An answer written meanwhile wins: the record's Absent condition fails
                    // and the next look reads it.
                    let recorded = self
                        .record_if_unanswered(HistoryEntry {
                            at: now_ms(),
                            key: key.clone(),
                            state: state.clone(),
                            what: Happened::TaskFailed {
                                error: failure.error.clone(),
                                cause: failure.cause.clone(),
                            },
                        })
                        .await?;
                    if recorded {
                        return Err(failure);
                    }
                    continue;
                }
            }
            polls += 1;
            if polls.is_multiple_of(CLAIM_CHECK_POLLS) && !self.still_claimed().await {
                return Err(self.stop());
            }
            tokio::time::sleep(CALLBACK_POLL).await;
        }
    }

    /// Whether this run still holds the execution's claim (a long wait reads, never writes,
    /// so it looks now and then).
    async fn still_claimed(&self) -> bool {
        match self.table.get(self.pk, HEAD).await {
            Ok(Some(head)) => head.owner.as_deref() == Some(self.token),
            Ok(None) => false,
            // A store that fails for now is no news of another runner.
            Err(_) => true,
        }
    }

    /// [`Self::record`], but an entry already there (an answer that came first) is no
    /// failure: `false`.
    async fn record_if_unanswered(&self, entry: HistoryEntry) -> Result<bool, Failure> {
        let journal_item = item(
            self.pk.to_owned(),
            format!("{STEP}{}", entry.key),
            1,
            &entry,
            None,
        )
        .map_err(|_| self.stop())?;
        let writes = vec![
            Write::Check {
                pk: self.pk.to_owned(),
                sk: HEAD.into(),
                condition: Condition::OwnerIs(self.token.to_owned()),
            },
            Write::Put {
                item: journal_item,
                condition: Condition::Absent,
            },
        ];
        for attempt in 0..WRITE_TRIES {
            match self.table.transact(writes.clone()).await {
                Ok(()) => return Ok(true),
                Err(StoreError::ConditionFailed { index: 1 }) => return Ok(false),
                Err(StoreError::Busy(_) | StoreError::Conflict) if attempt + 1 < WRITE_TRIES => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(_) => return Err(self.stop()),
            }
        }
        Err(self.stop())
    }

    /// Writes the entry if this run still holds the claim.
    async fn record(&self, entry: HistoryEntry) -> Result<(), Failure> {
        let Ok(journal_item) = item(
            self.pk.to_owned(),
            format!("{STEP}{}", entry.key),
            1,
            &entry,
            None,
        ) else {
            return Err(self.stop());
        };
        let writes = vec![
            Write::Check {
                pk: self.pk.to_owned(),
                sk: HEAD.into(),
                condition: Condition::OwnerIs(self.token.to_owned()),
            },
            Write::Put {
                item: journal_item,
                condition: Condition::Absent,
            },
        ];
        for attempt in 0..WRITE_TRIES {
            match self.table.transact(writes.clone()).await {
                Ok(()) => {
                    self.recorded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(entry.key.clone(), entry);
                    return Ok(());
                }
                Err(StoreError::Busy(_) | StoreError::Conflict) if attempt + 1 < WRITE_TRIES => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(_) => return Err(self.stop()),
            }
        }
        Err(self.stop())
    }
}

impl<T: Table, K: Tasks> Tasks for Journal<'_, T, K> {
    fn token(&self, key: &str) -> String {
        callback_token(self.secret, self.name, key)
    }

    fn times_callbacks(&self) -> bool {
        true
    }

    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(self.stop());
        }
        if let Some(entry) = self.recorded(&call.key) {
            return match entry.what {
                Happened::TaskSucceeded { output } => Ok(output),
                Happened::TaskFailed { error, cause } => Err(Failure { error, cause }),
                _ => Err(Failure::new(
                    commerce_asl::run::RUNTIME,
                    format!("journal entry {} is no task's answer", call.key),
                )),
            };
        }
        if call.token.is_some() {
            return self.callback(call).await;
        }
        let key = call.key.clone();
        let state = call.state.clone();
        let answer = self.tasks.invoke(call).await;
        let what = match &answer {
            Ok(output) => Happened::TaskSucceeded {
                output: output.clone(),
            },
            // The run's own stop is not the task's answer: nothing to record.
            Err(failure) if failure.error == commerce_asl::run::RUNTIME => return answer,
            Err(failure) => Happened::TaskFailed {
                error: failure.error.clone(),
                cause: failure.cause.clone(),
            },
        };
        self.record(HistoryEntry {
            at: now_ms(),
            key,
            state,
            what,
        })
        .await?;
        answer
    }
}

impl<T: Table, K: Tasks> commerce_asl::Clock for Journal<'_, T, K> {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    async fn pause(&self, key: &str, duration: Duration) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let until = match self.recorded(key) {
            Some(HistoryEntry {
                what: Happened::Waited { until },
                ..
            }) => until,
            _ => {
                let until = now_ms()
                    .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
                let state = key
                    .rsplit('/')
                    .next()
                    .and_then(|last| last.split('.').next())
                    .unwrap_or_default()
                    .to_owned();
                if self
                    .record(HistoryEntry {
                        at: now_ms(),
                        key: key.to_owned(),
                        state,
                        what: Happened::Waited { until },
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                until
            }
        };
        let left = until.saturating_sub(now_ms()).max(0);
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0))).await;
    }

    async fn deadline(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn item(
    pk: String,
    sk: String,
    version: u64,
    data: &impl Serialize,
    owner: Option<&str>,
) -> Result<Item, StoreError> {
    Ok(Item {
        pk,
        sk,
        version,
        data: to_json(data)?,
        expires_at: None,
        owner: owner.map(str::to_owned),
        index: None,
    })
}

fn decode<V: serde::de::DeserializeOwned>(item: &Item) -> Result<V, StoreError> {
    serde_json::from_slice(&item.data)
        .map_err(|e| StoreError::Failure(format!("corrupt {}/{}: {e}", item.pk, item.sk)))
}

/// Why an answer to a callback token was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CallbackRefused {
    #[error("not a task token of this runtime")]
    InvalidToken,
    /// Answered already, timed out, or its execution ended: as Step Functions' TaskTimedOut.
    #[error("the task is not waiting for this token any more")]
    NotWaiting,
    #[error("error names starting with States. are the runtime's own")]
    ReservedError,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The token of the callback task `key` of execution `name`: both, and a signature with the
/// execution's secret, so nobody makes up a token that answers a task.
fn callback_token(secret: &str, name: &str, key: &str) -> String {
    format!(
        "{}.{}.{}",
        hex::encode(name),
        hex::encode(key),
        hex::encode(token_mac(secret, name, key).finalize().into_bytes())
    )
}

fn token_mac(secret: &str, name: &str, key: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(key.as_bytes());
    mac
}

/// The execution and task key a token names, once its signature is checked.
async fn open_token<T: Table>(table: &T, token: &str) -> Result<(String, String), CallbackRefused> {
    let mut parts = token.split('.');
    let (Some(name), Some(key), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CallbackRefused::InvalidToken);
    };
    let text = |hex_text: &str| {
        hex::decode(hex_text)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    };
    let (Some(name), Some(key), Ok(signature)) = (text(name), text(key), hex::decode(signature))
    else {
        return Err(CallbackRefused::InvalidToken);
    };
    let record = describe(table, &name)
        .await?
        .ok_or(CallbackRefused::InvalidToken)?;
    token_mac(&record.callback_secret, &name, &key)
        .verify_slice(&signature)
        .map_err(|_| CallbackRefused::InvalidToken)?;
    // An answer may come before the runner has journaled the task as scheduled (the task
    // handed the token on and was answered at once): it is kept for the runner to take.
    if record.status != ExecutionStatus::Running {
        return Err(CallbackRefused::NotWaiting);
    }
    Ok((name, key))
}

/// The state a task key names: its last part's state name.
fn state_of(key: &str) -> String {
    key.rsplit('/')
        .next()
        .and_then(|last| last.split('.').next())
        .unwrap_or_default()
        .to_owned()
}

/// Answers the task waiting for `token`, from any process: the first answer is taken, later
/// ones are refused.
async fn answer<T: Table>(table: &T, token: &str, what: Happened) -> Result<(), CallbackRefused> {
    let (name, key) = open_token(table, token).await?;
    let entry = HistoryEntry {
        at: now_ms(),
        state: state_of(&key),
        key: key.clone(),
        what,
    };
    let write = Write::Put {
        item: item(execution_pk(&name), format!("{STEP}{key}"), 1, &entry, None)?,
        condition: Condition::Absent,
    };
    match table.transact(vec![write]).await {
        Ok(()) => Ok(()),
        Err(StoreError::ConditionFailed { .. }) => Err(CallbackRefused::NotWaiting),
        Err(e) => Err(e.into()),
    }
}

/// Step Functions' SendTaskSuccess, for the local runtime.
pub async fn send_task_success<T: Table>(
    table: &T,
    token: &str,
    output: &Value,
) -> Result<(), CallbackRefused> {
    answer(
        table,
        token,
        Happened::TaskSucceeded {
            output: output.clone(),
        },
    )
    .await
}

/// Step Functions' SendTaskFailure, for the local runtime.
pub async fn send_task_failure<T: Table>(
    table: &T,
    token: &str,
    error: &str,
    cause: &str,
) -> Result<(), CallbackRefused> {
    // The States.* names are the runtime's own (States.Runtime is caught by nothing).
    if error.starts_with("States.") {
        return Err(CallbackRefused::ReservedError);
    }
    answer(
        table,
        token,
        Happened::TaskFailed {
            error: error.to_owned(),
            cause: cause.to_owned(),
        },
    )
    .await
}

/// Step Functions' SendTaskHeartbeat, for the local runtime: the task is still at work.
pub async fn send_task_heartbeat<T: Table>(table: &T, token: &str) -> Result<(), CallbackRefused> {
    let (name, key) = open_token(table, token).await?;
    if table
        .get(&execution_pk(&name), &format!("{STEP}{key}"))
        .await?
        .is_some()
    {
        return Err(CallbackRefused::NotWaiting);
    }
    let entry = HistoryEntry {
        at: now_ms(),
        state: state_of(&key),
        key: format!("{key}{HEARTBEAT}"),
        what: Happened::Heartbeat {},
    };
    let write = Write::Put {
        item: item(
            execution_pk(&name),
            format!("{STEP}{key}{HEARTBEAT}"),
            1,
            &entry,
            None,
        )?,
        condition: Condition::None,
    };
    table.transact(vec![write]).await?;
    Ok(())
}
