//! The shop on the DynamoDB adapter, through the real aws-sdk client against moto server: the
//! order race, the sweeper and the Lambda path. The table contract itself runs in
//! `shared/dynamodb/tests/contract.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod capacity;
mod init;
mod policies;
mod retries;

use std::sync::Arc;

use commerce_app::shop::NewReservation;
use commerce_app::shop::{NewProduct, PlaceOrder, StockLevel};
use commerce_app::{AppError, Caller, Clock, Role, SandboxPayments, Shop, ShopConfig, SystemClock};
use commerce_domain::{
    Currency, CustomerId, DomainError, Line, Money, ProductName, Quantity, Sku, TenantId,
};
use commerce_dynamodb::moto::fresh_table;

fn caller(sub: &str, role: Role) -> Caller {
    Caller {
        tenant: TenantId::parse("acme").unwrap(),
        subject: CustomerId::parse(sub).unwrap(),
        roles: vec![role],
        correlation_id: "test".into(),
    }
}

/// A shop on a fresh table with one product, `sku`, stocked with `on_hand` units.
async fn stocked<C: Clock>(
    clock: C,
    sku: &Sku,
    on_hand: u64,
    low_stock_threshold: u64,
) -> Shop<commerce_dynamodb::DynamoTable, SandboxPayments, C> {
    let shop = Shop::new(
        fresh_table().await,
        SandboxPayments::default(),
        clock,
        ShopConfig::default(),
    );
    let admin = caller("admin-1", Role::Admin);
    let price = Money::new(999, Currency::parse("EUR").unwrap()).unwrap();
    let new = NewProduct {
        sku: sku.clone(),
        name: ProductName::parse("Item").unwrap(),
        price,
    };
    shop.create_product(&admin, None, new).await.unwrap();
    shop.set_stock(
        &admin,
        sku,
        StockLevel {
            on_hand,
            low_stock_threshold,
        },
    )
    .await
    .unwrap();
    shop
}

/// Twelve buyers, five units: five orders, the rest out of stock, on DynamoDB transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_orders_never_oversell() {
    let admin = caller("admin-1", Role::Admin);
    let sku = Sku::parse("HOT").unwrap();
    let shop = Arc::new(stocked(SystemClock, &sku, 5, 2).await);

    let mut tasks = Vec::new();
    for n in 0..12 {
        let (shop, sku) = (shop.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let order = PlaceOrder {
                lines: Some(vec![Line {
                    sku,
                    quantity: Quantity::new(1).unwrap(),
                }]),
                reservation_id: None,
                payment_token: "tok_visa".into(),
                contact: None,
            };
            shop.place_order(caller(&format!("buyer-{n}"), Role::Customer), None, order)
                .await
        }));
    }
    let (mut sold, mut out_of_stock) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(reply) if reply.status == 201 => sold += 1,
            Err(AppError::Domain(DomainError::OutOfStock { .. })) => out_of_stock += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!((sold, out_of_stock), (5, 7));
    let stock = shop.inventory(&admin, &sku).await.unwrap();
    assert_eq!(
        (
            stock.on_hand,
            stock.reserved,
            stock.available,
            stock.low_stock
        ),
        (5, 5, 0, true)
    );
    let ops = caller("ops-1", Role::Ops);
    assert_eq!(
        shop.orders(&ops, None, Some(100))
            .await
            .unwrap()
            .items
            .len(),
        5
    );
    assert_eq!(
        shop.low_stock(&ops, None, None).await.unwrap().items.len(),
        1
    );
}

/// An API Gateway HTTP API event, as the Lambda runtime hands it over.
fn gateway_event(
    method: &str,
    path: &str,
    claims: Option<serde_json::Value>,
    body: &serde_json::Value,
) -> String {
    let mut context = serde_json::json!({
        "accountId": "123456789012", "apiId": "api", "domainName": "api.example.test", "domainPrefix": "api",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "test"},
        "requestId": "r1", "routeKey": format!("{method} {path}"), "stage": "$default", "time": "25/Nov/2026:08:00:00 +0000", "timeEpoch": 0
    });
    if let Some(claims) = claims {
        context["authorizer"] = serde_json::json!({"jwt": {"claims": claims, "scopes": null}});
    }
    serde_json::json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json", "idempotency-key": "lambda-1"},
        "requestContext": context, "body": body.to_string(), "isBase64Encoded": false
    })
    .to_string()
}

