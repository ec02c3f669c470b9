//! Each function's policy grants the DynamoDB actions its work needs, and no others, on the
//! partition keys its work uses (`dynamodb:LeadingKeys` patterns). Every
//! route of a group is driven through that group's own router, as its Lambda builds it, and the
//! cancellation saga's steps run as Step Functions calls them, each function on a table handle
//! that notes the IAM action each call needs; the set must equal what `template.yaml` grants
//! the function. The flows include the paths that delete (a SKU lifted off the low-stock
//! list, a released hold, a declined payment giving its key back) and a saga that ends flagged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use commerce_api::{Auth, RouteGroup, group_router};
use commerce_app::event_store::{Envelope, read_events};
use commerce_app::keys;
use commerce_app::saga::{CancellationStep, cancellation_of};
use commerce_app::{Shop, ShopConfig, SystemClock};
use commerce_domain::{OrderId, TenantId};
use commerce_dynamodb::DynamoTable;
use commerce_dynamodb::moto::{client, fresh_table};
use commerce_stripe::Provider;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The block of `template.yaml` that declares `function`, up to the next resource.
fn block(function: &str) -> String {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml")).unwrap();
    let start = template
        .find(&format!("\n  {function}:\n"))
        .unwrap_or_else(|| panic!("{function} is not in template.yaml"));
    template[start + 1..]
        .lines()
        .enumerate()
        .take_while(|(n, line)| *n == 0 || line.is_empty() || line.starts_with("    "))
        .map(|(_, line)| format!("{line}\n"))
        .collect()
}

/// The DynamoDB actions `template.yaml` grants the function named `function` on `table`
/// (`Table` or `PersonalTable`).
fn granted(function: &str, table: &str) -> BTreeSet<String> {
    actions_on(function, &format!("Resource: !GetAtt {table}.Arn\n"))
}

/// The DynamoDB actions `template.yaml` grants the function named `function` on the main
/// table's index.
fn granted_on_index(function: &str) -> BTreeSet<String> {
    let index = commerce_dynamodb::INDEX;
    actions_on(
        function,
        &format!("Resource: !Sub \"${{Table.Arn}}/index/{index}\"\n"),
    )
}

