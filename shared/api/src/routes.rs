use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json, Router};
use commerce_app::shop::{
    CancelOrder, NewProduct, NewReservation, PlaceOrder, StockLevel, StockReceipt,
};
use commerce_app::{Clock, PaymentGateway, Shop, Table};
use commerce_domain::{OrderId, ReservationId, Sku};

use crate::auth::{Auth, Authenticated};
use crate::extract::{
    AuditParams, Command, JsonBody, Listing, NoParameters, ReportParams, Segment,
};
use crate::openapi;
use crate::openapi::IdempotencyKeyHeader;
use crate::problem::{ApiError, json_response};
use commerce_app::audit::AuditFilter;
use commerce_app::projection::sales::SalesRow;
use commerce_app::shop::{AuditQuery, Role};
use commerce_app::views::{
    AlertView, AuditEvent, InventoryView, ListPage, OrderSummary, OrderView, Problem, ProductView,
    ReservationView,
};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

type Shared<T, P, C> = State<Arc<Shop<T, P, C>>>;
type Answer = Result<Response, ApiError>;

/// Which function serves a route. On AWS, API Gateway sends each group's paths to a Lambda of
/// its own, which builds only that group's routes; the local server serves every group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteGroup {
    Health,
    Products,
    Inventory,
    Reservations,
    Orders,
    Reports,
    /// This process's own figures: the local server's, never deployed (CloudWatch has them).
    Local,
}

impl RouteGroup {
    pub const ALL: [RouteGroup; 7] = [
        RouteGroup::Health,
        RouteGroup::Products,
        RouteGroup::Inventory,
        RouteGroup::Reservations,
        RouteGroup::Orders,
        RouteGroup::Reports,
        RouteGroup::Local,
    ];

    /// The group's name: its Lambda binary's, as `template.yaml` deploys it.
    pub fn name(self) -> &'static str {
        match self {
            RouteGroup::Health => "health",
            RouteGroup::Products => "products",
            RouteGroup::Inventory => "inventory",
            RouteGroup::Reservations => "reservations",
            RouteGroup::Orders => "orders",
            RouteGroup::Reports => "reports",
            RouteGroup::Local => "local",
        }
    }
}

type Route<T, P, C> = (RouteGroup, &'static str, MethodRouter<Arc<Shop<T, P, C>>>);

/// The route table: every path of the API, the group that serves it, and its handlers.
fn routes<T: Table, P: PaymentGateway, C: Clock>() -> Vec<Route<T, P, C>> {
    use RouteGroup::{Health, Inventory, Local, Orders, Products, Reports, Reservations};
    vec![
        (Health, "/health", get(health::<T, P, C>)),
        (Health, "/openapi.json", get(openapi::document)),
        (
            Products,
            "/v1/products",
            post(create_product::<T, P, C>).get(list_products::<T, P, C>),
        ),
        (Products, "/v1/products/{sku}", get(get_product::<T, P, C>)),
        (
            Inventory,
            "/v1/inventory/low-stock",
            get(low_stock::<T, P, C>),
        ),
        (
            Inventory,
            "/v1/inventory/{sku}",
            get(get_inventory::<T, P, C>).put(set_stock::<T, P, C>),
        ),
        (
            Inventory,
            "/v1/inventory/{sku}/receipts",
            post(receive_stock::<T, P, C>),
        ),
        (
            Reservations,
            "/v1/reservations",
            post(create_reservation::<T, P, C>),
        ),
        (
            Reservations,
            "/v1/reservations/{id}",
            get(get_reservation::<T, P, C>),
        ),
        (
            Reservations,
            "/v1/reservations/{id}/release",
            post(release_reservation::<T, P, C>),
        ),
        (
            Orders,
            "/v1/orders",
            post(place_order::<T, P, C>).get(list_orders::<T, P, C>),
        ),
        (Orders, "/v1/orders/{id}", get(get_order::<T, P, C>)),
        (
            Orders,
            "/v1/orders/{id}/cancellation",
            post(cancel_order::<T, P, C>),
        ),
        (
            Orders,
            "/v1/orders/{id}/capture",
            post(capture_payment::<T, P, C>),
        ),
        (Reports, "/v1/alerts", get(alerts::<T, P, C>)),
        (Reports, "/v1/audit", get(audit::<T, P, C>)),
        (Reports, "/v1/reports/sales", get(sales_report::<T, P, C>)),
        (Local, "/metrics", get(metrics)),
    ]
}

/// Every path of the API with the group that serves it, for checks against a deployment.
pub fn route_groups<T: Table, P: PaymentGateway, C: Clock>() -> Vec<(RouteGroup, &'static str)> {
    routes::<T, P, C>()
        .into_iter()
        .map(|(group, path, _)| (group, path))
        .collect()
}

/// The whole HTTP API over one shop: what the local server serves.
pub fn router<T: Table, P: PaymentGateway, C: Clock>(
    shop: Arc<Shop<T, P, C>>,
    auth: Auth,
) -> Router {
    build(shop, auth, |_| true)
}

/// Only `group`'s routes: what that group's Lambda serves. Any other path is a 404.
pub fn group_router<T: Table, P: PaymentGateway, C: Clock>(
    shop: Arc<Shop<T, P, C>>,
    auth: Auth,
    group: RouteGroup,
) -> Router {
    build(shop, auth, |g| g == group)
}

fn build<T: Table, P: PaymentGateway, C: Clock>(
    shop: Arc<Shop<T, P, C>>,
    auth: Auth,
    serves: impl Fn(RouteGroup) -> bool,
) -> Router {
    let mut router = Router::new();
    for (group, path, handlers) in routes::<T, P, C>() {
        if serves(group) {
            router = router.route(path, handlers);
        }
    }
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "method-not-allowed",
                "Method not allowed",
                "this path does not take that method",
            )
        })
        .layer(Extension(auth))
        .layer(axum::middleware::from_fn(crate::request_id::assign))
        .with_state(shop)
}

