use serde::{Deserialize, Serialize};

use crate::{
    Aggregate, CustomerId, DomainError, Line, Money, OrderId, Quantity, ReservationId, Sku,
};

/// Where an order is in its life. `Cancelling` is the saga's in-between state: stock and payment
/// are being given back. `NeedsAttention` is where a cancellation that failed for good stops,
/// for someone to look at; a new cancellation request tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderStatus {
    Placed,
    Paid,
    Cancelling,
    Cancelled,
    PartiallyCancelled,
    NeedsAttention,
    Shipped,
    Delivered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
}

/// The payment provider's hold on the customer's funds for this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorization {
    pub id: String,
    pub amount: Money,
}

/// A step of a cancellation that failed for good, as the saga reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepFailure {
    pub error: String,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    OrderPlaced {
        id: OrderId,
        customer: CustomerId,
        reservation: ReservationId,
        lines: Vec<OrderLine>,
        total: Money,
        payment: PaymentAuthorization,
        /// Unix milliseconds.
        placed_at: i64,
    },
    /// A capture of `amount` is being asked of the provider. Until it is recorded (or
    /// refused), the money may be taken: a cancellation finishes the capture before it refunds.
    PaymentCaptureRequested {
        amount: Money,
    },
    PaymentCaptured {
        amount: Money,
        capture: String,
    },
    /// The provider refused the capture: nothing was taken.
    PaymentCaptureRefused {
        reason: String,
    },
    /// A cancellation was asked for: `lines` are the units it adds to what is cancelled (none
    /// when it retries one that needed attention), worth `amount`. The saga starts from this.
    OrderCancellationRequested {
        attempt: u32,
        reason: String,
        lines: Vec<Line>,
        amount: Money,
        /// Unix milliseconds.
        requested_at: i64,
    },
    /// The cancelled units went back to stock.
    CancellationStockReleased {
        attempt: u32,
        lines: Vec<Line>,
    },
    /// `amount` of the authorization will not be captured. `whole`: the provider let go of
    /// the authorization; otherwise the amount is left out when the rest is captured.
    PaymentVoided {
        attempt: u32,
        amount: Money,
        whole: bool,
    },
    PaymentRefunded {
        attempt: u32,
        amount: Money,
        refund: String,
    },
    OrderCancelled {
        attempt: u32,
    },
    OrderPartiallyCancelled {
        attempt: u32,
    },
    CancellationNeedsAttention {
        attempt: u32,
        failure: StepFailure,
    },
    OrderShipped,
    OrderDelivered,
}

/// What an order is placed with: held stock, priced lines and the payment that covers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub id: OrderId,
    pub customer: CustomerId,
    pub reservation: ReservationId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub payment: PaymentAuthorization,
    /// Unix milliseconds.
    pub placed_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub placed: Option<PlacedOrder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub id: OrderId,
    pub customer: CustomerId,
    pub reservation: ReservationId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub payment: PaymentAuthorization,
    pub placed_at: i64,
    pub status: OrderStatus,
    /// Money moved since the authorization, in the order's currency's minor units.
    #[serde(default)]
    pub settled: Settled,
    /// Units asked to be cancelled, per SKU, over every cancellation.
    #[serde(default)]
    pub to_cancel: Vec<Line>,
    /// Units given back to stock, per SKU.
    #[serde(default)]
    pub released: Vec<Line>,
    /// The latest cancellation.
    #[serde(default)]
    pub cancellation: Option<Cancellation>,
}

/// Money moved after the authorization, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub captured: i64,
    pub voided: i64,
    pub refunded: i64,
    /// Refunds made so far; the next one's idempotency key counts from it.
    pub refunds: u32,
    /// A capture asked of the provider and not recorded yet, for this amount.
    #[serde(default)]
    pub capturing: Option<Money>,
}

/// The latest cancellation of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub attempt: u32,
    pub reason: String,
    /// The units this request added.
    pub lines: Vec<Line>,
    pub amount: Money,
    pub requested_at: i64,
    /// Set when it needed attention; cleared by the next attempt.
    pub failure: Option<StepFailure>,
}

/// What giving the money back for a cancellation takes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Nothing is owed.
    Settled,
    /// Nothing was captured and everything is cancelled: the provider lets go of the
    /// authorization.
    VoidAuthorization { amount: Money },
    /// Nothing was captured and some lines stay: the amount is left out of the capture.
    LeaveUncaptured { amount: Money },
    /// Give back part of what was captured; `number` keys the refund at the provider.
    Refund { amount: Money, number: u32 },
    /// A capture was asked of the provider and its outcome is not recorded: ask again (the
    /// same capture, under its key) and record what was taken first.
    FinishCapture { amount: Money },
}

