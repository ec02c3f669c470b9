//! Idempotency: a key and its request act once and answer the same, however often they come
//! and wherever the first run stopped. The whole rule lives in this file.
//!
//! - A key belongs to one caller (or, for steps the system takes itself, to one step) and one
//!   request: the fingerprint covers method, path and the body's JSON value, so the same JSON
//!   with other whitespace or key order is the same request, and another body is refused.
//! - [`begin`] answers [`Begin::Replay`] with the stored outcome, or [`Begin::Fresh`] with a
//!   [`Guard`]. Every write the guard makes carries a condition on the key's record, in the
//!   same transaction as the work: `Absent` for the first claim, then `OwnerIs(token)` with a
//!   token unique to this claim. Whoever does not hold the token cannot finish, park or give
//!   back the claim, nor commit work under it.
//! - Work that spans several commits (placing an order calls the payment provider between
//!   two) claims the key with a lease and records its progress. A duplicate waits a little for
//!   the first run to finish, then gets 409. Once the lease has run out (the holder crashed or
//!   was cut off), the next run takes the claim over from the old token and resumes from the
//!   recorded progress; the old holder's writes fail from then on.
//! - Outcomes are kept for 25 hours. Answers that changed nothing are not stored, so the same
//!   key may be retried. Stored outcomes never hold contact data.

use std::time::Duration;

use commerce_domain::TenantId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event_store::{Changes, CommitError, Purpose, to_json};
use crate::keys;
use crate::shop::Caller;
use crate::table::{Condition, Item, StoreError, Table, Write};
use crate::{AppError, Clock};

const SK: &str = "key";
/// How long a finished outcome is replayed.
pub const KEEP_SECONDS: i64 = 25 * 60 * 60;
/// How often a duplicate waiting for the first run looks again.
const POLL: Duration = Duration::from_millis(25);

/// A key for one request, with the fingerprint of what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pk: String,
    fingerprint: String,
}

impl IdempotencyKey {
    /// The `Idempotency-Key` a caller sent with a request, scoped to that caller.
    pub fn for_request(
        caller: &Caller,
        key: &str,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Self, AppError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AppError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        Ok(Self {
            pk: keys::idempotency(&caller.tenant, &caller.subject, key),
            fingerprint: fingerprint(&[method, path], body),
        })
    }

    /// A key for a step the system takes itself, with no HTTP caller behind it: a saga task,
    /// a webhook delivery. `step` names the kind of step, `id` the occurrence (an execution
    /// and state, a carrier's event id); `input` is what the step acts on.
    pub fn for_step(
        tenant: &TenantId,
        step: &str,
        id: &str,
        input: &Value,
    ) -> Result<Self, AppError> {
        let part = |name: &str, value: &str| {
            if value.is_empty() || value.len() > 200 || value.contains('#') {
                Err(AppError::BadRequest(format!(
                    "{name} must be 1 to 200 characters without '#'"
                )))
            } else {
                Ok(())
            }
        };
        part("step", step)?;
        part("id", id)?;
        Ok(Self {
            pk: keys::step(tenant, step, id),
            fingerprint: fingerprint(&[step], input),
        })
    }
}

/// SHA-256 over the parts and the JSON value written canonically (object keys sorted), so
/// equal JSON values always give the same fingerprint.
fn fingerprint(parts: &[&str], body: &Value) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update(b"\n");
    }
    canonical(body, &mut hash);
    hex::encode(hash.finalize())
}

fn canonical(value: &Value, hash: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            hash.update(b"{");
            for (name, value) in entries {
                hash.update(Value::String(name.clone()).to_string().as_bytes());
                hash.update(b":");
                canonical(value, hash);
                hash.update(b",");
            }
            hash.update(b"}");
        }
        Value::Array(items) => {
            hash.update(b"[");
            for item in items {
                canonical(item, hash);
                hash.update(b",");
            }
            hash.update(b"]");
        }
        scalar => hash.update(scalar.to_string().as_bytes()),
    }
}

/// A success as first sent, to send again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// How a finished request ended, kept to answer its repeats the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done(Reply),
    /// The payment provider said no: final for this key.
    Declined {
        reason: String,
    },
}

