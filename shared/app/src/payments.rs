//! The payment provider port and the sandbox provider used locally and in tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use commerce_domain::{Money, OrderId, PaymentAuthorization};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The provider said no; retrying will not change that.
    #[error("declined: {0}")]
    Declined(String),
    /// The provider could not answer; the same request may succeed later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

/// A payment provider. Each call is keyed by the order it is for, and the provider
/// de-duplicates on that key: a call repeated after a crash or a lost answer acts once.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Holds `amount` on the payment method `token` for `order`. Repeated for the same order,
    /// it answers the authorization made the first time.
    fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> impl Future<Output = Result<PaymentAuthorization, PaymentError>> + Send;

    /// Lets go of whatever is held for `order`, if anything; repeating it is harmless. An order
    /// once voided is not authorized afterwards, so a late request cannot undo the void.
    fn void(&self, order: &OrderId) -> impl Future<Output = Result<(), PaymentError>> + Send;

    /// Takes `amount` (at most what `authorization` holds) from the payment method. The
    /// provider acts once per `key` ([`operation_key`]): a repeat answers the first receipt.
    fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> impl Future<Output = Result<PaymentReceipt, PaymentError>> + Send;

    /// Gives back `amount` (at most what was captured and not yet refunded), once per `key`.
    fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> impl Future<Output = Result<PaymentReceipt, PaymentError>> + Send;
}

/// What a capture or a refund did, as the provider records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaymentReceipt {
    pub id: String,
    pub amount: Money,
}

/// The idempotency key of one payment operation on an order: `kind` names it (`capture`,
/// `refund`) and `attempt` tells apart operations a shop means to be distinct (the first
/// cancellation and a later one), so a retried call is the same operation and a new one is not.
pub fn operation_key(order: &OrderId, kind: &str, attempt: u32) -> String {
    format!("{order}:{kind}:{attempt}")
}

/// A deterministic provider for demos and tests. Its ledger is kept in memory
/// ([`InMemoryLedger`], one process) or in the table ([`TableLedger`]: every process, each
/// Lambda and the server after a restart, sees the same captures and refunds). Its test tokens:
///
/// | token | answer |
/// |---|---|
/// | `tok_visa` (or any other `tok_…`) | approved |
/// | `tok_slow` | approved after 2 seconds |
/// | `tok_decline` | declined: `card_declined` |
/// | `tok_insufficient_funds` | declined: `insufficient_funds` |
/// | `tok_unavailable` | unavailable, every time |
/// | `tok_flaky` | unavailable on the first try for an order, approved after |
/// | `tok_outage` | unavailable on the first three tries for an order (one request's worth), approved after |
/// | `tok_refund_unavailable_N` | approved; its order's first N refund tries are unavailable |
/// | `tok_refund_refused` | approved; every refund for its order is declined: `refund_refused` |
/// | `tok_void_unavailable_N` | approved; its order's first N void tries are unavailable |
/// | `tok_void_slow` | approved; each void takes 2 seconds |
/// | anything not starting with `tok_` | declined: `invalid_token` |
///
/// Captures and refunds are kept per key: a repeated key answers its first receipt.
#[derive(Debug)]
pub struct SandboxPayments<L = InMemoryLedger> {
    ledger: L,
}

impl Default for SandboxPayments {
    /// The sandbox with its ledger in memory.
    fn default() -> Self {
        Self {
            ledger: InMemoryLedger::default(),
        }
    }
}

/// What the sandbox knows of one order's payment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxEntry {
    authorization: Option<PaymentAuthorization>,
    /// The token it was authorized with, which may ask for faults in later operations.
    token: String,
    /// Voided orders are never authorized again, even if the void came first.
    voided: bool,
    capture: Option<(String, PaymentReceipt)>,
    refunds: Vec<(String, PaymentReceipt)>,
    /// Tries that failed on purpose, for `tok_flaky` and `tok_outage`.
    failed_tries: u32,
    failed_refunds: u32,
    failed_voids: u32,
}