/// Longest reason a cancellation may give.
pub const MAX_REASON_CHARS: usize = 500;

/// A cancellation still running this long after it was asked for has outlived its saga
/// (whose executions stop after 24 hours): asking again retries it.
pub const STALLED_AFTER_MS: i64 = 25 * 3600 * 1000;

impl Order {
    /// Prices a basket from catalog prices (never the client's), all in one currency.
    /// `unit_prices` holds the catalog price of each line's SKU, in line order.
    pub fn price(
        lines: &[Line],
        unit_prices: &[Money],
    ) -> Result<(Vec<OrderLine>, Money), DomainError> {
        Line::check_all(lines)?;
        if unit_prices.len() != lines.len() {
            return Err(DomainError::invalid(
                "lines",
                "every line needs a catalog price",
            ));
        }
        let mut priced = Vec::with_capacity(lines.len());
        let mut total: Option<Money> = None;
        for (line, &unit_price) in lines.iter().zip(unit_prices) {
            let line_total = unit_price.checked_mul(line.quantity.get())?;
            total = Some(match total {
                None => line_total,
                Some(sum) => sum.checked_add(line_total)?,
            });
            priced.push(OrderLine {
                sku: line.sku.clone(),
                quantity: line.quantity.get(),
                unit_price,
                line_total,
            });
        }
        let total = total.ok_or_else(|| DomainError::invalid("lines", "must not be empty"))?;
        Ok((priced, total))
    }

    pub fn place(&self, new: NewOrder) -> Result<Vec<OrderEvent>, DomainError> {
        let NewOrder {
            id,
            customer,
            reservation,
            lines,
            total,
            payment,
            placed_at,
        } = new;
        if self.placed.is_some() {
            return Err(DomainError::AlreadyExists { what: "order" });
        }
        payment.amount.same_currency(total.currency)?;
        if payment.amount != total {
            return Err(DomainError::invalid(
                "payment",
                "authorized amount differs from the order total",
            ));
        }
        Ok(vec![OrderEvent::OrderPlaced {
            id,
            customer,
            reservation,
            lines,
            total,
            payment,
            placed_at,
        }])
    }

    /// Starts capturing the payment: everything authorized but what cancellations left out.
    /// Once per order, before it ships, not while a cancellation runs. A capture already
    /// asked for and not recorded is the one to finish, whatever happened since: its amount,
    /// and no new event.
    pub fn request_capture(&self) -> Result<(Money, Vec<OrderEvent>), DomainError> {
        let order = self.placed_order()?;
        if order.settled.captured > 0 {
            return Err(DomainError::OrderTransition {
                action: "capture payment again for",
                status: order.status,
            });
        }
        if let Some(amount) = order.settled.capturing {
            return Ok((amount, Vec::new()));
        }
        self.transition(
            "capture payment for",
            &[OrderStatus::Placed, OrderStatus::PartiallyCancelled],
        )?;
        let amount = Money::new(
            order.payment.amount.amount_minor - order.settled.voided,
            order.total.currency,
        )?;
        Ok((amount, vec![OrderEvent::PaymentCaptureRequested { amount }]))
    }