/// The Lambda path end to end: an API Gateway event, the claims its authorizer verified, the
/// shared router, and the DynamoDB table.
#[tokio::test]
async fn lambda_requests_use_the_authorizers_claims() {
    use tower::ServiceExt;
    let shop = Arc::new(Shop::new(
        fresh_table().await,
        SandboxPayments::default(),
        SystemClock,
        ShopConfig::default(),
    ));
    let names = commerce_lambda::ClaimNames {
        tenant: "custom:tenant".into(),
        roles: "cognito:groups".into(),
    };
    // What the products function serves: its group's routes only.
    let group = commerce_api::RouteGroup::Products;
    let app = commerce_api::group_router(shop.clone(), commerce_api::Auth::upstream(), group)
        .layer(axum::middleware::from_fn(move |request, next| {
            let names = names.clone();
            async move { names.bridge(request, next).await }
        }));
    let product = serde_json::json!({"sku": "MUG", "name": "Mug", "price": {"amount_minor": 500, "currency": "EUR"}});
    let claims =
        serde_json::json!({"sub": "admin-1", "custom:tenant": "acme", "cognito:groups": "[admin]"});

    let request = lambda_http::request::from_str(&gateway_event(
        "POST",
        "/v1/products",
        Some(claims),
        &product,
    ))
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        shop.product(
            &caller("anyone", Role::Customer),
            &Sku::parse("MUG").unwrap()
        )
        .await
        .unwrap()
        .price
        .amount_minor,
        500
    );

    let unverified =
        lambda_http::request::from_str(&gateway_event("POST", "/v1/products", None, &product))
            .unwrap();
    let mut forged = unverified;
    forged
        .headers_mut()
        .insert("authorization", "Bearer forged".parse().unwrap());
    let response = app.clone().oneshot(forged).await.unwrap();
    assert_eq!(
        response.status(),
        401,
        "without the authorizer's claims nothing is trusted, bearer header or not"
    );

    let claims = serde_json::json!({"sub": "alice", "custom:tenant": "acme", "cognito:groups": "[customer]"});
    let elsewhere = gateway_event("GET", "/v1/orders", Some(claims), &serde_json::Value::Null);
    let response = app
        .oneshot(lambda_http::request::from_str(&elsewhere).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "another group's route is not built here"
    );
}

/// A clock the test moves by hand.
#[derive(Debug, Clone, Default)]
struct TestClock(Arc<std::sync::atomic::AtomicI64>);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The sweeper's path on DynamoDB: a hold past its expiry is released and its stock returns;
/// one not yet due is left alone.
#[tokio::test]
async fn the_sweeper_releases_expired_holds() {
    let clock = TestClock::default();
    clock
        .0
        .store(1_800_000_000_000, std::sync::atomic::Ordering::SeqCst);
    let admin = caller("admin-1", Role::Admin);
    let alice = caller("alice", Role::Customer);
    let sku = Sku::parse("MUG").unwrap();
    let shop = stocked(clock.clone(), &sku, 10, 0).await;
    let hold = |quantity, ttl_seconds| NewReservation {
        lines: vec![Line {
            sku: sku.clone(),
            quantity: Quantity::new(quantity).unwrap(),
        }],
        ttl_seconds,
    };
    let short = shop
        .create_reservation(&alice, None, hold(3, 60))
        .await
        .unwrap();
    shop.create_reservation(&alice, None, hold(2, 3600))
        .await
        .unwrap();
    assert_eq!(shop.inventory(&admin, &sku).await.unwrap().reserved, 5);

    assert_eq!(shop.sweep(100).await.expired, 0, "nothing is due yet");
    clock
        .0
        .fetch_add(61_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(shop.sweep(100).await.expired, 1);
    assert_eq!(
        shop.sweep(100).await.expired,
        0,
        "an expired hold is released once"
    );

    let id = commerce_domain::ReservationId::parse(short.body["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        shop.reservation(&alice, &id).await.unwrap().status,
        commerce_domain::ReservationStatus::Expired
    );
    let stock = shop.inventory(&admin, &sku).await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.available), (10, 2, 8));
}

