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

    /// Takes `amount` (at most what `authorization` holds) from the payment method. The
    /// provider acts once per `key` ([`operation_key`]): a repeat answers the first receipt.
    fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> impl Future<Output = Result<PaymentReceipt, PaymentError>> + Send;

    /// Gives back `amount` (at most what was captured and not yet refunded), once per `key`.
    fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> impl Future<Output = Result<PaymentReceipt, PaymentError>> + Send;
}

/// What a capture or a refund did, as the provider records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaymentReceipt {
    pub id: String,
    pub amount: Money,
}

/// The idempotency key of one payment operation on an order: `kind` names it (`capture`,
/// `refund`) and `attempt` tells apart operations a shop means to be distinct (the first
/// cancellation and a later one), so a retried call is the same operation and a new one is not.
pub fn operation_key(order: &OrderId, kind: &str, attempt: u32) -> String {
    format!("{order}:{kind}:{attempt}")
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
/// | `tok_refund_unavailable_N` | approved; its order's first N refund tries are unavailable |
/// | `tok_refund_refused` | approved; every refund for its order is declined: `refund_refused` |
/// | `tok_void_unavailable_N` | approved; its order's first N void tries are unavailable |
/// | anything not starting with `tok_` | declined: `invalid_token` |
///
/// Captures and refunds are kept per key: a repeated key answers its first receipt.
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
    /// The token it was authorized with, which may ask for faults in later operations.
    token: String,
    /// Voided orders are never authorized again, even if the void came first.
    voided: bool,
    capture: Option<(String, PaymentReceipt)>,
    refunds: Vec<(String, PaymentReceipt)>,
    failed_refunds: u32,
    failed_voids: u32,
}

/// What the sandbox has done, for tests to check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxCounts {
    /// Authorizations made (repeats for the same order are not new ones).
    pub authorizations: usize,
    /// Authorizations voided.
    pub voids: usize,
    /// Captures made (repeats of a key are not new ones).
    pub captures: usize,
    /// Refunds made (repeats of a key are not new ones).
    pub refunds: usize,
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
        token.clone_into(&mut entry.token);
        let authorization = entry
            .authorization
            .get_or_insert_with(|| PaymentAuthorization {
                id: format!("auth_{order}"),
                amount,
            });
        Ok(authorization.clone())
    }

    async fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        let mut ledger = self.ledger()?;
        let entry = ledger.authorized(authorization)?;
        if let Some((first, receipt)) = &entry.capture {
            return if first == key {
                Ok(receipt.clone())
            } else {
                Err(PaymentError::Declined("already_captured".into()))
            };
        }
        if entry.voided {
            return Err(PaymentError::Declined("authorization_voided".into()));
        }
        if !fits(amount, authorization.amount) {
            return Err(PaymentError::Declined(
                "capture_exceeds_authorization".into(),
            ));
        }
        let receipt = PaymentReceipt {
            id: format!("cap_{}", authorization.id),
            amount,
        };
        entry.capture = Some((key.to_owned(), receipt.clone()));
        Ok(receipt)
    }

    async fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        let mut ledger = self.ledger()?;
        let entry = ledger.authorized(authorization)?;
        if let Some((_, receipt)) = entry.refunds.iter().find(|(k, _)| k == key) {
            return Ok(receipt.clone());
        }
        if entry.token == "tok_refund_refused" {
            return Err(PaymentError::Declined("refund_refused".into()));
        }
        let failing = entry
            .token
            .strip_prefix("tok_refund_unavailable_")
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if entry.failed_refunds < failing {
            entry.failed_refunds += 1;
            return Err(PaymentError::Unavailable(
                "sandbox: refund unavailable".into(),
            ));
        }
        let Some((_, captured)) = &entry.capture else {
            return Err(PaymentError::Declined("nothing_captured".into()));
        };
        let refunded = entry
            .refunds
            .iter()
            .try_fold(0i64, |sum, (_, r)| sum.checked_add(r.amount.amount_minor));
        let left = refunded.and_then(|r| captured.amount.amount_minor.checked_sub(r));
        if amount.currency != captured.amount.currency
            || amount.amount_minor <= 0
            || left.is_none_or(|left| amount.amount_minor > left)
        {
            return Err(PaymentError::Declined("refund_exceeds_captured".into()));
        }
        let receipt = PaymentReceipt {
            id: format!("re_{}_{}", authorization.id, entry.refunds.len() + 1),
            amount,
        };
        entry.refunds.push((key.to_owned(), receipt.clone()));
        Ok(receipt)
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        let mut ledger = self.ledger()?;
        let entry = ledger.by_order.entry(order.clone()).or_default();
        // As at a real provider: what was captured is refunded, not voided.
        if entry.capture.is_some() {
            return Err(PaymentError::Declined("already_captured".into()));
        }
        let failing = entry
            .token
            .strip_prefix("tok_void_unavailable_")
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if entry.failed_voids < failing {
            entry.failed_voids += 1;
            return Err(PaymentError::Unavailable(
                "sandbox: void unavailable".into(),
            ));
        }
        entry.voided = true;
        Ok(())
    }
}

