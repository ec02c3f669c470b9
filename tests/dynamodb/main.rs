//! The DynamoDB adapter, through the real aws-sdk client against moto server: the same table
//! contract the SQLite adapter passes, and the shop's order race on top of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use commerce_app::shop::{NewProduct, PlaceOrder, StockLevel};
use commerce_app::{AppError, Caller, Role, SandboxPayments, Shop, ShopConfig, SystemClock};
use commerce_domain::{
    Currency, CustomerId, DomainError, Line, Money, ProductName, Quantity, Sku, TenantId,
};
use commerce_tests::moto::fresh_table;

commerce_app::table_contract!(async { (fresh_table().await, ()) });

fn caller(sub: &str, role: Role) -> Caller {
    Caller {
        tenant: TenantId::parse("acme").unwrap(),
        subject: CustomerId::parse(sub).unwrap(),
        roles: vec![role],
    }
}

/// Twelve buyers, five units: five orders, the rest out of stock, on DynamoDB transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_orders_never_oversell() {
    let shop = Arc::new(Shop::new(
        fresh_table().await,
        SandboxPayments::default(),
        SystemClock,
        ShopConfig::default(),
    ));
    let admin = caller("admin-1", Role::Admin);
    let sku = Sku::parse("HOT").unwrap();
    let price = Money::new(999, Currency::parse("EUR").unwrap()).unwrap();
    shop.create_product(
        &admin,
        None,
        NewProduct {
            sku: sku.clone(),
            name: ProductName::parse("Hot item").unwrap(),
            price,
        },
    )
    .await
    .unwrap();
    shop.set_stock(
        &admin,
        &sku,
        StockLevel {
            on_hand: 5,
            low_stock_threshold: 2,
        },
    )
    .await
    .unwrap();

    let mut tasks = Vec::new();
    for n in 0..12 {
        let (shop, sku) = (shop.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let order = PlaceOrder {
                lines: Some(vec![Line {
                    sku,
                    quantity: Quantity::new(1).unwrap(),
                }]),
                reservation_id: None,
                payment_token: "tok_visa".into(),
                contact: None,
            };
            shop.place_order(&caller(&format!("buyer-{n}"), Role::Customer), None, order)
                .await
        }));
    }
    let (mut sold, mut out_of_stock) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(reply) if reply.status == 201 => sold += 1,
            Err(AppError::Domain(DomainError::OutOfStock { .. })) => out_of_stock += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!((sold, out_of_stock), (5, 7));
    let stock = shop.inventory(&admin, &sku).await.unwrap();
    assert_eq!(
        (
            stock.on_hand,
            stock.reserved,
            stock.available,
            stock.low_stock
        ),
        (5, 5, 0, true)
    );
    let ops = caller("ops-1", Role::Ops);
    assert_eq!(
        shop.orders(&ops, None, Some(100))
            .await
            .unwrap()
            .items
            .len(),
        5
    );
    assert_eq!(
        shop.low_stock(&ops, None, None).await.unwrap().items.len(),
        1
    );
}