/// Where the sandbox keeps its entries. Writes are conditional on the version read, so two
/// processes working on one order never overwrite each other's operations.
pub trait SandboxLedger: Send + Sync + 'static {
    /// The order's entry and its version (0: none yet).
    fn load(
        &self,
        order: &OrderId,
    ) -> impl Future<Output = Result<(SandboxEntry, u64), PaymentError>> + Send;

    /// Writes the entry if it is still at `version`; `false` when it moved.
    fn save(
        &self,
        order: &OrderId,
        entry: &SandboxEntry,
        version: u64,
    ) -> impl Future<Output = Result<bool, PaymentError>> + Send;

    /// Whether the entry is still at `version`, writing nothing: an answer given from an
    /// entry read earlier holds only if nothing (a void) came in between.
    fn unchanged(
        &self,
        order: &OrderId,
        version: u64,
    ) -> impl Future<Output = Result<bool, PaymentError>> + Send;

    /// Whether plain approvals are written too (cheap in memory, where tests count them); a
    /// ledger in the table writes only what cannot be made again from an order's id.
    fn keeps_authorizations(&self) -> bool {
        false
    }
}

/// Each order's entry and its version.
type Entries = HashMap<OrderId, (SandboxEntry, u64)>;

/// The ledger in this process's memory.
#[derive(Debug, Default)]
pub struct InMemoryLedger {
    entries: Mutex<Entries>,
}

impl InMemoryLedger {
    fn entries(&self) -> Result<std::sync::MutexGuard<'_, Entries>, PaymentError> {
        self.entries
            .lock()
            .map_err(|_| PaymentError::Unavailable("sandbox ledger poisoned".into()))
    }
}

impl SandboxLedger for InMemoryLedger {
    fn keeps_authorizations(&self) -> bool {
        true
    }

    async fn unchanged(&self, order: &OrderId, version: u64) -> Result<bool, PaymentError> {
        Ok(self.entries()?.get(order).map_or(0, |(_, v)| *v) == version)
    }

    async fn load(&self, order: &OrderId) -> Result<(SandboxEntry, u64), PaymentError> {
        Ok(self.entries()?.get(order).cloned().unwrap_or_default())
    }

    async fn save(
        &self,
        order: &OrderId,
        entry: &SandboxEntry,
        version: u64,
    ) -> Result<bool, PaymentError> {
        let mut entries = self.entries()?;
        let current = entries.get(order).map_or(0, |(_, v)| *v);
        if current != version {
            return Ok(false);
        }
        entries.insert(order.clone(), (entry.clone(), version + 1));
        Ok(true)
    }
}

/// The ledger in the table, one item per order.
#[derive(Debug, Clone)]
pub struct TableLedger<T> {
    table: T,
}

impl<T> TableLedger<T> {
    pub fn new(table: T) -> Self {
        Self { table }
    }
}

fn ledger_pk(order: &OrderId) -> String {
    format!("payments#sandbox#{order}")
}

impl<T: crate::Table> SandboxLedger for TableLedger<T> {
    /// A consistent read of the entry's version: a void committed since the first read moved
    /// it, and one committed after this read comes after the answer too.
    async fn unchanged(&self, order: &OrderId, version: u64) -> Result<bool, PaymentError> {
        match self.table.get(&ledger_pk(order), "head").await {
            Ok(item) => Ok(item.map_or(0, |item| item.version) == version),
            Err(e) => Err(PaymentError::Unavailable(format!("sandbox ledger: {e}"))),
        }
    }

    async fn load(&self, order: &OrderId) -> Result<(SandboxEntry, u64), PaymentError> {
        match self.table.get(&ledger_pk(order), "head").await {
            Ok(Some(item)) => Ok((
                serde_json::from_slice(&item.data).map_err(|e| {
                    PaymentError::Unavailable(format!("corrupt sandbox entry: {e}"))
                })?,
                item.version,
            )),
            Ok(None) => Ok((SandboxEntry::default(), 0)),
            Err(e) => Err(PaymentError::Unavailable(format!("sandbox ledger: {e}"))),
        }
    }