/// Whether `amount` is positive, in `limit`'s currency and no more than it.
fn fits(amount: Money, limit: Money) -> bool {
    amount.currency == limit.currency
        && amount.amount_minor > 0
        && amount.amount_minor <= limit.amount_minor
}

impl Ledger {
    /// The entry of an authorization this sandbox made.
    fn authorized(
        &mut self,
        authorization: &PaymentAuthorization,
    ) -> Result<&mut Entry, PaymentError> {
        self.by_order
            .values_mut()
            .find(|e| {
                e.authorization
                    .as_ref()
                    .is_some_and(|a| a.id == authorization.id)
            })
            .ok_or_else(|| PaymentError::Declined("unknown_authorization".into()))
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
                    captures: authorized().filter(|e| e.capture.is_some()).count(),
                    refunds: authorized().map(|e| e.refunds.len()).sum(),
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

    #[tokio::test]
    async fn the_sandbox_keeps_the_payment_gateway_contract() {
        crate::contract::payment_gateway_contract(
            &SandboxPayments::default(),
            "tok_visa",
            "tok_decline",
            "sandbox",
        )
        .await;
    }

    #[tokio::test]
    async fn a_void_fails_as_often_as_its_token_says() {
        let payments = SandboxPayments::default();
        let id = order("o-void");
        payments
            .authorize(&id, eur(100), "tok_void_unavailable_2")
            .await
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                payments.void(&id).await,
                Err(PaymentError::Unavailable(_))
            ));
        }
        assert_eq!(payments.void(&id).await, Ok(()));
    }

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
                voids: 1,
                ..SandboxCounts::default()
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

    #[tokio::test]
    async fn a_capture_and_refunds_act_once_per_key_and_never_exceed_what_was_taken() {
        let sandbox = SandboxPayments::default();
        let auth = sandbox
            .authorize(&order("o1"), eur(1000), "tok_visa")
            .await
            .unwrap();
        let capture_key = operation_key(&order("o1"), "capture", 1);
        assert_eq!(
            sandbox.capture(&auth, eur(1001), &capture_key).await,
            Err(PaymentError::Declined(
                "capture_exceeds_authorization".into()
            ))
        );
        let captured = sandbox
            .capture(&auth, eur(800), &capture_key)
            .await
            .unwrap();
        assert_eq!(
            sandbox.capture(&auth, eur(800), &capture_key).await,
            Ok(captured.clone()),
            "a repeated capture answers the first"
        );
        assert_eq!(
            sandbox
                .capture(&auth, eur(100), &operation_key(&order("o1"), "capture", 2))
                .await,
            Err(PaymentError::Declined("already_captured".into()))
        );
        let first = operation_key(&order("o1"), "refund", 1);
        let refund = sandbox.refund(&auth, eur(300), &first).await.unwrap();
        assert_eq!(sandbox.refund(&auth, eur(300), &first).await, Ok(refund));
        let second = operation_key(&order("o1"), "refund", 2);
        assert_eq!(
            sandbox.refund(&auth, eur(501), &second).await,
            Err(PaymentError::Declined("refund_exceeds_captured".into())),
            "800 captured, 300 refunded: 500 left"
        );
        sandbox.refund(&auth, eur(500), &second).await.unwrap();
        assert_eq!(
            sandbox.counts(),
            SandboxCounts {
                authorizations: 1,
                voids: 0,
                captures: 1,
                refunds: 2,
            }
        );
    }

    #[tokio::test]
    async fn refund_faults_are_asked_for_by_token() {
        let sandbox = SandboxPayments::default();
        let flaky = sandbox
            .authorize(&order("f"), eur(10), "tok_refund_unavailable_2")
            .await
            .unwrap();
        let refused = sandbox
            .authorize(&order("r"), eur(10), "tok_refund_refused")
            .await
            .unwrap();
        for auth in [&flaky, &refused] {
            sandbox.capture(auth, eur(10), "capture").await.unwrap();
        }
        let key = operation_key(&order("f"), "refund", 1);
        for _ in 0..2 {
            assert!(matches!(
                sandbox.refund(&flaky, eur(10), &key).await,
                Err(PaymentError::Unavailable(_))
            ));
        }
        sandbox.refund(&flaky, eur(10), &key).await.unwrap();
        assert_eq!(
            sandbox.refund(&refused, eur(10), "any").await,
            Err(PaymentError::Declined("refund_refused".into()))
        );
        assert_eq!(sandbox.counts().refunds, 1);
    }

    #[tokio::test]
    async fn a_voided_authorization_cannot_be_captured_nor_an_unknown_one_refunded() {
        let sandbox = SandboxPayments::default();
        let auth = sandbox
            .authorize(&order("v"), eur(10), "tok_visa")
            .await
            .unwrap();
        sandbox.void(&order("v")).await.unwrap();
        assert_eq!(
            sandbox.capture(&auth, eur(10), "k").await,
            Err(PaymentError::Declined("authorization_voided".into()))
        );
        let stranger = PaymentAuthorization {
            id: "auth_elsewhere".into(),
            amount: eur(10),
        };
        assert_eq!(
            sandbox.refund(&stranger, eur(1), "k").await,
            Err(PaymentError::Declined("unknown_authorization".into()))
        );
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
