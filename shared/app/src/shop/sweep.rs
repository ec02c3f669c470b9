//! The sweeper: releases holds whose time is up, and reconciles placements that did not end
//! in time (a crash, a timeout, a retry that never came): their authorization is voided, their
//! hold or checkout ends and their key is given back. One pass serves both runtimes: a task in
//! the local server, a scheduled Lambda on AWS.

use commerce_domain::{OrderId, Reservation, ReservationId, ReservationStatus, TenantId};
use futures_util::StreamExt;
use serde::Serialize;

use super::Shop;
use super::placement::Attempt;
use crate::event_store::{Changes, CommitError, Origin, load};
use crate::idempotency;
use crate::keys;
use crate::payments::PaymentError;
use crate::table::Query;
use crate::{AppError, Clock, PaymentGateway, Table};

/// Holds expired at once within one pass.
const CONCURRENCY: usize = 16;
/// The actors the sweeper's changes are recorded under.
const SWEEPER: &str = "sweeper";
const RECONCILER: &str = "reconciler";

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    /// Holds released because their time was up.
    pub expired: usize,
    /// Placements given up, their authorization voided, because they did not end in time.
    pub voided: usize,
    /// Entries that could not be handled this time (logged); the next pass tries again.
    pub failed: usize,
    /// Whether due entries were left for another pass.
    pub more: bool,
}