    async fn save(
        &self,
        order: &OrderId,
        entry: &SandboxEntry,
        version: u64,
    ) -> Result<bool, PaymentError> {
        let data = serde_json::to_vec(entry)
            .map_err(|e| PaymentError::Unavailable(format!("cannot encode: {e}")))?;
        let write = crate::Write::Put {
            item: crate::Item {
                pk: ledger_pk(order),
                sk: "head".into(),
                version: version + 1,
                data,
                expires_at: None,
                owner: None,
                index: None,
            },
            condition: match version {
                0 => crate::Condition::Absent,
                v => crate::Condition::VersionIs(v),
            },
        };
        match self.table.transact(vec![write]).await {
            Ok(()) => Ok(true),
            Err(crate::StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(PaymentError::Unavailable(format!("sandbox ledger: {e}"))),
        }
    }
}

impl<T: crate::Table> SandboxPayments<TableLedger<T>> {
    /// The sandbox with its ledger in `table`.
    pub fn in_table(table: T) -> Self {
        Self {
            ledger: TableLedger::new(table),
        }
    }
}

/// What the sandbox has done, for tests to check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxCounts {
    /// Authorizations made (repeats for the same order are not new ones).
    pub authorizations: usize,
    /// Authorizations voided.
    pub voids: usize,
    /// Captures made (repeats of a key are not new ones).
    pub captures: usize,
    /// Refunds made (repeats of a key are not new ones).
    pub refunds: usize,
}

/// Tries for one order that `tok_outage` fails.
const OUTAGE_TRIES: u32 = 3;

/// How long `tok_slow` takes to approve.
pub const SLOW_APPROVAL: Duration = Duration::from_secs(2);

/// Tries at a ledger write that lost a race.
const LEDGER_TRIES: usize = 16;

impl<L: SandboxLedger> PaymentGateway for SandboxPayments<L> {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        let loaded = self.ledger.load(order).await?;
        if token == "tok_slow" && loaded.0.authorization.is_none() && !loaded.0.voided {
            tokio::time::sleep(SLOW_APPROVAL).await;
        }
        // A plain approval need not be written: it is made again, the same, from the order's
        // id, and a capture or refund of it adopts it. Faults to come, failed tries and what
        // the ledger keeps in full are written.
        let keep = self.ledger.keeps_authorizations() || asks_for_faults(token);
        self.change_kept(order, Some(loaded), keep, |entry| {
            if entry.voided {
                return Err(PaymentError::Declined("order_voided".into()));
            }
            if let Some(authorization) = &entry.authorization {
                return Ok(authorization.clone());
            }
            let mut fails = |failing: u32| {
                entry.failed_tries += 1;
                entry.failed_tries <= failing
            };
            match token {
                "tok_decline" => return Err(PaymentError::Declined("card_declined".into())),
                "tok_insufficient_funds" => {
                    return Err(PaymentError::Declined("insufficient_funds".into()));
                }
                "tok_unavailable" => {
                    return Err(PaymentError::Unavailable("sandbox: tok_unavailable".into()));
                }
                "tok_flaky" if fails(1) => {
                    return Err(PaymentError::Unavailable("sandbox: tok_flaky".into()));
                }
                "tok_outage" if fails(OUTAGE_TRIES) => {
                    return Err(PaymentError::Unavailable("sandbox: tok_outage".into()));
                }
                t if t.starts_with("tok_") => {}
                _ => return Err(PaymentError::Declined("invalid_token".into())),
            }
            token.clone_into(&mut entry.token);
            let authorization = PaymentAuthorization {
                id: format!("auth_{order}"),
                amount,
            };
            entry.authorization = Some(authorization.clone());
            Ok(authorization)
        })
        .await
    }

    async fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        let order = order_of(authorization)?;
        let adopt = !self.ledger.keeps_authorizations();
        self.change(&order, |entry| {
            authorized(entry, &order, authorization, adopt)?;
            if let Some((first, receipt)) = &entry.capture {
                return if first == key {
                    Ok(receipt.clone())
                } else {
                    Err(PaymentError::Declined("already_captured".into()))
                };
            }
            if entry.voided {
                return Err(PaymentError::Declined("authorization_voided".into()));
            }
            if !fits(amount, authorization.amount) {
                return Err(PaymentError::Declined(
                    "capture_exceeds_authorization".into(),
                ));
            }
            let receipt = PaymentReceipt {
                id: format!("cap_{}", authorization.id),
                amount,
            };
            entry.capture = Some((key.to_owned(), receipt.clone()));
            Ok(receipt)
        })
        .await
    }

    async fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        let order = order_of(authorization)?;
        let adopt = !self.ledger.keeps_authorizations();
        self.change(&order, |entry| {
            authorized(entry, &order, authorization, adopt)?;
            if let Some((_, receipt)) = entry.refunds.iter().find(|(k, _)| k == key) {
                return Ok(receipt.clone());
            }
            if entry.token == "tok_refund_refused" {
                return Err(PaymentError::Declined("refund_refused".into()));
            }
            if entry.failed_refunds < failing(&entry.token, "tok_refund_unavailable_") {
                entry.failed_refunds += 1;
                return Err(PaymentError::Unavailable(
                    "sandbox: refund unavailable".into(),
                ));
            }
            let Some((_, captured)) = &entry.capture else {
                return Err(PaymentError::Declined("nothing_captured".into()));
            };
            let refunded = entry
                .refunds
                .iter()
                .try_fold(0i64, |sum, (_, r)| sum.checked_add(r.amount.amount_minor));
            let left = refunded.and_then(|r| captured.amount.amount_minor.checked_sub(r));
            if amount.currency != captured.amount.currency
                || amount.amount_minor <= 0
                || left.is_none_or(|left| amount.amount_minor > left)
            {
                return Err(PaymentError::Declined("refund_exceeds_captured".into()));
            }
            let receipt = PaymentReceipt {
                id: format!("re_{}_{}", authorization.id, entry.refunds.len() + 1),
                amount,
            };
            entry.refunds.push((key.to_owned(), receipt.clone()));
            Ok(receipt)
        })
        .await
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        if self.ledger.load(order).await?.0.token == "tok_void_slow" {
            tokio::time::sleep(SLOW_APPROVAL).await;
        }
        self.change(order, |entry| {
            // As at a real provider: what was captured is refunded, not voided.
            if entry.capture.is_some() {
                return Err(PaymentError::Declined("already_captured".into()));
            }
            if entry.failed_voids < failing(&entry.token, "tok_void_unavailable_") {
                entry.failed_voids += 1;
                return Err(PaymentError::Unavailable(
                    "sandbox: void unavailable".into(),
                ));
            }
            entry.voided = true;
            Ok(())
        })
        .await
    }
}