fn reply(reply: commerce_app::shop::Reply) -> Response {
    json_response(
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        &reply.body,
    )
}

fn ok(body: &impl serde::Serialize) -> Response {
    json_response(StatusCode::OK, body)
}

fn sku(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|_| ApiError::not_found())
}

#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses((status = 200, description = "The store answers"), (status = 503, description = "The store does not answer", body = Problem, content_type = "application/problem+json")))]
async fn health<T: Table, P: PaymentGateway, C: Clock>(State(shop): Shared<T, P, C>) -> Answer {
    match shop.health().await {
        Ok(()) => Ok(Json(serde_json::json!({"status": "ok"})).into_response()),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            Err(ApiError::new(
                503,
                "unavailable",
                "Service unavailable",
                "the store does not answer",
            ))
        }
    }
}

#[utoipa::path(post, path = "/v1/products", tag = "catalog", params(IdempotencyKeyHeader), request_body = NewProduct, responses((status = 201, description = "Created", body = ProductView), (status = 400, description = "Malformed request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller's role may not do this", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The SKU exists", body = Problem, content_type = "application/problem+json")))]
async fn create_product<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    command: Command<NewProduct>,
) -> Answer {
    Ok(reply(
        shop.create_product(&command.caller, Some(&command.key), command.body)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/products", tag = "catalog", params(Listing), responses((status = 200, description = "A page of the catalog in SKU order", body = ListPage<ProductView>), (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json")))]
async fn list_products<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .products(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

#[utoipa::path(get, path = "/v1/products/{sku}", tag = "catalog", params(("sku" = String, Path)), responses((status = 200, description = "The product", body = ProductView), (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json")))]
async fn get_product<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Segment(raw): Segment,
) -> Answer {
    Ok(ok(&shop.product(&caller, &sku(&raw)?).await?))
}

#[utoipa::path(get, path = "/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)), responses((status = 200, description = "Stock of the SKU", body = InventoryView), (status = 403, description = "Customers do not read stock", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json")))]
async fn get_inventory<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Segment(raw): Segment,
) -> Answer {
    Ok(ok(&shop.inventory(&caller, &sku(&raw)?).await?))
}

#[utoipa::path(put, path = "/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)), request_body = StockLevel, responses((status = 200, description = "Stock after the count", body = InventoryView), (status = 400, description = "Malformed request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller's role may not do this", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"), (status = 409, description = "On hand would be below reserved", body = Problem, content_type = "application/problem+json")))]
async fn set_stock<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Segment(raw): Segment,
    JsonBody(caller, level): JsonBody<StockLevel>,
) -> Answer {
    Ok(reply(shop.set_stock(&caller, &sku(&raw)?, level).await?))
}

