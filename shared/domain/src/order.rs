use serde::{Deserialize, Serialize};

use crate::{Aggregate, CustomerId, DomainError, Line, Money, OrderId, ReservationId, Sku};

/// Where an order is in its life. `Cancelling` is the saga's in-between state: stock and payment
/// are being given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderStatus {
    Placed,
    Paid,
    Cancelling,
    Cancelled,
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
    PaymentCaptured,
    CancellationRequested {
        reason: String,
    },
    OrderCancelled,
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
}

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

    pub fn capture_payment(&self) -> Result<Vec<OrderEvent>, DomainError> {
        self.transition("capture payment for", &[OrderStatus::Placed])?;
        Ok(vec![OrderEvent::PaymentCaptured])
    }

    pub fn request_cancellation(&self, reason: String) -> Result<Vec<OrderEvent>, DomainError> {
        self.transition("cancel", &[OrderStatus::Placed, OrderStatus::Paid])?;
        Ok(vec![OrderEvent::CancellationRequested { reason }])
    }

    pub fn complete_cancellation(&self) -> Result<Vec<OrderEvent>, DomainError> {
        self.transition("complete cancellation of", &[OrderStatus::Cancelling])?;
        Ok(vec![OrderEvent::OrderCancelled])
    }

    pub fn ship(&self) -> Result<Vec<OrderEvent>, DomainError> {
        self.transition("ship", &[OrderStatus::Paid])?;
        Ok(vec![OrderEvent::OrderShipped])
    }

    pub fn deliver(&self) -> Result<Vec<OrderEvent>, DomainError> {
        self.transition("deliver", &[OrderStatus::Shipped])?;
        Ok(vec![OrderEvent::OrderDelivered])
    }

    fn transition(&self, action: &'static str, from: &[OrderStatus]) -> Result<(), DomainError> {
        match &self.placed {
            Some(order) if from.contains(&order.status) => Ok(()),
            Some(order) => Err(DomainError::OrderTransition {
                action,
                status: order.status,
            }),
            None => Err(DomainError::invalid("order", "does not exist")),
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
            });
            return;
        }
        let Some(order) = self.placed.as_mut() else {
            return;
        };
        order.status = match event {
            OrderEvent::PaymentCaptured => OrderStatus::Paid,
            OrderEvent::CancellationRequested { .. } => OrderStatus::Cancelling,
            OrderEvent::OrderCancelled => OrderStatus::Cancelled,
            OrderEvent::OrderShipped => OrderStatus::Shipped,
            OrderEvent::OrderDelivered => OrderStatus::Delivered,
            OrderEvent::OrderPlaced { .. } => order.status,
        };
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

    fn placed() -> Order {
        let (lines, total) = Order::price(&[line("MUG", 2)], &[eur(500)]).unwrap();
        let mut order = Order::default();
        let events = order.place(new_order("o1", lines, total, total)).unwrap();
        order.apply_all(events);
        order
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
        order.apply_all(order.capture_payment().unwrap());
        order.apply_all(order.ship().unwrap());
        assert!(
            order.request_cancellation("late".into()).is_err(),
            "shipped orders are not cancelled"
        );
        order.apply_all(order.deliver().unwrap());
        assert_eq!(order.placed.unwrap().status, OrderStatus::Delivered);
    }

    #[test]
    fn cancellation_goes_through_cancelling() {
        let mut order = placed();
        assert!(order.complete_cancellation().is_err());
        order.apply_all(order.request_cancellation("changed mind".into()).unwrap());
        assert_eq!(
            order.placed.as_ref().unwrap().status,
            OrderStatus::Cancelling
        );
        assert!(order.capture_payment().is_err());
        order.apply_all(order.complete_cancellation().unwrap());
        assert_eq!(order.placed.unwrap().status, OrderStatus::Cancelled);
    }

    #[test]
    fn an_order_is_placed_once_and_for_its_total() {
        let order = placed();
        let again = order.place(new_order("o1", vec![], eur(1), eur(1)));
        assert_eq!(again, Err(DomainError::AlreadyExists { what: "order" }));
        let short = Order::default().place(new_order("o2", vec![], eur(100), eur(99)));
        assert!(short.is_err());
    }
}
