//! Sales per SKU per day: units, orders and revenue, from placed orders. It reads only what
//! the bus delivers, so it shows the whole pipeline works (store, feed, bus, projector).

use commerce_domain::OrderEvent;
use serde::{Deserialize, Serialize};

use super::{Draft, Event, Projection};
use crate::bus::{AGGREGATE_TYPE, FilterPolicy};
use crate::table::{StoreError, Table};

#[derive(Debug, Clone, Copy, Default)]
pub struct Sales;

/// One SKU's sales on one day in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SalesRow {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub sku: String,
    pub units: u64,
    /// Orders with this SKU.
    pub orders: u64,
    /// In the currency's minor unit.
    pub revenue_minor: i64,
    pub currency: String,
}

impl Projection for Sales {
    const NAME: &'static str = "sales";
    /// A row per line.
    const MAX_WRITES: usize = commerce_domain::MAX_LINES;

    fn filter() -> FilterPolicy {
        FilterPolicy(
            [(AGGREGATE_TYPE.to_owned(), vec!["order".to_owned()])]
                .into_iter()
                .collect(),
        )
    }

    async fn apply<T: Table>(draft: &mut Draft<'_, T>, event: &Event) -> Result<(), StoreError> {
        if event.event_type != "OrderPlaced" {
            return Ok(());
        }
        let Ok(OrderEvent::OrderPlaced {
            lines, placed_at, ..
        }) = serde_json::from_str::<OrderEvent>(event.data.get())
        else {
            return Err(StoreError::Failure(format!(
                "event {} is not a readable OrderPlaced",
                event.id
            )));
        };
        let date = crate::views::day(placed_at);
        let pk = draft.partition(&event.tenant, &day_partition(&date));
        for line in lines {
            let currency = line.line_total.currency.to_string();
            let sk = format!("{}#{currency}", line.sku);
            let mut row: SalesRow = draft.load(&pk, &sk).await?;
            row.date.clone_from(&date);
            row.sku = line.sku.to_string();
            row.currency = currency;
            row.units += u64::from(line.quantity);
            row.orders += 1;
            row.revenue_minor = row
                .revenue_minor
                .saturating_add(line.line_total.amount_minor);
            draft.store(&pk, &sk, &row)?;
        }
        Ok(())
    }
}

pub fn day_partition(date: &str) -> String {
    format!("day#{date}")
}