/// Contact data lives in the personal table, which has no stream: the main table, whose stream
/// feeds every consumer, never holds it.
#[tokio::test]
async fn contact_data_stays_out_of_the_streamed_table() {
    let sku = Sku::parse("MUG").unwrap();
    let shop = Arc::new(stocked(SystemClock, &sku, 5, 0).await);
    let order = PlaceOrder {
        lines: Some(vec![Line {
            sku: sku.clone(),
            quantity: Quantity::new(1).unwrap(),
        }]),
        reservation_id: None,
        payment_token: "tok_visa".into(),
        contact: Some(commerce_app::views::Contact {
            email: Some("alice@example.test".into()),
            ..Default::default()
        }),
    };
    let alice = caller("alice", Role::Customer);
    let placed = shop.place_order(alice.clone(), None, order).await.unwrap();
    let id = commerce_domain::OrderId::parse(placed.body["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        shop.order(&alice, &id)
            .await
            .unwrap()
            .contact
            .unwrap()
            .email
            .as_deref(),
        Some("alice@example.test")
    );
    let (main, personal) = shop.table().names();
    let client = commerce_dynamodb::moto::client().await;
    for (name, holds) in [(main, false), (personal, true)] {
        let items = client
            .scan()
            .table_name(name)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        let found = items
            .iter()
            .any(|item| format!("{item:?}").contains("alice@example.test"));
        assert_eq!(found, holds, "contact data in {name}: {found}");
    }
}

/// The pipeline on AWS, through the Lambdas' own handlers: an order's events leave through the
/// table's stream, the publisher puts them on SNS, SNS routes them to each projector's SQS
/// queue by filter policy, and the projector builds the sales report. The audit trail lists
/// the same events through the table's index, with no projector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_travels_stream_topic_queues_and_projectors() {
    use commerce_app::bus::Queue;
    use commerce_app::projection::sales::Sales;
    use commerce_app::projection::{Projector, subscriptions};
    use commerce_app::shop::AuditQuery;
    use commerce_dynamodb::moto::{StreamFeed, sdk_config};
    use std::time::Duration;

    let sku = Sku::parse("MUG").unwrap();
    let shop = Arc::new(stocked(SystemClock, &sku, 10, 0).await);
    let alice = caller("alice", Role::Customer);
    let order = PlaceOrder {
        lines: Some(vec![Line {
            sku: sku.clone(),
            quantity: Quantity::new(3).unwrap(),
        }]),
        reservation_id: None,
        payment_token: "tok_visa".into(),
        contact: None,
    };
    let placed = shop.place_order(alice, None, order).await.unwrap();
    assert_eq!(placed.status, 201);

    let config = sdk_config().await;
    let (sns, sqs) = (
        aws_sdk_sns::Client::new(&config),
        aws_sdk_sqs::Client::new(&config),
    );
    let name = format!("events-{}", uuid_like());
    let (topic, queues) = commerce_sns_sqs::create(&sns, &sqs, &name, &subscriptions())
        .await
        .unwrap();

    let feed = StreamFeed::of(shop.table()).await;
    let event: commerce_lambda::StreamEvent =
        serde_json::from_value(feed.lambda_event().await).unwrap();
    let published = commerce_lambda::publish_records(&topic, event).await;
    assert!(published.batch_item_failures.is_empty(), "{published:?}");

    let sales = Projector::<_, Sales>::new(shop.table().clone());
    let sales_events = sqs_event(&queues["sales"]).await;
    assert_eq!(
        sales_events["Records"].as_array().unwrap().len(),
        1,
        "the sales queue's filter lets only order events through"
    );
    let applied =
        commerce_lambda::project(&sales, serde_json::from_value(sales_events).unwrap()).await;
    assert!(applied.batch_item_failures.is_empty(), "{applied:?}");
    // A poison message is reported failed, so SQS brings it back and in the end dead-letters it.
    let poison = serde_json::json!({"Records": [{"messageId": "m-1", "receiptHandle": "r-1", "body": "not json", "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}}]});
    let refused = commerce_lambda::project(&sales, serde_json::from_value(poison).unwrap()).await;
    assert_eq!(refused.batch_item_failures.len(), 1);

    let ops = caller("ops-1", Role::Ops);
    let trail = shop.audit(&ops, AuditQuery::default()).await.unwrap();
    let types: Vec<&str> = trail.items.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "ProductCreated",
            "StockLevelSet",
            "ReservationHeld",
            "ReservationConfirmed",
            "OrderPlaced"
        ]
    );
    let report = shop
        .sales_report(&ops, None, None, None, None)
        .await
        .unwrap();
    assert_eq!(report.items.len(), 1);
    assert_eq!(
        (
            report.items[0].units,
            report.items[0].orders,
            report.items[0].revenue_minor
        ),
        (3, 1, 2997)
    );

    /// What the queue holds now, shaped as the SQS event a Lambda receives.
    async fn sqs_event(queue: &commerce_sns_sqs::SqsQueue) -> serde_json::Value {
        let mut records = Vec::new();
        loop {
            let batch = queue
                .receive(10, Duration::from_secs(30), Duration::from_secs(1))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let mut attributes: serde_json::Map<String, serde_json::Value> = d
                    .message
                    .attributes
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::json!({"stringValue": v, "dataType": "String"}),
                        )
                    })
                    .collect();
                attributes.insert(
                    "message_id".into(),
                    serde_json::json!({"stringValue": d.message.id, "dataType": "String"}),
                );
                records.push(serde_json::json!({
                    "messageId": d.receipt.clone(),
                    "receiptHandle": d.receipt,
                    "body": d.message.body,
                    "attributes": {"ApproximateReceiveCount": d.receive_count.to_string()},
                    "messageAttributes": attributes,
                }));
            }
        }
        serde_json::json!({ "Records": records })
    }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// Runs the saga's Task states as Step Functions would invoke the step Lambdas: the Lambda
