//! Running a definition: input and output processing, each state type, Retry and Catch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::definition::{Catcher, Definition, Dynamic, Kind, Retrier, Seconds, State, WaitFor};
use crate::path::Path;
use crate::template::{Template, Unfilled};

pub const ALL: &str = "States.ALL";
pub const TASK_FAILED: &str = "States.TaskFailed";
pub const TIMEOUT: &str = "States.Timeout";
pub const RUNTIME: &str = "States.Runtime";
pub const RESULT_PATH_MATCH_FAILURE: &str = "States.ResultPathMatchFailure";

/// How a state, a branch or an execution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub cause: String,
}

impl Failure {
    pub fn new(error: &str, cause: impl Into<String>) -> Self {
        Self {
            error: error.to_owned(),
            cause: cause.into(),
        }
    }

    /// Whether a retrier or catcher naming `names` takes it. `States.ALL` takes every error
    /// but `States.Runtime`; `States.TaskFailed` every one but `States.Timeout` (and Runtime).
    pub fn matches(&self, names: &[String]) -> bool {
        if self.error == RUNTIME {
            return false;
        }
        names.iter().any(|name| {
            name == &self.error || name == ALL || (name == TASK_FAILED && self.error != TIMEOUT)
        })
    }
}

/// One invocation of a Task state.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCall {
    /// The Task state's name.
    pub state: String,
    /// Names this invocation within its execution, the same each time the execution runs
    /// (state, visit, retry, and the branch or item it is in), so a durable runner can
    /// record its answer and give it again when the execution is resumed.
    pub key: String,
    pub resource: String,
    /// The state's effective input: after InputPath and Parameters.
    pub input: Value,
    /// For `.waitForTaskToken`: the token the task must answer with.
    pub token: Option<String>,
    /// For `.waitForTaskToken`: the longest gap allowed between heartbeats.
    pub heartbeat: Option<Duration>,
    /// The state's `TimeoutSeconds`.
    pub timeout: Duration,
}

/// What runs Task states: Lambda functions on AWS, in-process handlers locally, a script in
/// tests and in `commerce asl run`.
pub trait Tasks: Send + Sync {
    /// The task's result, or its failure. A `.waitForTaskToken` task answers when the token is
    /// sent success or failure (or fails `States.HeartbeatTimeout` when heartbeats stop).
    fn invoke(&self, call: TaskCall) -> impl Future<Output = Result<Value, Failure>> + Send;

    /// The token a `.waitForTaskToken` invocation hands out, given its key. Random by
    /// default; a durable runner derives it from the key, so a resumed execution waits on the
    /// token it handed out before.
    fn token(&self, key: &str) -> String {
        let _ = key;
        uuid::Uuid::new_v4().to_string()
    }

    /// Whether this runner times `.waitForTaskToken` tasks itself ([`TaskCall::timeout`]),
    /// as a durable one must: its timeout then counts from when the token was handed out,
    /// across restarts, and is recorded like an answer, so a late answer cannot change what
    /// a replay does.
    fn times_callbacks(&self) -> bool {
        false
    }
}