    /// Records a capture the provider made, whatever happened to the order since it was asked
    /// for (a cancellation may have started meanwhile): money taken is a fact to refund, never
    /// to lose. Recorded already: no event.
    pub fn record_capture(
        &self,
        amount: Money,
        capture: String,
    ) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.placed_order()?;
        if order.settled.captured > 0 {
            return Ok(Vec::new());
        }
        amount.same_currency(order.total.currency)?;
        Ok(vec![OrderEvent::PaymentCaptured { amount, capture }])
    }

    /// Records that the provider refused the capture asked for. None pending: no event.
    pub fn refuse_capture(&self, reason: String) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.placed_order()?;
        if order.settled.capturing.is_none() || order.settled.captured > 0 {
            return Ok(Vec::new());
        }
        Ok(vec![OrderEvent::PaymentCaptureRefused { reason }])
    }

    /// What a capture asked for before anything was voided would have taken: what a capture
    /// the provider made (and we did not record) holds.
    pub fn uncaptured_amount(&self) -> Result<Money, DomainError> {
        let order = self.placed_order()?;
        if let Some(asked) = order.settled.capturing {
            return Ok(asked);
        }
        Money::new(
            order.payment.amount.amount_minor - order.settled.voided,
            order.total.currency,
        )
    }

    /// Asks to cancel `lines` (all that is left when `None`). Every request is a new
    /// cancellation, which waits for a running one to end (409), with one exception: asking for
    /// everything when the running or finished cancellation took everything changes nothing.
    /// After one needed attention, or ran far past the saga's time limit, asking again without
    /// lines retries what is left.
    pub fn request_cancellation(
        &self,
        reason: &str,
        lines: Option<&[Line]>,
        now_ms: i64,
    ) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.placed_order()?;
        if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(DomainError::invalid(
                "reason",
                format!("must be 1 to {MAX_REASON_CHARS} characters"),
            ));
        }
        if let Some(lines) = lines {
            Line::check_all(lines)?;
        }
        let attempt = order.cancellation.as_ref().map_or(0, |c| c.attempt) + 1;
        match order.status {
            OrderStatus::Shipped | OrderStatus::Delivered => Err(DomainError::OrderShipped),
            OrderStatus::Cancelling
                if lines.is_none()
                    && order.cancellation.as_ref().is_some_and(|c| {
                        now_ms.saturating_sub(c.requested_at) > STALLED_AFTER_MS
                    }) =>
            {
                Ok(vec![OrderEvent::OrderCancellationRequested {
                    attempt,
                    reason: reason.to_owned(),
                    lines: Vec::new(),
                    amount: Money::zero(order.total.currency),
                    requested_at: now_ms,
                }])
            }
            OrderStatus::Cancelling | OrderStatus::Cancelled
                if lines.is_none() && order.remaining().is_empty() =>
            {
                Ok(Vec::new())
            }
            OrderStatus::Cancelling => Err(DomainError::CancellationInProgress),
            OrderStatus::Cancelled => Err(DomainError::NothingToCancel),
            OrderStatus::NeedsAttention => match lines {
                Some(_) => Err(DomainError::CancellationInProgress),
                None => Ok(vec![OrderEvent::OrderCancellationRequested {
                    attempt,
                    reason: reason.to_owned(),
                    lines: Vec::new(),
                    amount: Money::zero(order.total.currency),
                    requested_at: now_ms,
                }]),
            },
            OrderStatus::Placed | OrderStatus::Paid | OrderStatus::PartiallyCancelled => {
                let wanted = match lines {
                    None => order.remaining(),
                    Some(lines) => {
                        for line in lines {
                            let left = quantity_of(&order.remaining(), &line.sku);
                            if !order.lines.iter().any(|l| l.sku == line.sku) {
                                return Err(DomainError::invalid(
                                    "lines",
                                    format!("{} is not in this order", line.sku),
                                ));
                            }
                            if line.quantity.get() > left {
                                return Err(DomainError::invalid(
                                    "lines",
                                    format!("only {left} of {} are left to cancel", line.sku),
                                ));
                            }
                        }
                        lines.to_vec()
                    }
                };
                if wanted.is_empty() {
                    return Err(DomainError::NothingToCancel);
                }
                let amount = order.value_of(&wanted)?;
                Ok(vec![OrderEvent::OrderCancellationRequested {
                    attempt,
                    reason: reason.to_owned(),
                    lines: wanted,
                    amount,
                    requested_at: now_ms,
                }])
            }
        }
    }

    /// Gives back to stock what is cancelled and not yet given back. Nothing left: no event.
    pub fn release_stock(&self, attempt: u32) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.current(attempt)?;
        let lines = order.unreleased();
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        order.running("release stock for")?;
        Ok(vec![OrderEvent::CancellationStockReleased {
            attempt,
            lines,
        }])
    }

    /// What is owed to the customer for the cancellation `attempt`, and how it goes back.
    pub fn settlement(&self, attempt: u32) -> Result<Settlement, DomainError> {
        let order = self.current(attempt)?;
        let currency = order.total.currency;
        let owed = order.owed()?;
        if owed <= 0 {
            return Ok(Settlement::Settled);
        }
        order.running("settle payment for")?;
        let settled = order.settled;
        // A capture under way, with lines left, is finished and the cancelled part refunded.
        // With nothing left, the void goes first: a capture that never reached the provider
        // is then released rather than taken and refunded (a void refused as captured
        // already finishes the capture instead).
        if let (0, Some(amount)) = (settled.captured, settled.capturing)
            && !order.remaining().is_empty()
        {
            return Ok(Settlement::FinishCapture { amount });
        }
        if settled.captured == 0 {
            return Ok(if order.remaining().is_empty() {
                Settlement::VoidAuthorization {
                    amount: Money::new(
                        order.payment.amount.amount_minor - settled.voided,
                        currency,
                    )?,
                }
            } else {
                Settlement::LeaveUncaptured {
                    amount: Money::new(owed, currency)?,
                }
            });
        }
        let refundable = settled.captured - settled.refunded;
        match owed.min(refundable) {
            amount if amount > 0 => Ok(Settlement::Refund {
                amount: Money::new(amount, currency)?,
                number: settled.refunds + 1,
            }),
            _ => Ok(Settlement::Settled),
        }
    }

    /// Records what `settlement` did at the provider (`receipt`: the refund's id).
    pub fn settle(
        &self,
        attempt: u32,
        settlement: &Settlement,
        receipt: Option<String>,
    ) -> Result<Vec<OrderEvent>, DomainError> {
        if self.settlement(attempt)? != *settlement {
            return Err(DomainError::invalid(
                "settlement",
                "the order changed since it was worked out",
            ));
        }
        Ok(match settlement {
            Settlement::Settled => Vec::new(),
            Settlement::VoidAuthorization { amount } => vec![OrderEvent::PaymentVoided {
                attempt,
                amount: *amount,
                whole: true,
            }],
            Settlement::LeaveUncaptured { amount } => vec![OrderEvent::PaymentVoided {
                attempt,
                amount: *amount,
                whole: false,
            }],
            Settlement::Refund { amount, .. } => vec![OrderEvent::PaymentRefunded {
                attempt,
                amount: *amount,
                refund: receipt.unwrap_or_default(),
            }],
            Settlement::FinishCapture { .. } => {
                return Err(DomainError::invalid(
                    "settlement",
                    "a capture is recorded with record_capture or refuse_capture",
                ));
            }
        })
    }

    /// Marks the cancellation done once its stock and money are back. Done already: no event.
    pub fn complete_cancellation(&self, attempt: u32) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.current(attempt)?;
        if matches!(
            order.status,
            OrderStatus::Cancelled | OrderStatus::PartiallyCancelled
        ) {
            return Ok(Vec::new());
        }
        order.running("complete cancellation of")?;
        if !order.unreleased().is_empty() || order.owed()? > 0 {
            return Err(DomainError::CancellationUnfinished);
        }
        Ok(vec![if order.remaining().is_empty() {
            OrderEvent::OrderCancelled { attempt }
        } else {
            OrderEvent::OrderPartiallyCancelled { attempt }
        }])
    }

    /// Records that the cancellation failed for good. Recorded already: no event.
    pub fn flag_cancellation(
        &self,
        attempt: u32,
        failure: StepFailure,
    ) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.current(attempt)?;
        if order.status == OrderStatus::NeedsAttention {
            return Ok(Vec::new());
        }
        order.running("flag cancellation of")?;
        Ok(vec![OrderEvent::CancellationNeedsAttention {
            attempt,
            failure,
        }])
    }

    pub fn ship(&self) -> Result<Vec<OrderEvent>, DomainError> {
        let order = self.transition(
            "ship",
            &[OrderStatus::Paid, OrderStatus::PartiallyCancelled],
        )?;
        if order.settled.captured == 0 {
            return Err(DomainError::OrderTransition {
                action: "ship unpaid",
                status: order.status,
            });
        }
        Ok(vec![OrderEvent::OrderShipped])
    }

    pub fn deliver(&self) -> Result<Vec<OrderEvent>, DomainError> {
        self.transition("deliver", &[OrderStatus::Shipped])?;
        Ok(vec![OrderEvent::OrderDelivered])
    }

    fn placed_order(&self) -> Result<&PlacedOrder, DomainError> {
        self.placed
            .as_ref()
            .ok_or_else(|| DomainError::invalid("order", "does not exist"))
    }

    /// The order, if `attempt` is its latest cancellation.
    fn current(&self, attempt: u32) -> Result<&PlacedOrder, DomainError> {
        let order = self.placed_order()?;
        match &order.cancellation {
            Some(c) if c.attempt == attempt => Ok(order),
            latest => Err(DomainError::StaleCancellation {
                attempt,
                latest: latest.as_ref().map_or(0, |c| c.attempt),
            }),
        }
    }

    fn transition(
        &self,
        action: &'static str,
        from: &[OrderStatus],
    ) -> Result<&PlacedOrder, DomainError> {
        let order = self.placed_order()?;
        if from.contains(&order.status) {
            Ok(order)
        } else {
            Err(DomainError::OrderTransition {
                action,
                status: order.status,
            })
        }
    }
}

