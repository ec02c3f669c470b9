//! `.waitForTaskToken` locally: a task is handed a token, and its state waits until someone
//! sends success or failure for that token (or stops sending heartbeats), as with Step
//! Functions' `SendTaskSuccess`, `SendTaskFailure` and `SendTaskHeartbeat`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, oneshot};

use crate::run::{Clock, Failure, TaskCall, Tasks};

/// Step Functions' error when heartbeats stop.
pub const HEARTBEAT_TIMEOUT: &str = "States.HeartbeatTimeout";

/// Why an answer for a token was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// No task waits on it (never handed out, already answered, or timed out), as
    /// `TaskDoesNotExist` / `TaskTimedOut` on AWS.
    #[error("no task waits for this token")]
    NotWaiting,
}

/// The tokens tasks wait on.
#[derive(Debug, Default)]
pub struct Callbacks {
    waiting: Mutex<HashMap<String, Waiting>>,
}

#[derive(Debug)]
struct Waiting {
    answer: oneshot::Sender<Result<Value, Failure>>,
    beat: Arc<Notify>,
}

/// A token registered before its task is invoked, so an answer that comes back at once is not
/// missed.
#[derive(Debug)]
pub struct Pending {
    answer: oneshot::Receiver<Result<Value, Failure>>,
    beat: Arc<Notify>,
}

impl Callbacks {
    pub fn register(&self, token: &str) -> Pending {
        let (tx, rx) = oneshot::channel();
        let beat = Arc::new(Notify::new());
        self.lock().insert(
            token.to_owned(),
            Waiting {
                answer: tx,
                beat: beat.clone(),
            },
        );
        Pending { answer: rx, beat }
    }

    pub fn succeed(&self, token: &str, output: Value) -> Result<(), CallbackError> {
        self.answer(token, Ok(output))
    }

    pub fn fail(&self, token: &str, error: &str, cause: &str) -> Result<(), CallbackError> {
        self.answer(token, Err(Failure::new(error, cause)))
    }

    pub fn heartbeat(&self, token: &str) -> Result<(), CallbackError> {
        let waiting = self.lock();
        let entry = waiting.get(token).ok_or(CallbackError::NotWaiting)?;
        entry.beat.notify_one();
        Ok(())
    }

    /// Forgets a token whose wait ended without an answer (a timeout, the caller gone).
    pub fn forget(&self, token: &str) {
        self.lock().remove(token);
    }

    fn answer(&self, token: &str, answer: Result<Value, Failure>) -> Result<(), CallbackError> {
        let entry = self.lock().remove(token).ok_or(CallbackError::NotWaiting)?;
        entry
            .answer
            .send(answer)
            .map_err(|_| CallbackError::NotWaiting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Pending {
    /// The answer; `States.HeartbeatTimeout` when `heartbeat` passes without a heartbeat or an
    /// answer. (The Task state's own timeout bounds the whole wait.)
    pub async fn wait<C: Clock>(
        self,
        heartbeat: Option<Duration>,
        clock: &C,
    ) -> Result<Value, Failure> {
        let Pending { mut answer, beat } = self;
        loop {
            let Some(every) = heartbeat else {
                return answer.await.unwrap_or_else(|_| Err(gone()));
            };
            tokio::select! {
                got = &mut answer => return got.unwrap_or_else(|_| Err(gone())),
                () = beat.notified() => {}
                () = clock.deadline(every) => {
                    return Err(Failure::new(
                        HEARTBEAT_TIMEOUT,
                        format!("no heartbeat for {} s", every.as_secs()),
                    ));
                }
            }
        }
    }
}

fn gone() -> Failure {
    Failure::new(crate::run::RUNTIME, "the token's wait was dropped")
}

/// Runs Task states through `inner`; for a `.waitForTaskToken` task, `inner` only hands the
/// token on (sends the message, starts the job), and the state's result is what is later sent
/// for the token.
#[derive(Debug)]
pub struct WithCallbacks<'a, T, C> {
    pub inner: &'a T,
    pub callbacks: &'a Callbacks,
    pub clock: &'a C,
}

impl<T: Tasks, C: Clock> Tasks for WithCallbacks<'_, T, C> {
    fn token(&self, key: &str) -> String {
        self.inner.token(key)
    }

    fn times_callbacks(&self) -> bool {
        self.inner.times_callbacks()
    }

    async fn invoke(&self, call: TaskCall) -> Result<Value, Failure> {
        let Some(token) = call.token.clone() else {
            return self.inner.invoke(call).await;
        };
        let heartbeat = call.heartbeat;
        let pending = self.callbacks.register(&token);
        // Answered, failed, timed out or dropped midway: the token is spent either way.
        let _spent = Spent {
            callbacks: self.callbacks,
            token,
        };
        self.inner.invoke(call).await?;
        pending.wait(heartbeat, self.clock).await
    }
}

/// Forgets its token when dropped.
struct Spent<'a> {
    callbacks: &'a Callbacks,
    token: String,
}

