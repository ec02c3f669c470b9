//! Every error leaves as RFC 9457 `application/problem+json`, mapped here and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commerce_app::views::Problem;
use commerce_app::{AppError, StoreError};
use commerce_domain::DomainError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An answer other than success: the caller's fault (4xx, saying what to fix) or ours (5xx,
/// generic text; details go to the log only).
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl ApiError {
    pub fn new(status: u16, name: &str, title: &str, detail: impl AsRef<str>) -> Self {
        Self(Problem::new(status, name, title, detail.as_ref()))
    }

    pub fn bad_request(detail: impl AsRef<str>) -> Self {
        Self::new(400, "bad-request", "Bad request", detail)
    }

    pub fn unauthorized(detail: impl AsRef<str>) -> Self {
        Self::new(401, "unauthorized", "Unauthorized", detail)
    }

    pub fn not_found() -> Self {
        Self::new(404, "not-found", "Not found", "no such resource")
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        let detail = error.to_string();
        match error {
            AppError::Domain(domain) => match domain {
                DomainError::OutOfStock { .. } => {
                    Self::new(409, "out-of-stock", "Out of stock", detail)
                }
                DomainError::BelowReserved { .. } => {
                    Self::new(409, "below-reserved", "Stock below reserved", detail)
                }
                DomainError::ReservationNotHeld { .. } => {
                    Self::new(409, "reservation-not-held", "Reservation not held", detail)
                }
                DomainError::ReservationInCheckout => Self::new(
                    409,
                    "reservation-in-checkout",
                    "Reservation in checkout",
                    detail,
                ),
                DomainError::HoldLimit { .. } => {
                    Self::new(409, "hold-limit-reached", "Hold limit reached", detail)
                }
                DomainError::ReservationExpired => {
                    Self::new(409, "reservation-expired", "Reservation expired", detail)
                }
                DomainError::OrderShipped => Self::new(
                    409,
                    "order-shipped",
                    "Order shipped",
                    format!("{detail}; returns are not supported yet"),
                ),
                DomainError::CancellationInProgress => Self::new(
                    409,
                    "cancellation-in-progress",
                    "Cancellation in progress",
                    detail,
                ),
                DomainError::NothingToCancel => {
                    Self::new(409, "nothing-to-cancel", "Nothing to cancel", detail)
                }
                DomainError::OrderTransition { .. }
                | DomainError::StaleCancellation { .. }
                | DomainError::CancellationUnfinished
                | DomainError::ReservationNotExpired
                | DomainError::ReleaseExceedsReserved { .. } => Self::new(
                    409,
                    "invalid-state",
                    "Not allowed in the current state",
                    detail,
                ),
                DomainError::AlreadyExists { .. } => {
                    Self::new(409, "already-exists", "Already exists", detail)
                }
                DomainError::CurrencyMismatch { .. } => {
                    Self::new(422, "currency-mismatch", "Currency mismatch", detail)
                }
                DomainError::Invalid { .. }
                | DomainError::AmountOverflow
                | DomainError::QuantityOverflow => {
                    Self::new(422, "invalid-request", "Invalid request", detail)
                }
            },
            AppError::BadRequest(_) => Self::bad_request(detail),
            AppError::NotFound(_) => Self::new(404, "not-found", "Not found", detail),
            AppError::UnknownSku(_) => Self::new(422, "unknown-sku", "Unknown SKU", detail),
            AppError::Forbidden(_) => Self::new(403, "forbidden", "Forbidden", detail),
            AppError::IdempotencyMismatch => Self::new(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                detail,
            ),
            AppError::IdempotencyInFlight => Self::new(
                409,
                "idempotency-key-in-flight",
                "Request in progress",
                detail,
            ),
            AppError::PaymentDeclined(_) => {
                Self::new(402, "payment-declined", "Payment declined", detail)
            }
            AppError::PaymentUnavailable => Self::new(
                503,
                "payment-unavailable",
                "Payment provider unavailable",
                detail,
            ),
            AppError::Contention => Self::new(409, "contention", "Too much contention", detail),
            AppError::Store(StoreError::Conflict) => {
                tracing::warn!("store conflict, retries spent");
                Self::new(
                    503,
                    "unavailable",
                    "Service unavailable",
                    "the store is busy, retry shortly",
                )
            }
            AppError::Store(StoreError::Busy(why)) => {
                tracing::warn!(%why, "store busy");
                Self::new(
                    503,
                    "unavailable",
                    "Service unavailable",
                    "the store is busy, retry shortly",
                )
            }
            AppError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                Self::new(
                    500,
                    "internal",
                    "Internal error",
                    "something went wrong on our side",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = problem_response(status, &self.0);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON body with the right content type: problem+json for errors.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let content_type = if status.is_client_error() || status.is_server_error() {
        PROBLEM_JSON
    } else {
        "application/json"
    };
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    json_response(status, problem)
}