impl PlacedOrder {
    /// Units not cancelled, per SKU, in line order.
    pub fn remaining(&self) -> Vec<Line> {
        self.lines
            .iter()
            .filter_map(|line| {
                let left = line
                    .quantity
                    .saturating_sub(quantity_of(&self.to_cancel, &line.sku));
                Quantity::new(left).ok().map(|quantity| Line {
                    sku: line.sku.clone(),
                    quantity,
                })
            })
            .collect()
    }

    /// Cancelled units not yet back in stock.
    pub fn unreleased(&self) -> Vec<Line> {
        self.to_cancel
            .iter()
            .filter_map(|line| {
                let left = line
                    .quantity
                    .get()
                    .saturating_sub(quantity_of(&self.released, &line.sku));
                Quantity::new(left).ok().map(|quantity| Line {
                    sku: line.sku.clone(),
                    quantity,
                })
            })
            .collect()
    }

    /// Minor units still to give back for what is cancelled.
    pub fn owed(&self) -> Result<i64, DomainError> {
        let due = self.value_of(&self.to_cancel)?.amount_minor;
        Ok(due - self.settled.voided - self.settled.refunded)
    }

    /// What `lines` are worth at this order's prices.
    fn value_of(&self, lines: &[Line]) -> Result<Money, DomainError> {
        let mut sum = Money::zero(self.total.currency);
        for line in lines {
            let priced = self
                .lines
                .iter()
                .find(|l| l.sku == line.sku)
                .ok_or_else(|| {
                    DomainError::invalid("lines", format!("{} is not in this order", line.sku))
                })?;
            sum = sum.checked_add(priced.unit_price.checked_mul(line.quantity.get())?)?;
        }
        Ok(sum)
    }

