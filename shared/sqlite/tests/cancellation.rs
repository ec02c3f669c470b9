//! The cancellation saga's steps on the embedded default, run the ways a state machine and a
//! crash can run them: repeated, concurrently, dropped midway, and after a capture that reached
//! the provider but not the order.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use commerce_app::payments::{PaymentError, PaymentGateway, PaymentReceipt, operation_key};
use commerce_app::shop::{CancelOrder, CancellationTask, NewProduct, PlaceOrder, StockLevel};
use commerce_app::{Caller, Role, SandboxPayments, Shop, ShopConfig, SystemClock};
use commerce_domain::{
    Currency, CustomerId, Line, Money, OrderId, OrderStatus, PaymentAuthorization, ProductName,
    Quantity, Sku, TenantId,
};
use commerce_sqlite::SqliteTable;

/// The sandbox, shared with the test; a refund can be made to hang after the provider acted
/// (as if the answer never came back).
#[derive(Clone, Default)]
struct Provider {
    sandbox: Arc<SandboxPayments>,
    hang_after_refund: Arc<AtomicBool>,
}

impl PaymentGateway for Provider {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        self.sandbox.authorize(order, amount, token).await
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        self.sandbox.void(order).await
    }

    async fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        self.sandbox.capture(authorization, amount, key).await
    }

    async fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        let receipt = self.sandbox.refund(authorization, amount, key).await?;
        if self.hang_after_refund.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(receipt)
    }
}

type TestShop = Shop<SqliteTable, Provider, SystemClock>;

fn caller(sub: &str, role: Role) -> Caller {
    Caller {
        tenant: TenantId::parse("acme").unwrap(),
        subject: CustomerId::parse(sub).unwrap(),
        roles: vec![role],
        correlation_id: "test".into(),
    }
}

fn eur(amount: i64) -> Money {
    Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
}

/// A shop with MUG at 5.00, 10 on hand, and alice's order for 3 of them.
async fn ordered(dir: &tempfile::TempDir) -> (Arc<TestShop>, Provider, OrderId) {
    let provider = Provider::default();
    let shop = Arc::new(Shop::new(
        SqliteTable::open(dir.path().join("commerce.db")).unwrap(),
        provider.clone(),
        SystemClock,
        ShopConfig::default(),
    ));
    let admin = caller("admin-1", Role::Admin);
    let sku = Sku::parse("MUG").unwrap();
    shop.create_product(
        &admin,
        None,
        NewProduct {
            sku: sku.clone(),
            name: ProductName::parse("Mug").unwrap(),
            price: eur(500),
        },
    )
    .await
    .unwrap();
    shop.set_stock(
        &admin,
        &sku,
        StockLevel {
            on_hand: 10,
            low_stock_threshold: 0,
        },
    )
    .await
    .unwrap();
    let placed = shop
        .place(
            &caller("alice", Role::Customer),
            None,
            PlaceOrder {
                lines: Some(vec![Line {
                    sku,
                    quantity: Quantity::new(3).unwrap(),
                }]),
                reservation_id: None,
                payment_token: "tok_visa".into(),
                contact: None,
            },
        )
        .await
        .unwrap();
    let order = OrderId::parse(placed.body["id"].as_str().unwrap()).unwrap();
    (shop, provider, order)
}

async fn cancel(shop: &TestShop, order: &OrderId) -> CancellationTask {
    let asked = shop
        .request_cancellation(
            &caller("alice", Role::Customer),
            None,
            order,
            CancelOrder {
                reason: "changed my mind".into(),
                lines: None,
            },
        )
        .await
        .unwrap();
    CancellationTask {
        tenant: TenantId::parse("acme").unwrap(),
        order_id: order.clone(),
        attempt: u32::try_from(asked.body["cancellation"]["attempt"].as_u64().unwrap()).unwrap(),
        correlation_id: "test".into(),
        causation_id: "event".into(),
    }
}

async fn reserved(shop: &TestShop) -> u64 {
    shop.inventory(&caller("admin-1", Role::Admin), &Sku::parse("MUG").unwrap())
        .await
        .unwrap()
        .reserved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_twice_at_once_act_once() {
    let dir = tempfile::tempdir().unwrap();
    let (shop, provider, order) = ordered(&dir).await;
    shop.capture_payment(&caller("admin-1", Role::Admin), None, &order)
        .await
        .unwrap();
    let task = cancel(&shop, &order).await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        for settle in [false, true] {
            let (shop, task) = (shop.clone(), task.clone());
            runs.push(tokio::spawn(async move {
                if settle {
                    shop.settle_cancelled_payment(&task).await
                } else {
                    shop.release_cancelled_stock(&task).await
                }
            }));
        }
    }
    for run in runs {
        run.await.unwrap().unwrap();
    }
    shop.complete_cancellation(&task).await.unwrap();
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    assert_eq!(view.status, OrderStatus::Cancelled);
    assert_eq!(view.payment.refunded, 1500);
    assert_eq!(provider.sandbox.counts().refunds, 1);
    assert_eq!(reserved(&shop).await, 0);
}

