//! What every Lambda shares. A function's `main` calls [`serve_api`], [`run_sweeper`],
//! [`run_publisher`] or [`run_projector`]; all set-up (tracing, SDK clients, the shop) happens
//! once per cold start, before the first event.
//!
//! Environment: `TABLE_NAME`, `PERSONAL_TABLE_NAME` and `CURSOR_SECRET` (required);
//! `TENANT_CLAIM` (default `tenant`) and `ROLES_CLAIM` (default `roles`) name the JWT claims API
//! Gateway's authorizer passes on; the publisher needs `TOPIC_ARN`. With `STRIPE_SECRET_KEY`
//! (and optionally `STRIPE_BASE_URL`) payments go through Stripe, else through the sandbox.

mod pipeline;
mod saga;

pub use commerce_api::RouteGroup;
pub use pipeline::{StreamEvent, project, publish_records};
pub use saga::{StepFailed, machines_from_env, run_step, start_cancellations};

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use commerce_api::{Auth, RequestId, VerifiedClaims, group_router, parse_roles};
use commerce_app::projection::{Projection, Projector};
use commerce_app::shop::SweepSummary;
use commerce_app::{Cursors, HoldLimits, Shop, ShopConfig, SystemClock};
use commerce_dynamodb::DynamoTable;
use commerce_stripe::Provider;
use lambda_http::request::RequestContext;
use lambda_http::{Error, LambdaEvent, service_fn};

pub type LambdaShop = Shop<DynamoTable, Provider<DynamoTable>, SystemClock>;

/// JSON logs, as CloudWatch Logs Insights reads them.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_current_span(false)
        .without_time()
        .init();
}

/// The shop on the tables named by `TABLE_NAME` and `PERSONAL_TABLE_NAME`, its page cursors
/// sealed with `CURSOR_SECRET`.
pub async fn shop() -> Result<Arc<LambdaShop>, Error> {
    let secret = std::env::var("CURSOR_SECRET").map_err(|_| "CURSOR_SECRET is not set")?;
    if secret.len() < 32 {
        return Err("CURSOR_SECRET must be at least 32 bytes".into());
    }
    let shop_config = ShopConfig {
        cursors: Cursors::new(secret.as_bytes()),
        limits: limits_from_env()?,
        ..ShopConfig::default()
    };
    let table = table().await?;
    let payments = Provider::choose(
        std::env::var("STRIPE_SECRET_KEY").ok(),
        std::env::var("STRIPE_BASE_URL").ok(),
        table.clone(),
    )
    .map_err(|e| format!("cannot set up payments: {e}"))?;
    Ok(Arc::new(Shop::new(
        table,
        payments,
        SystemClock,
        shop_config,
    )))
}

/// The tables named by `TABLE_NAME` and `PERSONAL_TABLE_NAME`, with the connection to
/// DynamoDB already open: the first request must not pay for the TLS handshake.
pub async fn table() -> Result<DynamoTable, Error> {
    let table = std::env::var("TABLE_NAME").map_err(|_| "TABLE_NAME is not set")?;
    let personal =
        std::env::var("PERSONAL_TABLE_NAME").map_err(|_| "PERSONAL_TABLE_NAME is not set")?;
    let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let table = DynamoTable::new(client, table, personal);
    if let Err(e) = commerce_app::Table::ping(&table).await {
        // The first request tries again; a function that cannot start helps nobody.
        tracing::warn!(error = %e, "cannot reach DynamoDB during init");
    }
    Ok(table)
}

/// The SDK's configuration for a function that has 10 seconds: a call that hangs is cut off
/// and retried well within that, and retries back off briefly (a few tens of milliseconds)
/// instead of for seconds.
pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use std::time::Duration;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(500))
        .operation_attempt_timeout(Duration::from_millis(1500))
        .operation_timeout(Duration::from_secs(3))
        .build();
    let retries = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(100));
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(retries)
        .load()
        .await
}

/// The publisher: takes the events the table's stream hands over to the topic `TOPIC_ARN`.
pub async fn run_publisher() -> Result<(), Error> {
    init_tracing();
    let arn = std::env::var("TOPIC_ARN").map_err(|_| "TOPIC_ARN is not set")?;
    let config = sdk_config().await;
    let topic = commerce_sns_sqs::SnsTopic::new(aws_sdk_sns::Client::new(&config), arn);
    lambda_http::lambda_runtime::run(service_fn(move |event: LambdaEvent<StreamEvent>| {
        let topic = topic.clone();
        async move { Ok::<_, Error>(publish_records(&topic, event.payload).await) }
    }))
    .await
}

/// A projector: applies what its SQS queue delivers to read model `P`.
pub async fn run_projector<P: Projection>() -> Result<(), Error> {
    init_tracing();
    let projector = Projector::<DynamoTable, P>::new(table().await?);
    lambda_http::lambda_runtime::run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let projector = projector.clone();
            async move { Ok::<_, Error>(project(&projector, event.payload).await) }
        },
    ))
    .await
}

/// A step of the cancellation saga, named by `COMMERCE_STEP` (`release-stock`,
/// `settle-payment`, `complete-cancellation`, `flag-cancellation`): Step Functions invokes it
/// with the saga's state and gets the order's state back, or the step's error as the error type.
pub async fn run_cancellation_step() -> Result<(), Error> {
    init_tracing();
    let name = std::env::var("COMMERCE_STEP").map_err(|_| "COMMERCE_STEP is not set")?;
    let step = commerce_app::saga::CancellationStep::parse(&name)
        .ok_or_else(|| format!("COMMERCE_STEP names no step: {name}"))?;
    let shop = shop().await?;
    lambda_http::lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let shop = shop.clone();
        async move { run_step(&shop, step, &event.payload).await }
    }))
    .await
}

