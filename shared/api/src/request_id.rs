//! Every request has an id: the client's `X-Request-Id` when it sends a sensible one, else the
//! platform's (API Gateway's), else a fresh UUIDv7. It is answered back in `X-Request-Id` and
//! recorded as the correlation id of every event the request causes, so an operator can go
//! from a client's report to the audit trail.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const HEADER: &str = "x-request-id";
/// Longest id accepted from a client.
const MAX_LEN: usize = 128;

/// The id of the request being served, as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn fresh() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// A client's id, if it is short and plain enough to put in logs and events as is.
    pub fn from_client(raw: &str) -> Option<Self> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        (!raw.is_empty() && raw.len() <= MAX_LEN && raw.chars().all(plain))
            .then(|| Self(raw.to_owned()))
    }
}

/// Gives the request its id (keeping one the platform set) and answers it back.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let from_client = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::from_client);
    let id = match (from_client, request.extensions().get::<RequestId>()) {
        (Some(client), _) => client,
        (None, Some(platform)) => platform.clone(),
        (None, None) => RequestId::fresh(),
    };
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn only_plain_short_client_ids_are_kept() {
        assert!(RequestId::from_client("req-42_a.b:c").is_some());
        assert!(RequestId::from_client("").is_none());
        assert!(RequestId::from_client("has space").is_none());
        assert!(RequestId::from_client("new\nline").is_none());
        assert!(RequestId::from_client(&"x".repeat(129)).is_none());
        assert!(RequestId::from_client(&"x".repeat(128)).is_some());
    }
}
