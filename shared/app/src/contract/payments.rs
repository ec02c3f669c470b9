//! The promises of the [`PaymentGateway`] port, for every adapter: the sandbox, and Stripe
//! against a fake that answers as Stripe does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use commerce_domain::{Currency, Money, OrderId};

use crate::payments::{PaymentError, PaymentGateway, operation_key};

fn eur(amount: i64) -> Money {
    Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
}

fn order(prefix: &str, name: &str) -> OrderId {
    OrderId::parse(format!("{prefix}-{name}")).unwrap()
}

/// Runs every case. `approve` and `decline` are payment methods the provider approves and
/// declines; `prefix` keeps this run's orders apart from another's.
pub async fn payment_gateway_contract<P: PaymentGateway>(
    payments: &P,
    approve: &str,
    decline: &str,
    prefix: &str,
) {
    an_authorization_asked_again_is_the_same(payments, approve, prefix).await;
    a_declined_card_is_declined(payments, decline, prefix).await;
    a_voided_order_is_never_authorized_afterwards(payments, approve, prefix).await;
    a_capture_happens_once_per_key(payments, approve, prefix).await;
    a_refund_happens_once_per_key_and_never_beyond_the_capture(payments, approve, prefix).await;
}

pub async fn an_authorization_asked_again_is_the_same<P: PaymentGateway>(
    payments: &P,
    approve: &str,
    prefix: &str,
) {
    let id = order(prefix, "again");
    let first = payments.authorize(&id, eur(1500), approve).await.unwrap();
    let second = payments.authorize(&id, eur(1500), approve).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.amount, eur(1500));
}

pub async fn a_declined_card_is_declined<P: PaymentGateway>(
    payments: &P,
    decline: &str,
    prefix: &str,
) {
    let answer = payments
        .authorize(&order(prefix, "declined"), eur(100), decline)
        .await;
    assert!(
        matches!(answer, Err(PaymentError::Declined(_))),
        "{answer:?}"
    );
}

pub async fn a_voided_order_is_never_authorized_afterwards<P: PaymentGateway>(
    payments: &P,
    approve: &str,
    prefix: &str,
) {
    let authorized = order(prefix, "voided");
    payments
        .authorize(&authorized, eur(700), approve)
        .await
        .unwrap();
    payments.void(&authorized).await.unwrap();
    payments.void(&authorized).await.unwrap();
    assert!(matches!(
        payments.authorize(&authorized, eur(700), approve).await,
        Err(PaymentError::Declined(_))
    ));
    let never = order(prefix, "void-first");
    payments.void(&never).await.unwrap();
    assert!(
        matches!(
            payments.authorize(&never, eur(700), approve).await,
            Err(PaymentError::Declined(_))
        ),
        "a void that came first still wins"
    );
}

pub async fn a_capture_happens_once_per_key<P: PaymentGateway>(
    payments: &P,
    approve: &str,
    prefix: &str,
) {
    let id = order(prefix, "capture");
    let authorization = payments.authorize(&id, eur(2000), approve).await.unwrap();
    let key = operation_key(&id, "capture", 1);
    let first = payments
        .capture(&authorization, eur(2000), &key)
        .await
        .unwrap();
    let again = payments
        .capture(&authorization, eur(2000), &key)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first.amount, eur(2000));
    let other = payments
        .capture(&authorization, eur(2000), &operation_key(&id, "capture", 2))
        .await;
    assert!(matches!(other, Err(PaymentError::Declined(_))), "{other:?}");
    assert!(
        matches!(payments.void(&id).await, Err(PaymentError::Declined(_))),
        "what was captured is refunded, not voided"
    );
}

pub async fn a_refund_happens_once_per_key_and_never_beyond_the_capture<P: PaymentGateway>(
    payments: &P,
    approve: &str,
    prefix: &str,
) {
    let id = order(prefix, "refund");
    let authorization = payments.authorize(&id, eur(1000), approve).await.unwrap();
    payments
        .capture(&authorization, eur(1000), &operation_key(&id, "capture", 1))
        .await
        .unwrap();
    let first_key = operation_key(&id, "refund", 1);
    let first = payments
        .refund(&authorization, eur(600), &first_key)
        .await
        .unwrap();
    let again = payments
        .refund(&authorization, eur(600), &first_key)
        .await
        .unwrap();
    assert_eq!(first, again, "a repeated key is the same refund");
    let too_much = payments
        .refund(&authorization, eur(600), &operation_key(&id, "refund", 2))
        .await;
    assert!(
        matches!(too_much, Err(PaymentError::Declined(_))),
        "{too_much:?}"
    );
    let rest = payments
        .refund(&authorization, eur(400), &operation_key(&id, "refund", 3))
        .await
        .unwrap();
    assert_ne!(rest.id, first.id);
    assert_eq!(rest.amount, eur(400));
}
