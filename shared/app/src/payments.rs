//! The payment provider port and the sandbox provider used locally and in tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use commerce_domain::{Money, OrderId, PaymentAuthorization};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The provider said no; retrying will not change that.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider could not answer; the same request may succeed later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

/// A payment provider. Each call is keyed by the order it is for, and the provider
/// de-duplicates on that key: a call repeated after a crash or a lost answer acts once.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Holds `amount` on the payment method `token` for `order`. Repeated for the same order,
    /// it answers the authorization made the first time.
    fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> impl Future<Output = Result<PaymentAuthorization, PaymentError>> + Send;

    /// Lets go of whatever is held for `order`, if anything; repeating it is harmless. An order
    /// once voided is not authorized afterwards, so a late request cannot undo the void.
    fn void(&self, order: &OrderId) -> impl Future<Output = Result<(), PaymentError>> + Send;
}

/// A deterministic provider that keeps its ledger in memory. Its test tokens:
///
/// | token | answer |
/// |---|---|
/// | `tok_visa` (or any other `tok_…`) | approved |
/// | `tok_slow` | approved after 2 seconds |
/// | `tok_decline` | declined: `card_declined` |
/// | `tok_insufficient_funds` | declined: `insufficient_funds` |
/// | `tok_unavailable` | unavailable, every time |
/// | `tok_flaky` | unavailable on the first try for an order, approved after |
/// | `tok_outage` | unavailable on the first three tries for an order (one request's worth), approved after |
/// | anything not starting with `tok_` | declined: `invalid_token` |
#[derive(Debug, Default)]
pub struct SandboxPayments {
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    by_order: HashMap<OrderId, Entry>,
    /// Tries that failed on purpose, per order, for `tok_flaky` and `tok_outage`.
    failed_tries: HashMap<OrderId, u32>,
}

#[derive(Debug, Default)]
struct Entry {
    authorization: Option<PaymentAuthorization>,
    /// Voided orders are never authorized again, even if the void came first.
    voided: bool,
}

/// What the sandbox has done, for tests to check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxCounts {
    /// Authorizations made (repeats for the same order are not new ones).
    pub authorizations: usize,
    /// Authorizations voided.
    pub voids: usize,
}

/// Tries for one order that `tok_outage` fails.
const OUTAGE_TRIES: u32 = 3;

/// How long `tok_slow` takes to approve.
pub const SLOW_APPROVAL: Duration = Duration::from_secs(2);

impl PaymentGateway for SandboxPayments {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        if let Some(entry) = self.ledger()?.by_order.get(order) {
            if entry.voided {
                return Err(PaymentError::Declined("order_voided".into()));
            }
            if let Some(authorization) = &entry.authorization {
                return Ok(authorization.clone());
            }
        }
        match token {
            "tok_decline" => return Err(PaymentError::Declined("card_declined".into())),
            "tok_insufficient_funds" => {
                return Err(PaymentError::Declined("insufficient_funds".into()));
            }
            "tok_unavailable" => {
                return Err(PaymentError::Unavailable("sandbox: tok_unavailable".into()));
            }
            "tok_flaky" if self.fail_try(order, 1)? => {
                return Err(PaymentError::Unavailable("sandbox: tok_flaky".into()));
            }
            "tok_outage" if self.fail_try(order, OUTAGE_TRIES)? => {
                return Err(PaymentError::Unavailable("sandbox: tok_outage".into()));
            }
            "tok_slow" => tokio::time::sleep(SLOW_APPROVAL).await,
            t if t.starts_with("tok_") => {}
            _ => return Err(PaymentError::Declined("invalid_token".into())),
        }
        let mut ledger = self.ledger()?;
        let entry = ledger.by_order.entry(order.clone()).or_default();
        if entry.voided {
            return Err(PaymentError::Declined("order_voided".into()));
        }
        let authorization = entry
            .authorization
            .get_or_insert_with(|| PaymentAuthorization {
                id: format!("auth_{order}"),
                amount,
            });
        Ok(authorization.clone())
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        self.ledger()?
            .by_order
            .entry(order.clone())
            .or_default()
            .voided = true;
        Ok(())
    }
}