impl Drop for Spent<'_> {
    fn drop(&mut self) {
        self.callbacks.forget(&self.token);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::run::RealTime;
    use serde_json::json;

    #[tokio::test]
    async fn an_answer_sent_before_the_wait_begins_is_not_missed() {
        let callbacks = Callbacks::default();
        let pending = callbacks.register("t");
        callbacks.succeed("t", json!({"ok": true})).unwrap();
        assert_eq!(pending.wait(None, &RealTime).await, Ok(json!({"ok": true})));
        assert_eq!(
            callbacks.succeed("t", json!(1)),
            Err(CallbackError::NotWaiting),
            "a token is answered once"
        );
        assert_eq!(callbacks.heartbeat("never"), Err(CallbackError::NotWaiting));
    }

    #[tokio::test]
    async fn a_failure_sent_for_the_token_fails_the_task() {
        let callbacks = Callbacks::default();
        let pending = callbacks.register("t");
        callbacks.fail("t", "Refused", "no").unwrap();
        assert_eq!(
            pending.wait(None, &RealTime).await,
            Err(Failure::new("Refused", "no"))
        );
    }

    /// Answers nothing itself: the token is only handed on.
    struct HandOn;

    impl Tasks for HandOn {
        async fn invoke(&self, _call: TaskCall) -> Result<Value, Failure> {
            Ok(Value::Null)
        }
    }

    #[tokio::test]
    async fn a_wait_dropped_midway_leaves_no_token_waiting() {
        let callbacks = Callbacks::default();
        let tasks = WithCallbacks {
            inner: &HandOn,
            callbacks: &callbacks,
            clock: &RealTime,
        };
        let call = TaskCall {
            state: "T".into(),
            key: "/T.1#0".into(),
            resource: "r.waitForTaskToken".into(),
            input: Value::Null,
            token: Some("t".into()),
            heartbeat: None,
            timeout: Duration::from_secs(60),
        };
        let mut waiting = Box::pin(tasks.invoke(call));
        // Polled once: the token is handed on, and the state waits.
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut waiting)
                .await
                .is_err()
        );
        assert_eq!(callbacks.heartbeat("t"), Ok(()), "waiting now");
        drop(waiting);
        assert_eq!(callbacks.heartbeat("t"), Err(CallbackError::NotWaiting));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_wait_alive_and_their_absence_ends_it() {
        let callbacks = Arc::new(Callbacks::default());
        let pending = callbacks.register("t");
        let beating = callbacks.clone();
        let beats = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                beating.heartbeat("t").unwrap();
            }
        });
        let started = tokio::time::Instant::now();
        let ended = pending.wait(Some(Duration::from_secs(5)), &RealTime).await;
        beats.await.unwrap();
        assert_eq!(ended.unwrap_err().error, HEARTBEAT_TIMEOUT);
        // Three beats 4 s apart kept it alive; it ended 5 s after the last.
        assert_eq!(started.elapsed(), Duration::from_secs(17));
    }
}