impl<L: SandboxLedger> SandboxPayments<L> {
    /// Applies `operation` to the order's entry and keeps what it changed (a failed try
    /// counts too), reading again when another process wrote the entry meanwhile.
    async fn change<R>(
        &self,
        order: &OrderId,
        operation: impl Fn(&mut SandboxEntry) -> Result<R, PaymentError>,
    ) -> Result<R, PaymentError> {
        self.change_kept(order, None, true, operation).await
    }

    /// [`Self::change`], starting from `loaded` (an entry and its version) instead of a read.
    /// With `keep` false, only failed tries are written.
    async fn change_kept<R>(
        &self,
        order: &OrderId,
        mut loaded: Option<(SandboxEntry, u64)>,
        keep: bool,
        operation: impl Fn(&mut SandboxEntry) -> Result<R, PaymentError>,
    ) -> Result<R, PaymentError> {
        for _ in 0..LEDGER_TRIES {
            let (mut entry, version) = match loaded.take() {
                Some(entry) => entry,
                None => self.ledger.load(order).await?,
            };
            let before = entry.clone();
            let answer = operation(&mut entry);
            let write = keep || entry.failed_tries != before.failed_tries;
            let stands = if entry == before {
                true
            } else if write {
                self.ledger.save(order, &entry, version).await?
            } else {
                // Not written, so checked: a void that came since the read wins.
                self.ledger.unchanged(order, version).await?
            };
            if stands {
                return answer;
            }
        }
        Err(PaymentError::Unavailable("sandbox ledger busy".into()))
    }
}

/// The order an authorization of this sandbox is for (its id is `auth_<order>`).
fn order_of(authorization: &PaymentAuthorization) -> Result<OrderId, PaymentError> {
    authorization
        .id
        .strip_prefix("auth_")
        .and_then(|order| OrderId::parse(order).ok())
        .ok_or_else(|| PaymentError::Declined("unknown_authorization".into()))
}

/// The entry holds this very authorization, or adopts it: an approval the ledger did not
/// write is this sandbox's own if its id names the entry's order, and it was not voided.
fn authorized(
    entry: &mut SandboxEntry,
    order: &OrderId,
    authorization: &PaymentAuthorization,
    adopt: bool,
) -> Result<(), PaymentError> {
    match &entry.authorization {
        Some(a) if a.id == authorization.id => Ok(()),
        None if adopt && !entry.voided && authorization.id == format!("auth_{order}") => {
            entry.authorization = Some(authorization.clone());
            Ok(())
        }
        _ => Err(PaymentError::Declined("unknown_authorization".into())),
    }
}

