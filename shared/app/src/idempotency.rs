//! Idempotency keys: the same key and body replay the first response and act once.
//!
//! A key's record is claimed in the same transaction as the work it guards, so the work and the
//! claim land together or not at all. Commands that call out (payment) claim first with a short
//! lease, then store the response when done; a crashed holder's lease runs out and the key can
//! be used again. Finished records are kept for 25 hours.

use commerce_domain::{CustomerId, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppError;
use crate::event_store::{Changes, Purpose, to_json};
use crate::keys;
use crate::table::{Condition, Item, StoreError, Table, Write};

const SK: &str = "key";
/// How long a claim holds while its command is still working.
pub const LEASE_SECONDS: i64 = 60;
/// How long a finished response is replayed.
pub const KEEP_SECONDS: i64 = 25 * 60 * 60;

/// A caller's key for one request, with the fingerprint of what was asked.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pk: String,
    fingerprint: String,
}

impl IdempotencyKey {
    /// Keys are scoped to the caller; the fingerprint covers method, path and body.
    pub fn new(
        tenant: &TenantId,
        caller: &CustomerId,
        key: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Self, AppError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AppError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        let mut hash = Sha256::new();
        for part in [method.as_bytes(), b"\n", path.as_bytes(), b"\n", body] {
            hash.update(part);
        }
        Ok(Self {
            pk: keys::idempotency(tenant, caller, key),
            fingerprint: hex::encode(hash.finalize()),
        })
    }
}

/// A response as first sent, to send again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    response: Option<StoredResponse>,
}

/// What an earlier use of the key means for this request.
#[derive(Debug, PartialEq)]
pub enum Prior {
    Fresh,
    Replay(StoredResponse),
}

pub async fn prior<T: Table>(table: &T, key: &IdempotencyKey) -> Result<Prior, AppError> {
    let Some(item) = table.get(&key.pk, SK).await? else {
        return Ok(Prior::Fresh);
    };
    let record: Record = serde_json::from_slice(&item.data)
        .map_err(|e| StoreError::Failure(format!("corrupt idempotency record: {e}")))?;
    if record.fingerprint != key.fingerprint {
        return Err(AppError::IdempotencyMismatch);
    }
    match record.response {
        Some(response) => Ok(Prior::Replay(response)),
        None => Err(AppError::IdempotencyInFlight),
    }
}

/// Claims the key with a lease, for commands that finish in a second transaction.
pub fn claim(
    changes: &mut Changes,
    key: &IdempotencyKey,
    now_seconds: i64,
) -> Result<(), StoreError> {
    let record = Record {
        fingerprint: key.fingerprint.clone(),
        response: None,
    };
    let item = Item {
        pk: key.pk.clone(),
        sk: SK.into(),
        version: 1,
        data: to_json(&record)?,
        expires_at: Some(now_seconds + LEASE_SECONDS),
    };
    changes.push(
        Purpose::IdempotencyKey,
        Write::Put {
            item,
            condition: Condition::Absent,
        },
    );
    Ok(())
}

/// Stores the response. `claimed` says whether this command holds a lease on the key already.
pub fn complete(
    changes: &mut Changes,
    key: &IdempotencyKey,
    response: StoredResponse,
    claimed: bool,
    now_seconds: i64,
) -> Result<(), StoreError> {
    let record = Record {
        fingerprint: key.fingerprint.clone(),
        response: Some(response),
    };
    let item = Item {
        pk: key.pk.clone(),
        sk: SK.into(),
        version: 2,
        data: to_json(&record)?,
        expires_at: Some(now_seconds + KEEP_SECONDS),
    };
    let condition = if claimed {
        Condition::VersionIs(1)
    } else {
        Condition::Absent
    };
    changes.push(Purpose::IdempotencyKey, Write::Put { item, condition });
    Ok(())
}

/// Gives the key back after a failure that acted on nothing, so the caller may retry with it.
pub fn abandon(changes: &mut Changes, key: &IdempotencyKey) {
    changes.push(
        Purpose::IdempotencyKey,
        Write::Delete {
            pk: key.pk.clone(),
            sk: SK.into(),
            condition: Condition::VersionIs(1),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Write;

    fn key(body: &[u8]) -> IdempotencyKey {
        let tenant = TenantId::parse("acme").unwrap();
        let caller = CustomerId::parse("alice").unwrap();
        IdempotencyKey::new(&tenant, &caller, "k1", "POST", "/v1/orders", body).unwrap()
    }

    fn written(changes: Changes) -> Vec<Write> {
        changes.into_writes()
    }

    #[test]
    fn answers_are_kept_at_least_a_day_and_claims_only_a_lease() {
        let mut changes = Changes::new();
        claim(&mut changes, &key(b"{}"), 1_000).unwrap();
        complete(
            &mut changes,
            &key(b"{}"),
            StoredResponse {
                status: 201,
                body: serde_json::json!({}),
            },
            true,
            1_000,
        )
        .unwrap();
        let expiries: Vec<_> = written(changes)
            .into_iter()
            .map(|w| match w {
                Write::Put { item, .. } => item.expires_at.unwrap() - 1_000,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(expiries, vec![LEASE_SECONDS, KEEP_SECONDS]);
        const { assert!(KEEP_SECONDS >= 24 * 60 * 60) };
    }

    #[test]
    fn the_fingerprint_covers_the_body() {
        assert_eq!(key(b"{\"a\":1}").fingerprint, key(b"{\"a\":1}").fingerprint);
        assert_ne!(key(b"{\"a\":1}").fingerprint, key(b"{\"a\":2}").fingerprint);
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        let tenant = TenantId::parse("acme").unwrap();
        let caller = CustomerId::parse("alice").unwrap();
        for bad in ["", "has space", &"k".repeat(256)] {
            assert!(
                IdempotencyKey::new(&tenant, &caller, bad, "POST", "/", b"").is_err(),
                "{bad:?}"
            );
        }
    }
}