/// Time as executions see it.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
    /// Waits (a Wait state, a retry's interval). `key` names the wait as [`TaskCall::key`]
    /// names an invocation.
    fn pause(&self, key: &str, duration: Duration) -> impl Future<Output = ()> + Send;
    /// Resolves when a timeout of `duration` is up.
    fn deadline(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

impl Clock for RealTime {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    async fn pause(&self, _key: &str, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    async fn deadline(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A clock whose waits take no time: each pause moves it forward instead. Timeouts never fire
/// (nothing it runs takes time).
#[derive(Debug)]
pub struct VirtualTime {
    now: Mutex<OffsetDateTime>,
}

impl VirtualTime {
    pub fn starting_at(now: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(now),
        }
    }
}

impl Clock for VirtualTime {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn pause(&self, _key: &str, duration: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now =
            now.saturating_add(time::Duration::try_from(duration).unwrap_or(time::Duration::MAX));
    }

    async fn deadline(&self, _duration: Duration) {
        std::future::pending::<()>().await;
    }
}

/// Who is running: the context object's `Execution` and `StateMachine`.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: String,
    pub name: String,
    pub state_machine: String,
    pub started: OffsetDateTime,
    pub input: Value,
}

/// Runs `definition` on `input` to its end.
pub async fn run<T: Tasks, C: Clock>(
    definition: &Definition,
    execution: &Execution,
    tasks: &T,
    clock: &C,
) -> Result<Value, Failure> {
    let runner = Runner {
        execution,
        tasks,
        clock,
    };
    let run = runner.definition(definition, execution.input.clone(), None, String::new());
    match definition.timeout_seconds {
        Some(seconds) => tokio::select! {
            result = run => result,
            () = clock.deadline(Duration::from_secs(seconds)) => {
                Err(Failure::new(TIMEOUT, format!("the execution ran longer than {seconds} s")))
            }
        },
        None => run.await,
    }
}

struct Runner<'a, T, C> {
    execution: &'a Execution,
    tasks: &'a T,
    clock: &'a C,
}

type Boxed<'a> = Pin<Box<dyn Future<Output = Result<Value, Failure>> + Send + 'a>>;

/// The context object's `Map.Item`, inside an item processor.
type MapItem = Option<(usize, Value)>;

impl<'a, T: Tasks, C: Clock> Runner<'a, T, C> {
    /// Runs a state machine, a branch or an item processor. `trail` names where it runs, for
    /// the keys of its invocations and waits.
    fn definition(
        &'a self,
        definition: &'a Definition,
        input: Value,
        item: MapItem,
        trail: String,
    ) -> Boxed<'a> {
        Box::pin(async move {
            let mut name = definition.start_at.as_str();
            let mut input = input;
            let mut visits: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
            loop {
                let state = definition.states.get(name).ok_or_else(|| {
                    Failure::new(
                        RUNTIME,
                        format!("no state {name:?} (the definition was checked)"),
                    )
                })?;
                let visit = visits.entry(name).or_insert(0);
                *visit += 1;
                let key = format!("{trail}/{name}.{visit}");
                let (output, next) = self.state(name, state, input, item.clone(), &key).await?;
                match next {
                    Some(next) => {
                        name = definition
                            .states
                            .get_key_value(next.as_str())
                            .map(|(k, _)| k.as_str())
                            .ok_or_else(|| Failure::new(RUNTIME, format!("no state {next:?}")))?;
                        input = output;
                    }
                    None => return Ok(output),
                }
            }
        })
    }

    fn context(
        &self,
        state: &str,
        entered: OffsetDateTime,
        retries: u32,
        token: Option<&str>,
        item: &MapItem,
    ) -> Value {
        let mut context = json!({
            "Execution": {
                "Id": self.execution.id,
                "Name": self.execution.name,
                "Input": self.execution.input,
                "StartTime": timestamp(self.execution.started),
            },
            "StateMachine": {"Id": self.execution.state_machine, "Name": self.execution.state_machine},
            "State": {"Name": state, "EnteredTime": timestamp(entered), "RetryCount": retries},
        });
        if let (Some(token), Value::Object(map)) = (token, &mut context) {
            map.insert("Task".into(), json!({"Token": token}));
        }
        if let (Some((index, value)), Value::Object(map)) = (item, &mut context) {
            map.insert(
                "Map".into(),
                json!({"Item": {"Index": index, "Value": value}}),
            );
        }
        context
    }

    /// Runs one state: its output, and the state to go to (`None`: the end).
    async fn state(
        &'a self,
        name: &'a str,
        state: &'a State,
        raw: Value,
        item: MapItem,
        key: &str,
    ) -> Result<(Value, Option<String>), Failure> {
        let entered = self.clock.now();
        let context = self.context(name, entered, 0, None, &item);
        let effective = select(state.input_path.as_ref(), &raw, &context, "InputPath")?;
        let next = state.next.clone();
        match &state.kind {
            Kind::Choice { choices, default } => {
                for (rule, to) in choices {
                    if rule
                        .holds(&effective, &context)
                        .map_err(|c| Failure::new(RUNTIME, c))?
                    {
                        let out = select(
                            state.output_path.as_ref(),
                            &effective,
                            &context,
                            "OutputPath",
                        )?;
                        return Ok((out, Some(to.clone())));
                    }
                }
                match default {
                    Some(to) => {
                        let out = select(
                            state.output_path.as_ref(),
                            &effective,
                            &context,
                            "OutputPath",
                        )?;
                        Ok((out, Some(to.clone())))
                    }
                    // Step Functions reports this as States.Runtime (States.NoChoiceMatched is
                    // reserved), so nothing retries or catches it.
                    None => Err(Failure::new(
                        RUNTIME,
                        format!("no choice of {name} matched, and it has no Default"),
                    )),
                }
            }
            Kind::Succeed => Ok((
                select(
                    state.output_path.as_ref(),
                    &effective,
                    &context,
                    "OutputPath",
                )?,
                None,
            )),
            Kind::Fail { error, cause } => {
                let read = |d: &Option<Dynamic>| -> Result<String, Failure> {
                    Ok(match d {
                        None => String::new(),
                        Some(Dynamic::Fixed(s)) => s.clone(),
                        Some(Dynamic::Path(p)) => match p.select(&raw, &context) {
                            Some(Value::String(s)) => s,
                            Some(_) => {
                                return Err(Failure::new(RUNTIME, format!("{p} is not a string")));
                            }
                            None => {
                                return Err(Failure::new(RUNTIME, format!("{p} selects nothing")));
                            }
                        },
                        Some(Dynamic::Intrinsic(call)) => match call.eval(&raw, &context) {
                            Ok(Value::String(s)) => s,
                            Ok(_) => {
                                return Err(Failure::new(
                                    RUNTIME,
                                    format!("{} gave no string", call.name),
                                ));
                            }
                            Err(cause) => return Err(Failure::new(RUNTIME, cause)),
                        },
                    })
                };
                Err(Failure {
                    error: read(error)?,
                    cause: read(cause)?,
                })
            }
            Kind::Wait(until) => {
                let duration = match until {
                    WaitFor::Seconds(s) => Duration::from_secs(seconds(s, &effective, &context)?),
                    WaitFor::Timestamp(t) => until_time(t, self.clock.now())?,
                    WaitFor::TimestampPath(p) => match p.select(&effective, &context) {
                        Some(Value::String(t)) => until_time(&t, self.clock.now())?,
                        _ => return Err(Failure::new(RUNTIME, format!("{p} is not a timestamp"))),
                    },
                };
                self.clock.pause(&format!("{key}:wait"), duration).await;
                Ok((
                    select(
                        state.output_path.as_ref(),
                        &effective,
                        &context,
                        "OutputPath",
                    )?,
                    next,
                ))
            }
            Kind::Pass { result } => {
                let result = match result {
                    Some(r) => r.clone(),
                    None => fill(state.parameters.as_ref(), &effective, &context)?,
                };
                let out = place(state, raw, result, &context)?;
                Ok((out, next))
            }
            Kind::Task { .. } | Kind::Parallel { .. } | Kind::Map { .. } => {
                self.attempts(name, state, raw, effective, entered, item, key)
                    .await
            }
        }
    }

    /// A state that may fail and be retried or caught.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &'a self,
        name: &'a str,
        state: &'a State,
        raw: Value,
        effective: Value,
        entered: OffsetDateTime,
        item: MapItem,
        key: &str,
    ) -> Result<(Value, Option<String>), Failure> {
        let mut tries = vec![0u32; state.retry.len()];
        loop {
            let retries: u32 = tries.iter().sum();
            let failure = match self
                .once(
                    name,
                    state,
                    &raw,
                    &effective,
                    entered,
                    retries,
                    &item,
                    &format!("{key}#{retries}"),
                )
                .await
            {
                Ok(output) => return Ok((output, state.next.clone())),
                Err(failure) => failure,
            };
            if failure.error == RUNTIME {
                return Err(failure);
            }
            if let Some((n, retrier)) = state
                .retry
                .iter()
                .enumerate()
                .find(|(_, r)| failure.matches(&r.errors))
                && let Some(done) = tries.get_mut(n)
                && *done < retrier.max_attempts
            {
                let delay = delay(retrier, *done);
                *done += 1;
                self.clock
                    .pause(&format!("{key}#{retries}:retry"), delay)
                    .await;
                continue;
            }
            return match state.catch.iter().find(|c| failure.matches(&c.errors)) {
                Some(catcher) => caught(catcher, raw, &failure),
                None => Err(failure),
            };
        }
    }

    /// One try of a Task, Parallel or Map state: its output.
    #[allow(clippy::too_many_arguments)]
    async fn once(
        &'a self,
        name: &'a str,
        state: &'a State,
        raw: &Value,
        effective: &Value,
        entered: OffsetDateTime,
        retries: u32,
        item: &MapItem,
        key: &str,
    ) -> Result<Value, Failure> {
        let result = match &state.kind {
            Kind::Task {
                resource,
                callback,
                timeout,
                heartbeat,
            } => {
                let token = callback.then(|| self.tasks.token(key));
                let context = self.context(name, entered, retries, token.as_deref(), item);
                let input = fill(state.parameters.as_ref(), effective, &context)?;
                let timeout = seconds(timeout, effective, &context)?;
                let heartbeat = heartbeat
                    .as_ref()
                    .map(|h| seconds(h, effective, &context).map(Duration::from_secs))
                    .transpose()?;
                let timed_by_runner = token.is_some() && self.tasks.times_callbacks();
                let call = TaskCall {
                    state: name.to_owned(),
                    key: key.to_owned(),
                    resource: resource.clone(),
                    input,
                    token,
                    heartbeat,
                    timeout: Duration::from_secs(timeout),
                };
                if timed_by_runner {
                    self.tasks.invoke(call).await?
                } else {
                    tokio::select! {
                        result = self.tasks.invoke(call) => result?,
                        () = self.clock.deadline(Duration::from_secs(timeout)) => {
                            return Err(Failure::new(TIMEOUT, format!("{name} ran longer than {timeout} s")));
                        }
                    }
                }
            }
            Kind::Parallel { branches } => {
                let context = self.context(name, entered, retries, None, item);
                let input = fill(state.parameters.as_ref(), effective, &context)?;
                let runs = branches.iter().enumerate().map(|(n, branch)| {
                    self.definition(branch, input.clone(), None, format!("{key}[{n}]"))
                });
                Value::Array(futures_util::future::try_join_all(runs).await?)
            }
            Kind::Map {
                processor,
                items_path,
                item_selector,
                max_concurrency,
            } => {
                let context = self.context(name, entered, retries, None, item);
                let items = match items_path.select(effective, &context) {
                    Some(Value::Array(items)) => items,
                    _ => {
                        return Err(Failure::new(
                            RUNTIME,
                            format!("ItemsPath {items_path} of {name} is not an array"),
                        ));
                    }
                };
                let mut inputs = Vec::with_capacity(items.len());
                for (index, value) in items.into_iter().enumerate() {
                    let item = Some((index, value.clone()));
                    let input = match item_selector {
                        Some(selector) => {
                            let context = self.context(name, entered, retries, None, &item);
                            fill(Some(selector), effective, &context)?
                        }
                        None => value,
                    };
                    inputs.push((input, item));
                }
                let limit = match *max_concurrency {
                    0 => inputs.len().max(1),
                    n => n,
                };
                let results: Vec<Value> =
                    futures_util::stream::iter(inputs.into_iter().map(|(input, item)| {
                        let trail =
                            format!("{key}[{}]", item.as_ref().map_or(0, |(index, _)| *index));
                        self.definition(processor, input, item, trail)
                    }))
                    .buffered(limit)
                    .try_collect()
                    .await?;
                Value::Array(results)
            }
            _ => return Err(Failure::new(RUNTIME, format!("{name} cannot be retried"))),
        };
        let context = self.context(name, entered, retries, None, item);
        let result = match &state.result_selector {
            Some(selector) => selector.fill(&result, &context).map_err(unfilled)?,
            None => result,
        };
        place(state, raw.clone(), result, &context)
    }
}