impl Outcome {
    pub fn into_reply(self) -> Result<Reply, AppError> {
        match self {
            Outcome::Done(reply) => Ok(reply),
            Outcome::Declined { reason } => Err(AppError::PaymentDeclined(reason)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    /// While in flight: until when (Unix ms) the holder's claim stands.
    #[serde(default)]
    lease_until: i64,
    /// While in flight: what the work has done so far, for a run that takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<Value>,
    /// How records written before outcomes were typed kept a finished answer.
    #[serde(default, skip_serializing)]
    response: Option<Reply>,
}

/// What an earlier use of the key means for this request.
#[derive(Debug)]
pub enum Begin<P> {
    Replay(Outcome),
    Fresh(Guard<P>),
}

/// Looks the key up. A duplicate of a run still in flight waits up to `wait` for its outcome,
/// then gets [`AppError::IdempotencyInFlight`]. No key: always fresh, with a guard that only
/// commits.
pub async fn begin<P, T, C>(
    table: &T,
    clock: &C,
    key: Option<&IdempotencyKey>,
    wait: Duration,
) -> Result<Begin<P>, AppError>
where
    P: DeserializeOwned,
    T: Table,
    C: Clock,
{
    let Some(key) = key else {
        return Ok(Begin::Fresh(Guard::new(None, Claim::Unguarded, None)));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (fingerprint, state) = match look(table, clock, &key.pk).await? {
            None => return Ok(Begin::Fresh(Guard::new(Some(key), Claim::Unclaimed, None))),
            Some(found) => found,
        };
        if fingerprint != key.fingerprint {
            return Err(AppError::IdempotencyMismatch);
        }
        match state {
            Found::Done(outcome) => return Ok(Begin::Replay(outcome)),
            Found::Stalled { owner, progress } => {
                let progress = decode_progress(progress)?;
                return Ok(Begin::Fresh(Guard::new(
                    Some(key),
                    Claim::Abandoned(owner),
                    progress,
                )));
            }
            Found::Working if tokio::time::Instant::now() >= deadline => {
                return Err(AppError::IdempotencyInFlight);
            }
            Found::Working => tokio::time::sleep(POLL).await,
        }
    }
}

/// The claim on a key whose run stopped, for the reconciler to take over: `None` when the key
/// is free or finished, [`AppError::IdempotencyInFlight`] while a run still holds its lease.
pub async fn stalled<P, T, C>(
    table: &T,
    clock: &C,
    record_pk: &str,
) -> Result<Option<Guard<P>>, AppError>
where
    P: DeserializeOwned,
    T: Table,
    C: Clock,
{
    match look(table, clock, record_pk).await? {
        None | Some((_, Found::Done(_))) => Ok(None),
        Some((_, Found::Working)) => Err(AppError::IdempotencyInFlight),
        Some((fingerprint, Found::Stalled { owner, progress })) => {
            let key = IdempotencyKey {
                pk: record_pk.to_owned(),
                fingerprint,
            };
            let progress = decode_progress(progress)?;
            Ok(Some(Guard::new(
                Some(&key),
                Claim::Abandoned(owner),
                progress,
            )))
        }
    }
}

/// What a key's record says, besides its fingerprint.
enum Found {
    Done(Outcome),
    /// A run holds the claim and its lease (or a claim from before claims had owners, which
    /// cannot be taken over and expires within a minute).
    Working,
    /// The claim's lease is out: another run may take it over from `owner`.
    Stalled {
        owner: String,
        progress: Option<Value>,
    },
}

/// Reads a key's record: `None` when there is none.
async fn look<T: Table, C: Clock>(
    table: &T,
    clock: &C,
    pk: &str,
) -> Result<Option<(String, Found)>, AppError> {
    let Some(item) = table.get(pk, SK).await? else {
        return Ok(None);
    };
    let record: Record = serde_json::from_slice(&item.data)
        .map_err(|e| StoreError::Failure(format!("corrupt idempotency record: {e}")))?;
    let found = match (
        record.outcome.or(record.response.map(Outcome::Done)),
        item.owner,
    ) {
        (Some(outcome), _) => Found::Done(outcome),
        (None, Some(owner)) if record.lease_until <= clock.now_ms() => Found::Stalled {
            owner,
            progress: record.progress,
        },
        (None, _) => Found::Working,
    };
    Ok(Some((record.fingerprint, found)))
}

fn decode_progress<P: DeserializeOwned>(progress: Option<Value>) -> Result<Option<P>, AppError> {
    progress
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| StoreError::Failure(format!("corrupt progress: {e}")).into())
}

/// Where a guard stands with its key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// The request has no key: commits carry no record.
    Unguarded,
    /// Nobody holds the key: the first commit claims it, if it is still absent.
    Unclaimed,
    /// A run that stopped left the key claimed under this token; the first commit takes over.
    Abandoned(String),
    /// This guard holds the key under this token.
    Held(String),
    /// Finished, parked or given back: this guard writes no more.
    Closed,
}

/// The right to act under a key, and the only way to write its record.
#[derive(Debug)]
pub struct Guard<P> {
    key: Option<IdempotencyKey>,
    claim: Claim,
    progress: Option<P>,
}

impl<P> Guard<P> {
    fn new(key: Option<&IdempotencyKey>, claim: Claim, progress: Option<P>) -> Self {
        Self {
            key: key.cloned(),
            claim,
            progress,
        }
    }