#[utoipa::path(post, path = "/v1/inventory/{sku}/receipts", tag = "inventory", params(("sku" = String, Path), IdempotencyKeyHeader), request_body = StockReceipt, responses((status = 200, description = "Stock after the receipt", body = InventoryView), (status = 400, description = "Malformed request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller's role may not do this", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json")))]
async fn receive_stock<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Segment(raw): Segment,
    command: Command<StockReceipt>,
) -> Answer {
    Ok(reply(
        shop.receive_stock(
            &command.caller,
            Some(&command.key),
            &sku(&raw)?,
            command.body,
        )
        .await?,
    ))
}

#[utoipa::path(get, path = "/v1/inventory/low-stock", tag = "inventory", params(Listing), responses((status = 200, description = "SKUs whose available stock is below their threshold", body = ListPage<InventoryView>), (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Customers do not read stock", body = Problem, content_type = "application/problem+json")))]
async fn low_stock<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .low_stock(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", params(IdempotencyKeyHeader), request_body = NewReservation, responses((status = 201, description = "Stock held", body = ReservationView), (status = 400, description = "Malformed request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller's role may not do this", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid values, a hold longer than the shop allows, or products in two currencies", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Out of stock, the customer's hold limit reached, or the key is in use", body = Problem, content_type = "application/problem+json")))]
async fn create_reservation<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    command: Command<NewReservation>,
) -> Answer {
    Ok(reply(
        shop.create_reservation(&command.caller, Some(&command.key), command.body)
            .await?,
    ))
}

fn reservation_id(raw: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(raw).map_err(|_| ApiError::not_found())
}

#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations", params(("id" = String, Path)), responses((status = 200, description = "The reservation", body = ReservationView), (status = 404, description = "No such reservation for this caller", body = Problem, content_type = "application/problem+json")))]
async fn get_reservation<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Segment(raw): Segment,
) -> Answer {
    Ok(ok(&shop
        .reservation(&caller, &reservation_id(&raw)?)
        .await?))
}

#[utoipa::path(post, path = "/v1/reservations/{id}/release", tag = "reservations", params(("id" = String, Path), IdempotencyKeyHeader), responses((status = 200, description = "Released; the stock is available again", body = ReservationView), (status = 400, description = "Missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Only customers release their holds", body = Problem, content_type = "application/problem+json"), (status = 422, description = "A body other than none or {}", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such reservation for this caller", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Not held any more, or an order is paying for it", body = Problem, content_type = "application/problem+json")))]
async fn release_reservation<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Segment(raw): Segment,
    command: Command<NoParameters>,
) -> Answer {
    Ok(reply(
        shop.release_reservation(&command.caller, Some(&command.key), &reservation_id(&raw)?)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/orders", tag = "orders", params(IdempotencyKeyHeader), request_body = PlaceOrder, responses((status = 201, description = "Placed: stock held and payment authorized", body = OrderView), (status = 402, description = "Payment declined; a basket's stock was released, a reservation stays held", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such reservation for this caller", body = Problem, content_type = "application/problem+json"), (status = 400, description = "Malformed request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The caller's role may not do this", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid values", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Out of stock, the reservation is being paid for by another order, or the key is still in use", body = Problem, content_type = "application/problem+json"), (status = 503, description = "Payment provider unavailable; retry with the same key, which resumes the order", body = Problem, content_type = "application/problem+json")))]
async fn place_order<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    command: Command<PlaceOrder>,
) -> Answer {
    Ok(reply(
        shop.place_order(command.caller, Some(command.key), command.body)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(Listing), responses((status = 200, description = "The caller's orders, newest first (operators: the shop's)", body = ListPage<OrderSummary>), (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Admins do not read orders", body = Problem, content_type = "application/problem+json")))]
async fn list_orders<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .orders(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path)), responses((status = 200, description = "The order", body = OrderView), (status = 404, description = "No such order for this caller", body = Problem, content_type = "application/problem+json")))]
async fn get_order<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Segment(raw): Segment,
) -> Answer {
    let id = OrderId::parse(raw).map_err(|_| ApiError::not_found())?;
    Ok(ok(&shop.order(&caller, &id).await?))
}

fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|_| ApiError::not_found())
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancellation", tag = "orders", params(("id" = String, Path), IdempotencyKeyHeader), request_body = CancelOrder, responses((status = 202, description = "Cancellation under way (or, asked again, as far as it got): stock and payment are given back by the cancellation saga; follow it on the order", body = OrderView), (status = 400, description = "Malformed request or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Only the order's customer or an admin cancels", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such order for this caller", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The order shipped, another cancellation runs, or nothing is left to cancel", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid reason or lines", body = Problem, content_type = "application/problem+json")))]
async fn cancel_order<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Segment(raw): Segment,
    command: Command<CancelOrder>,
) -> Answer {
    Ok(reply(
        shop.request_cancellation(
            &command.caller,
            Some(&command.key),
            &order_id(&raw)?,
            command.body,
        )
        .await?,
    ))
}

#[utoipa::path(post, path = "/v1/orders/{id}/capture", tag = "orders", params(("id" = String, Path), IdempotencyKeyHeader), responses((status = 200, description = "The authorized payment (less what cancellations left out) is captured", body = OrderView), (status = 400, description = "Missing Idempotency-Key", body = Problem, content_type = "application/problem+json"), (status = 402, description = "The provider refused the capture", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Only admins capture", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Captured already, or the order is being cancelled", body = Problem, content_type = "application/problem+json"), (status = 422, description = "A body other than none or {}", body = Problem, content_type = "application/problem+json"), (status = 503, description = "Payment provider unavailable; retry with the same key", body = Problem, content_type = "application/problem+json")))]
async fn capture_payment<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Segment(raw): Segment,
    command: Command<NoParameters>,
) -> Answer {
    let id = order_id(&raw)?;
    Ok(reply(
        shop.capture_order_payment(command.caller, Some(command.key), id)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/alerts", tag = "operations", params(Listing), responses((status = 200, description = "Cancellations that need attention, newest first", body = ListPage<AlertView>), (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Only operators read alerts", body = Problem, content_type = "application/problem+json")))]