/// Applies ResultPath (into the state's raw input) and then OutputPath.
fn place(state: &State, raw: Value, result: Value, context: &Value) -> Result<Value, Failure> {
    let combined = put_at(state.result_path.as_ref(), raw, result)
        .map_err(|cause| Failure::new(RESULT_PATH_MATCH_FAILURE, cause))?;
    select(state.output_path.as_ref(), &combined, context, "OutputPath")
}

/// The error output a catcher passes on: `{"Error", "Cause"}` at its ResultPath.
fn caught(
    catcher: &Catcher,
    raw: Value,
    failure: &Failure,
) -> Result<(Value, Option<String>), Failure> {
    let error = json!({"Error": failure.error, "Cause": failure.cause});
    let output = put_at(catcher.result_path.as_ref(), raw, error)
        .map_err(|cause| Failure::new(RUNTIME, cause))?;
    Ok((output, Some(catcher.next.clone())))
}

/// `value` placed at a ResultPath in `raw`; with none (`null`), `raw` as it was.
fn put_at(path: Option<&Path>, mut raw: Value, value: Value) -> Result<Value, String> {
    if let Some(path) = path {
        path.put(&mut raw, value)?;
    }
    Ok(raw)
}

/// InputPath / OutputPath: `None` (null) gives `{}`; a path that selects nothing fails the
/// execution.
fn select(
    path: Option<&Path>,
    value: &Value,
    context: &Value,
    field: &str,
) -> Result<Value, Failure> {
    match path {
        None => Ok(json!({})),
        Some(path) => path.select(value, context).ok_or_else(|| {
            Failure::new(
                RUNTIME,
                format!("{field} {path} selects nothing from the state's data"),
            )
        }),
    }
}