    fn running(&self, action: &'static str) -> Result<(), DomainError> {
        if self.status == OrderStatus::Cancelling {
            Ok(())
        } else {
            Err(DomainError::OrderTransition {
                action,
                status: self.status,
            })
        }
    }
}

/// Units of `sku` in `lines`.
fn quantity_of(lines: &[Line], sku: &Sku) -> u32 {
    lines
        .iter()
        .filter(|l| &l.sku == sku)
        .map(|l| l.quantity.get())
        .sum()
}

/// Adds `more` to `lines`, SKU by SKU.
fn add_lines(lines: &mut Vec<Line>, more: &[Line]) {
    for line in more {
        match lines.iter_mut().find(|l| l.sku == line.sku) {
            Some(existing) => {
                existing.quantity =
                    Quantity::new(existing.quantity.get().saturating_add(line.quantity.get()))
                        .unwrap_or(existing.quantity);
            }
            None => lines.push(line.clone()),
        }
    }
}

impl Aggregate for Order {
    type Event = OrderEvent;

    fn apply(&mut self, event: &OrderEvent) {
        if let OrderEvent::OrderPlaced {
            id,
            customer,
            reservation,
            lines,
            total,
            payment,
            placed_at,
        } = event
        {
            self.placed = Some(PlacedOrder {
                id: id.clone(),
                customer: customer.clone(),
                reservation: reservation.clone(),
                lines: lines.clone(),
                total: *total,
                payment: payment.clone(),
                placed_at: *placed_at,
                status: OrderStatus::Placed,
                settled: Settled::default(),
                to_cancel: Vec::new(),
                released: Vec::new(),
                cancellation: None,
            });
            return;
        }
        let Some(order) = self.placed.as_mut() else {
            return;
        };
        match event {
            OrderEvent::OrderPlaced { .. } => {}
            OrderEvent::PaymentCaptureRequested { amount } => {
                order.settled.capturing = Some(*amount);
            }
            OrderEvent::PaymentCaptureRefused { .. } => order.settled.capturing = None,
            OrderEvent::PaymentCaptured { amount, .. } => {
                order.settled.capturing = None;
                order.settled.captured += amount.amount_minor;
                if order.status == OrderStatus::Placed {
                    order.status = OrderStatus::Paid;
                }
            }
            OrderEvent::OrderCancellationRequested {
                attempt,
                reason,
                lines,
                amount,
                requested_at,
            } => {
                add_lines(&mut order.to_cancel, lines);
                order.cancellation = Some(Cancellation {
                    attempt: *attempt,
                    reason: reason.clone(),
                    lines: lines.clone(),
                    amount: *amount,
                    requested_at: *requested_at,
                    failure: None,
                });
                order.status = OrderStatus::Cancelling;
            }
            OrderEvent::CancellationStockReleased { lines, .. } => {
                add_lines(&mut order.released, lines);
            }
            OrderEvent::PaymentVoided { amount, .. } => {
                order.settled.voided += amount.amount_minor;
            }
            OrderEvent::PaymentRefunded { amount, .. } => {
                order.settled.refunded += amount.amount_minor;
                order.settled.refunds += 1;
            }
            OrderEvent::OrderCancelled { .. } => order.status = OrderStatus::Cancelled,
            OrderEvent::OrderPartiallyCancelled { .. } => {
                order.status = OrderStatus::PartiallyCancelled;
            }
            OrderEvent::CancellationNeedsAttention { failure, .. } => {
                order.status = OrderStatus::NeedsAttention;
                if let Some(c) = order.cancellation.as_mut() {
                    c.failure = Some(failure.clone());
                }
            }
            OrderEvent::OrderShipped => order.status = OrderStatus::Shipped,
            OrderEvent::OrderDelivered => order.status = OrderStatus::Delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Currency, Quantity};

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
    }

