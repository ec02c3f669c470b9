use crate::{OrderStatus, ReservationStatus, Sku};

/// Why a value or a command was refused. Each variant is the caller's to fix; none is a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("currency mismatch: expected {expected}, got {got}")]
    CurrencyMismatch { expected: String, got: String },
    #[error("amount out of range")]
    AmountOverflow,
    #[error("quantity out of range")]
    QuantityOverflow,
    #[error("{sku} is out of stock: requested {requested}, available {available}")]
    OutOfStock {
        sku: Sku,
        requested: u64,
        available: u64,
    },
    #[error("on hand ({on_hand}) cannot be below what is reserved ({reserved})")]
    BelowReserved { on_hand: u64, reserved: u64 },
    #[error("cannot release {requested} reserved units, only {reserved} are reserved")]
    ReleaseExceedsReserved { requested: u64, reserved: u64 },
    #[error("reservation is {status:?}, not held")]
    ReservationNotHeld { status: ReservationStatus },
    #[error(
        "another order is paying for this reservation; retry with that order's Idempotency-Key"
    )]
    ReservationInCheckout,
    #[error("hold limit reached: {limit}")]
    HoldLimit { limit: String },
    #[error("reservation has expired")]
    ReservationExpired,
    #[error("reservation has not expired yet")]
    ReservationNotExpired,
    #[error("cannot {action} an order that is {status:?}")]
    OrderTransition {
        action: &'static str,
        status: OrderStatus,
    },
    #[error("the order has shipped; it can no longer be cancelled")]
    OrderShipped,
    #[error("another cancellation of this order is in progress")]
    CancellationInProgress,
    #[error("nothing of this order is left to cancel")]
    NothingToCancel,
    #[error("cancellation {attempt} was superseded by cancellation {latest}")]
    StaleCancellation { attempt: u32, latest: u32 },
    #[error("the cancellation's stock or payment is not back yet")]
    CancellationUnfinished,
    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },
}

impl DomainError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
