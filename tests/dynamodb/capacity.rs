//! What placing an order costs in DynamoDB capacity units, counted by the adapter on every call.
//! `docs/capacity.md` is built from these figures.

use std::sync::Arc;

use commerce_app::idempotency::IdempotencyKey;
use commerce_app::shop::{NewProduct, PlaceOrder, StockLevel};
use commerce_app::{Role, SandboxPayments, Shop, ShopConfig, SystemClock};
use commerce_domain::{Currency, Line, Money, ProductName, Quantity, Sku};
use commerce_dynamodb::capacity::{Consumed, Operation};
use commerce_dynamodb::moto::fresh_table;

use super::caller;

/// A shop with `skus` products in stock, and what placing one order of all of them used.
async fn one_order(skus: usize) -> Consumed {
    let table = fresh_table().await;
    let shop = Arc::new(Shop::new(
        table.clone(),
        SandboxPayments::default(),
        SystemClock,
        ShopConfig::default(),
    ));
    let admin = caller("admin-1", Role::Admin);
    let price = Money::new(999, Currency::parse("EUR").unwrap()).unwrap();
    let mut lines = Vec::new();
    for n in 0..skus {
        let sku = Sku::parse(format!("SKU-{n:03}")).unwrap();
        let new = NewProduct {
            sku: sku.clone(),
            name: ProductName::parse("Item").unwrap(),
            price,
        };
        shop.create_product(&admin, None, new).await.unwrap();
        let level = StockLevel {
            on_hand: 100,
            low_stock_threshold: 1,
        };
        shop.set_stock(&admin, &sku, level).await.unwrap();
        lines.push(Line {
            sku,
            quantity: Quantity::new(1).unwrap(),
        });
    }
    let order = PlaceOrder {
        lines: Some(lines),
        reservation_id: None,
        payment_token: "tok_visa".into(),
        contact: None,
    };
    let buyer = caller("buyer-1", Role::Customer);
    let body = serde_json::json!({ "lines": skus });
    let key = IdempotencyKey::for_request(&buyer, "key-1", "POST", "/v1/orders", &body).unwrap();
    let before = table.consumed();
    let reply = shop.place_order(buyer, Some(key), order).await.unwrap();
    assert_eq!(reply.status, 201);
    table.consumed().since(&before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_a_one_line_order_costs_2_read_and_33_write_units() {
    let used = one_order(1).await;
    // Two consistent reads of items under 4 KB: the key's record and the product. The SKU's
    // stock is taken without a read (docs/adr/0013), and the reservation the claim wrote is
    // not read back.
    let reads = used.get(Operation::GetItem);
    assert_eq!((reads.calls, reads.read), (2, 2.0));
    assert!(reads.reported > 0.0, "the service's own figure is recorded");
    // Two transactions of items under 1 KB, two units each. The claim writes 6: the add to
    // the SKU's stock, the reservation's event and head, the hold's and the attempt's queue
    // entries, the key's record. The record writes 9: the reservation's event and head, the
    // order's event and head, the two queue entries deleted, the customer's and the shop's
    // order lists, the key's record. The three events are listed in the index too, one unit
    // each: 30 + 3.
    let writes = used.get(Operation::TransactWriteItems);
    assert_eq!((writes.calls, writes.write), (2, 33.0));
    assert_eq!(used.total().calls, 4, "nothing else was called: {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_a_twenty_line_order_costs_21_read_and_101_write_units() {
    let used = one_order(20).await;
    // The key's record and 20 products.
    let reads = used.get(Operation::GetItem);
    assert_eq!((reads.calls, reads.read), (21, 21.0));
    // The claim: 20 adds to SKUs' stock (40 units), the reservation's event (1.2 KB, 4) and
    // head (2), two queue entries (4) and the key's record, which keeps the priced lines
    // (3.1 KB, 8): 58. The record: the order's event and head (3.3 and 3.1 KB, 8 each), the
    // key's record with the answer (3.2 KB, 8) and six small items (12): 36. The index lists
    // the 3 events at one unit per KB: the reservation's (2 and 1) and the order's (4): 7.
    let writes = used.get(Operation::TransactWriteItems);
    assert_eq!((writes.calls, writes.write), (2, 101.0));
    assert_eq!(used.total().calls, 23, "nothing else was called: {used:?}");
}