    fn line(sku: &str, q: u32) -> Line {
        Line {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::new(q).unwrap(),
        }
    }

    fn new_order(id: &str, lines: Vec<OrderLine>, total: Money, authorized: Money) -> NewOrder {
        NewOrder {
            id: OrderId::parse(id).unwrap(),
            customer: CustomerId::parse("alice").unwrap(),
            reservation: ReservationId::parse("r1").unwrap(),
            lines,
            total,
            payment: PaymentAuthorization {
                id: format!("auth_{id}"),
                amount: authorized,
            },
            placed_at: 0,
        }
    }

    /// Two mugs at 5.00 and a cap at 12.50.
    fn placed() -> Order {
        let (lines, total) =
            Order::price(&[line("MUG", 2), line("CAP", 1)], &[eur(500), eur(1250)]).unwrap();
        let mut order = Order::default();
        let events = order.place(new_order("o1", lines, total, total)).unwrap();
        order.apply_all(events);
        order
    }

    fn status(order: &Order) -> OrderStatus {
        order.placed.as_ref().unwrap().status
    }

    fn settled(order: &Order) -> Settled {
        order.placed.as_ref().unwrap().settled
    }

    fn capture(order: &mut Order) {
        let (amount, asked) = order.request_capture().unwrap();
        order.apply_all(asked);
        order.apply_all(order.record_capture(amount, "cap_1".into()).unwrap());
    }

    /// Runs the saga's steps for `attempt` the way the state machine does.
    fn run_saga(order: &mut Order, attempt: u32) {
        order.apply_all(order.release_stock(attempt).unwrap());
        let settlement = order.settlement(attempt).unwrap();
        let receipt = matches!(settlement, Settlement::Refund { .. }).then(|| "re_1".to_owned());
        order.apply_all(order.settle(attempt, &settlement, receipt).unwrap());
        order.apply_all(order.complete_cancellation(attempt).unwrap());
    }

    #[test]
    fn totals_come_from_catalog_prices() {
        let (lines, total) =
            Order::price(&[line("MUG", 2), line("CAP", 1)], &[eur(500), eur(1250)]).unwrap();
        assert_eq!(lines[0].line_total, eur(1000));
        assert_eq!(total, eur(2250));
    }

    #[test]
    fn a_basket_in_two_currencies_is_refused() {
        let usd = Money::new(100, Currency::parse("USD").unwrap()).unwrap();
        let result = Order::price(&[line("MUG", 1), line("CAP", 1)], &[eur(100), usd]);
        assert!(matches!(result, Err(DomainError::CurrencyMismatch { .. })));
    }

    #[test]
    fn lifecycle_follows_the_allowed_transitions() {
        let mut order = placed();
        assert!(order.ship().is_err(), "unpaid orders do not ship");
        capture(&mut order);
        assert!(order.request_capture().is_err(), "captured once");
        order.apply_all(order.ship().unwrap());
        assert_eq!(
            order.request_cancellation("late", None, 1),
            Err(DomainError::OrderShipped)
        );
        order.apply_all(order.deliver().unwrap());
        assert_eq!(status(&order), OrderStatus::Delivered);
    }

    #[test]
    fn an_order_is_placed_once_and_for_its_total() {
        let order = placed();
        let again = order.place(new_order("o1", vec![], eur(1), eur(1)));
        assert_eq!(again, Err(DomainError::AlreadyExists { what: "order" }));
        let short = Order::default().place(new_order("o2", vec![], eur(100), eur(99)));
        assert!(short.is_err());
    }