/// The actions of the function's statements on the resource that `resource` (a line) names.
fn actions_on(function: &str, resource: &str) -> BTreeSet<String> {
    block(function)
        .split("- Effect: Allow")
        .filter(|statement| statement.contains(resource))
        .flat_map(|statement| {
            statement
                .lines()
                .filter(|line| line.trim_start().starts_with("Action:"))
                .flat_map(|line| {
                    line.split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
                })
                .filter(|word| word.starts_with("dynamodb:"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The partition-key patterns (`dynamodb:LeadingKeys`) the function's statement on `table`
/// (`Table` or `PersonalTable`) allows; `None` if that statement has none.
fn leading_keys(function: &str, table: &str) -> Option<Vec<String>> {
    let block = block(function);
    let statement = block
        .split("- Effect: Allow")
        .find(|statement| statement.contains(&format!("Resource: !GetAtt {table}.Arn\n")))?;
    let line = statement
        .lines()
        .find(|line| line.trim_start().starts_with("dynamodb:LeadingKeys:"))?;
    let list = line.split_once('[')?.1.split_once(']')?.0;
    Some(
        list.split(',')
            .map(|pattern| pattern.trim().trim_matches('"').to_owned())
            .collect(),
    )
}

/// IAM's `StringLike`: `*` stands for any run of characters, `?` for one.
fn like(pattern: &str, text: &str) -> bool {
    match pattern.chars().next() {
        None => text.is_empty(),
        Some('*') => (0..=text.len())
            .filter(|at| text.is_char_boundary(*at))
            .any(|at| like(&pattern[1..], &text[at..])),
        Some(c) => text.chars().next().is_some_and(|t| {
            (c == '?' || c == t) && {
                let (p, t) = (c.len_utf8(), t.len_utf8());
                like(&pattern[p..], &text[t..])
            }
        }),
    }
}

/// One group's function: its router on its own table handle, whose notes start empty.
struct Function {
    table: DynamoTable,
    shop: Arc<commerce_lambda::LambdaShop>,
    app: axum::Router,
}

impl Function {
    fn new(on: &DynamoTable, group: RouteGroup, client: &aws_sdk_dynamodb::Client) -> Self {
        let (main, personal) = on.names();
        let table = DynamoTable::new(client.clone(), main, personal);
        table.note_keys();
        let payments = Provider::choose(None, None, table.clone()).unwrap();
        let shop = Arc::new(Shop::new(
            table.clone(),
            payments,
            SystemClock,
            ShopConfig::default(),
        ));
        let names = commerce_lambda::ClaimNames::from_env();
        let app = group_router(shop.clone(), Auth::upstream(), group).layer(
            axum::middleware::from_fn(move |request, next| {
                let names = names.clone();
                async move { names.bridge(request, next).await }
            }),
        );
        Self { table, shop, app }
    }

    /// Sends one request as `sub` with `roles`, and answers its status and body.
    async fn call(
        &self,
        sub: &str,
        roles: &str,
        method: &str,
        path: &str,
        body: Value,
        key: &str,
    ) -> (u16, Value) {
        let (raw_path, query) = path.split_once('?').unwrap_or((path, ""));
        let claims = json!({"sub": sub, "tenant": "acme", "roles": format!("[{roles}]")});
        let event = json!({
            "version": "2.0", "routeKey": format!("{method} {raw_path}"), "rawPath": raw_path, "rawQueryString": query,
            "headers": {"content-type": "application/json", "idempotency-key": key},
            "requestContext": {
                "accountId": "123456789012", "apiId": "api", "domainName": "api.example.test", "domainPrefix": "api",
                "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "test"},
                "requestId": key, "routeKey": format!("{method} {raw_path}"), "stage": "$default",
                "time": "25/Nov/2026:08:00:00 +0000", "timeEpoch": 0,
                "authorizer": {"jwt": {"claims": claims, "scopes": null}}
            },
            "body": if body.is_null() { String::new() } else { body.to_string() }, "isBase64Encoded": false
        });
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// The saga's Task states, each run by its step's function.
struct Steps {
    functions: BTreeMap<&'static str, Function>,
}

impl commerce_asl::Tasks for Steps {
    async fn invoke(&self, call: commerce_asl::TaskCall) -> Result<Value, commerce_asl::Failure> {
        let name = call
            .resource
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        crate::invoke_step(&self.functions[name.as_str()].shop, call).await
    }
}

impl Steps {
    /// Runs the cancellation saga of `order`, from its `OrderCancellationRequested` event.
    async fn run(&self, on: &DynamoTable, order: &str) -> Result<Value, commerce_asl::Failure> {
        let tenant = TenantId::parse("acme").unwrap();
        let order = OrderId::parse(order).unwrap();
        let events: Vec<Envelope<Value>> = read_events(on, &keys::order(&tenant, &order))
            .await
            .unwrap();
        let requested = events
            .iter()
            .find(|e| e.event_type == "OrderCancellationRequested")
            .expect("the request's event");
        let task = cancellation_of(&serde_json::to_string(requested).unwrap()).unwrap();
        let input = serde_json::to_value(&task).unwrap();
        crate::run_saga_with(self, &format!("policies-{order}"), input).await
    }
}

/// Leaves `sku` as a build before counted stock would (docs/adr/0013): its figures only on its
/// stream, `reserved` units held there for a reservation, and no stock item. Its next change
/// makes the item from the stream, on a check that the stream is as read.
async fn as_an_older_build_left_it(on: &DynamoTable, sku: &str, reserved: Option<(&str, u32)>) {
    use commerce_app::Table;
    use commerce_app::event_store::{Changes, Origin, load};
    use commerce_app::table::{Condition, Write};
    use commerce_domain::{Inventory, InventoryEvent, ReservationId, Sku};
    let pk = keys::inventory(&TenantId::parse("acme").unwrap(), &Sku::parse(sku).unwrap());
    if let Some((reservation, quantity)) = reserved {
        let mut stream = load::<Inventory, _>(on, pk.clone()).await.unwrap();
        let held = vec![InventoryEvent::StockReserved {
            reservation: ReservationId::parse(reservation).unwrap(),
            quantity,
        }];
        let mut changes = Changes::new(Origin::system("older build"));
        changes.append(&mut stream, held, 0).unwrap();
        changes.commit(on).await.unwrap();
    }
    on.transact(vec![Write::Delete {
        pk,
        sk: keys::STOCK.into(),
        condition: Condition::None,
    }])
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_is_granted_exactly_the_dynamodb_actions_its_work_uses() {
    let on = fresh_table().await;
    let client = client().await;
    let mut used = Vec::new();

    let health = Function::new(&on, RouteGroup::Health, &client);
    assert_eq!(
        health
            .call("anyone", "customer", "GET", "/health", Value::Null, "h1")
            .await
            .0,
        200
    );
    used.push(("HealthFunction", health.table.clone()));

    let products = Function::new(&on, RouteGroup::Products, &client);
    let mug =
        json!({"sku": "MUG", "name": "Mug", "price": {"amount_minor": 500, "currency": "EUR"}});
    assert_eq!(
        products
            .call(
                "admin-1",
                "admin",
                "POST",
                "/v1/products",
                mug.clone(),
                "p1"
            )
            .await
            .0,
        201
    );
    // The same SKU again under a new key: refused, the refusal kept as the key's answer.
    assert_eq!(
        products
            .call("admin-1", "admin", "POST", "/v1/products", mug, "p2")
            .await
            .0,
        409
    );
    assert_eq!(
        products
            .call(
                "anyone",
                "customer",
                "GET",
                "/v1/products",
                Value::Null,
                "p3"
            )
            .await
            .0,
        200
    );
    assert_eq!(
        products
            .call(
                "anyone",
                "customer",
                "GET",
                "/v1/products/MUG",
                Value::Null,
                "p4"
            )
            .await
            .0,
        200
    );
    let lamp =
        json!({"sku": "LAMP", "name": "Lamp", "price": {"amount_minor": 900, "currency": "EUR"}});
    let created = products
        .call("admin-1", "admin", "POST", "/v1/products", lamp, "p5")
        .await;
    assert_eq!(created.0, 201, "{created:?}");
    used.push(("ProductsFunction", products.table.clone()));

    let inventory = Function::new(&on, RouteGroup::Inventory, &client);
    // Low on stock first, then a receipt that lifts it off the low-stock list (a delete).
    let level = json!({"on_hand": 1, "low_stock_threshold": 2});
    assert_eq!(
        inventory
            .call("admin-1", "admin", "PUT", "/v1/inventory/MUG", level, "i1")
            .await
            .0,
        200
    );
    let receipt = json!({"quantity": 9});
    let received = inventory
        .call(
            "admin-1",
            "admin",
            "POST",
            "/v1/inventory/MUG/receipts",
            receipt,
            "i2",
        )
        .await;
    assert!(matches!(received.0, 200 | 201), "{received:?}");
    assert_eq!(
        inventory
            .call(
                "ops-1",
                "ops",
                "GET",
                "/v1/inventory/MUG",
                Value::Null,
                "i3"
            )
            .await
            .0,
        200
    );
    assert_eq!(
        inventory
            .call(
                "ops-1",
                "ops",
                "GET",
                "/v1/inventory/low-stock",
                Value::Null,
                "i4"
            )
            .await
            .0,
        200
    );
    let level = json!({"on_hand": 10, "low_stock_threshold": 5});
    let stocked = inventory
        .call("admin-1", "admin", "PUT", "/v1/inventory/LAMP", level, "i5")
        .await;
    assert_eq!(stocked.0, 200, "{stocked:?}");
    used.push(("InventoryFunction", inventory.table.clone()));

    // Each function that moves stock also meets a SKU stocked by an older build, in a change
    // that leaves its low-stock alert as it was (one that moves it writes the stream's head).
    as_an_older_build_left_it(&on, "MUG", None).await;
    let reservations = Function::new(&on, RouteGroup::Reservations, &client);
    let hold = json!({"lines": [{"sku": "MUG", "quantity": 1}]});
    let held = reservations
        .call(
            "alice",
            "customer",
            "POST",
            "/v1/reservations",
            hold.clone(),
            "r1",
        )
        .await;
    assert_eq!(held.0, 201, "{held:?}");
    let id = held.1["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reservations
            .call(
                "alice",
                "customer",
                "GET",
                &format!("/v1/reservations/{id}"),
                Value::Null,
                "r2"
            )
            .await
            .0,
        200
    );
    let released = reservations
        .call(
            "alice",
            "customer",
            "POST",
            &format!("/v1/reservations/{id}/release"),
            Value::Null,
            "r3",
        )
        .await;
    assert_eq!(released.0, 200, "{released:?}");
    let kept = reservations
        .call("alice", "customer", "POST", "/v1/reservations", hold, "r4")
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    used.push(("ReservationsFunction", reservations.table.clone()));

    as_an_older_build_left_it(&on, "MUG", Some((&kept, 1))).await;
    let orders = Function::new(&on, RouteGroup::Orders, &client);
    let contact = json!({"name": "Alice Example", "email": "alice@example.test", "shipping_address": ["1 Test Street"]});
    // Six lamps take LAMP below its threshold; the cancellation's release lifts it back.
    let basket = json!({"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "LAMP", "quantity": 6}], "payment_token": "tok_visa", "contact": contact});
    let placed = orders
        .call("alice", "customer", "POST", "/v1/orders", basket, "o1")
        .await;
    assert_eq!(placed.0, 201, "{placed:?}");
    let order = placed.1["id"].as_str().unwrap().to_owned();
    let first_hold = placed.1["reservation_id"].as_str().unwrap().to_owned();
    let declined = json!({"reservation_id": kept, "payment_token": "tok_decline"});
    let refused = orders
        .call("alice", "customer", "POST", "/v1/orders", declined, "o2")
        .await;
    assert_eq!(refused.0, 402, "{refused:?}");
    assert_eq!(
        orders
            .call("alice", "customer", "GET", "/v1/orders", Value::Null, "o3")
            .await
            .0,
        200
    );
    assert_eq!(
        orders
            .call("ops-1", "ops", "GET", "/v1/orders", Value::Null, "o4")
            .await
            .0,
        200
    );
    assert_eq!(
        orders
            .call(
                "alice",
                "customer",
                "GET",
                &format!("/v1/orders/{order}"),
                Value::Null,
                "o5"
            )
            .await
            .0,
        200
    );
    let captured = orders
        .call(
            "admin-1",
            "admin",
            "POST",
            &format!("/v1/orders/{order}/capture"),
            Value::Null,
            "o6",
        )
        .await;
    assert!(captured.0 < 300, "{captured:?}");
    let cancelled = orders
        .call(
            "alice",
            "customer",
            "POST",
            &format!("/v1/orders/{order}/cancellation"),
            json!({"reason": "changed my mind"}),
            "o7",
        )
        .await;
    assert_eq!(cancelled.0, 202, "{cancelled:?}");
    // A second order, paid, whose refund the provider refuses: its saga ends flagged.
    let refused_refund =
        json!({"lines": [{"sku": "MUG", "quantity": 1}], "payment_token": "tok_refund_refused"});
    let second = orders
        .call(
            "bob",
            "customer",
            "POST",
            "/v1/orders",
            refused_refund,
            "o8",
        )
        .await;
    assert_eq!(second.0, 201, "{second:?}");
    let second = second.1["id"].as_str().unwrap().to_owned();
    let captured = orders
        .call(
            "admin-1",
            "admin",
            "POST",
            &format!("/v1/orders/{second}/capture"),
            Value::Null,
            "o9",
        )
        .await;
    assert!(captured.0 < 300, "{captured:?}");
    let cancelled = orders
        .call(
            "bob",
            "customer",
            "POST",
            &format!("/v1/orders/{second}/cancellation"),
            json!({"reason": "no"}),
            "o10",
        )
        .await;
    assert_eq!(cancelled.0, 202, "{cancelled:?}");
    used.push(("OrdersFunction", orders.table.clone()));

    let reports = Function::new(&on, RouteGroup::Reports, &client);
    for path in ["/v1/alerts", "/v1/audit", "/v1/reports/sales"] {
        let answer = reports
            .call("ops-1", "ops", "GET", path, Value::Null, "x")
            .await;
        assert_eq!(answer.0, 200, "{path}: {answer:?}");
    }
    used.push(("ReportsFunction", reports.table.clone()));

    // The first order's mug as if an older build had held it: its release makes the item.
    as_an_older_build_left_it(&on, "MUG", Some((&first_hold, 1))).await;
    // The cancellation saga's steps, each on its own function, as Step Functions calls them.
    let steps = Steps {
        functions: CancellationStep::ALL
            .into_iter()
            .map(|step| (step.name(), Function::new(&on, RouteGroup::Health, &client)))
            .collect(),
    };
    assert!(
        steps.run(&on, &order).await.is_ok(),
        "the first order is cancelled"
    );
    let flagged = steps.run(&on, &second).await.unwrap_err();
    assert_eq!(flagged.error, "NeedsAttention");
    for step in CancellationStep::ALL {
        let function = match step {
            CancellationStep::ReleaseStock => "ReleaseStockFunction",
            CancellationStep::SettlePayment => "SettlePaymentFunction",
            CancellationStep::Complete => "CompleteCancellationFunction",
            CancellationStep::Flag => "FlagCancellationFunction",
        };
        used.push((function, steps.functions[step.name()].table.clone()));
    }

    let mut mismatched = Vec::new();
    for (function, table) in used {
        for (on, personal) in [("Table", false), ("PersonalTable", true)] {
            let used: BTreeSet<String> = table
                .actions_on(personal)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let granted = granted(function, on);
            if granted != used {
                mismatched.push(format!(
                    "{function} on {on}: granted {granted:?}, used {used:?}"
                ));
            }
        }
        let on_index: BTreeSet<String> = table
            .actions_on_index()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let granted = granted_on_index(function);
        if granted != on_index {
            mismatched.push(format!(
                "{function} on the index: granted {granted:?}, used {on_index:?}"
            ));
        }
        for key in table.keys() {
            let on = if key.starts_with("personal#") {
                "PersonalTable"
            } else {
                "Table"
            };
            match leading_keys(function, on) {
                None => mismatched.push(format!("{function}: no dynamodb:LeadingKeys on {on}")),
                Some(patterns) if !patterns.iter().any(|p| like(p, &key)) => {
                    mismatched.push(format!("{function}: {key} is outside {patterns:?}"));
                }
                Some(_) => {}
            }
        }
    }
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}

#[test]
fn like_matches_as_iam_string_like_does() {
    assert!(like("*#product#*", "acme#product#MUG"));
    assert!(like("holds#*", "holds#12"));
    assert!(!like("holds#*", "acme#holds"));
    assert!(like("*#orders", "acme#orders"));
    assert!(!like("*#orders", "acme#orders#3"));
    assert!(like("a?c", "abc"));
}