/// Whether a token asks for faults in operations after the authorization, which the ledger
/// must then remember.
fn asks_for_faults(token: &str) -> bool {
    ["tok_refund_", "tok_void_"]
        .iter()
        .any(|prefix| token.starts_with(prefix))
}

/// How many tries `token` fails on purpose, from its `prefix` and a number.
fn failing(token: &str, prefix: &str) -> u32 {
    token
        .strip_prefix(prefix)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
}

/// Whether `amount` is positive, in `limit`'s currency and no more than it.
fn fits(amount: Money, limit: Money) -> bool {
    amount.currency == limit.currency
        && amount.amount_minor > 0
        && amount.amount_minor <= limit.amount_minor
}

impl SandboxPayments<InMemoryLedger> {
    fn entries(&self) -> Vec<SandboxEntry> {
        self.ledger
            .entries()
            .map(|entries| entries.values().map(|(e, _)| e.clone()).collect())
            .unwrap_or_default()
    }

    /// What the sandbox has done so far.
    pub fn counts(&self) -> SandboxCounts {
        let entries = self.entries();
        let authorized = || entries.iter().filter(|e| e.authorization.is_some());
        SandboxCounts {
            authorizations: authorized().count(),
            voids: authorized().filter(|e| e.voided).count(),
            captures: authorized().filter(|e| e.capture.is_some()).count(),
            refunds: authorized().map(|e| e.refunds.len()).sum(),
        }
    }

    /// Whether the authorization for `order` stands (made and not voided).
    pub fn is_authorized(&self, order: &OrderId) -> bool {
        self.ledger.entries().is_ok_and(|entries| {
            entries
                .get(order)
                .is_some_and(|(e, _)| e.authorization.is_some() && !e.voided)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_domain::Currency;

    #[tokio::test]
    async fn the_sandbox_keeps_the_payment_gateway_contract() {
        crate::contract::payment_gateway_contract(
            &SandboxPayments::default(),
            "tok_visa",
            "tok_decline",
            "sandbox",
        )
        .await;
    }

    #[tokio::test]
    async fn a_void_fails_as_often_as_its_token_says() {
        let payments = SandboxPayments::default();
        let id = order("o-void");
        payments
            .authorize(&id, eur(100), "tok_void_unavailable_2")
            .await
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                payments.void(&id).await,
                Err(PaymentError::Unavailable(_))
            ));
        }
        assert_eq!(payments.void(&id).await, Ok(()));
    }

    fn order(id: &str) -> OrderId {
        OrderId::parse(id).unwrap()
    }

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn an_order_is_authorized_once_however_often_it_asks() {
        let sandbox = SandboxPayments::default();
        let first = sandbox
            .authorize(&order("o1"), eur(5), "tok_visa")
            .await
            .unwrap();
        let again = sandbox
            .authorize(&order("o1"), eur(5), "tok_visa")
            .await
            .unwrap();
        assert_eq!(first, again);
        sandbox.void(&order("o1")).await.unwrap();
        sandbox.void(&order("o1")).await.unwrap();
        sandbox.void(&order("never")).await.unwrap();
        assert_eq!(
            sandbox.authorize(&order("never"), eur(5), "tok_visa").await,
            Err(PaymentError::Declined("order_voided".into())),
            "an order voided first is never authorized after"
        );
        assert_eq!(
            sandbox.counts(),
            SandboxCounts {
                authorizations: 1,
                voids: 1,
                ..SandboxCounts::default()
            }
        );
        assert!(!sandbox.is_authorized(&order("o1")));
    }

    #[tokio::test]
    async fn test_tokens_answer_as_documented() {
        let sandbox = SandboxPayments::default();
        let result = |r: Result<PaymentAuthorization, PaymentError>| match r {
            Ok(_) => "approved".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            result(sandbox.authorize(&order("a"), eur(1), "tok_decline").await),
            "declined: card_declined"
        );
        assert_eq!(
            result(sandbox.authorize(&order("b"), eur(1), "nope").await),
            "declined: invalid_token"
        );
        assert!(
            result(
                sandbox
                    .authorize(&order("c"), eur(1), "tok_unavailable")
                    .await
            )
            .starts_with("provider unavailable")
        );
        assert!(
            result(sandbox.authorize(&order("d"), eur(1), "tok_flaky").await)
                .starts_with("provider unavailable")
        );
        assert_eq!(
            result(sandbox.authorize(&order("d"), eur(1), "tok_flaky").await),
            "approved"
        );
        for _ in 0..3 {
            assert!(
                result(sandbox.authorize(&order("e"), eur(1), "tok_outage").await)
                    .starts_with("provider unavailable")
            );
        }
        assert_eq!(
            result(sandbox.authorize(&order("e"), eur(1), "tok_outage").await),
            "approved"
        );
        assert_eq!(sandbox.counts().authorizations, 2);
    }

