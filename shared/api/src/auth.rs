//! Who is calling. Locally the server verifies HS256 bearer tokens itself. On AWS, API Gateway's
//! JWT authorizer has verified the token before the Lambda runs; the Lambda adapter puts its
//! claims into the request's extensions as [`VerifiedClaims`] (never read from headers), and
//! the router trusts only that.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use commerce_app::{Caller, Role};
use commerce_domain::{CustomerId, TenantId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;

pub const ISSUER: &str = "commerce-local";
pub const AUDIENCE: &str = "commerce";

/// Claims some trusted front door already verified.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub sub: String,
    pub tenant: String,
    pub roles: Vec<String>,
}

/// The claims of a locally issued token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevClaims {
    pub sub: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Clone)]
pub struct Auth {
    local: Option<Arc<LocalKeys>>,
}

struct LocalKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("local", &self.local.is_some())
            .finish()
    }
}

impl Auth {
    /// Verifies HS256 tokens signed with `secret` (the local server).
    pub fn local(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        // The server checks tokens it issued itself, on its own clock: little skew to allow for.
        validation.leeway = 5;
        Self {
            local: Some(Arc::new(LocalKeys {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
            })),
        }
    }

    /// Trusts only claims verified upstream (Lambda behind API Gateway's JWT authorizer).
    pub fn upstream() -> Self {
        Self { local: None }
    }

    /// Issues a token the local server accepts; for development and tests.
    pub fn mint(
        &self,
        tenant: &str,
        sub: &str,
        roles: &[&str],
        ttl_seconds: u64,
    ) -> Result<String, ApiError> {
        let keys = self
            .local
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("this server does not issue tokens"))?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = DevClaims {
            sub: sub.into(),
            tenant: tenant.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
            .map_err(|e| ApiError::new(500, "internal", "Internal error", e.to_string()))
    }

    fn verify(&self, parts: &Parts) -> Result<VerifiedClaims, ApiError> {
        if let Some(claims) = parts.extensions.get::<VerifiedClaims>() {
            return Ok(claims.clone());
        }
        let keys = self
            .local
            .as_ref()
            .ok_or_else(|| ApiError::unauthorized("no verified identity on this request"))?;
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
        let data =
            jsonwebtoken::decode::<DevClaims>(token.trim(), &keys.decoding, &keys.validation)
                .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        Ok(VerifiedClaims {
            sub: data.claims.sub,
            tenant: data.claims.tenant,
            roles: data.claims.roles,
        })
    }
}

/// Reads roles as API Gateway passes them too: a JSON array, or `[a b]`, or `a,b` in a string.
pub fn parse_roles(raw: &str) -> Vec<String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(raw) {
        return list;
    }
    raw.trim_matches(|c| c == '[' || c == ']')
        .split([' ', ','])
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The verified caller of a request.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let auth = parts.extensions.get::<Auth>().cloned().ok_or_else(|| {
            ApiError::new(500, "internal", "Internal error", "auth is not configured")
        })?;
        let claims = auth.verify(parts)?;
        let tenant = TenantId::parse(claims.tenant).map_err(|_| {
            ApiError::unauthorized("the token's tenant claim is missing or malformed")
        })?;
        let subject = CustomerId::parse(claims.sub)
            .map_err(|_| ApiError::unauthorized("the token's subject is malformed"))?;
        let roles = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
        Ok(Self(Caller {
            tenant,
            subject,
            roles,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_every_shape_api_gateway_sends() {
        assert_eq!(parse_roles(r#"["admin","ops"]"#), vec!["admin", "ops"]);
        assert_eq!(parse_roles("[admin ops]"), vec!["admin", "ops"]);
        assert_eq!(parse_roles("customer"), vec!["customer"]);
        assert!(parse_roles("").is_empty());
    }

    #[test]
    fn minted_tokens_verify_and_foreign_ones_do_not() {
        let auth = Auth::local(b"secret-one");
        let token = auth.mint("acme", "alice", &["customer"], 60).unwrap();
        let request = axum::http::Request::builder()
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let (parts, _) = request.into_parts();
        let claims = auth.verify(&parts).unwrap();
        assert_eq!(
            (claims.tenant.as_str(), claims.sub.as_str()),
            ("acme", "alice")
        );
        assert!(Auth::local(b"secret-two").verify(&parts).is_err());
        assert!(
            Auth::upstream().verify(&parts).is_err(),
            "upstream mode never trusts a bearer header"
        );
    }
}
