//! The payment provider port and the sandbox provider used locally and in tests.

use commerce_domain::{Money, OrderId, PaymentAuthorization};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The provider said no; retrying will not change that.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider could not answer; the same request may succeed later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

pub trait PaymentGateway: Send + Sync + 'static {
    /// Holds `amount` on the payment method `token`. Safe to repeat for the same order: the
    /// order id is the provider's idempotency key.
    fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> impl Future<Output = Result<PaymentAuthorization, PaymentError>> + Send;

    /// Lets go of a hold that no order will use.
    fn void(
        &self,
        authorization: &PaymentAuthorization,
    ) -> impl Future<Output = Result<(), PaymentError>> + Send;
}

/// A deterministic provider. Its test tokens:
///
/// | token | answer |
/// |---|---|
/// | `tok_visa` (or any other `tok_…`) | approved |
/// | `tok_decline` | declined: `card_declined` |
/// | `tok_insufficient_funds` | declined: `insufficient_funds` |
/// | `tok_unavailable` | unavailable, every time |
/// | `tok_flaky` | unavailable on the first try for an order, approved after |
/// | anything not starting with `tok_` | declined: `invalid_token` |
#[derive(Debug, Default)]
pub struct SandboxPayments {
    failed_once: Mutex<HashSet<String>>,
}

impl PaymentGateway for SandboxPayments {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        match token {
            "tok_decline" => Err(PaymentError::Declined("card_declined".into())),
            "tok_insufficient_funds" => Err(PaymentError::Declined("insufficient_funds".into())),
            "tok_unavailable" => Err(PaymentError::Unavailable("sandbox: tok_unavailable".into())),
            "tok_flaky" if self.first_failure(order) => {
                Err(PaymentError::Unavailable("sandbox: tok_flaky".into()))
            }
            t if t.starts_with("tok_") => Ok(PaymentAuthorization {
                id: format!("auth_{order}"),
                amount,
            }),
            _ => Err(PaymentError::Declined("invalid_token".into())),
        }
    }

    async fn void(&self, _authorization: &PaymentAuthorization) -> Result<(), PaymentError> {
        Ok(())
    }
}

impl SandboxPayments {
    fn first_failure(&self, order: &OrderId) -> bool {
        self.failed_once
            .lock()
            .map(|mut seen| seen.insert(order.to_string()))
            .unwrap_or(false)
    }
}