impl SandboxPayments {
    fn ledger(&self) -> Result<std::sync::MutexGuard<'_, Ledger>, PaymentError> {
        self.ledger
            .lock()
            .map_err(|_| PaymentError::Unavailable("sandbox ledger poisoned".into()))
    }

    /// Counts a try that fails on purpose; false once `failing` tries have failed.
    fn fail_try(&self, order: &OrderId, failing: u32) -> Result<bool, PaymentError> {
        let mut ledger = self.ledger()?;
        let failed = ledger.failed_tries.entry(order.clone()).or_default();
        *failed += 1;
        Ok(*failed <= failing)
    }

    /// Authorizations made and voided so far.
    pub fn counts(&self) -> SandboxCounts {
        self.ledger
            .lock()
            .map(|ledger| {
                let authorized = || {
                    ledger
                        .by_order
                        .values()
                        .filter(|e| e.authorization.is_some())
                };
                SandboxCounts {
                    authorizations: authorized().count(),
                    voids: authorized().filter(|e| e.voided).count(),
                }
            })
            .unwrap_or_default()
    }

    /// Whether the authorization for `order` stands (made and not voided).
    pub fn is_authorized(&self, order: &OrderId) -> bool {
        self.ledger.lock().is_ok_and(|ledger| {
            ledger
                .by_order
                .get(order)
                .is_some_and(|e| e.authorization.is_some() && !e.voided)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_domain::Currency;

    fn order(id: &str) -> OrderId {
        OrderId::parse(id).unwrap()
    }

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn an_order_is_authorized_once_however_often_it_asks() {
        let sandbox = SandboxPayments::default();
        let first = sandbox
            .authorize(&order("o1"), eur(5), "tok_visa")
            .await
            .unwrap();
        let again = sandbox
            .authorize(&order("o1"), eur(5), "tok_visa")
            .await
            .unwrap();
        assert_eq!(first, again);
        sandbox.void(&order("o1")).await.unwrap();
        sandbox.void(&order("o1")).await.unwrap();
        sandbox.void(&order("never")).await.unwrap();
        assert_eq!(
            sandbox.authorize(&order("never"), eur(5), "tok_visa").await,
            Err(PaymentError::Declined("order_voided".into())),
            "an order voided first is never authorized after"
        );
        assert_eq!(
            sandbox.counts(),
            SandboxCounts {
                authorizations: 1,
                voids: 1
            }
        );
        assert!(!sandbox.is_authorized(&order("o1")));
    }

    #[tokio::test]
    async fn test_tokens_answer_as_documented() {
        let sandbox = SandboxPayments::default();
        let result = |r: Result<PaymentAuthorization, PaymentError>| match r {
            Ok(_) => "approved".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            result(sandbox.authorize(&order("a"), eur(1), "tok_decline").await),
            "declined: card_declined"
        );
        assert_eq!(
            result(sandbox.authorize(&order("b"), eur(1), "nope").await),
            "declined: invalid_token"
        );
        assert!(
            result(
                sandbox
                    .authorize(&order("c"), eur(1), "tok_unavailable")
                    .await
            )
            .starts_with("provider unavailable")
        );
        assert!(
            result(sandbox.authorize(&order("d"), eur(1), "tok_flaky").await)
                .starts_with("provider unavailable")
        );
        assert_eq!(
            result(sandbox.authorize(&order("d"), eur(1), "tok_flaky").await),
            "approved"
        );
        for _ in 0..3 {
            assert!(
                result(sandbox.authorize(&order("e"), eur(1), "tok_outage").await)
                    .starts_with("provider unavailable")
            );
        }
        assert_eq!(
            result(sandbox.authorize(&order("e"), eur(1), "tok_outage").await),
            "approved"
        );
        assert_eq!(sandbox.counts().authorizations, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn tok_slow_takes_two_seconds() {
        let sandbox = SandboxPayments::default();
        let started = tokio::time::Instant::now();
        sandbox
            .authorize(&order("s"), eur(1), "tok_slow")
            .await
            .unwrap();
        assert_eq!(started.elapsed(), SLOW_APPROVAL);
    }
}