    /// Where the key's record lives; `None` for a request without a key.
    pub fn record_pk(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.pk.as_str())
    }

    /// What an earlier run recorded before it stopped; `None` on a first run.
    pub fn progress(&self) -> Option<&P> {
        self.progress.as_ref()
    }

    /// Whether this guard holds a claim: a failed condition then means it lost the claim to
    /// another run, not that another run finished first.
    pub fn holds_claim(&self) -> bool {
        matches!(self.claim, Claim::Held(_))
    }
}

impl<P: Serialize> Guard<P> {
    /// Commits `changes` with a claim on the key that records `progress` and lasts `lease_ms`.
    pub async fn claim<T: Table>(
        &mut self,
        table: &T,
        changes: Changes,
        progress: P,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), CommitError> {
        let token = match &self.claim {
            Claim::Held(token) => token.clone(),
            _ => uuid::Uuid::new_v4().simple().to_string(),
        };
        let record = Record {
            fingerprint: self.fingerprint(),
            outcome: None,
            lease_until: now_ms.saturating_add(lease_ms),
            progress: Some(serde_json::to_value(&progress).map_err(encode)?),
            response: None,
        };
        self.commit(table, changes, record, Some(token.clone()), now_ms)
            .await?;
        self.claim = Claim::Held(token);
        self.progress = Some(progress);
        Ok(())
    }

    /// Commits `changes` and keeps the claim's progress, but lets the next run with this key
    /// take over at once: for failures the caller should retry (a provider that is down).
    pub async fn park<T: Table>(
        &mut self,
        table: &T,
        changes: Changes,
        now_ms: i64,
    ) -> Result<(), CommitError> {
        let token = match &self.claim {
            Claim::Held(token) => token.clone(),
            _ => return self.abandon(table, changes).await,
        };
        let record = Record {
            fingerprint: self.fingerprint(),
            outcome: None,
            lease_until: 0,
            progress: self
                .progress
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(encode)?,
            response: None,
        };
        self.commit(table, changes, record, Some(token), now_ms)
            .await?;
        self.claim = Claim::Closed;
        Ok(())
    }

    /// Commits `changes` with the request's outcome: from now on the key replays it.
    pub async fn finish<T: Table>(
        &mut self,
        table: &T,
        changes: Changes,
        outcome: Outcome,
        now_ms: i64,
    ) -> Result<(), CommitError> {
        self.close_with(table, changes, Some(outcome), now_ms).await
    }

    /// Commits `changes` and gives the key back: the next run with it starts afresh.
    pub async fn abandon<T: Table>(
        &mut self,
        table: &T,
        mut changes: Changes,
    ) -> Result<(), CommitError> {
        match (&self.key, self.condition()?) {
            (Some(key), Some(condition)) if condition != Condition::Absent => changes.push(
                Purpose::IdempotencyKey,
                Write::Delete {
                    pk: key.pk.clone(),
                    sk: SK.into(),
                    condition,
                },
            ),
            _ => {}
        }
        if !changes.is_empty() {
            changes.commit(table).await?;
        }
        self.claim = Claim::Closed;
        Ok(())
    }

    async fn close_with<T: Table>(
        &mut self,
        table: &T,
        changes: Changes,
        outcome: Option<Outcome>,
        now_ms: i64,
    ) -> Result<(), CommitError> {
        let record = Record {
            fingerprint: self.fingerprint(),
            outcome,
            lease_until: 0,
            progress: None,
            response: None,
        };
        self.commit(table, changes, record, None, now_ms).await?;
        self.claim = Claim::Closed;
        Ok(())
    }

    fn fingerprint(&self) -> String {
        self.key
            .as_ref()
            .map(|k| k.fingerprint.clone())
            .unwrap_or_default()
    }

    /// The condition the record must meet for this guard to write it; `None` without a key.
    fn condition(&self) -> Result<Option<Condition>, CommitError> {
        Ok(match &self.claim {
            Claim::Unguarded => None,
            Claim::Unclaimed => Some(Condition::Absent),
            Claim::Abandoned(token) | Claim::Held(token) => Some(Condition::OwnerIs(token.clone())),
            Claim::Closed => {
                return Err(CommitError::Store(StoreError::Failure(
                    "an idempotency guard was used after it closed".into(),
                )));
            }
        })
    }