/// The saga starter: starts a cancellation execution for each request its queue delivers.
pub async fn run_saga_starter() -> Result<(), Error> {
    init_tracing();
    let config = sdk_config().await;
    let machines = commerce_stepfunctions::StepFunctions::new(
        aws_sdk_sfn::Client::new(&config),
        machines_from_env()?,
    );
    lambda_http::lambda_runtime::run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let machines = machines.clone();
            async move { Ok::<_, Error>(start_cancellations(&machines, event.payload).await) }
        },
    ))
    .await
}

/// The hold limits, from `COMMERCE_MAX_HOLD_SECONDS`, `COMMERCE_MAX_RESERVATIONS`,
/// `COMMERCE_MAX_UNITS_PER_SKU` and `COMMERCE_MAX_UNITS` where set (as the local server reads them).
fn limits_from_env() -> Result<HoldLimits, Error> {
    fn var<V: std::str::FromStr>(name: &str, default: V) -> Result<V, Error> {
        match std::env::var(name) {
            Ok(value) => value
                .parse()
                .map_err(|_| format!("{name} is not a number: {value}").into()),
            Err(_) => Ok(default),
        }
    }
    let default = HoldLimits::default();
    Ok(HoldLimits {
        max_ttl_seconds: var("COMMERCE_MAX_HOLD_SECONDS", default.max_ttl_seconds)?,
        max_holds: var("COMMERCE_MAX_RESERVATIONS", default.max_holds)?,
        max_units_per_sku: var("COMMERCE_MAX_UNITS_PER_SKU", default.max_units_per_sku)?,
        max_units: var("COMMERCE_MAX_UNITS", default.max_units)?,
    })
}

/// Serves `group`'s routes behind API Gateway (HTTP API, JWT authorizer).
pub async fn serve_api(group: RouteGroup) -> Result<(), Error> {
    init_tracing();
    let claims = ClaimNames::from_env();
    let shop = shop().await?;
    let table = shop.table().clone();
    let app = group_router(shop, Auth::upstream(), group)
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let claims = claims.clone();
                async move { claims.bridge(request, next).await }
            },
        ))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let table = table.clone();
                async move { log_capacity(&table, request, next).await }
            },
        ));
    lambda_http::run(app).await
}

/// Logs the DynamoDB units one request used, so Logs Insights can sum them per route. One
/// instance serves one request at a time, so the difference of the counts is this request's.
async fn log_capacity(table: &DynamoTable, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path(), |matched| matched.as_str())
        .to_owned();
    let method = request.method().clone();
    let before = table.consumed();
    let response = next.run(request).await;
    let used = table.consumed().since(&before).total();
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        dynamodb_calls = used.calls,
        dynamodb_read_units = used.read,
        dynamodb_write_units = used.write,
        dynamodb_reported_units = used.reported,
        "request"
    );
    response
}

/// Which authorizer claims carry the tenant and the roles.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub tenant: String,
    pub roles: String,
}

impl ClaimNames {
    pub fn from_env() -> Self {
        Self {
            tenant: std::env::var("TENANT_CLAIM").unwrap_or_else(|_| "tenant".into()),
            roles: std::env::var("ROLES_CLAIM").unwrap_or_else(|_| "roles".into()),
        }
    }

    /// Copies the claims API Gateway verified into the request as [`VerifiedClaims`]. Requests
    /// without them reach the router unauthenticated and get 401 on protected routes.
    pub async fn bridge(&self, mut request: Request, next: Next) -> Response {
        let verified = match request.extensions().get::<RequestContext>() {
            Some(RequestContext::ApiGatewayV2(context)) => context
                .authorizer
                .as_ref()
                .and_then(|a| a.jwt.as_ref())
                .map(|jwt| VerifiedClaims {
                    sub: jwt.claims.get("sub").cloned().unwrap_or_default(),
                    tenant: jwt.claims.get(&self.tenant).cloned().unwrap_or_default(),
                    roles: jwt
                        .claims
                        .get(&self.roles)
                        .map(|r| parse_roles(r))
                        .unwrap_or_default(),
                }),
            _ => None,
        };
        if let Some(verified) = verified {
            request.extensions_mut().insert(verified);
        }
        if let Some(RequestContext::ApiGatewayV2(context)) =
            request.extensions().get::<RequestContext>()
            && let Some(id) = context.request_id.clone()
        {
            request.extensions_mut().insert(RequestId(id));
        }
        next.run(request).await
    }
}

/// The scheduled sweeper: releases expired reservations on each tick.
pub async fn run_sweeper() -> Result<(), Error> {
    init_tracing();
    let shop = shop().await?;
    lambda_http::lambda_runtime::run(service_fn(move |_tick: LambdaEvent<serde_json::Value>| {
        let shop = shop.clone();
        async move {
            let mut total = SweepSummary::default();
            // Keep going while full batches of due holds come back, within one invocation.
            loop {
                let pass = shop.sweep(100).await;
                total.expired += pass.expired;
                total.voided += pass.voided;
                total.failed += pass.failed;
                if !pass.more || pass.expired + pass.voided == 0 {
                    break;
                }
            }
            tracing::info!(?total, "sweep done");
            Ok::<_, Error>(serde_json::to_value(total)?)
        }
    }))
    .await
}
