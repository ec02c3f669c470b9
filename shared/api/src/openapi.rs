//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they take
//! and return, and served at `/openapi.json`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The `Idempotency-Key` header every state-changing POST requires.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// Unique per intended action; the same key and body replay the first answer (kept 24 hours).
    #[param(
        rename = "Idempotency-Key",
        required = true,
        pattern = "^[!-~]{1,255}$"
    )]
    #[allow(dead_code)]
    idempotency_key: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Commerce API", description = "Orders, inventory and reservations. Errors are RFC 9457 problems (application/problem+json)."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        document,
        routes::health,
        routes::create_product,
        routes::list_products,
        routes::get_product,
        routes::get_inventory,
        routes::set_stock,
        routes::receive_stock,
        routes::low_stock,
        routes::create_reservation,
        routes::get_reservation,
        routes::release_reservation,
        routes::place_order,
        routes::list_orders,
        routes::get_order,
        routes::cancel_order,
        routes::capture_payment,
        routes::alerts,
        routes::audit,
        routes::sales_report,
        routes::metrics,
    ),
    tags(
        (name = "catalog", description = "Products and prices (admins write)"),
        (name = "inventory", description = "Stock levels and low-stock alerts (admins write, operators read)"),
        (name = "reservations", description = "Holds on stock for a cart"),
        (name = "orders", description = "Placing and reading orders"),
        (name = "operations", description = "Health, this document, the audit trail, reports and metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The document, with the 401 every operation that needs a token can answer.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let unauthorized = utoipa::openapi::ResponseBuilder::new()
        .description("No valid bearer token")
        .content(
            "application/problem+json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.put, &mut item.post]
            .into_iter()
            .flatten()
        {
            let public = operation
                .security
                .as_ref()
                .is_some_and(|s| s.iter().all(|r| *r == Default::default()));
            if !public {
                operation
                    .responses
                    .responses
                    .entry("401".into())
                    .or_insert_with(|| unauthorized.clone().into());
            }
        }
    }
    doc
}

/// Serves the document, rendered once.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()), responses((status = 200, description = "This document")))]
pub async fn document() -> Response {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    let body =
        DOCUMENT.get_or_init(|| spec().to_json().map(String::into_bytes).unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}
