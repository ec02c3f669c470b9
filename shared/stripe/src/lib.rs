//! The payment gateway on Stripe: an authorization is a PaymentIntent confirmed with manual
//! capture; a capture captures it, a void cancels it, a refund is a Refund. Every request
//! carries an `Idempotency-Key` derived from the operation, so Stripe acts once however often
//! it is asked.
//!
//! The port keys a void by order alone, and promises that an order once voided is never
//! authorized afterwards. Stripe knows neither which intent belongs to an order nor what was
//! voided, so the adapter keeps a small record per order in the table: the authorization's
//! amount and payment method (written before Stripe is asked), its intent once known, and
//! whether it was voided. A void whose authorization's outcome is unknown (the answer was
//! lost) asks again with the same key and parameters, which gives the intent Stripe made, if
//! it made one, and cancels that.

use std::time::Duration;

use commerce_app::payments::{PaymentError, PaymentGateway, PaymentReceipt};
use commerce_app::table::{Condition, Item, StoreError, Table, Write};
use commerce_domain::{Money, OrderId, PaymentAuthorization};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where Stripe is and how to sign in. `base_url` is `https://api.stripe.com` in production;
/// tests point it at a local fake.
#[derive(Clone)]
pub struct StripeConfig {
    pub base_url: String,
    pub secret_key: String,
    /// Longest a request may take before it counts as unanswered.
    pub timeout: Duration,
}

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("base_url", &self.base_url)
            .field("secret_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Stripe's PaymentIntents and Refunds behind the [`PaymentGateway`] port.
#[derive(Debug, Clone)]
pub struct StripePayments<T> {
    http: reqwest::Client,
    config: StripeConfig,
    table: T,
}

/// What the adapter keeps of an order's payment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    /// What the authorization was asked with, so it can be asked again identically.
    amount: Option<Money>,
    payment_method: Option<String>,
    /// The PaymentIntent, once Stripe said which.
    intent: Option<String>,
    /// Set by a void: no authorization is made or recorded after it.
    voided: bool,
    /// The intent is cancelled at Stripe (or there never was one).
    cancelled: bool,
}

/// An answer other than success, sorted as the port needs it.
#[derive(Debug)]
enum Refusal {
    /// Stripe said no; the code says why (`card_declined`, `payment_intent_unexpected_state`).
    Declined(String),
    Unavailable(String),
}

impl From<Refusal> for PaymentError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Declined(code) => PaymentError::Declined(code),
            Refusal::Unavailable(why) => PaymentError::Unavailable(why),
        }
    }
}

/// The record could not be read or written: the payment cannot go on for now.
fn unrecorded(e: StoreError) -> PaymentError {
    PaymentError::Unavailable(format!("payment record: {e}"))
}

#[derive(Debug, Deserialize)]
struct Intent {
    id: String,
    status: String,
    #[serde(default)]
    amount_received: i64,
    #[serde(default)]
    latest_charge: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Refund {
    id: String,
    amount: i64,
    status: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RefundList {
    data: Vec<Refund>,
}

/// Tries at a record write that lost a race.
const RECORD_TRIES: usize = 8;

impl<T: Table> StripePayments<T> {
    pub fn new(config: StripeConfig, table: T) -> Result<Self, PaymentError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| PaymentError::Unavailable(format!("cannot build the client: {e}")))?;
        Ok(Self {
            http,
            config,
            table,
        })
    }

    async fn post(&self, path: &str, key: &str, form: &[(&str, String)]) -> Result<Value, Refusal> {
        let request = self
            .http
            .post(format!(
                "{}{path}",
                self.config.base_url.trim_end_matches('/')
            ))
            .bearer_auth(&self.config.secret_key)
            .header("Idempotency-Key", format!("commerce:{key}"))
            .form(form);
        Self::answer(request.send().await).await
    }

    async fn get(&self, path: &str) -> Result<Value, Refusal> {
        let request = self
            .http
            .get(format!(
                "{}{path}",
                self.config.base_url.trim_end_matches('/')
            ))
            .bearer_auth(&self.config.secret_key);
        Self::answer(request.send().await).await
    }