async fn alerts<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .alerts(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

fn instant(raw: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    raw.map(|text| {
        commerce_app::views::parse_timestamp(text)
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be an RFC 3339 time")))
    })
    .transpose()
}

#[utoipa::path(get, path = "/v1/audit", tag = "operations", params(AuditParams), responses((status = 200, description = "The shop's events with their envelopes, oldest first; filters may leave a page short, with a cursor to go on", body = ListPage<AuditEvent>), (status = 400, description = "Bad filters, times or paging", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Only operators and admins read the audit trail", body = Problem, content_type = "application/problem+json")))]
async fn audit<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    params: AuditParams,
) -> Answer {
    let query = AuditQuery {
        from_ms: instant(params.from.as_deref(), "from")?,
        to_ms: instant(params.to.as_deref(), "to")?,
        filter: AuditFilter {
            aggregate_type: params.aggregate_type,
            aggregate_id: params.aggregate_id,
            actor: params.actor,
            event_type: params.event_type,
        },
        cursor: params.cursor,
        limit: params.limit,
    };
    Ok(ok(&shop.audit(&caller, query).await?))
}

#[utoipa::path(get, path = "/v1/reports/sales", tag = "operations", params(ReportParams), responses((status = 200, description = "Units, orders and revenue per SKU per day (UTC), by day then SKU", body = ListPage<SalesRow>), (status = 400, description = "Bad dates or paging", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Only operators read reports", body = Problem, content_type = "application/problem+json")))]
async fn sales_report<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    params: ReportParams,
) -> Answer {
    Ok(ok(&shop
        .sales_report(
            &caller,
            params.from.as_deref(),
            params.to.as_deref(),
            params.cursor.as_deref(),
            params.limit,
        )
        .await?))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "The event pipeline's counters and latency histogram for the caller's shop, in Prometheus' text format", content_type = "text/plain"), (status = 403, description = "Only operators read metrics", body = Problem, content_type = "application/problem+json")))]
async fn metrics(Authenticated(caller): Authenticated) -> Answer {
    if !caller.has(Role::Ops) {
        return Err(commerce_app::AppError::Forbidden("read metrics").into());
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        commerce_app::metrics::render(caller.tenant.as_str()),
    )
        .into_response())
}
