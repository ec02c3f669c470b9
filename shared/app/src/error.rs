use commerce_domain::DomainError;

use crate::event_store::CommitError;
use crate::table::StoreError;

/// Everything a use case can answer besides success. The HTTP edge maps each variant once.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("unknown SKU {0}")]
    UnknownSku(String),
    #[error("this role may not {0}")]
    Forbidden(&'static str),
    #[error("the Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInFlight,
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    #[error("the payment provider is unavailable, retry later")]
    PaymentUnavailable,
    #[error("too much contention on the same items, retry")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CommitError> for AppError {
    fn from(value: CommitError) -> Self {
        match value {
            CommitError::StreamConflict => AppError::Contention,
            CommitError::KeyTaken => AppError::IdempotencyInFlight,
            CommitError::Store(e) => AppError::Store(e),
        }
    }
}