/// handler on the DynamoDB shop, its error type becoming the state's error.
struct StepLambdas<'a> {
    shop: &'a Shop<commerce_dynamodb::DynamoTable, SandboxPayments, SystemClock>,
}

impl commerce_asl::Tasks for StepLambdas<'_> {
    async fn invoke(
        &self,
        call: commerce_asl::TaskCall,
    ) -> Result<serde_json::Value, commerce_asl::Failure> {
        invoke_step(self.shop, call).await
    }
}

/// One Task state's call, as Step Functions makes it: the step named by the resource's last
/// part, run by the Lambda handler on `shop`, its error type becoming the state's error.
async fn invoke_step<P: commerce_app::PaymentGateway>(
    shop: &Shop<commerce_dynamodb::DynamoTable, P, SystemClock>,
    call: commerce_asl::TaskCall,
) -> Result<serde_json::Value, commerce_asl::Failure> {
    let name = call.resource.rsplit(':').next().unwrap_or_default();
    let step = commerce_app::saga::CancellationStep::parse(name).unwrap();
    commerce_lambda::run_step(shop, step, &call.input)
        .await
        .map_err(|failed| {
            let diagnostic = lambda_http::lambda_runtime::Diagnostic::from(failed);
            commerce_asl::Failure::new(&diagnostic.error_type, diagnostic.error_message)
        })
}