fn fill(template: Option<&Template>, input: &Value, context: &Value) -> Result<Value, Failure> {
    match template {
        Some(t) => t.fill(input, context).map_err(unfilled),
        None => Ok(input.clone()),
    }
}

/// A template that cannot be filled fails the execution: Step Functions reports a path that
/// selects nothing, or a failing intrinsic, as `States.Runtime` (`States.ParameterPathFailure`
/// and `States.IntrinsicFailure` are reserved names), which nothing retries or catches.
fn unfilled(e: Unfilled) -> Failure {
    match e {
        Unfilled::Path(cause) | Unfilled::Intrinsic(cause) => Failure::new(RUNTIME, cause),
    }
}

fn seconds(s: &Seconds, input: &Value, context: &Value) -> Result<u64, Failure> {
    match s {
        Seconds::Fixed(n) => Ok(*n),
        Seconds::Path(p) => p
            .select(input, context)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Failure::new(RUNTIME, format!("{p} is not a whole number of seconds"))),
    }
}

fn until_time(text: &str, now: OffsetDateTime) -> Result<Duration, Failure> {
    let at = crate::choice::timestamp(text)
        .ok_or_else(|| Failure::new(RUNTIME, format!("{text:?} is not an RFC 3339 timestamp")))?;
    Ok(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// The wait before retry number `done + 1`: the interval grown by the backoff rate, capped,
/// and with full jitter a random part of it.
pub fn delay(retrier: &Retrier, done: u32) -> Duration {
    let grown = retrier.interval_seconds
        * retrier
            .backoff_rate
            .powi(i32::try_from(done).unwrap_or(i32::MAX));
    let capped = match retrier.max_delay_seconds {
        Some(max) => grown.min(max),
        None => grown,
    };
    let seconds = if retrier.full_jitter {
        let unit = (uuid::Uuid::new_v4().as_u64_pair().0 >> 11) as f64 / (1u64 << 53) as f64;
        capped * unit
    } else {
        capped
    };
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// RFC 3339 with milliseconds, as Step Functions writes them.
fn timestamp(at: OffsetDateTime) -> String {
    let at = at
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}