    /// Sorts Stripe's answer: 402 and other client errors are refusals with Stripe's code;
    /// 409 (a concurrent request with the same key), 429, 5xx and no answer are worth
    /// another try; a bad API key is logged loudly and counts as unavailable, as no customer
    /// should be told their card was refused for it.
    async fn answer(sent: Result<reqwest::Response, reqwest::Error>) -> Result<Value, Refusal> {
        let response = sent.map_err(|e| Refusal::Unavailable(format!("stripe: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| Refusal::Unavailable(format!("stripe answered no JSON: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let error = body.get("error").cloned().unwrap_or_default();
        let code = ["decline_code", "code", "type"]
            .iter()
            .find_map(|field| error.get(*field).and_then(Value::as_str))
            .unwrap_or("unknown")
            .to_owned();
        match status.as_u16() {
            401 | 403 => {
                tracing::error!(%status, %code, "stripe refused our credentials");
                Err(Refusal::Unavailable(format!("stripe {status}: {code}")))
            }
            409 | 429 => Err(Refusal::Unavailable(format!("stripe {status}: {code}"))),
            400..=499 => Err(Refusal::Declined(code)),
            _ => Err(Refusal::Unavailable(format!("stripe {status}: {code}"))),
        }
    }

    /// Confirms a PaymentIntent for `order` with manual capture. Asked again with the same
    /// parameters, Stripe answers the intent it made the first time (its keys last 24 hours).
    async fn create_intent(
        &self,
        order: &OrderId,
        amount: Money,
        payment_method: &str,
    ) -> Result<Intent, Refusal> {
        let form = [
            ("amount", amount.amount_minor.to_string()),
            ("currency", amount.currency.as_str().to_ascii_lowercase()),
            ("payment_method", payment_method.to_owned()),
            ("payment_method_types[]", "card".to_owned()),
            ("capture_method", "manual".to_owned()),
            ("confirm", "true".to_owned()),
            ("metadata[order_id]", order.to_string()),
        ];
        let intent: Intent = parse(
            self.post("/v1/payment_intents", &format!("{order}:authorize"), &form)
                .await?,
        )?;
        match intent.status.as_str() {
            "requires_capture" | "succeeded" | "canceled" => Ok(intent),
            // A card that wants the customer present (3-D Secure) cannot be charged here.
            other => Err(Refusal::Declined(format!("intent_{other}"))),
        }
    }

    /// The intent as an authorization: only one that holds or took the money is.
    fn holds(intent: Intent) -> Result<Intent, Refusal> {
        match intent.status.as_str() {
            "requires_capture" | "succeeded" => Ok(intent),
            other => Err(Refusal::Declined(format!("intent_{other}"))),
        }
    }

    async fn load(&self, order: &OrderId) -> Result<(Record, u64), StoreError> {
        match self.table.get(&record_pk(order), "head").await? {
            Some(item) => Ok((
                serde_json::from_slice(&item.data)
                    .map_err(|e| StoreError::Failure(format!("corrupt payment record: {e}")))?,
                item.version,
            )),
            None => Ok((Record::default(), 0)),
        }
    }

    /// Writes the record if it is still at `version`; `false` when it moved.
    async fn save(
        &self,
        order: &OrderId,
        record: &Record,
        version: u64,
    ) -> Result<bool, StoreError> {
        let item = Item {
            pk: record_pk(order),
            sk: "head".into(),
            version: version + 1,
            data: serde_json::to_vec(record)
                .map_err(|e| StoreError::Failure(format!("cannot encode: {e}")))?,
            expires_at: None,
            owner: None,
            index: None,
        };
        let condition = match version {
            0 => Condition::Absent,
            v => Condition::VersionIs(v),
        };
        match self
            .table
            .transact(vec![Write::Put { item, condition }])
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Applies `change` to the order's record until it sticks; `change` answers `None` to
    /// leave the record as it is.
    async fn update(
        &self,
        order: &OrderId,
        change: impl Fn(&Record) -> Option<Record>,
    ) -> Result<Record, PaymentError> {
        for _ in 0..RECORD_TRIES {
            let (record, version) = self.load(order).await.map_err(unrecorded)?;
            let Some(next) = change(&record) else {
                return Ok(record);
            };
            if self.save(order, &next, version).await.map_err(unrecorded)? {
                return Ok(next);
            }
        }
        Err(PaymentError::Unavailable(
            "payment record kept changing".into(),
        ))
    }
}

impl<T: Table> PaymentGateway for StripePayments<T> {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        // First the record, so a void that comes at any point after knows what to cancel.
        let record = self
            .update(order, |r| {
                (r.amount.is_none() && !r.voided).then(|| Record {
                    amount: Some(amount),
                    payment_method: Some(token.to_owned()),
                    ..r.clone()
                })
            })
            .await?;
        if record.voided {
            return Err(PaymentError::Declined("order_voided".into()));
        }
        let (Some(asked), Some(method)) = (record.amount, record.payment_method.clone()) else {
            return Err(PaymentError::Unavailable(
                "payment record lost its amount".into(),
            ));
        };
        if let Some(intent) = &record.intent {
            return Ok(PaymentAuthorization {
                id: intent.clone(),
                amount: asked,
            });
        }
        let intent = Self::holds(self.create_intent(order, asked, &method).await?)?;
        let recorded = self
            .update(order, |r| {
                (r.intent.is_none() && !r.voided).then(|| Record {
                    intent: Some(intent.id.clone()),
                    ..r.clone()
                })
            })
            .await?;
        if recorded.voided {
            // The void replays this request and cancels what it made.
            return Err(PaymentError::Declined("order_voided".into()));
        }
        Ok(PaymentAuthorization {
            id: intent.id,
            amount: asked,
        })
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        let record = self
            .update(order, |r| {
                (!r.voided).then(|| Record {
                    voided: true,
                    // Never asked of Stripe: authorize writes its record before asking.
                    cancelled: r.amount.is_none(),
                    ..r.clone()
                })
            })
            .await?;
        if record.cancelled {
            return Ok(());
        }
        let intent = match (&record.intent, record.amount, &record.payment_method) {
            (Some(intent), _, _) => intent.clone(),
            (None, Some(amount), Some(method)) => {
                match self.create_intent(order, amount, method).await {
                    Ok(intent) => intent.id,
                    // Stripe holds nothing for a refused authorization.
                    Err(Refusal::Declined(_)) => {
                        self.mark_cancelled(order).await?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {
                return Err(PaymentError::Unavailable(
                    "payment record lost its amount".into(),
                ));
            }
        };
        let cancelled = self
            .post(
                &format!("/v1/payment_intents/{intent}/cancel"),
                &format!("{order}:void"),
                &[],
            )
            .await;
        match cancelled {
            Ok(_) => {}
            Err(Refusal::Declined(code)) if code == "payment_intent_unexpected_state" => {
                let current: Intent =
                    parse(self.get(&format!("/v1/payment_intents/{intent}")).await?)?;
                match current.status.as_str() {
                    "canceled" => {}
                    "succeeded" => return Err(PaymentError::Declined("already_captured".into())),
                    _ => return Err(PaymentError::Declined(code)),
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.mark_cancelled(order).await
    }

    async fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        let captured = self
            .post(
                &format!("/v1/payment_intents/{}/capture", authorization.id),
                key,
                &[
                    ("amount_to_capture", amount.amount_minor.to_string()),
                    ("metadata[commerce_capture_key]", key.to_owned()),
                ],
            )
            .await;
        let intent: Intent = match captured {
            Ok(answer) => parse(answer)?,
            // Captured already: by this very capture (asked again after Stripe forgot its
            // key, 24 hours on) if the intent carries its key; else by another, refused.
            Err(Refusal::Declined(code)) if code == "payment_intent_unexpected_state" => {
                let current: Intent = parse(
                    self.get(&format!("/v1/payment_intents/{}", authorization.id))
                        .await?,
                )?;
                let ours = current
                    .metadata
                    .get("commerce_capture_key")
                    .map(String::as_str)
                    == Some(key);
                if current.status != "succeeded" || !ours {
                    return Err(PaymentError::Declined(code));
                }
                current
            }
            Err(e) => return Err(e.into()),
        };
        if intent.status != "succeeded" {
            return Err(PaymentError::Declined(format!("intent_{}", intent.status)));
        }
        Ok(PaymentReceipt {
            id: intent.latest_charge.unwrap_or(intent.id),
            amount: Money::new(intent.amount_received, amount.currency)
                .map_err(|e| PaymentError::Unavailable(e.to_string()))?,
        })
    }

    async fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        // Stripe forgets idempotency keys after 24 hours; a refund retried later (an order
        // that needed attention for a while) finds the one made under its key instead.
        let refund = match self.refund_made(authorization, key).await? {
            Some(refund) => refund,
            None => parse::<Refund>(
                self.post(
                    "/v1/refunds",
                    key,
                    &[
                        ("payment_intent", authorization.id.clone()),
                        ("amount", amount.amount_minor.to_string()),
                        ("metadata[commerce_key]", key.to_owned()),
                    ],
                )
                .await?,
            )?,
        };
        match refund.status.as_str() {
            "failed" | "canceled" => {
                Err(PaymentError::Declined(format!("refund_{}", refund.status)))
            }
            _ => Ok(PaymentReceipt {
                id: refund.id,
                amount: Money::new(refund.amount, amount.currency)
                    .map_err(|e| PaymentError::Unavailable(e.to_string()))?,
            }),
        }
    }
}

impl<T: Table> StripePayments<T> {
    /// The refund of the intent made under `key`, if there is one.
    async fn refund_made(
        &self,
        authorization: &PaymentAuthorization,
        key: &str,
    ) -> Result<Option<Refund>, PaymentError> {
        let listed: RefundList = parse(
            self.get(&format!(
                "/v1/refunds?payment_intent={}&limit=100",
                authorization.id
            ))
            .await?,
        )?;
        Ok(listed
            .data
            .into_iter()
            .find(|r| r.metadata.get("commerce_key").map(String::as_str) == Some(key)))
    }

    async fn mark_cancelled(&self, order: &OrderId) -> Result<(), PaymentError> {
        self.update(order, |r| {
            (!r.cancelled).then(|| Record {
                cancelled: true,
                ..r.clone()
            })
        })
        .await?;
        Ok(())
    }
}

fn record_pk(order: &OrderId) -> String {
    format!("payments#stripe#{order}")
}

fn parse<V: serde::de::DeserializeOwned>(value: Value) -> Result<V, Refusal> {
    serde_json::from_value(value)
        .map_err(|e| Refusal::Unavailable(format!("unexpected answer from stripe: {e}")))
}

/// The payment provider a deployment runs with: Stripe when it is given a secret key, the
/// sandbox otherwise (local runs, tests, demos).
#[derive(Debug)]
pub enum Provider<T> {
    /// Its ledger in the table, so every process sees the same payments.
    Sandbox(commerce_app::SandboxPayments<commerce_app::payments::TableLedger<T>>),
    Stripe(StripePayments<T>),
}

impl<T: Table> Provider<T> {
    /// Stripe with `secret_key` at `base_url` (default `https://api.stripe.com`), or the
    /// sandbox without a key.
    pub fn choose(
        secret_key: Option<String>,
        base_url: Option<String>,
        table: T,
    ) -> Result<Self, PaymentError> {
        match secret_key.filter(|k| !k.is_empty()) {
            None => Ok(Self::Sandbox(commerce_app::SandboxPayments::in_table(
                table,
            ))),
            Some(secret_key) => Ok(Self::Stripe(StripePayments::new(
                StripeConfig {
                    base_url: base_url.unwrap_or_else(|| "https://api.stripe.com".into()),
                    secret_key,
                    timeout: Duration::from_secs(10),
                },
                table,
            )?)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sandbox(_) => "sandbox",
            Self::Stripe(_) => "stripe",
        }
    }
}

impl<T: Table> PaymentGateway for Provider<T> {
    async fn authorize(
        &self,
        order: &OrderId,
        amount: Money,
        token: &str,
    ) -> Result<PaymentAuthorization, PaymentError> {
        match self {
            Self::Sandbox(p) => p.authorize(order, amount, token).await,
            Self::Stripe(p) => p.authorize(order, amount, token).await,
        }
    }

    async fn void(&self, order: &OrderId) -> Result<(), PaymentError> {
        match self {
            Self::Sandbox(p) => p.void(order).await,
            Self::Stripe(p) => p.void(order).await,
        }
    }

    async fn capture(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        match self {
            Self::Sandbox(p) => p.capture(authorization, amount, key).await,
            Self::Stripe(p) => p.capture(authorization, amount, key).await,
        }
    }

    async fn refund(
        &self,
        authorization: &PaymentAuthorization,
        amount: Money,
        key: &str,
    ) -> Result<PaymentReceipt, PaymentError> {
        match self {
            Self::Sandbox(p) => p.refund(authorization, amount, key).await,
            Self::Stripe(p) => p.refund(authorization, amount, key).await,
        }
    }
}
