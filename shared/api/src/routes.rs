use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use commerce_app::shop::{NewProduct, NewReservation, PlaceOrder, StockLevel, StockReceipt};
use commerce_app::{Clock, PaymentGateway, Shop, Table};
use commerce_domain::{OrderId, ReservationId, Sku};

use crate::auth::{Auth, Authenticated};
use crate::extract::{Command, JsonBody, Listing, NoParameters};
use crate::openapi;
use crate::problem::{ApiError, json_response};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

type Shared<T, P, C> = State<Arc<Shop<T, P, C>>>;
type Answer = Result<Response, ApiError>;

/// The whole HTTP API over one shop.
pub fn router<T: Table, P: PaymentGateway, C: Clock>(
    shop: Arc<Shop<T, P, C>>,
    auth: Auth,
) -> Router {
    Router::new()
        .route("/health", get(health::<T, P, C>))
        .route("/openapi.json", get(openapi::document))
        .route(
            "/v1/products",
            post(create_product::<T, P, C>).get(list_products::<T, P, C>),
        )
        .route("/v1/products/{sku}", get(get_product::<T, P, C>))
        .route("/v1/inventory/low-stock", get(low_stock::<T, P, C>))
        .route(
            "/v1/inventory/{sku}",
            get(get_inventory::<T, P, C>).put(set_stock::<T, P, C>),
        )
        .route(
            "/v1/inventory/{sku}/receipts",
            post(receive_stock::<T, P, C>),
        )
        .route("/v1/reservations", post(create_reservation::<T, P, C>))
        .route("/v1/reservations/{id}", get(get_reservation::<T, P, C>))
        .route(
            "/v1/reservations/{id}/release",
            post(release_reservation::<T, P, C>),
        )
        .route(
            "/v1/orders",
            post(place_order::<T, P, C>).get(list_orders::<T, P, C>),
        )
        .route("/v1/orders/{id}", get(get_order::<T, P, C>))
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

async fn create_product<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    command: Command<NewProduct>,
) -> Answer {
    Ok(reply(
        shop.create_product(&command.caller, Some(&command.key), command.body)
            .await?,
    ))
}

async fn list_products<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .products(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

async fn get_product<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Answer {
    Ok(ok(&shop.product(&caller, &sku(&raw)?).await?))
}

async fn get_inventory<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Answer {
    Ok(ok(&shop.inventory(&caller, &sku(&raw)?).await?))
}

async fn set_stock<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Path(raw): Path<String>,
    JsonBody(caller, level): JsonBody<StockLevel>,
) -> Answer {
    Ok(ok(&shop.set_stock(&caller, &sku(&raw)?, level).await?))
}

async fn receive_stock<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Path(raw): Path<String>,
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

async fn low_stock<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .low_stock(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

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

async fn get_reservation<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Answer {
    Ok(ok(&shop
        .reservation(&caller, &reservation_id(&raw)?)
        .await?))
}

async fn release_reservation<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Path(raw): Path<String>,
    command: Command<NoParameters>,
) -> Answer {
    Ok(reply(
        shop.release_reservation(&command.caller, Some(&command.key), &reservation_id(&raw)?)
            .await?,
    ))
}

async fn place_order<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    command: Command<PlaceOrder>,
) -> Answer {
    Ok(reply(
        shop.place_order(&command.caller, Some(&command.key), command.body)
            .await?,
    ))
}

async fn list_orders<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    listing: Listing,
) -> Answer {
    Ok(ok(&shop
        .orders(&caller, listing.cursor.as_deref(), listing.limit)
        .await?))
}

async fn get_order<T: Table, P: PaymentGateway, C: Clock>(
    State(shop): Shared<T, P, C>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Answer {
    let id = OrderId::parse(raw).map_err(|_| ApiError::not_found())?;
    Ok(ok(&shop.order(&caller, &id).await?))
}