#[tokio::test]
async fn a_refund_whose_answer_never_came_is_the_same_refund_when_the_step_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let (shop, provider, order) = ordered(&dir).await;
    shop.capture_payment(&caller("admin-1", Role::Admin), None, &order)
        .await
        .unwrap();
    let task = cancel(&shop, &order).await;
    provider.hang_after_refund.store(true, Ordering::SeqCst);
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        shop.settle_cancelled_payment(&task),
    )
    .await;
    assert!(
        cut.is_err(),
        "the step was dropped after the provider refunded"
    );
    assert_eq!(provider.sandbox.counts().refunds, 1);
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    assert_eq!(view.payment.refunded, 0, "nothing recorded yet");

    shop.settle_cancelled_payment(&task).await.unwrap();
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    assert_eq!(view.payment.refunded, 1500);
    assert_eq!(
        provider.sandbox.counts().refunds,
        1,
        "the same refund, not a second"
    );
}

#[tokio::test]
async fn a_capture_that_reached_the_provider_but_not_the_order_is_found_and_refunded() {
    let dir = tempfile::tempdir().unwrap();
    let (shop, provider, order) = ordered(&dir).await;
    // The capture request took the money and was cut short before recording it.
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    let authorization = PaymentAuthorization {
        id: view.payment_authorization.clone(),
        amount: view.total,
    };
    provider
        .sandbox
        .capture(
            &authorization,
            view.total,
            &operation_key(&order, "capture", 1),
        )
        .await
        .unwrap();
    let task = cancel(&shop, &order).await;
    shop.release_cancelled_stock(&task).await.unwrap();
    shop.settle_cancelled_payment(&task).await.unwrap();
    shop.complete_cancellation(&task).await.unwrap();
    let view = shop
        .order(&caller("alice", Role::Customer), &order)
        .await
        .unwrap();
    assert_eq!(view.status, OrderStatus::Cancelled);
    assert_eq!(
        (
            view.payment.captured,
            view.payment.refunded,
            view.payment.voided
        ),
        (1500, 1500, 0)
    );
    assert_eq!(provider.sandbox.counts().captures, 1);
    assert_eq!(provider.sandbox.counts().refunds, 1);
}

#[tokio::test]
async fn the_sandbox_in_the_table_remembers_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payments.db");
    let order = OrderId::parse("o-restart").unwrap();
    let voided = OrderId::parse("o-voided").unwrap();
    let authorization = {
        let before = SandboxPayments::in_table(SqliteTable::open(&path).unwrap());
        let authorization = before
            .authorize(&order, eur(900), "tok_visa")
            .await
            .unwrap();
        before
            .capture(
                &authorization,
                eur(900),
                &operation_key(&order, "capture", 1),
            )
            .await
            .unwrap();
        before
            .authorize(&voided, eur(100), "tok_visa")
            .await
            .unwrap();
        before.void(&voided).await.unwrap();
        authorization
    };
    let after = SandboxPayments::in_table(SqliteTable::open(&path).unwrap());
    let first = after
        .refund(
            &authorization,
            eur(400),
            &operation_key(&order, "refund", 1),
        )
        .await
        .unwrap();
    assert_eq!(
        after
            .refund(
                &authorization,
                eur(400),
                &operation_key(&order, "refund", 1)
            )
            .await
            .unwrap(),
        first,
        "the same refund"
    );
    assert!(matches!(
        after
            .refund(
                &authorization,
                eur(600),
                &operation_key(&order, "refund", 2)
            )
            .await,
        Err(PaymentError::Declined(_))
    ));
    assert!(matches!(
        after.authorize(&voided, eur(100), "tok_visa").await,
        Err(PaymentError::Declined(_))
    ));
}

#[tokio::test]
async fn the_sandbox_in_the_table_keeps_the_payment_gateway_contract() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox =
        SandboxPayments::in_table(SqliteTable::open(dir.path().join("payments.db")).unwrap());
    commerce_app::contract::payment_gateway_contract(&sandbox, "tok_visa", "tok_decline", "table")
        .await;
}

#[tokio::test]
async fn a_void_during_an_unwritten_approval_wins() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(SandboxPayments::in_table(
        SqliteTable::open(dir.path().join("payments.db")).unwrap(),
    ));
    let order = OrderId::parse("o-race").unwrap();
    let approving = {
        let (sandbox, order) = (sandbox.clone(), order.clone());
        tokio::spawn(async move { sandbox.authorize(&order, eur(100), "tok_slow").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox.void(&order).await.unwrap();
    assert!(matches!(
        approving.await.unwrap(),
        Err(PaymentError::Declined(code)) if code == "order_voided"
    ));
}