    async fn commit<T: Table>(
        &self,
        table: &T,
        mut changes: Changes,
        record: Record,
        owner: Option<String>,
        now_ms: i64,
    ) -> Result<(), CommitError> {
        if let (Some(key), Some(condition)) = (&self.key, self.condition()?) {
            let item = Item {
                pk: key.pk.clone(),
                sk: SK.into(),
                version: 1,
                data: to_json(&record)?,
                expires_at: Some(now_ms / 1000 + KEEP_SECONDS),
                owner,
                index: None,
            };
            changes.push(Purpose::IdempotencyKey, Write::Put { item, condition });
        }
        if changes.is_empty() {
            return Ok(());
        }
        changes.commit(table).await
    }
}

fn encode(e: serde_json::Error) -> CommitError {
    CommitError::Store(StoreError::Failure(format!("cannot encode progress: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use commerce_domain::CustomerId;
    use serde_json::json;

    fn caller(sub: &str) -> Caller {
        Caller {
            tenant: TenantId::parse("acme").unwrap(),
            subject: CustomerId::parse(sub).unwrap(),
            roles: vec![Role::Customer],
            correlation_id: "test".into(),
        }
    }

    fn key(body: Value) -> IdempotencyKey {
        IdempotencyKey::for_request(&caller("alice"), "k1", "POST", "/v1/orders", &body).unwrap()
    }

    #[test]
    fn the_same_json_is_the_same_request_whatever_its_spelling() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": [1, {"y": 2, "x": 1}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":[1,{"x":1,"y":2}],"a":1}"#).unwrap();
        assert_eq!(key(a).fingerprint, key(b).fingerprint);
        assert_ne!(
            key(json!({"a": 1})).fingerprint,
            key(json!({"a": 2})).fingerprint
        );
        assert_ne!(
            key(json!({"a": 1})).fingerprint,
            key(json!({"a": "1"})).fingerprint
        );
        assert_ne!(
            key(json!([1, 2])).fingerprint,
            key(json!([2, 1])).fingerprint
        );
    }

    #[test]
    fn the_fingerprint_covers_method_and_path() {
        let on = |method, path| {
            IdempotencyKey::for_request(&caller("alice"), "k1", method, path, &json!({}))
                .unwrap()
                .fingerprint
        };
        assert_ne!(on("POST", "/v1/orders"), on("POST", "/v1/reservations"));
        assert_ne!(on("POST", "/v1/orders"), on("PUT", "/v1/orders"));
    }

    #[test]
    fn keys_belong_to_their_caller() {
        let of = |sub| {
            IdempotencyKey::for_request(&caller(sub), "k1", "POST", "/", &json!({}))
                .unwrap()
                .pk
        };
        assert_ne!(of("alice"), of("bob"));
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        for bad in ["", "has space", &"k".repeat(256), "tab\t"] {
            assert!(
                IdempotencyKey::for_request(&caller("alice"), bad, "POST", "/", &json!({}))
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn step_keys_are_apart_from_caller_keys() {
        let tenant = TenantId::parse("acme").unwrap();
        let step =
            IdempotencyKey::for_step(&tenant, "refund", "order-1", &json!({"amount": 5})).unwrap();
        assert_ne!(step.pk, key(json!({})).pk);
        assert!(IdempotencyKey::for_step(&tenant, "re#fund", "x", &json!({})).is_err());
        assert!(IdempotencyKey::for_step(&tenant, "refund", "", &json!({})).is_err());
    }

    #[test]
    fn records_from_before_typed_outcomes_still_replay() {
        let old = r#"{"fingerprint":"f","response":{"status":201,"body":{"id":"o1"}}}"#;
        let record: Record = serde_json::from_str(old).unwrap();
        let outcome = record.outcome.or(record.response.map(Outcome::Done));
        assert_eq!(
            outcome,
            Some(Outcome::Done(Reply {
                status: 201,
                body: json!({"id": "o1"})
            }))
        );
    }

    #[test]
    fn outcomes_round_trip_and_a_decline_stays_a_decline() {
        let declined = Outcome::Declined {
            reason: "card_declined".into(),
        };
        let stored: Outcome =
            serde_json::from_str(&serde_json::to_string(&declined).unwrap()).unwrap();
        assert!(matches!(
            stored.into_reply(),
            Err(AppError::PaymentDeclined(reason)) if reason == "card_declined"
        ));
    }
}
