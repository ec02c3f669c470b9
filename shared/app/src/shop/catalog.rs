use commerce_domain::{Line, Money, Order, OrderLine, Product, ProductName, Sku};
use serde::Deserialize;

use super::{Caller, Reply, Role, Shop};
use crate::event_store::{Changes, load};
use crate::idempotency::Begin;
use crate::keys;
use crate::views::{ListPage, ProductView};
use crate::{AppError, Clock, IdempotencyKey, PaymentGateway, Table};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Money,
}

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    pub async fn create_product(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        new: NewProduct,
    ) -> Result<Reply, AppError> {
        caller.require(&[Role::Admin], "change the catalog")?;
        let mut guard = match self.begin::<()>(key).await? {
            Begin::Replay(outcome) => return outcome.into_reply(),
            Begin::Fresh(guard) => guard,
        };
        let pk = keys::product(&caller.tenant, &new.sku);
        let mut attempts = self.attempts();
        while attempts.next().await {
            let mut product = load::<Product, _>(&self.table, pk.clone()).await?;
            let events = product
                .state
                .create(new.sku.clone(), new.name.clone(), new.price)?;
            let mut changes = Changes::new(caller.origin());
            changes.append(&mut product, events, self.now_ms())?;
            let view = product
                .state
                .details
                .as_ref()
                .map(ProductView::from)
                .ok_or(AppError::NotFound("product"))?;
            changes.put_read_model(keys::catalog(&caller.tenant), new.sku.to_string(), &view)?;
            if let Some(reply) = self
                .commit_answer(&mut guard, key, changes, 201, &view)
                .await?
            {
                return Ok(reply);
            }
        }
        Err(AppError::Contention)
    }

    pub async fn product(&self, caller: &Caller, sku: &Sku) -> Result<ProductView, AppError> {
        let product = load::<Product, _>(&self.table, keys::product(&caller.tenant, sku)).await?;
        product
            .state
            .details
            .as_ref()
            .map(ProductView::from)
            .ok_or(AppError::NotFound("product"))
    }

    /// Each line priced from the catalog (never from the client) and the total, all in one
    /// currency. A SKU without a product is unknown.
    pub(super) async fn price(
        &self,
        caller: &Caller,
        lines: &[Line],
    ) -> Result<(Vec<OrderLine>, Money), AppError> {
        let mut prices = Vec::with_capacity(lines.len());
        for line in lines {
            let product =
                load::<Product, _>(&self.table, keys::product(&caller.tenant, &line.sku)).await?;
            let price = product
                .state
                .details
                .map(|d| d.price)
                .ok_or_else(|| AppError::UnknownSku(line.sku.to_string()))?;
            prices.push(price);
        }
        Ok(Order::price(lines, &prices)?)
    }

    /// Catalog in SKU order.
    pub async fn products(
        &self,
        caller: &Caller,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage<ProductView>, AppError> {
        let pk = keys::catalog(&caller.tenant);
        self.list(&pk, cursor, limit, false).await
    }
}
