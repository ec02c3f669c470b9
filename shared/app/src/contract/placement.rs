//! Exactly-once placement on a real table: a placement cut short at every step, before or
//! after each call to the store or the provider (as a crash, a timeout or a client that went
//! away would leave it), then retried with the same key, places one order with one
//! authorization and takes the stock once. Left alone, it is undone by the sweeper.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use commerce_domain::{
    Currency, CustomerId, Line, Money, OrderId, PaymentAuthorization, ProductName, Quantity,
    ReservationId, Sku, TenantId,
};
use serde_json::json;
use tokio::sync::Notify;

use crate::idempotency::IdempotencyKey;
use crate::payments::{PaymentError, PaymentGateway, SandboxCounts, SandboxPayments};
use crate::shop::{NewProduct, NewReservation, PlaceOrder, Reply, StockLevel};
use crate::table::{Item, Page, Query, StoreError, Table, Write};
use crate::{AppError, Caller, Clock, Role, Shop, ShopConfig};

/// A clock the test moves by hand, starting at the wall clock (the stores' TTL reads it).
#[derive(Debug, Clone)]
pub struct HandClock(Arc<AtomicI64>);

impl HandClock {
    pub fn new() -> Self {
        Self(Arc::new(AtomicI64::new(crate::SystemClock.now_ms())))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Default for HandClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HandClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where a run is cut: at the `at`-th call to the store or the provider, before the call
/// reaches them or after it has acted. A cut call never returns until `go` is notified
/// (a crash: never).
#[derive(Debug, Default)]
pub struct Cut {
    calls: AtomicUsize,
    at: Option<usize>,
    after: bool,
    reached: Notify,
    hit: AtomicBool,
    go: Notify,
    /// While set, the provider is down.
    provider_down: AtomicBool,
    /// Cut at the first authorization instead, before it reaches the provider (or, with
    /// `after`, once it has acted).
    in_provider: bool,
    /// Stall at the first void, before it reaches the provider.
    in_void: bool,
    /// Transactions seen, and how many of them, from the `fail_from`-th on, fail.
    transacts: AtomicUsize,
    fail_from: usize,
    failing: AtomicUsize,
    /// The failing transactions meet another transaction (a conflict) instead of a store
    /// that is down.
    conflicting: bool,
}

impl Cut {
    pub fn never() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn at(at: usize, after: bool) -> Arc<Self> {
        Arc::new(Self {
            at: Some(at),
            after,
            ..Self::default()
        })
    }

    /// A run that stalls when it asks the provider to authorize.
    pub fn in_provider() -> Arc<Self> {
        Arc::new(Self {
            in_provider: true,
            ..Self::default()
        })
    }

    /// A run that stalls when it asks the provider to void.
    pub fn in_void() -> Arc<Self> {
        Arc::new(Self {
            in_void: true,
            ..Self::default()
        })
    }

    /// A run that stops once the provider has authorized, before it hears the answer.
    pub fn in_provider_after() -> Arc<Self> {
        Arc::new(Self {
            in_provider: true,
            after: true,
            ..Self::default()
        })
    }

    /// A run whose transactions fail, as a store that is down would, `times` times in a row
    /// from the `from`-th transaction on.
    pub fn failing_store(from: usize, times: usize) -> Arc<Self> {
        Arc::new(Self {
            fail_from: from,
            failing: AtomicUsize::new(times),
            ..Self::default()
        })
    }

    /// A run whose transactions meet another transaction on their items, `times` times in a
    /// row from the `from`-th transaction on, as DynamoDB's `TransactionConflict` does.
    pub fn conflicting_store(from: usize, times: usize) -> Arc<Self> {
        Arc::new(Self {
            fail_from: from,
            failing: AtomicUsize::new(times),
            conflicting: true,
            ..Self::default()
        })
    }

    /// Whether this transaction is one that fails.
    fn store_fails(&self) -> bool {
        let n = self.transacts.fetch_add(1, Ordering::SeqCst);
        n >= self.fail_from
            && self
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
    }

    async fn call<F: Future>(&self, io: F) -> F::Output {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let here = self.at == Some(n);
        if here && !self.after {
            self.stop().await;
        }
        let out = io.await;
        if here && self.after {
            self.stop().await;
        }
        out
    }

    async fn stop(&self) {
        self.hit.store(true, Ordering::SeqCst);
        self.reached.notify_waiters();
        self.go.notified().await;
    }

    /// Waits until a run reaches the cut.
    pub async fn reached(&self) {
        loop {
            let notified = self.reached.notified();
            if self.hit.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// The table, cut as planned.
#[derive(Debug, Clone)]
pub struct CutTable<T> {
    inner: T,
    cut: Arc<Cut>,
}

impl<T: Table> Table for CutTable<T> {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.cut.call(self.inner.get(pk, sk)).await
    }

    async fn query(&self, query: Query<'_>) -> Result<Page, StoreError> {
        self.cut.call(self.inner.query(query)).await
    }

    async fn query_index(&self, query: Query<'_>) -> Result<Page, StoreError> {
        self.cut.call(self.inner.query_index(query)).await
    }

    async fn list_in_index(
        &self,
        pk: &str,
        sk: &str,
        key: crate::table::IndexKey,
    ) -> Result<bool, StoreError> {
        self.cut.call(self.inner.list_in_index(pk, sk, key)).await
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if self.cut.store_fails() {
            if self.cut.conflicting {
                return Err(StoreError::Conflict);
            }
            return Err(StoreError::Failure("the store is down for the test".into()));
        }
        self.cut.call(self.inner.transact(writes)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn max_transaction_writes(&self) -> usize {
        self.inner.max_transaction_writes()
    }

    fn shards(&self, wanted: u32) -> u32 {
        self.inner.shards(wanted)
    }

    async fn scan_events(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        self.inner.scan_events(after, limit).await
    }

    async fn estimate_events(&self) -> Result<Option<u64>, StoreError> {
        self.inner.estimate_events().await
    }
}

/// The sandbox provider, shared across runs like a real provider, cut as planned.
#[derive(Debug, Clone)]
pub struct CutPayments {
    inner: Arc<SandboxPayments>,
    cut: Arc<Cut>,
}

impl PaymentGateway for CutPayments {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        let down = self.cut.provider_down.load(Ordering::SeqCst);
        let stall = self.cut.in_provider && !self.cut.hit.load(Ordering::SeqCst);
        if stall && !self.cut.after {
            self.cut.stop().await;
        }
        let answer = self
            .cut
            .call(async {
                if down {
                    Err(PaymentError::Unavailable("down for the test".into()))
                } else {
                    self.inner.authorize(order, amount, token).await
                }
            })
            .await;
        if stall && self.cut.after {
            self.cut.stop().await;
        }
        answer
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        if self.cut.in_void && !self.cut.hit.load(Ordering::SeqCst) {
            self.cut.stop().await;
        }
        if self.cut.provider_down.load(Ordering::SeqCst) {
            return Err(PaymentError::Unavailable("down for the test".into()));
        }
        self.cut.call(self.inner.void(order)).await
    }

    async fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<crate::payments::PaymentReceipt, PaymentError> {
        self.cut
            .call(self.inner.capture(authorization, amount, key))
            .await
    }

    async fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<crate::payments::PaymentReceipt, PaymentError> {
        self.cut
            .call(self.inner.refund(authorization, amount, key))
            .await
    }
}

type TestShop<T> = Shop<CutTable<T>, CutPayments, HandClock>;

/// One tenant's world on a shared table: a stocked SKU, a customer, and shops over the same
/// table, provider and clock, each cut its own way.
struct World<T> {
    table: T,
    provider: Arc<SandboxPayments>,
    clock: HandClock,
    config: ShopConfig,
    tenant: TenantId,
    sku: Sku,
}

impl<T: Table + Clone> World<T> {
    async fn new(table: &T, name: &str, on_hand: u64) -> Self {
        let world = Self {
            table: table.clone(),
            provider: Arc::new(SandboxPayments::default()),
            clock: HandClock::new(),
            config: ShopConfig {
                payment_backoff_ms: 1,
                ..ShopConfig::default()
            },
            tenant: TenantId::parse(name).unwrap(),
            sku: Sku::parse("MUG").unwrap(),
        };
        let shop = world.shop(Cut::never());
        let admin = world.caller("admin", Role::Admin);
        let price = Money::new(1250, Currency::parse("EUR").unwrap()).unwrap();
        let product = NewProduct {
            sku: world.sku.clone(),
            name: ProductName::parse("Mug").unwrap(),
            price,
        };
        shop.create_product(&admin, None, product).await.unwrap();
        let level = StockLevel {
            on_hand,
            low_stock_threshold: 0,
        };
        shop.set_stock(&admin, &world.sku, level).await.unwrap();
        world
    }

    fn shop(&self, cut: Arc<Cut>) -> TestShop<T> {
        Shop::new(
            CutTable {
                inner: self.table.clone(),
                cut: cut.clone(),
            },
            CutPayments {
                inner: self.provider.clone(),
                cut,
            },
            self.clock.clone(),
            self.config.clone(),
        )
    }

    fn caller(&self, sub: &str, role: Role) -> Caller {
        Caller {
            tenant: self.tenant.clone(),
            subject: CustomerId::parse(sub).unwrap(),
            roles: vec![role],
            correlation_id: "test".into(),
        }
    }

    fn alice(&self) -> Caller {
        self.caller("alice", Role::Customer)
    }

    fn lines(&self, quantity: u32) -> Vec<Line> {
        vec![Line {
            sku: self.sku.clone(),
            quantity: Quantity::new(quantity).unwrap(),
        }]
    }

    fn key(&self, body: &PlaceOrder, name: &str) -> IdempotencyKey {
        let value = json!({
            "lines": body.lines.as_ref().map(|l| l.iter().map(|l| json!({"sku": l.sku.as_str(), "quantity": l.quantity.get()})).collect::<Vec<_>>()),
            "reservation_id": body.reservation_id.as_ref().map(|r| r.as_str()),
            "payment_token": body.payment_token,
        });
        IdempotencyKey::for_request(&self.alice(), name, "POST", "/v1/orders", &value).unwrap()
    }

    async fn reserve(&self, quantity: u32) -> ReservationId {
        let new = NewReservation {
            lines: self.lines(quantity),
            ttl_seconds: 900,
        };
        let reply = self
            .shop(Cut::never())
            .create_reservation(&self.alice(), None, new)
            .await
            .unwrap();
        ReservationId::parse(reply.body["id"].as_str().unwrap()).unwrap()
    }

    /// (on hand, reserved, available) of the SKU.
    async fn stock(&self) -> (u64, u64, u64) {
        let admin = self.caller("admin", Role::Admin);
        let view = self
            .shop(Cut::never())
            .inventory(&admin, &self.sku)
            .await
            .unwrap();
        (view.on_hand, view.reserved, view.available)
    }

    async fn orders(&self) -> Vec<String> {
        let page = self
            .shop(Cut::never())
            .orders(&self.alice(), None, Some(100))
            .await
            .unwrap();
        page.items.into_iter().map(|o| o.id).collect()
    }

    fn counts(&self) -> SandboxCounts {
        self.provider.counts()
    }

    async fn sweep(&self) {
        self.shop(Cut::never()).sweep(100).await;
    }
}

fn order_from(
    lines: Option<Vec<Line>>,
    reservation: Option<ReservationId>,
    token: &str,
) -> PlaceOrder {
    PlaceOrder {
        lines,
        reservation_id: reservation,
        payment_token: token.into(),
        contact: None,
    }
}

/// Runs the placement until it completes or reaches its cut; `None` when cut.
async fn run_until_cut<T: Table + Clone>(
    world: &World<T>,
    cut: Arc<Cut>,
    key: &IdempotencyKey,
    body: PlaceOrder,
) -> Option<Result<Reply, AppError>> {
    let shop = world.shop(cut.clone());
    let caller = world.alice();
    let placing = shop.place(&caller, Some(key), body);
    tokio::select! {
        result = placing => Some(result),
        () = cut.reached() => None,
    }
}

/// A placement run in a task of its own, stalled as it asks the provider to authorize; the
/// returned cut lets it go on.
async fn stalled_in_provider<T: Table + Clone>(
    world: &Arc<World<T>>,
    key: &IdempotencyKey,
    body: &PlaceOrder,
) -> (tokio::task::JoinHandle<Result<Reply, AppError>>, Arc<Cut>) {
    let stall = Cut::in_provider();
    let run = {
        let (world, stall, key, body) = (world.clone(), stall.clone(), key.clone(), body.clone());
        tokio::spawn(async move {
            world
                .shop(stall)
                .place(&world.alice(), Some(&key), body)
                .await
        })
    };
    stall.reached().await;
    (run, stall)
}

/// Cuts a placement at each call in turn, before and after it, then retries with the same key.
async fn interrupted_then_retried<T: Table + Clone>(table: &T, from_reservation: bool) {
    let mut at = 0;
    loop {
        let mut finished = 0;
        for after in [false, true] {
            let name = format!("cut{}{at}{}", u8::from(from_reservation), u8::from(after));
            let world = World::new(table, &name, 10).await;
            let body = if from_reservation {
                order_from(None, Some(world.reserve(2).await), "tok_visa")
            } else {
                order_from(Some(world.lines(2)), None, "tok_visa")
            };
            let key = world.key(&body, "k1");
            let before = world.counts();
            let first = run_until_cut(&world, Cut::at(at, after), &key, body.clone()).await;
            if first.is_some() {
                finished += 1;
            }
            // The cut run is gone for good; its lease runs out.
            world.clock.advance(world.config.lease_ms + 1);
            let retry = world
                .shop(Cut::never())
                .place(&world.alice(), Some(&key), body.clone())
                .await;
            let reply =
                retry.unwrap_or_else(|e| panic!("cut at {at} (after: {after}): retry failed: {e}"));
            assert_eq!(reply.status, 201, "cut at {at} (after: {after})");
            let id = reply.body["id"].as_str().unwrap().to_owned();
            assert_eq!(
                world.orders().await,
                vec![id.clone()],
                "cut at {at} (after: {after}): one order"
            );
            let counts = world.counts();
            assert_eq!(
                (
                    counts.authorizations - before.authorizations,
                    counts.voids - before.voids
                ),
                (1, 0),
                "cut at {at} (after: {after}): one authorization, none voided"
            );
            assert!(world.provider.is_authorized(&OrderId::parse(&id).unwrap()));
            assert_eq!(
                world.stock().await,
                (10, 2, 8),
                "cut at {at} (after: {after}): stock taken once"
            );
            let again = world
                .shop(Cut::never())
                .place(&world.alice(), Some(&key), body)
                .await
                .unwrap();
            assert_eq!(again.body, reply.body, "the key replays the order");
        }
        if finished == 2 {
            assert!(at > 3, "the placement makes more calls than {at}");
            return;
        }
        at += 1;
    }
}

pub async fn an_interrupted_basket_order_resumes_once<T: Table + Clone>(table: &T) {
    interrupted_then_retried(table, false).await;
}

pub async fn an_interrupted_reservation_order_resumes_once<T: Table + Clone>(table: &T) {
    interrupted_then_retried(table, true).await;
}

/// Cut short and never retried: once its time is up, the sweeper gives the stock back, voids
/// whatever was authorized and frees the customer's reservation. Nothing is left held or
/// authorized without an order, and the key starts afresh.
async fn interrupted_and_left<T: Table + Clone>(table: &T, from_reservation: bool) {
    let mut at = 0;
    loop {
        let mut finished = 0;
        for after in [false, true] {
            let name = format!("gone{}{at}{}", u8::from(from_reservation), u8::from(after));
            let world = World::new(table, &name, 10).await;
            let reservation = if from_reservation {
                Some(world.reserve(2).await)
            } else {
                None
            };
            let lines = (!from_reservation).then(|| world.lines(2));
            let body = order_from(lines, reservation.clone(), "tok_visa");
            let key = world.key(&body, "k1");
            if let Some(result) = run_until_cut(&world, Cut::at(at, after), &key, body).await {
                finished += 1;
                assert_eq!(result.unwrap().status, 201);
                continue;
            }
            let hold_ms = i64::from(world.config.order_hold_seconds) * 1000;
            world
                .clock
                .advance(hold_ms.max(world.config.reconcile_after_ms) + 1);
            world.sweep().await;
            let counts = world.counts();
            let case = format!("cut at {at} (after: {after})");
            if !world.orders().await.is_empty() {
                // Cut after the order's own commit: the order stands, whole.
                assert_eq!(world.stock().await, (10, 2, 8), "{case}");
                assert_eq!((counts.authorizations, counts.voids), (1, 0), "{case}");
                continue;
            }
            assert_eq!(
                counts.voids, counts.authorizations,
                "{case}: every authorization voided"
            );
            match &reservation {
                None => assert_eq!(world.stock().await, (10, 0, 10), "{case}: stock back"),
                Some(id) => {
                    let released = world
                        .shop(Cut::never())
                        .release_reservation(&world.alice(), None, id)
                        .await;
                    assert!(
                        released.is_ok(),
                        "{case}: the reservation is free again: {released:?}"
                    );
                    assert_eq!(world.stock().await, (10, 0, 10), "{case}");
                }
            }
        }
        if finished == 2 {
            return;
        }
        at += 1;
    }
}

pub async fn an_interrupted_basket_order_without_retry_is_undone<T: Table + Clone>(table: &T) {
    interrupted_and_left(table, false).await;
}

pub async fn an_interrupted_reservation_order_without_retry_is_undone<T: Table + Clone>(table: &T) {
    interrupted_and_left(table, true).await;
}

/// Run A stalls before its authorization reaches the provider, so long that the reconciler
/// gives its order up and a retry places another. When A's request finally arrives, the
/// provider refuses the voided order: no authorization is left without an order.
pub async fn a_run_stalled_past_its_time_leaves_no_authorization<T: Table + Clone>(table: &T) {
    let world = Arc::new(World::new(table, "stalled", 10).await);
    let body = order_from(Some(world.lines(2)), None, "tok_visa");
    let key = world.key(&body, "k1");
    let (a, stall) = stalled_in_provider(&world, &key, &body).await;
    world.clock.advance(world.config.reconcile_after_ms + 1);
    world.sweep().await;
    let b = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(b.status, 201);
    stall.go.notify_waiters();
    let a = a.await.unwrap();
    assert!(a.is_err(), "the stalled run places nothing: {a:?}");
    assert_eq!(world.orders().await.len(), 1);
    let counts = world.counts();
    assert_eq!(
        counts.authorizations - counts.voids,
        1,
        "the one live authorization is the order's: {counts:?}"
    );
    assert_eq!(world.stock().await, (10, 2, 8));
}

/// The reconciler's void of order X is slow to reach the provider; meanwhile its lease runs out
/// and the customer retries. The retry sees X being given up, finishes that and places a new
/// order Y, and X's late void cannot touch Y's payment.
pub async fn a_late_void_never_cancels_a_placed_order<T: Table + Clone>(table: &T) {
    let world = Arc::new(World::new(table, "latevoid", 10).await);
    let body = order_from(Some(world.lines(2)), None, "tok_visa");
    let key = world.key(&body, "k1");
    assert!(
        run_until_cut(&world, Cut::in_provider_after(), &key, body.clone())
            .await
            .is_none()
    );
    world.clock.advance(world.config.reconcile_after_ms + 1);
    let slow = Cut::in_void();
    let sweeping = {
        let (world, slow) = (world.clone(), slow.clone());
        tokio::spawn(async move { world.shop(slow).sweep(100).await })
    };
    slow.reached().await;
    world.clock.advance(world.config.lease_ms + 1);
    let retry = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(retry.status, 201);
    let placed = OrderId::parse(retry.body["id"].as_str().unwrap()).unwrap();
    slow.go.notify_waiters();
    sweeping.await.unwrap();
    assert!(
        world.provider.is_authorized(&placed),
        "the placed order's payment stands"
    );
    assert_eq!(world.orders().await, vec![placed.to_string()]);
    let counts = world.counts();
    assert_eq!(counts.authorizations - counts.voids, 1, "{counts:?}");
    assert_eq!(world.stock().await, (10, 2, 8));
}

/// The order's hold ran out before the sweeper saw it, and the run was cut short: the retry
/// gives the stale hold back before holding again, so the basket is never held twice.
pub async fn a_retry_never_holds_a_basket_twice<T: Table + Clone>(table: &T) {
    let world = World::new(table, "twice", 2).await;
    let body = order_from(Some(world.lines(2)), None, "tok_visa");
    let key = world.key(&body, "k1");
    // Calls: begin, price, stock, claim commit; cut after the claim.
    assert!(
        run_until_cut(&world, Cut::at(3, true), &key, body.clone())
            .await
            .is_none()
    );
    world
        .clock
        .advance(i64::from(world.config.order_hold_seconds) * 1000 + 1);
    let retry = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(retry.status, 201, "all the stock there is, once");
    assert_eq!(world.stock().await, (2, 2, 0));
    world.sweep().await;
    assert_eq!(
        world.stock().await,
        (2, 2, 0),
        "the stale hold was already given back"
    );
    assert_eq!(
        world.counts(),
        SandboxCounts {
            authorizations: 1,
            voids: 0,
            ..SandboxCounts::default()
        }
    );
}

/// The provider cannot void when the reconciler first tries: the attempt stays queued, and a
/// later pass voids it.
pub async fn a_void_that_fails_is_tried_again<T: Table + Clone>(table: &T) {
    let world = World::new(table, "voidlater", 10).await;
    let body = order_from(Some(world.lines(2)), None, "tok_visa");
    let key = world.key(&body, "k1");
    // Cut right after the authorization: the order is never recorded.
    let cut = Cut::in_provider_after();
    assert!(run_until_cut(&world, cut, &key, body).await.is_none());
    world.clock.advance(world.config.reconcile_after_ms + 1);
    let down = Cut::never();
    down.provider_down.store(true, Ordering::SeqCst);
    let first = world.shop(down).sweep(100).await;
    assert_eq!((first.voided, first.failed), (0, 1), "{first:?}");
    assert_eq!(
        world.counts(),
        SandboxCounts {
            authorizations: 1,
            voids: 0,
            ..SandboxCounts::default()
        }
    );
    world.clock.advance(world.config.lease_ms + 1);
    let again = world.shop(Cut::never()).sweep(100).await;
    assert_eq!(again.voided, 1, "{again:?}");
    assert_eq!(
        world.counts(),
        SandboxCounts {
            authorizations: 1,
            voids: 1,
            ..SandboxCounts::default()
        }
    );
    assert_eq!(world.stock().await, (10, 0, 10));
    assert_eq!(
        world.shop(Cut::never()).sweep(100).await.voided,
        0,
        "voided once"
    );
}

/// Run A stalls inside the provider until its lease is out; run B takes the key over and
/// places the order. When A wakes, none of its writes lands: one order, one authorization.
pub async fn a_lease_lost_mid_payment_lets_only_one_run_act<T: Table + Clone>(table: &T) {
    let world = Arc::new(World::new(table, "lease", 10).await);
    let body = order_from(Some(world.lines(3)), None, "tok_visa");
    let key = world.key(&body, "k1");
    let (a, stall) = stalled_in_provider(&world, &key, &body).await;
    world.clock.advance(world.config.lease_ms + 1);
    let b = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body.clone())
        .await
        .unwrap();
    assert_eq!(b.status, 201);
    stall.go.notify_waiters();
    let a = a.await.unwrap();
    assert!(
        matches!(a, Err(AppError::IdempotencyInFlight)),
        "the run that lost its claim acts no more: {a:?}"
    );
    assert_eq!(world.orders().await.len(), 1);
    assert_eq!(
        world.counts(),
        SandboxCounts {
            authorizations: 1,
            voids: 0,
            ..SandboxCounts::default()
        }
    );
    assert_eq!(world.stock().await, (10, 3, 7));
    let replay = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(replay.body, b.body);
}

/// A decline whose first run lost its lease: the run that took over answers 402 and gives the
/// stock back; the stale run cannot turn it into anything else.
pub async fn a_decline_after_a_lost_lease_still_gives_the_stock_back<T: Table + Clone>(table: &T) {
    let world = Arc::new(World::new(table, "declined", 10).await);
    let body = order_from(Some(world.lines(4)), None, "tok_decline");
    let key = world.key(&body, "k1");
    let (a, stall) = stalled_in_provider(&world, &key, &body).await;
    world.clock.advance(world.config.lease_ms + 1);
    let b = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body.clone())
        .await;
    assert!(matches!(b, Err(AppError::PaymentDeclined(_))), "{b:?}");
    stall.go.notify_waiters();
    assert!(matches!(
        a.await.unwrap(),
        Err(AppError::IdempotencyInFlight)
    ));
    assert_eq!(world.stock().await, (10, 0, 10), "no hold leaked");
    let replay = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await;
    assert!(
        matches!(replay, Err(AppError::PaymentDeclined(_))),
        "the decline replays"
    );
}

/// The provider is down: 503, the reservation stays held (free to release), and the retry with
/// the same key orders it once the provider is back. Another key meanwhile is not refused for
/// a checkout that is over.
pub async fn a_reservation_survives_an_outage_and_the_retry_orders_it<T: Table + Clone>(table: &T) {
    let world = World::new(table, "outage", 10).await;
    let reservation = world.reserve(2).await;
    let body = order_from(None, Some(reservation.clone()), "tok_visa");
    let key = world.key(&body, "k1");
    let down = Cut::never();
    down.provider_down.store(true, Ordering::SeqCst);
    let first = world
        .shop(down)
        .place(&world.alice(), Some(&key), body.clone())
        .await;
    assert!(
        matches!(first, Err(AppError::PaymentUnavailable)),
        "{first:?}"
    );
    let view = world
        .shop(Cut::never())
        .reservation(&world.alice(), &reservation)
        .await
        .unwrap();
    assert_eq!(view.status, commerce_domain::ReservationStatus::Held);
    assert_eq!(world.stock().await, (10, 2, 8));
    let retry = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(retry.status, 201);
    assert_eq!(retry.body["reservation_id"], reservation.as_str());
    assert_eq!(world.orders().await.len(), 1);
    assert_eq!(
        world.counts(),
        SandboxCounts {
            authorizations: 1,
            voids: 0,
            ..SandboxCounts::default()
        }
    );
    assert_eq!(world.stock().await, (10, 2, 8));
}

/// The store fails the commit that records an authorized order: it is tried again, and the
/// order is placed once. When it keeps failing, the answer is an error, and the retry with
/// the same key finishes the order without a second authorization.
pub async fn a_store_failure_after_payment_is_retried<T: Table + Clone>(table: &T) {
    let world = World::new(table, "storefail", 10).await;
    let body = order_from(Some(world.lines(2)), None, "tok_visa");
    let key = world.key(&body, "k1");
    // Transaction 0 holds the stock and claims the key; 1 records the order.
    let reply = world
        .shop(Cut::failing_store(1, 2))
        .place(&world.alice(), Some(&key), body.clone())
        .await
        .unwrap();
    assert_eq!(reply.status, 201);
    assert_eq!(world.orders().await.len(), 1);

    let body = order_from(Some(world.lines(3)), None, "tok_visa");
    let key = world.key(&body, "k2");
    // Every try at recording fails; the attempt is then parked for the retry.
    let tries = usize::try_from(world.config.store_attempts).unwrap();
    let failed = world
        .shop(Cut::failing_store(1, tries))
        .place(&world.alice(), Some(&key), body.clone())
        .await;
    assert!(matches!(failed, Err(AppError::Store(_))), "{failed:?}");
    let retry = world
        .shop(Cut::never())
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(retry.status, 201);
    assert_eq!(world.orders().await.len(), 2);
    assert_eq!(
        world.counts(),
        SandboxCounts {
            authorizations: 2,
            voids: 0,
            ..SandboxCounts::default()
        }
    );
    assert_eq!(world.stock().await, (10, 5, 5));
}

/// Sixteen copies of one request at once: each answer is the same order, placed once.
pub async fn concurrent_duplicates_place_one_order<T: Table + Clone>(table: &T) {
    let world = Arc::new(World::new(table, "dupes", 10).await);
    let body = order_from(Some(world.lines(1)), None, "tok_visa");
    let key = world.key(&body, "k1");
    let shop = Arc::new(world.shop(Cut::never()));
    let mut runs = Vec::new();
    for _ in 0..16 {
        let (shop, world, key, body) = (shop.clone(), world.clone(), key.clone(), body.clone());
        runs.push(tokio::spawn(async move {
            shop.place_order(world.alice(), Some(key), body).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for run in runs {
        match run.await.unwrap() {
            Ok(reply) => {
                ids.insert(reply.body["id"].as_str().unwrap().to_owned());
            }
            Err(AppError::IdempotencyInFlight) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "every success is the same order");
    assert_eq!(world.orders().await.len(), 1);
    assert_eq!(world.counts().authorizations, 1);
    assert_eq!(world.stock().await, (10, 1, 9));
}

/// Clients race for one SKU through the use cases: some share a key (a duplicate loses its
/// commit), some go away mid-placement (the future dropped between any two steps). Every answer
/// is an order or a clear refusal (409), never a store error (5xx); once the sweeper has undone what the
/// dropped ones left, the stock is exactly what the orders took, and the rest still sells out
/// to the unit.
pub async fn a_hot_sku_sells_exactly_its_stock<T: Table + Clone>(table: &T) {
    const STOCK: u64 = 60;
    const CLIENTS: usize = 32;
    let world = Arc::new(World::new(table, "hot", STOCK).await);
    // The store itself, not a cut one: each placement takes its unit with an add the store
    // bounds as it applies it. Two shops on one table, as two processes would be: neither
    // knows what the other found sold out.
    let shops: Vec<_> = (0..2)
        .map(|_| {
            Arc::new(Shop::new(
                table.clone(),
                CutPayments {
                    inner: world.provider.clone(),
                    cut: Cut::never(),
                },
                world.clock.clone(),
                world.config.clone(),
            ))
        })
        .collect();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (shop, world) = (shops[client % 3 / 2].clone(), world.clone());
        clients.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for n in 0.. {
                let body = order_from(Some(world.lines(1)), None, "tok_visa");
                // Pairs of clients share their keys: one of each pair loses the key's commit.
                let key = world.key(&body, &format!("c{}-{n}", client / 2));
                let alice = world.alice();
                let run = shop.place(&alice, Some(&key), body);
                let answer = if (client + n) % 7 == 0 {
                    // Gone after a few microseconds: dropped wherever the run stands.
                    let wait =
                        std::time::Duration::from_micros(((client * 37 + n * 11) % 900) as u64);
                    match tokio::time::timeout(wait, run).await {
                        Ok(answer) => answer,
                        Err(_) => continue,
                    }
                } else {
                    run.await
                };
                match answer {
                    Ok(reply) => placed.push(reply.body["id"].as_str().unwrap().to_owned()),
                    // A clear "try again" (409), as a store without ordered writes (DynamoDB)
                    // may answer a race it lost until its deadline: this client tries on.
                    Err(AppError::IdempotencyInFlight | AppError::Contention) => {}
                    Err(AppError::Domain(_)) => return placed,
                    Err(other) => panic!("client {client}, order {n}: {other:?}"),
                }
            }
            placed
        }));
    }
    let mut answered = std::collections::HashSet::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    // What the dropped runs left is undone once its time is up.
    let hold_ms = i64::from(world.config.order_hold_seconds) * 1000;
    world
        .clock
        .advance(hold_ms.max(world.config.reconcile_after_ms) + 1);
    world.sweep().await;
    let orders = all_orders(&world).await;
    assert!(answered.is_subset(&orders), "every answered order exists");
    let sold = orders.len() as u64;
    assert_eq!(world.stock().await, (STOCK, sold, STOCK - sold));
    // The rest sells out to the unit, and not one more, through the same shop: the sweeper
    // wrote the stock meanwhile, and what the shop saw before must not count.
    let shop = &shops[0];
    for n in 0.. {
        let body = order_from(Some(world.lines(1)), None, "tok_visa");
        let key = world.key(&body, &format!("rest-{n}"));
        match shop.place(&world.alice(), Some(&key), body).await {
            Ok(_) => {}
            Err(AppError::Domain(_)) => break,
            Err(other) => panic!("after the race: {other:?}"),
        }
    }
    assert_eq!(all_orders(&world).await.len() as u64, STOCK);
    assert_eq!(world.stock().await, (STOCK, STOCK, 0));
}

/// The orders `caller` sees, page by page with `limit`.
async fn listed_orders<T: Table + Clone>(
    world: &World<T>,
    caller: &Caller,
    limit: usize,
) -> Vec<String> {
    let shop = world.shop(Cut::never());
    let (mut ids, mut cursor) = (Vec::new(), None);
    loop {
        let page = shop
            .orders(caller, cursor.as_deref(), Some(limit))
            .await
            .unwrap();
        ids.extend(page.items.into_iter().map(|o| o.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

/// An operator's list of the shop's orders, page by page with `limit`.
async fn shop_orders<T: Table + Clone>(world: &World<T>, limit: usize) -> Vec<String> {
    listed_orders(world, &world.caller("ops", Role::Ops), limit).await
}

/// The shop's order list is spread over shards; orders listed before that, in its old single
/// partition, are still listed, and an order found in both is listed once.
pub async fn the_shops_order_list_merges_its_shards_and_its_old_partition<T: Table + Clone>(
    table: &T,
) {
    let world = World::new(table, "sharded", 100).await;
    let shop = world.shop(Cut::never());
    let mut placed = Vec::new();
    for n in 0..12 {
        let body = order_from(Some(world.lines(1)), None, "tok_visa");
        let key = world.key(&body, &format!("list-{n}"));
        let reply = shop.place(&world.alice(), Some(&key), body).await.unwrap();
        placed.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    placed.reverse();
    assert_eq!(
        shop_orders(&world, 5).await,
        placed,
        "newest first, each once"
    );

    // The oldest order as a list kept before sharding holds it: only in the old partition.
    // The newest one has a stale copy there too.
    let old = crate::keys::tenant_order_list(&world.tenant);
    let shard_of = |id: &str| {
        let id = commerce_domain::OrderId::parse(id).unwrap();
        let shards = table.shards(crate::keys::ORDER_LIST_SHARDS);
        crate::keys::tenant_orders(&world.tenant, crate::keys::tenant_order_shard(&id, shards))
    };
    let (oldest, newest) = (placed[11].clone(), placed[0].clone());
    let entry = table
        .get(&shard_of(&oldest), &oldest)
        .await
        .unwrap()
        .unwrap();
    let stale = table
        .get(&shard_of(&newest), &newest)
        .await
        .unwrap()
        .unwrap();
    let moved = |item: Item| Write::Put {
        item: Item {
            pk: old.clone(),
            ..item
        },
        condition: crate::table::Condition::None,
    };
    table
        .transact(vec![
            Write::Delete {
                pk: shard_of(&oldest),
                sk: oldest.clone(),
                condition: crate::table::Condition::None,
            },
            moved(entry),
            moved(stale),
        ])
        .await
        .unwrap();
    for limit in [1, 5, 100] {
        assert_eq!(shop_orders(&world, limit).await, placed, "pages of {limit}");
    }

    // A store that writes one shard, serving a list a build that spread it wrote: an order's
    // older copy sits in another shard. The copy this store wrote is the one listed, once.
    if table.shards(crate::keys::ORDER_LIST_SHARDS) == 1 {
        let second = placed[1].clone();
        let mut older = table
            .get(&shard_of(&second), &second)
            .await
            .unwrap()
            .unwrap();
        let mut summary: serde_json::Value = serde_json::from_slice(&older.data).unwrap();
        summary["status"] = "cancelled".into();
        older.data = serde_json::to_vec(&summary).unwrap();
        older.pk = crate::keys::tenant_orders(&world.tenant, 7);
        table
            .transact(vec![Write::Put {
                item: older,
                condition: crate::table::Condition::None,
            }])
            .await
            .unwrap();
        for limit in [1, 5, 100] {
            assert_eq!(shop_orders(&world, limit).await, placed, "pages of {limit}");
        }
        let ops = world.caller("ops", Role::Ops);
        let page = shop.orders(&ops, None, Some(100)).await.unwrap();
        let listed = page.items.iter().find(|o| o.id == second).unwrap();
        assert_eq!(listed.status, commerce_domain::OrderStatus::Placed);
    }
}

/// Every order of the world's customer, page by page.
async fn all_orders<T: Table + Clone>(world: &World<T>) -> std::collections::HashSet<String> {
    listed_orders(world, &world.alice(), 100)
        .await
        .into_iter()
        .collect()
}

/// Hold entries a build that spread the queue otherwise put in other shards (a database from
/// before [`Table::shards`]): the sweeper still ends their holds, and leaves no entry behind.
pub async fn hold_entries_in_other_shards_are_swept<T: Table + Clone>(table: &T) {
    use crate::keys::{HOLD_SHARDS, hold_shard, holds};
    let world = World::new(table, "othershard", 10).await;
    let shards = table.shards(HOLD_SHARDS);
    let (released, expiring) = (world.reserve(1).await, world.reserve(1).await);
    let mut moved = Vec::new();
    for id in [&released, &expiring] {
        let here = holds(hold_shard(id, shards));
        let there = holds((hold_shard(id, shards) + 1) % HOLD_SHARDS);
        let query = Query {
            pk: &here,
            prefix: "",
            after: None,
            limit: 1000,
            descending: false,
        };
        let page = table.query(query).await.unwrap();
        let entry = page
            .items
            .into_iter()
            .find(|item| item.sk.ends_with(id.as_str()))
            .expect("the hold's entry");
        let sk = entry.sk.clone();
        table
            .transact(vec![
                Write::Delete {
                    pk: here,
                    sk: sk.clone(),
                    condition: crate::table::Condition::None,
                },
                Write::Put {
                    item: Item {
                        pk: there.clone(),
                        ..entry
                    },
                    condition: crate::table::Condition::None,
                },
            ])
            .await
            .unwrap();
        moved.push((there, sk));
    }
    let shop = world.shop(Cut::never());
    shop.release_reservation(&world.alice(), None, &released)
        .await
        .unwrap();
    assert_eq!(world.stock().await, (10, 1, 9));
    world.clock.advance(901_000);
    let pass = shop.sweep(100).await;
    assert_eq!((pass.expired, pass.failed), (1, 0), "{pass:?}");
    assert_eq!(world.stock().await, (10, 0, 10));
    for (pk, sk) in moved {
        assert_eq!(table.get(&pk, &sk).await.unwrap(), None, "{pk} {sk}");
    }
}

/// An entry in the expiry queue that cannot be read is counted as failed and skipped, pass
/// after pass: the holds around it still expire and their stock comes back.
pub async fn a_bad_queue_entry_is_counted_and_skipped<T: Table + Clone>(table: &T) {
    let world = World::new(table, "badentry", 10).await;
    for _ in 0..3 {
        world.reserve(2).await;
    }
    let bad = Write::Put {
        item: Item {
            pk: crate::keys::holds(0),
            sk: "0#not-an-entry".into(),
            version: 0,
            data: b"null".to_vec(),
            expires_at: None,
            owner: None,
            index: None,
        },
        condition: crate::table::Condition::None,
    };
    table.transact(vec![bad]).await.unwrap();
    world.clock.advance(901_000);
    let first = world.shop(Cut::never()).sweep(100).await;
    assert_eq!((first.expired, first.failed), (3, 1), "{first:?}");
    assert_eq!(world.stock().await, (10, 0, 10));
    let second = world.shop(Cut::never()).sweep(100).await;
    assert_eq!((second.expired, second.failed), (0, 1), "{second:?}");
}

/// A transaction that meets another one, at whichever write, is read again and retried: the
/// order is placed once. A failure that would happen again (a store error) is not retried
/// before the payment: the answer is an error, and nothing is held or authorized.
pub async fn conflicts_are_retried_and_failures_are_not<T: Table + Clone>(table: &T) {
    let world = World::new(table, "conflicts", 10).await;
    let body = order_from(Some(world.lines(1)), None, "tok_visa");
    let key = world.key(&body, "k1");
    let placed = world
        .shop(Cut::conflicting_store(0, 3))
        .place(&world.alice(), Some(&key), body)
        .await
        .unwrap();
    assert_eq!(placed.status, 201);
    assert_eq!(world.orders().await.len(), 1);
    assert_eq!(world.stock().await, (10, 1, 9));
    assert_eq!(world.counts().authorizations, 1);

    let body = order_from(Some(world.lines(1)), None, "tok_visa");
    let key = world.key(&body, "k2");
    let failed = world
        .shop(Cut::failing_store(0, 1))
        .place(&world.alice(), Some(&key), body)
        .await;
    assert!(
        matches!(failed, Err(AppError::Store(StoreError::Failure(_)))),
        "{failed:?}"
    );
    assert_eq!(world.orders().await.len(), 1);
    assert_eq!(world.stock().await, (10, 1, 9));
    assert_eq!(world.counts().authorizations, 1);
}

/// The types of the events on the SKU's own stream.
async fn stock_events<T: Table + Clone>(world: &World<T>) -> Vec<String> {
    let pk = crate::keys::inventory(&world.tenant, &world.sku);
    crate::event_store::read_events::<serde_json::Value, _>(&world.table, &pk)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// The SKUs the low-stock list shows, with their available units.
async fn low_stock<T: Table + Clone>(world: &World<T>) -> Vec<(String, u64)> {
    let admin = world.caller("admin", Role::Admin);
    let page = world
        .shop(Cut::never())
        .low_stock(&admin, None, Some(100))
        .await
        .unwrap();
    page.items
        .into_iter()
        .map(|v| (v.sku.to_string(), v.available))
        .collect()
}

/// Buyers race over a SKU with a low-stock threshold: orders clear of it take the stock without
/// reading it, the ones that cross it or come after read it, and the alert is raised once.
pub async fn a_hot_sku_alerts_once_as_it_crosses_its_threshold<T: Table + Clone>(table: &T) {
    const STOCK: u64 = 24;
    let world = Arc::new(World::new(table, "alerted", STOCK).await);
    let admin = world.caller("admin", Role::Admin);
    let level = StockLevel {
        on_hand: STOCK,
        low_stock_threshold: 6,
    };
    let shop = world.shop(Cut::never());
    shop.set_stock(&admin, &world.sku, level).await.unwrap();
    // Two shops, as two processes: neither knows what the other found short.
    let shops: Vec<_> = (0..2).map(|_| Arc::new(world.shop(Cut::never()))).collect();
    let mut clients = Vec::new();
    for client in 0..12 {
        let (shop, world) = (shops[client % 2].clone(), world.clone());
        clients.push(tokio::spawn(async move {
            let mut placed = 0u64;
            for n in 0.. {
                let body = order_from(Some(world.lines(1)), None, "tok_visa");
                let key = world.key(&body, &format!("a{client}-{n}"));
                match shop.place(&world.alice(), Some(&key), body).await {
                    Ok(_) => placed += 1,
                    Err(AppError::Contention) => {}
                    Err(AppError::Domain(commerce_domain::DomainError::OutOfStock { .. })) => {
                        return placed;
                    }
                    Err(other) => panic!("client {client}, order {n}: {other:?}"),
                }
            }
            placed
        }));
    }
    let mut sold = 0;
    for client in clients {
        sold += client.await.unwrap();
    }
    assert_eq!(sold, STOCK, "every unit sold, and not one more");
    assert_eq!(world.stock().await, (STOCK, STOCK, 0));
    assert_eq!(
        stock_events(&world).await,
        ["StockLevelSet", "StockLevelSet", "LowStockDetected"],
        "one alert for the crossing"
    );
    assert_eq!(low_stock(&world).await, [("MUG".to_owned(), 0)]);

    let receipt = crate::shop::StockReceipt {
        quantity: Quantity::new(20).unwrap(),
    };
    shop.receive_stock(&admin, None, &world.sku, receipt)
        .await
        .unwrap();
    assert_eq!(world.stock().await, (STOCK + 20, STOCK, 20));
    assert_eq!(
        stock_events(&world).await[3..],
        ["StockReceived", "LowStockCleared"]
    );
    assert_eq!(low_stock(&world).await, []);
}

/// Stock written before SKUs had a stock item (only its stream's head) carries over: it reads
/// as its head folded to, and the first change makes the item from those figures.
pub async fn stock_kept_only_on_its_stream_carries_over<T: Table + Clone>(table: &T) {
    use commerce_domain::{Inventory, InventoryEvent};
    let world = World::new(table, "older", 0).await;
    let pk = crate::keys::inventory(&world.tenant, &world.sku);
    // As an older build left it: stocked, four units held, and no stock item.
    let mut stream = crate::event_store::load::<Inventory, _>(table, pk.clone())
        .await
        .unwrap();
    let held = vec![
        InventoryEvent::StockLevelSet {
            on_hand: 10,
            low_stock_threshold: 3,
        },
        InventoryEvent::StockReserved {
            reservation: ReservationId::parse("older-hold").unwrap(),
            quantity: 4,
        },
    ];
    let mut changes = crate::event_store::Changes::new(crate::event_store::Origin::system("older"));
    changes.append(&mut stream, held, 0).unwrap();
    changes.commit(table).await.unwrap();
    table
        .transact(vec![Write::Delete {
            pk: pk.clone(),
            sk: crate::keys::STOCK.into(),
            condition: crate::table::Condition::None,
        }])
        .await
        .unwrap();
    assert_eq!(world.stock().await, (10, 4, 6));

    let shop = world.shop(Cut::never());
    for n in 0..2 {
        let body = order_from(Some(world.lines(2)), None, "tok_visa");
        let key = world.key(&body, &format!("older-{n}"));
        shop.place(&world.alice(), Some(&key), body).await.unwrap();
    }
    assert_eq!(world.stock().await, (10, 8, 2));
    let stored = table.get(&pk, crate::keys::STOCK).await.unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored.data).unwrap();
    assert_eq!(
        stored,
        json!({"available": 2, "reserved": 8, "headroom": -1, "changes": 4})
    );
    assert_eq!(
        stock_events(&world).await,
        ["StockLevelSet", "StockReserved", "LowStockDetected"]
    );
    assert_eq!(low_stock(&world).await, [("MUG".to_owned(), 2)]);
}

/// A table on which someone else writes once, at the worst moment for the command running on
/// it.
#[derive(Debug, Clone)]
struct Meddled<T> {
    inner: T,
    done: Arc<AtomicBool>,
    by: Meddler,
}

#[derive(Debug, Clone)]
enum Meddler {
    /// An older build reserves 5 units on the SKU's stream just before the first transaction
    /// that makes the SKU's stock item commits: a rolling upgrade, caught in between.
    OlderBuild,
    /// An admin counts the SKU (10 on hand, threshold 2) just after its stock was read.
    Admin(TenantId),
}

impl<T: Table + Clone> Table for Meddled<T> {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let read = self.inner.get(pk, sk).await;
        if let Meddler::Admin(tenant) = &self.by
            && sk == crate::keys::STOCK
            && !self.done.swap(true, Ordering::SeqCst)
        {
            let shop = Shop::new(
                self.inner.clone(),
                SandboxPayments::default(),
                HandClock::new(),
                ShopConfig::default(),
            );
            let admin = Caller {
                tenant: tenant.clone(),
                subject: CustomerId::parse("other-admin").unwrap(),
                roles: vec![Role::Admin],
                correlation_id: "meddler".into(),
            };
            let level = StockLevel {
                on_hand: 10,
                low_stock_threshold: 2,
            };
            let sku = Sku::parse("MUG").unwrap();
            shop.set_stock(&admin, &sku, level).await.unwrap();
        }
        read
    }
    async fn query(&self, query: Query<'_>) -> Result<Page, StoreError> {
        self.inner.query(query).await
    }
    async fn query_index(&self, query: Query<'_>) -> Result<Page, StoreError> {
        self.inner.query_index(query).await
    }
    async fn list_in_index(
        &self,
        pk: &str,
        sk: &str,
        key: crate::table::IndexKey,
    ) -> Result<bool, StoreError> {
        self.inner.list_in_index(pk, sk, key).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let creates = writes.iter().find_map(|w| match w {
            Write::Add { pk, expect, .. } if expect.contains(&crate::table::Expect::Absent) => {
                Some(pk.clone())
            }
            _ => None,
        });
        if let Some(pk) = creates
            && matches!(self.by, Meddler::OlderBuild)
            && !self.done.swap(true, Ordering::SeqCst)
        {
            use commerce_domain::Inventory;
            let mut stream = crate::event_store::load::<Inventory, _>(&self.inner, pk)
                .await
                .unwrap();
            let sku = Sku::parse("MUG").unwrap();
            let older = ReservationId::parse("older-build").unwrap();
            let events = stream
                .state
                .reserve(&sku, &older, Quantity::new(5).unwrap())
                .unwrap();
            let origin = crate::event_store::Origin::system("older-build");
            let mut changes = crate::event_store::Changes::new(origin);
            changes.append(&mut stream, events, 0).unwrap();
            changes.commit(&self.inner).await.unwrap();
        }
        self.inner.transact(writes).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn max_transaction_writes(&self) -> usize {
        self.inner.max_transaction_writes()
    }
    fn shards(&self, wanted: u32) -> u32 {
        self.inner.shards(wanted)
    }
    async fn scan_events(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        self.inner.scan_events(after, limit).await
    }
    async fn estimate_events(&self) -> Result<Option<u64>, StoreError> {
        self.inner.estimate_events().await
    }
}

/// The stock item made from a SKU's stream holds only on the stream as it was read: what an
/// older build reserved on it meanwhile is counted, never sold twice.
pub async fn an_item_made_from_a_stream_holds_only_on_that_stream<T: Table + Clone>(table: &T) {
    let world = World::new(table, "rolling", 10).await;
    let pk = crate::keys::inventory(&world.tenant, &world.sku);
    // Stock kept only on the stream, as before the upgrade.
    table
        .transact(vec![Write::Delete {
            pk: pk.clone(),
            sk: crate::keys::STOCK.into(),
            condition: crate::table::Condition::None,
        }])
        .await
        .unwrap();
    let racing = Meddled {
        inner: table.clone(),
        done: Arc::new(AtomicBool::new(false)),
        by: Meddler::OlderBuild,
    };
    let shop = Shop::new(
        racing,
        SandboxPayments::default(),
        world.clock.clone(),
        world.config.clone(),
    );
    let all = NewReservation {
        lines: world.lines(10),
        ttl_seconds: 900,
    };
    let refused = shop.create_reservation(&world.alice(), None, all).await;
    assert!(
        matches!(
            refused,
            Err(AppError::Domain(commerce_domain::DomainError::OutOfStock {
                available: 5,
                ..
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(world.stock().await, (10, 5, 5));
    let half = NewReservation {
        lines: world.lines(5),
        ttl_seconds: 900,
    };
    shop.create_reservation(&world.alice(), None, half)
        .await
        .unwrap();
    assert_eq!(world.stock().await, (10, 10, 0));
}

/// A count decided on figures another admin's count has since changed is decided again: the
/// stream it appends to is read before the figures, so the later count fails its condition.
pub async fn a_count_on_figures_another_count_changed_is_decided_again<T: Table + Clone>(
    table: &T,
) {
    let world = World::new(table, "recounted", 10).await;
    let admin = world.caller("admin", Role::Admin);
    let level = StockLevel {
        on_hand: 10,
        low_stock_threshold: 5,
    };
    let shop = world.shop(Cut::never());
    shop.set_stock(&admin, &world.sku, level).await.unwrap();
    let meddled = Shop::new(
        Meddled {
            inner: table.clone(),
            done: Arc::new(AtomicBool::new(false)),
            by: Meddler::Admin(world.tenant.clone()),
        },
        SandboxPayments::default(),
        world.clock.clone(),
        world.config.clone(),
    );
    let level = StockLevel {
        on_hand: 10,
        low_stock_threshold: 0,
    };
    let reply = meddled.set_stock(&admin, &world.sku, level).await.unwrap();
    assert_eq!(reply.body["low_stock_threshold"], 0);
    let view = shop.inventory(&admin, &world.sku).await.unwrap();
    assert_eq!(
        (view.on_hand, view.available, view.low_stock_threshold),
        (10, 10, 0),
        "the last count wins, on the figures the one before it left"
    );
    let pk = crate::keys::inventory(&world.tenant, &world.sku);
    let stored = table.get(&pk, crate::keys::STOCK).await.unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored.data).unwrap();
    assert_eq!(
        stored["headroom"], 10,
        "no negative threshold hidden in the figures"
    );
    assert_eq!(
        stock_events(&world).await,
        [
            "StockLevelSet",
            "StockLevelSet",
            "StockLevelSet",
            "StockLevelSet"
        ],
        "stocked, counted, the other count, this one"
    );
}
