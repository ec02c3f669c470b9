//! The sweeper: releases holds whose time is up, and voids the authorization of any order that
//! was paying for a hold when it ended. One pass serves both runtimes: a task in the local
//! server, a scheduled Lambda on AWS.

use commerce_domain::{OrderId, Reservation, ReservationId, ReservationStatus, TenantId};
use futures_util::StreamExt;
use serde::Serialize;

use super::Shop;
use crate::event_store::{Changes, CommitError, load};
use crate::keys;
use crate::table::Query;
use crate::{AppError, Clock, PaymentGateway, Table};

/// Holds expired at once within one pass.
const CONCURRENCY: usize = 16;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    /// Holds released because their time was up.
    pub expired: usize,
    /// Authorizations voided because the order paying for a hold never came to be.
    pub voided: usize,
    /// Entries that could not be handled this time (logged); the next pass tries again.
    pub failed: usize,
    /// Whether due entries were left for another pass.
    pub more: bool,
}

enum Swept {
    Expired { voided: bool },
    AlreadyEnded,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Releases up to `batch` due holds per queue shard, several at once. A bad entry or a
    /// failing hold is counted and skipped; it never stops the pass.
    pub async fn sweep(&self, batch: usize) -> SweepSummary {
        let now = self.now_ms();
        let mut summary = SweepSummary::default();
        for shard in 0..keys::HOLD_SHARDS {
            let pk = keys::holds(shard);
            let query = Query {
                pk: &pk,
                prefix: "",
                after: None,
                limit: batch,
                descending: false,
            };
            let page = match self.table.query(query).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(shard, error = %e, "cannot read the expiry queue");
                    summary.failed += 1;
                    continue;
                }
            };
            let full = page.next.is_some();
            let read = page.items.len();
            let due: Vec<_> = page
                .items
                .into_iter()
                .filter(|item| due_at(&item.sk).is_none_or(|at| at <= now))
                .collect();
            summary.more |= full && due.len() == read;
            let outcomes: Vec<_> = futures_util::stream::iter(due)
                .map(|item| {
                    let pk = pk.clone();
                    async move {
                        let result = self.sweep_one(&pk, &item.sk).await;
                        (item.sk, result)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for (sk, outcome) in outcomes {
                match outcome {
                    Ok(Swept::Expired { voided }) => {
                        summary.expired += 1;
                        summary.voided += usize::from(voided);
                    }
                    Ok(Swept::AlreadyEnded) => {}
                    Err(e) => {
                        tracing::error!(entry = %sk, error = %e, "cannot expire a hold; will retry");
                        summary.failed += 1;
                    }
                }
            }
        }
        summary
    }

    async fn sweep_one(&self, hold_pk: &str, hold_sk: &str) -> Result<Swept, AppError> {
        let (tenant, id) = parse_entry(hold_sk)?;
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut reservation =
                load::<Reservation, _>(&self.table, keys::reservation(&tenant, &id)).await?;
            let held = reservation.state.held.as_ref();
            let checkout = held.and_then(|h| h.checkout.clone());
            let still_held = held.is_some_and(|h| h.status == ReservationStatus::Held);
            let changes = if still_held {
                let events = reservation.state.expire(self.now_ms())?;
                self.end_hold(&tenant, &mut reservation, events).await?
            } else {
                // Ended some other way; only the queue entry is left.
                let mut changes = Changes::new();
                changes.delete_read_model(hold_pk.to_owned(), hold_sk.to_owned());
                changes
            };
            match changes.commit(&self.table).await {
                Ok(()) if still_held => {
                    let voided = match checkout {
                        Some(order) => self.void(&order).await,
                        None => false,
                    };
                    return Ok(Swept::Expired { voided });
                }
                Ok(()) => return Ok(Swept::AlreadyEnded),
                Err(CommitError::StreamConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contention)
    }

    /// Lets go of whatever the provider holds for `order`, retrying a provider that is down.
    /// Returns whether the void went through; a failure is logged for operators, and the
    /// authorization lapses at the provider in the end.
    pub(super) async fn void(&self, order: &OrderId) -> bool {
        let mut backoff = std::time::Duration::from_millis(self.config.payment_backoff_ms);
        for attempt in 1..=self.config.payment_attempts {
            match self.payments.void(order).await {
                Ok(()) => return true,
                Err(e) if attempt < self.config.payment_attempts => {
                    tracing::warn!(%order, attempt, error = %e, "void failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    tracing::error!(%order, error = %e, "could not void an authorization without an order");
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