/// The queues the sweeper drains, each sharded and sorted by when an entry is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// Holds, due when they expire.
    Holds,
    /// Placements, due at their check time.
    Attempts,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Reconciles up to `batch` due placements and releases up to `batch` due holds per queue
    /// shard, several at once. A bad entry or a failing one is counted and skipped; it never
    /// stops the pass.
    pub async fn sweep(&self, batch: usize) -> SweepSummary {
        // Holds first: a provider slow to void must not keep stock from coming back.
        let mut summary = self.drain(Queue::Holds, batch).await;
        let reconciled = self.drain(Queue::Attempts, batch).await;
        summary.voided = reconciled.voided;
        summary.failed += reconciled.failed;
        summary.more |= reconciled.more;
        summary
    }

    async fn drain(&self, queue: Queue, batch: usize) -> SweepSummary {
        let mut summary = SweepSummary::default();
        let (shards, partition): (u32, fn(u32) -> String) = match queue {
            Queue::Holds => (keys::HOLD_SHARDS, keys::holds),
            Queue::Attempts => (keys::ATTEMPT_SHARDS, keys::attempts),
        };
        for shard in 0..shards {
            let pk = partition(shard);
            let Some(due) = self.due(&pk, batch, &mut summary).await else {
                continue;
            };
            let outcomes: Vec<_> = futures_util::stream::iter(due)
                .map(|sk| {
                    let pk = pk.clone();
                    async move {
                        let acted = match queue {
                            Queue::Holds => self.expire_one(&pk, &sk).await,
                            Queue::Attempts => self.reconcile_one(&pk, &sk).await,
                        };
                        (sk, acted)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for (sk, outcome) in outcomes {
                match (outcome, queue) {
                    (Ok(true), Queue::Holds) => summary.expired += 1,
                    (Ok(true), Queue::Attempts) => summary.voided += 1,
                    (Ok(false), _) => {}
                    (Err(e), _) => {
                        tracing::error!(?queue, entry = %sk, error = %e, "cannot handle a due entry; will retry");
                        summary.failed += 1;
                    }
                }
            }
        }
        summary
    }

    /// The due entries of one queue partition; `None` (counted as failed) when it cannot be read.
    async fn due(&self, pk: &str, batch: usize, summary: &mut SweepSummary) -> Option<Vec<String>> {
        let query = Query {
            pk,
            prefix: "",
            after: None,
            limit: batch,
            descending: false,
        };
        let page = match self.table.query(query).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(queue = pk, error = %e, "cannot read a queue");
                summary.failed += 1;
                return None;
            }
        };
        let now = self.now_ms();
        let read = page.items.len();
        let due: Vec<String> = page
            .items
            .into_iter()
            .map(|item| item.sk)
            .filter(|sk| due_at(sk).is_none_or(|at| at <= now))
            .collect();
        summary.more |= page.next.is_some() && due.len() == read;
        Some(due)
    }

    /// Gives up the placement behind an entry if it has not ended; whether it did.
    async fn reconcile_one(&self, queue_pk: &str, sk: &str) -> Result<bool, AppError> {
        let record_pk = sk
            .split_once('#')
            .map(|(_, pk)| pk)
            .ok_or_else(|| AppError::BadRequest(format!("bad attempts queue entry {sk}")))?;
        let stalled =
            idempotency::stalled::<Attempt, _, _>(&self.table, &self.clock, record_pk).await;
        match stalled {
            Ok(Some(mut guard)) => {
                let Some(attempt) = guard.progress().cloned() else {
                    return Ok(false);
                };
                if due_at(sk) != Some(attempt.check_at()) {
                    // The entry outlived its attempt; the key holds another one now.
                    self.drop_entry(queue_pk, sk).await?;
                    return Ok(false);
                }
                let origin = Origin::system(RECONCILER);
                let given_up = self.give_up(&origin, &mut guard, &attempt).await?;
                // Giving up deleted the entry where this build puts it; one an earlier build
                // put in another shard goes too.
                if given_up && queue_pk != self.attempt_queue(record_pk) {
                    self.drop_entry(queue_pk, sk).await?;
                }
                if given_up {
                    tracing::warn!(
                        key = record_pk,
                        "placement did not end in time; authorization voided, key given back"
                    );
                }
                Ok(given_up)
            }
            // Finished or given back without its entry (a record past its lifetime): drop it.
            Ok(None) => {
                self.drop_entry(queue_pk, sk).await?;
                Ok(false)
            }
            Err(AppError::IdempotencyInFlight) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn drop_entry(&self, queue_pk: &str, sk: &str) -> Result<(), AppError> {
        let mut changes = Changes::new(Origin::system(SWEEPER));
        changes.delete_read_model(queue_pk.to_owned(), sk.to_owned());
        Ok(changes.commit(&self.table).await?)
    }

    /// Expires the hold behind an entry if it is still held; whether it did.
    async fn expire_one(&self, hold_pk: &str, hold_sk: &str) -> Result<bool, AppError> {
        let (tenant, id) = parse_entry(hold_sk)?;
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation =
                load::<Reservation, _>(&self.table, keys::reservation(&tenant, &id)).await?;
            let held = reservation.state.held.as_ref();
            let still_held = held.is_some_and(|h| h.status == ReservationStatus::Held);
            let changes = if still_held {
                let events = reservation.state.expire(self.now_ms())?;
                let origin = Origin::system(SWEEPER);
                let mut changes = self
                    .end_hold(&tenant, &origin, &mut reservation, events)
                    .await?;
                // Ending the hold deletes its entry where this build puts it; one an earlier
                // build put in another shard goes in the same commit.
                if hold_pk != self.hold_queue(&id) {
                    changes.delete_read_model(hold_pk.to_owned(), hold_sk.to_owned());
                }
                changes
            } else {
                // Ended some other way; only the queue entry is left.
                let mut changes = Changes::new(Origin::system(SWEEPER));
                changes.delete_read_model(hold_pk.to_owned(), hold_sk.to_owned());
                changes
            };
            match changes.commit(&self.table).await {
                // An order paying for the hold is left to the reconciler, which owns its key.
                Ok(()) => return Ok(still_held),
                Err(CommitError::StreamConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    /// Lets go of whatever the provider holds for `order`, retrying a provider that is down.
    /// Returns whether the void went through; when it did not, the caller leaves its attempt in
    /// place for the reconciler's next pass.
    pub(super) async fn void(&self, order: &OrderId) -> bool {
        let deadline = std::time::Duration::from_millis(self.config.payment_deadline_ms);
        let mut backoff = std::time::Duration::from_millis(self.config.payment_backoff_ms);
        for attempt in 1..=self.config.payment_attempts {
            let answer = tokio::time::timeout(deadline, self.payments.void(order))
                .await
                .unwrap_or_else(|_| Err(PaymentError::Unavailable("no answer in time".into())));
            match answer {
                Ok(()) => return true,
                Err(e) if attempt < self.config.payment_attempts => {
                    tracing::warn!(%order, attempt, error = %e, "void failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    tracing::error!(%order, error = %e, "could not void an authorization; the reconciler will try again");
                }
            }
        }
        false
    }
}

/// An expiry queue entry's sort key: `{expires_at_ms}#{tenant}#{reservation}`.
fn due_at(sk: &str) -> Option<i64> {
    sk.split('#').next().and_then(|at| at.parse().ok())
}

fn parse_entry(sk: &str) -> Result<(TenantId, ReservationId), AppError> {
    let mut parts = sk.splitn(3, '#');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(tenant), Some(id)) => {
            Ok((TenantId::parse(tenant)?, ReservationId::parse(id)?))
        }
        _ => Err(AppError::BadRequest(format!("bad expiry queue entry {sk}"))),
    }
}
