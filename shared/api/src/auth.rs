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
use crate::request_id::RequestId;

pub const ISSUER: &str = "commerce-local";
pub const AUDIENCE: &str = "commerce";
/// The shortest signing secret accepted: HS256 keys shorter than its hash are guessable.
pub const MIN_SECRET_BYTES: usize = 32;

/// The signing secret is too short to be safe.
#[derive(Debug, thiserror::Error)]
#[error("the token signing secret must be at least {MIN_SECRET_BYTES} bytes, not {0}")]
pub struct WeakSecret(pub usize);

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
    /// Verifies HS256 tokens signed with `secret` (the local server). An empty or short secret
    /// is refused: anyone could sign admin tokens with it.
    pub fn local(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        // The server checks tokens it issued itself, on its own clock: little skew to allow for.
        validation.leeway = 5;
        Ok(Self {
            local: Some(Arc::new(LocalKeys {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
            })),
        })
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
            .and_then(bearer_token)
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

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
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
        let correlation_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::fresh)
            .0;
        Ok(Self(Caller {
            tenant,
            subject,
            roles,
            correlation_id,
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

    const ONE: &[u8] = b"secret-one-secret-one-secret-one-1";
    const TWO: &[u8] = b"secret-two-secret-two-secret-two-2";

    fn parts_with(authorization: &str) -> Parts {
        let request = axum::http::Request::builder()
            .header("authorization", authorization)
            .body(())
            .unwrap();
        request.into_parts().0
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Auth::local(b"").is_err());
        assert!(Auth::local(&[b'x'; MIN_SECRET_BYTES - 1]).is_err());
        assert!(Auth::local(&[b'x'; MIN_SECRET_BYTES]).is_ok());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let auth = Auth::local(ONE).unwrap();
        let token = auth.mint("acme", "alice", &["customer"], 60).unwrap();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(
                auth.verify(&parts_with(&format!("{scheme} {token}")))
                    .is_ok(),
                "{scheme}"
            );
        }
        for bad in [format!("Basic {token}"), token.clone(), "Bearer ".into()] {
            assert!(auth.verify(&parts_with(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let auth = Auth::local(ONE).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "sub": "alice", "tenant": "acme", "roles": ["customer"], "iss": ISSUER,
            "aud": AUDIENCE, "iat": now, "exp": now + 3600, "nbf": now + 600,
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(ONE),
        )
        .unwrap();
        assert!(
            auth.verify(&parts_with(&format!("Bearer {token}")))
                .is_err()
        );
    }

    #[test]
    fn minted_tokens_verify_and_foreign_ones_do_not() {
        let auth = Auth::local(ONE).unwrap();
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
        assert!(Auth::local(TWO).unwrap().verify(&parts).is_err());
        assert!(
            Auth::upstream().verify(&parts).is_err(),
            "upstream mode never trusts a bearer header"
        );
    }
}