/// Places an order for alice on a fresh DynamoDB shop, asks to cancel it, and answers the
/// shop, the order and the starter's SQS event for the `OrderCancellationRequested`.
async fn cancelled_order(
    token: &str,
    capture: bool,
) -> (
    Shop<commerce_dynamodb::DynamoTable, SandboxPayments, SystemClock>,
    commerce_domain::OrderId,
    serde_json::Value,
) {
    let sku = Sku::parse("MUG").unwrap();
    let shop = stocked(SystemClock, &sku, 10, 0).await;
    let alice = caller("alice", Role::Customer);
    let placed = shop
        .place(
            &alice,
            None,
            PlaceOrder {
                lines: Some(vec![Line {
                    sku: sku.clone(),
                    quantity: Quantity::new(2).unwrap(),
                }]),
                reservation_id: None,
                payment_token: token.into(),
                contact: None,
            },
        )
        .await
        .unwrap();
    let order = commerce_domain::OrderId::parse(placed.body["id"].as_str().unwrap()).unwrap();
    if capture {
        shop.capture_payment(&caller("admin-1", Role::Admin), None, &order)
            .await
            .unwrap();
    }
    shop.request_cancellation(
        &alice,
        None,
        &order,
        commerce_app::shop::CancelOrder {
            reason: "changed my mind".into(),
            lines: None,
        },
    )
    .await
    .unwrap();
    let events: Vec<commerce_app::event_store::Envelope<serde_json::Value>> =
        commerce_app::event_store::read_events(
            shop.table(),
            &commerce_app::keys::order(&TenantId::parse("acme").unwrap(), &order),
        )
        .await
        .unwrap();
    let requested = events
        .iter()
        .find(|e| e.event_type == "OrderCancellationRequested")
        .expect("the request's event");
    let sqs = serde_json::json!({"Records": [{
        "messageId": "m-1",
        "receiptHandle": "r-1",
        "body": serde_json::to_string(requested).unwrap(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
    }]});
    (shop, order, sqs)
}

async fn run_saga(
    shop: &Shop<commerce_dynamodb::DynamoTable, SandboxPayments, SystemClock>,
    input: serde_json::Value,
) -> Result<serde_json::Value, commerce_asl::Failure> {
    run_saga_with(&StepLambdas { shop }, "test", input).await
}

/// Runs the cancellation saga's definition as execution `name`, its Task states through `tasks`.
async fn run_saga_with(
    tasks: &impl commerce_asl::Tasks,
    name: &str,
    input: serde_json::Value,
) -> Result<serde_json::Value, commerce_asl::Failure> {
    let mut substitutions = std::collections::BTreeMap::new();
    for step in commerce_app::saga::CancellationStep::ALL {
        substitutions.insert(
            step.substitution().to_owned(),
            format!(
                "arn:aws:lambda:us-east-1:123456789012:function:{}",
                step.name()
            ),
        );
    }
    let definition =
        commerce_asl::Definition::load(commerce_app::saga::ORDER_CANCELLATION_ASL, &substitutions)
            .unwrap();
    let execution = commerce_asl::Execution {
        id: name.into(),
        name: name.into(),
        state_machine: "order-cancellation".into(),
        started: time::OffsetDateTime::now_utc(),
        input,
    };
    commerce_asl::run(
        &definition,
        &execution,
        tasks,
        &commerce_asl::VirtualTime::starting_at(time::OffsetDateTime::now_utc()),
    )
    .await
}

/// The starter Lambda starts one execution per request on Step Functions (moto), however
/// often the message comes; the step Lambdas then cancel the order on DynamoDB.
#[tokio::test]
async fn the_cancellation_saga_runs_on_the_lambdas_and_dynamodb() {
    let (shop, order, sqs) = cancelled_order("tok_visa", false).await;
    let sfn = aws_sdk_sfn::Client::new(&commerce_dynamodb::moto::sdk_config().await);
    let created = sfn
        .create_state_machine()
        .name(format!("order-cancellation-{}", uuid_like()))
        .definition(
            commerce_app::saga::ORDER_CANCELLATION_ASL
                .replace("${", "arn:aws:lambda:us-east-1:123456789012:function:")
                .replace("FunctionArn}", ""),
        )
        .role_arn("arn:aws:iam::123456789012:role/saga")
        .send()
        .await
        .unwrap();
    let machines = commerce_stepfunctions::StepFunctions::new(
        sfn.clone(),
        std::collections::BTreeMap::from([(
            "order-cancellation".to_owned(),
            created.state_machine_arn().to_owned(),
        )]),
    );
    for _ in 0..2 {
        let answer = commerce_lambda::start_cancellations(
            &machines,
            serde_json::from_value(sqs.clone()).unwrap(),
        )
        .await;
        assert!(answer.batch_item_failures.is_empty(), "{answer:?}");
    }
    let listed = sfn
        .list_executions()
        .state_machine_arn(created.state_machine_arn())
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.executions().len(),
        1,
        "a redelivered request starts nothing new"
    );
    let execution = sfn
        .describe_execution()
        .execution_arn(listed.executions()[0].execution_arn())
        .send()
        .await
        .unwrap();
    let input: serde_json::Value = serde_json::from_str(execution.input().unwrap()).unwrap();
    assert_eq!(input["order_id"], order.as_str());

    let output = run_saga(&shop, input).await.unwrap();
    assert_eq!(output["status"], "cancelled");
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    assert_eq!(view.status, commerce_domain::OrderStatus::Cancelled);
    assert_eq!(view.payment.voided, 1998);
    let stock = shop
        .inventory(&caller("admin-1", Role::Admin), &Sku::parse("MUG").unwrap())
        .await
        .unwrap();
    assert_eq!((stock.on_hand, stock.reserved), (10, 0));
}

#[tokio::test]
async fn a_refused_refund_ends_the_saga_in_needs_attention_on_dynamodb() {
    let (shop, order, sqs) = cancelled_order("tok_refund_refused", true).await;
    let body: serde_json::Value =
        serde_json::from_str(sqs["Records"][0]["body"].as_str().unwrap()).unwrap();
    let task = commerce_app::saga::cancellation_of(&body.to_string()).unwrap();
    let ended = run_saga(&shop, serde_json::to_value(&task).unwrap()).await;
    assert_eq!(ended.unwrap_err().error, "NeedsAttention");
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    assert_eq!(view.status, commerce_domain::OrderStatus::NeedsAttention);
    assert_eq!(
        view.cancellation.unwrap().failure.unwrap().error,
        "Commerce.PaymentRefused"
    );
    let alerts = shop
        .alerts(&caller("ops-1", Role::Ops), None, None)
        .await
        .unwrap();
    assert_eq!(alerts.items.len(), 1);
}
