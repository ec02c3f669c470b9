//! The one HTTP router. The local server serves all of it on a socket; each API Lambda serves
//! its own group of routes from the same table through `lambda_http`. Routes, auth, error mapping and the OpenAPI document live here, once.

mod auth;
mod extract;
mod openapi;
mod problem;
mod request_id;
mod routes;

pub use auth::{Auth, DevClaims, MIN_SECRET_BYTES, VerifiedClaims, WeakSecret, parse_roles};
pub use openapi::{ApiDoc, spec};
pub use problem::ApiError;
pub use request_id::{HEADER as REQUEST_ID_HEADER, RequestId};
pub use routes::{BODY_LIMIT, RouteGroup, group_router, route_groups, router};
