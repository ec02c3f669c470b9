//! Reading orders: one order with its contact, and the order lists.

use commerce_domain::{Order, OrderId, PlacedOrder, TenantId};

use super::{Caller, Role, Shop};
use crate::event_store::{Changes, load};
use crate::keys;
use crate::table::StoreError;
use crate::views::{Contact, ListPage, OrderSummary, OrderView};
use crate::{AppError, Clock, PaymentGateway, Table};

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// Puts the order's summary, as it stands, in its customer's list and in the shop's (in
    /// the shard the store writes, [`Table::shards`]).
    pub(super) fn list_order(
        &self,
        changes: &mut Changes,
        tenant: &TenantId,
        placed: &PlacedOrder,
    ) -> Result<(), AppError> {
        let summary = OrderSummary::from(placed);
        let id = placed.id.to_string();
        changes.put_read_model(
            keys::customer_orders(tenant, &placed.customer),
            id.clone(),
            &summary,
        )?;
        let shard =
            keys::tenant_order_shard(&placed.id, self.table.shards(keys::ORDER_LIST_SHARDS));
        changes.put_read_model(keys::tenant_orders(tenant, shard), id, &summary)?;
        Ok(())
    }

    pub async fn order(&self, caller: &Caller, id: &OrderId) -> Result<OrderView, AppError> {
        caller.require(&[Role::Customer, Role::Ops], "read orders")?;
        let order = load::<Order, _>(&self.table, keys::order(&caller.tenant, id)).await?;
        let placed = match &order.state.placed {
            Some(o) if o.customer == caller.subject || caller.has(Role::Ops) => o,
            _ => return Err(AppError::NotFound("order")),
        };
        Ok(OrderView::new(
            placed,
            self.contact(&caller.tenant, id).await?,
        ))
    }

    /// How to reach the customer about an order; `None` if none was given or it was erased.
    pub(super) async fn contact(
        &self,
        tenant: &TenantId,
        id: &OrderId,
    ) -> Result<Option<Contact>, AppError> {
        match self
            .table
            .get(&keys::order_contact(tenant, id), keys::HEAD)
            .await?
        {
            Some(item) => {
                Ok(Some(serde_json::from_slice(&item.data).map_err(|e| {
                    StoreError::Failure(format!("corrupt contact: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// Newest first. Customers see their own orders; operators see the whole shop's.
    pub async fn orders(
        &self,
        caller: &Caller,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage<OrderSummary>, AppError> {
        caller.require(&[Role::Customer, Role::Ops], "read orders")?;
        if caller.has(Role::Ops) {
            // Orders recorded before the list was sharded stay in its old single partition,
            // read last: a copy written since into a shard (a cancellation's) wins over it.
            // Shard 0 is read first: a store that writes one partition writes there, so its
            // copy wins over one a build that spread the list left in another shard.
            let list = keys::tenant_order_list(&caller.tenant);
            let shards: Vec<_> = (0..keys::ORDER_LIST_SHARDS)
                .map(|shard| keys::tenant_orders(&caller.tenant, shard))
                .chain([list.clone()])
                .collect();
            return self.list_sharded(&list, &shards, cursor, limit, true).await;
        }
        let pk = keys::customer_orders(&caller.tenant, &caller.subject);
        self.list(&pk, cursor, limit, true).await
    }
}
