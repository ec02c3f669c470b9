//! Request parsing at the edge: bodies into checked types, with a problem for every way they
//! can be wrong, and the idempotency key every state-changing POST must carry.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{HeaderMap, header};
use commerce_app::{Caller, IdempotencyKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::Authenticated;
use crate::problem::ApiError;
use crate::routes::BODY_LIMIT;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A state-changing request: who sent it, its idempotency key, and its parsed body.
#[derive(Debug)]
pub struct Command<T> {
    pub caller: Caller,
    pub key: IdempotencyKey,
    pub body: T,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Command<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Authenticated(caller) = Authenticated::from_request_parts(&mut parts, state).await?;
        let key = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .ok_or_else(|| ApiError::bad_request("this request needs an Idempotency-Key header"))?
            .to_str()
            .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
            .to_owned();
        let bytes = read_body(&parts.headers, body).await?;
        let value = parse_json(&parts.headers, &bytes)?;
        let key = IdempotencyKey::for_request(
            &caller,
            &key,
            parts.method.as_str(),
            parts.uri.path(),
            &value,
        )?;
        Ok(Self {
            caller,
            key,
            body: typed(value)?,
        })
    }
}

/// A JSON body for requests that are idempotent by nature (PUT).
#[derive(Debug)]
pub struct JsonBody<T>(pub Caller, pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Authenticated(caller) = Authenticated::from_request_parts(&mut parts, state).await?;
        let bytes = read_body(&parts.headers, body).await?;
        Ok(Self(caller, typed(parse_json(&parts.headers, &bytes)?)?))
    }
}

async fn read_body(headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "body-too-large",
            "Body too large",
            format!("bodies are limited to {BODY_LIMIT} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > DRAIN_LIMIT) {
        return Err(too_large());
    }
    // A body somewhat over the limit is read to its end before the 413, so the client, still
    // sending, reads the answer instead of a reset connection.
    let bytes = axum::body::to_bytes(body, DRAIN_LIMIT)
        .await
        .map_err(|_| too_large())?;
    if bytes.len() > BODY_LIMIT {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Largest body read (and dropped) to answer 413 cleanly; larger ones are cut off at once.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Well-formed JSON with wrong or missing fields is 422.
fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(422, "invalid-request", "Invalid request", e.to_string()))
}

/// Malformed JSON is 400. An empty body reads as `{}`, so commands without parameters need none.
fn parse_json(headers: &HeaderMap, bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.is_empty() {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::new(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "send Content-Type: application/json",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(400, "malformed-json", "Malformed JSON", e.to_string()))
}

/// `?cursor=…&limit=…` on list endpoints.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    /// `next_cursor` of the previous page, as given.
    #[param(min_length = 1, max_length = 512)]
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

impl<S: Send + Sync> FromRequestParts<S> for Listing {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Query(listing) = Query::<Listing>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        if listing.limit.is_some_and(|l| l == 0 || l > 100) {
            return Err(ApiError::bad_request("limit must be between 1 and 100"));
        }
        if listing
            .cursor
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 512)
        {
            return Err(ApiError::bad_request("cursor is not one this API gave out"));
        }
        Ok(listing)
    }
}

/// One path segment as text. A segment that is not UTF-8 gets a problem, not axum's plain text.
#[derive(Debug)]
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(segment)| Segment(segment))
            .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
    }
}

/// Releases take no parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParameters {}

/// `GET /v1/audit`'s filters and paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this aggregate type (`order`, `reservation`, `inventory`, `product`).
    #[param(min_length = 1, max_length = 64)]
    pub aggregate_type: Option<String>,
    /// Only this aggregate (needs `aggregate_type`); any time range.
    #[param(min_length = 1, max_length = 128)]
    pub aggregate_id: Option<String>,
    /// Only what this subject (or `system:<component>`) did.
    #[param(min_length = 1, max_length = 256)]
    pub actor: Option<String>,
    /// Only this event type, such as `OrderPlaced`.
    #[param(min_length = 1, max_length = 64)]
    pub event_type: Option<String>,
    /// RFC 3339, inclusive; default a week before `to`.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now. Without an aggregate, at most 31 days after `from`.
    pub to: Option<String>,
    /// `next_cursor` of the previous page, as given.
    #[param(min_length = 1, max_length = 1024)]
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

impl<S: Send + Sync> FromRequestParts<S> for AuditParams {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<AuditParams>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        check_paging(params.cursor.as_deref(), params.limit, 1024)?;
        let fields = [
            (&params.aggregate_type, 64),
            (&params.aggregate_id, 128),
            (&params.actor, 256),
            (&params.event_type, 64),
        ];
        if fields
            .iter()
            .any(|(v, max)| v.as_ref().is_some_and(|v| v.is_empty() || v.len() > *max))
        {
            return Err(ApiError::bad_request("a filter is empty or too long"));
        }
        Ok(params)
    }
}

/// `GET /v1/reports/sales`'s dates and paging.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// First day, `YYYY-MM-DD` (UTC); default `to`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// Last day, inclusive; default today. At most 366 days after `from`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
    /// `next_cursor` of the previous page, as given.
    #[param(min_length = 1, max_length = 1024)]
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

impl<S: Send + Sync> FromRequestParts<S> for ReportParams {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<ReportParams>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        check_paging(params.cursor.as_deref(), params.limit, 1024)?;
        Ok(params)
    }
}

fn check_paging(
    cursor: Option<&str>,
    limit: Option<usize>,
    longest: usize,
) -> Result<(), ApiError> {
    if limit.is_some_and(|l| l == 0 || l > 100) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    if cursor.is_some_and(|c| c.is_empty() || c.len() > longest) {
        return Err(ApiError::bad_request("cursor is not one this API gave out"));
    }
    Ok(())
}