    #[test]
    fn cancelling_an_uncaptured_order_voids_the_whole_authorization() {
        let mut order = placed();
        order.apply_all(order.request_cancellation("changed mind", None, 5).unwrap());
        assert_eq!(status(&order), OrderStatus::Cancelling);
        assert!(
            order.request_capture().is_err(),
            "no capture while cancelling"
        );
        assert_eq!(
            order.complete_cancellation(1),
            Err(DomainError::CancellationUnfinished)
        );
        let released = order.release_stock(1).unwrap();
        assert_eq!(
            released,
            vec![OrderEvent::CancellationStockReleased {
                attempt: 1,
                lines: vec![line("MUG", 2), line("CAP", 1)]
            }]
        );
        order.apply_all(released);
        assert_eq!(order.release_stock(1).unwrap(), vec![], "released once");
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::VoidAuthorization { amount: eur(2250) }
        );
        run_saga(&mut order, 1);
        assert_eq!(status(&order), OrderStatus::Cancelled);
        assert_eq!(settled(&order).voided, 2250);
        assert_eq!(order.complete_cancellation(1).unwrap(), vec![], "done once");
    }

    #[test]
    fn cancelling_a_captured_order_refunds_what_the_lines_cost() {
        let mut order = placed();
        capture(&mut order);
        order.apply_all(
            order
                .request_cancellation("broken", Some(&[line("MUG", 1)]), 5)
                .unwrap(),
        );
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::Refund {
                amount: eur(500),
                number: 1
            }
        );
        run_saga(&mut order, 1);
        assert_eq!(status(&order), OrderStatus::PartiallyCancelled);
        assert_eq!(settled(&order).refunded, 500);
        // The rest, later: a second refund, under the next key.
        order.apply_all(order.request_cancellation("all of it", None, 6).unwrap());
        assert_eq!(
            order.settlement(2).unwrap(),
            Settlement::Refund {
                amount: eur(1750),
                number: 2
            }
        );
        run_saga(&mut order, 2);
        assert_eq!(status(&order), OrderStatus::Cancelled);
        assert_eq!(settled(&order).refunded, 2250);
    }

    #[test]
    fn a_partial_cancellation_before_capture_is_left_out_of_the_capture() {
        let mut order = placed();
        order.apply_all(
            order
                .request_cancellation("no cap", Some(&[line("CAP", 1)]), 5)
                .unwrap(),
        );
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::LeaveUncaptured { amount: eur(1250) }
        );
        run_saga(&mut order, 1);
        assert_eq!(order.request_capture().unwrap().0, eur(1000));
        capture(&mut order);
        order.apply_all(order.ship().unwrap());
        assert_eq!(status(&order), OrderStatus::Shipped);
    }

    #[test]
    fn asking_again_for_everything_changes_nothing_and_anything_else_waits() {
        let mut order = placed();
        order.apply_all(order.request_cancellation("r", None, 5).unwrap());
        assert_eq!(order.request_cancellation("again", None, 6), Ok(vec![]));
        assert_eq!(
            order.request_cancellation("other", Some(&[line("MUG", 1)]), 6),
            Err(DomainError::CancellationInProgress)
        );
        run_saga(&mut order, 1);
        assert_eq!(order.request_cancellation("again", None, 7), Ok(vec![]));
        assert_eq!(
            order.request_cancellation("more", Some(&[line("MUG", 1)]), 7),
            Err(DomainError::NothingToCancel)
        );
    }

    #[test]
    fn the_same_lines_asked_twice_are_two_cancellations() {
        let mut order = placed();
        let one = [line("MUG", 1)];
        order.apply_all(order.request_cancellation("r", Some(&one), 5).unwrap());
        assert_eq!(
            order.request_cancellation("r", Some(&one), 5),
            Err(DomainError::CancellationInProgress),
            "while the first runs, the second waits"
        );
        run_saga(&mut order, 1);
        order.apply_all(order.request_cancellation("r", Some(&one), 6).unwrap());
        run_saga(&mut order, 2);
        assert!(order.placed.as_ref().unwrap().remaining() == vec![line("CAP", 1)]);
    }

    #[test]
    fn lines_must_be_in_the_order_and_not_cancelled_yet() {
        let mut order = placed();
        assert!(
            order
                .request_cancellation("r", Some(&[line("HAT", 1)]), 1)
                .is_err()
        );
        assert!(
            order
                .request_cancellation("r", Some(&[line("MUG", 3)]), 1)
                .is_err()
        );
        assert!(order.request_cancellation(" ", None, 1).is_err());
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(order.request_cancellation(&long, None, 1).is_err());
        order.apply_all(
            order
                .request_cancellation("r", Some(&[line("MUG", 2)]), 1)
                .unwrap(),
        );
        run_saga(&mut order, 1);
        assert!(
            order
                .request_cancellation("r", Some(&[line("MUG", 1)]), 1)
                .is_err()
        );
        let rest = order.request_cancellation("r", None, 1).unwrap();
        assert!(matches!(
            &rest[..],
            [OrderEvent::OrderCancellationRequested { lines, amount, attempt: 2, .. }]
                if *lines == vec![line("CAP", 1)] && *amount == eur(1250)
        ));
    }

    #[test]
    fn a_failed_cancellation_is_flagged_and_a_new_attempt_finishes_what_is_left() {
        let mut order = placed();
        capture(&mut order);
        order.apply_all(order.request_cancellation("r", None, 1).unwrap());
        order.apply_all(order.release_stock(1).unwrap());
        let failure = StepFailure {
            error: "Commerce.PaymentRefused".into(),
            cause: "refund_refused".into(),
        };
        order.apply_all(order.flag_cancellation(1, failure.clone()).unwrap());
        assert_eq!(status(&order), OrderStatus::NeedsAttention);
        assert_eq!(order.flag_cancellation(1, failure).unwrap(), vec![]);
        assert_eq!(
            order.request_cancellation("r", Some(&[line("MUG", 1)]), 2),
            Err(DomainError::CancellationInProgress)
        );
        order.apply_all(order.request_cancellation("retry", None, 2).unwrap());
        assert!(matches!(
            order.release_stock(1),
            Err(DomainError::StaleCancellation {
                attempt: 1,
                latest: 2
            })
        ));
        assert_eq!(
            order.release_stock(2).unwrap(),
            vec![],
            "stock went back in attempt 1"
        );
        assert_eq!(
            order.settlement(2).unwrap(),
            Settlement::Refund {
                amount: eur(2250),
                number: 1
            }
        );
        run_saga(&mut order, 2);
        assert_eq!(status(&order), OrderStatus::Cancelled);
        assert_eq!(
            order
                .placed
                .as_ref()
                .unwrap()
                .cancellation
                .as_ref()
                .unwrap()
                .failure,
            None
        );
    }

    #[test]
    fn a_settlement_worked_out_before_the_order_changed_is_refused() {
        let mut order = placed();
        capture(&mut order);
        order.apply_all(
            order
                .request_cancellation("r", Some(&[line("MUG", 1)]), 1)
                .unwrap(),
        );
        let stale = Settlement::Refund {
            amount: eur(1000),
            number: 1,
        };
        assert!(order.settle(1, &stale, Some("re".into())).is_err());
    }

    #[test]
    fn a_capture_under_way_when_a_cancellation_comes_is_finished_then_refunded() {
        let mut order = placed();
        let (amount, asked) = order.request_capture().unwrap();
        order.apply_all(asked);
        // The provider is being asked; meanwhile a cancellation of one line comes.
        order.apply_all(
            order
                .request_cancellation("no cap", Some(&[line("CAP", 1)]), 1)
                .unwrap(),
        );
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::FinishCapture { amount },
            "not left out of a capture that may have happened"
        );
        assert_eq!(
            order.request_capture().unwrap(),
            (amount, vec![]),
            "the same capture"
        );
        order.apply_all(order.record_capture(amount, "cap".into()).unwrap());
        assert_eq!(order.record_capture(amount, "cap".into()).unwrap(), vec![]);
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::Refund {
                amount: eur(1250),
                number: 1
            }
        );
        run_saga(&mut order, 1);
        assert_eq!(status(&order), OrderStatus::PartiallyCancelled);
        assert_eq!(
            (settled(&order).captured, settled(&order).refunded),
            (2250, 1250)
        );
    }

    #[test]
    fn a_capture_under_way_when_everything_is_cancelled_is_voided_first() {
        let mut order = placed();
        let (amount, asked) = order.request_capture().unwrap();
        order.apply_all(asked);
        order.apply_all(order.request_cancellation("r", None, 1).unwrap());
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::VoidAuthorization { amount: eur(2250) }
        );
        assert_eq!(order.uncaptured_amount().unwrap(), amount);
    }

    #[test]
    fn a_refused_capture_leaves_the_cancellation_to_void() {
        let mut order = placed();
        let (_, asked) = order.request_capture().unwrap();
        order.apply_all(asked);
        order.apply_all(order.request_cancellation("r", None, 1).unwrap());
        order.apply_all(order.refuse_capture("authorization_voided".into()).unwrap());
        assert_eq!(
            order.settlement(1).unwrap(),
            Settlement::VoidAuthorization { amount: eur(2250) }
        );
    }

    #[test]
    fn a_cancellation_stalled_past_its_sagas_time_limit_can_be_asked_again() {
        let mut order = placed();
        order.apply_all(order.request_cancellation("r", None, 0).unwrap());
        assert_eq!(order.request_cancellation("again", None, 1000), Ok(vec![]));
        let later = order
            .request_cancellation("again", None, STALLED_AFTER_MS + 1)
            .unwrap();
        assert!(matches!(
            &later[..],
            [OrderEvent::OrderCancellationRequested { attempt: 2, .. }]
        ));
    }

    #[test]
    fn an_old_head_without_cancellation_fields_still_reads() {
        let order = placed();
        let mut json = serde_json::to_value(&order).unwrap();
        let placed = json["placed"].as_object_mut().unwrap();
        for field in ["settled", "to_cancel", "released", "cancellation"] {
            placed.remove(field);
        }
        let read: Order = serde_json::from_value(json).unwrap();
        assert_eq!(read, order);
    }
}