    #[tokio::test]
    async fn a_capture_and_refunds_act_once_per_key_and_never_exceed_what_was_taken() {
        let sandbox = SandboxPayments::default();
        let auth = sandbox
            .authorize(&order("o1"), eur(1000), "tok_visa")
            .await
            .unwrap();
        let capture_key = operation_key(&order("o1"), "capture", 1);
        assert_eq!(
            sandbox.capture(&auth, eur(1001), &capture_key).await,
            Err(PaymentError::Declined(
                "capture_exceeds_authorization".into()
            ))
        );
        let captured = sandbox
            .capture(&auth, eur(800), &capture_key)
            .await
            .unwrap();
        assert_eq!(
            sandbox.capture(&auth, eur(800), &capture_key).await,
            Ok(captured.clone()),
            "a repeated capture answers the first"
        );
        assert_eq!(
            sandbox
                .capture(&auth, eur(100), &operation_key(&order("o1"), "capture", 2))
                .await,
            Err(PaymentError::Declined("already_captured".into()))
        );
        let first = operation_key(&order("o1"), "refund", 1);
        let refund = sandbox.refund(&auth, eur(300), &first).await.unwrap();
        assert_eq!(sandbox.refund(&auth, eur(300), &first).await, Ok(refund));
        let second = operation_key(&order("o1"), "refund", 2);
        assert_eq!(
            sandbox.refund(&auth, eur(501), &second).await,
            Err(PaymentError::Declined("refund_exceeds_captured".into())),
            "800 captured, 300 refunded: 500 left"
        );
        sandbox.refund(&auth, eur(500), &second).await.unwrap();
        assert_eq!(
            sandbox.counts(),
            SandboxCounts {
                authorizations: 1,
                voids: 0,
                captures: 1,
                refunds: 2,
            }
        );
    }

    #[tokio::test]
    async fn refund_faults_are_asked_for_by_token() {
        let sandbox = SandboxPayments::default();
        let flaky = sandbox
            .authorize(&order("f"), eur(10), "tok_refund_unavailable_2")
            .await
            .unwrap();
        let refused = sandbox
            .authorize(&order("r"), eur(10), "tok_refund_refused")
            .await
            .unwrap();
        for auth in [&flaky, &refused] {
            sandbox.capture(auth, eur(10), "capture").await.unwrap();
        }
        let key = operation_key(&order("f"), "refund", 1);
        for _ in 0..2 {
            assert!(matches!(
                sandbox.refund(&flaky, eur(10), &key).await,
                Err(PaymentError::Unavailable(_))
            ));
        }
        sandbox.refund(&flaky, eur(10), &key).await.unwrap();
        assert_eq!(
            sandbox.refund(&refused, eur(10), "any").await,
            Err(PaymentError::Declined("refund_refused".into()))
        );
        assert_eq!(sandbox.counts().refunds, 1);
    }

    #[tokio::test]
    async fn a_voided_authorization_cannot_be_captured_nor_an_unknown_one_refunded() {
        let sandbox = SandboxPayments::default();
        let auth = sandbox
            .authorize(&order("v"), eur(10), "tok_visa")
            .await
            .unwrap();
        sandbox.void(&order("v")).await.unwrap();
        assert_eq!(
            sandbox.capture(&auth, eur(10), "k").await,
            Err(PaymentError::Declined("authorization_voided".into()))
        );
        let stranger = PaymentAuthorization {
            id: "auth_elsewhere".into(),
            amount: eur(10),
        };
        assert_eq!(
            sandbox.refund(&stranger, eur(1), "k").await,
            Err(PaymentError::Declined("unknown_authorization".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tok_slow_takes_two_seconds() {
        let sandbox = SandboxPayments::default();
        let started = tokio::time::Instant::now();
        sandbox
            .authorize(&order("s"), eur(1), "tok_slow")
            .await
            .unwrap();
        assert_eq!(started.elapsed(), SLOW_APPROVAL);
    }
}
