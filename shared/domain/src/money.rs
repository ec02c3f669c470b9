//! Money as integer minor units plus an ISO 4217 code. Arithmetic is checked: an overflow or a
//! mix of currencies is an error, never a wrapped or silently converted amount.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::DomainError;

/// An ISO 4217 alphabetic code (three upper-case ASCII letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR"))]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, DomainError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(DomainError::invalid(
                "currency",
                "must be an ISO 4217 code such as EUR or USD",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // Built only from three ASCII upper-case letters, so always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest amount a price may have: exact in JSON (below 2^53) for every client.
pub const MAX_AMOUNT_MINOR: i64 = 999_999_999_999_999;

/// A non-negative amount in the currency's minor unit (cents for EUR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MoneyParts")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money {
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 999_999_999_999_999_i64)
    )]
    pub amount_minor: i64,
    pub currency: Currency,
}

/// Money as it arrives, before the sign is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyParts {
    amount_minor: i64,
    currency: Currency,
}

impl TryFrom<MoneyParts> for Money {
    type Error = DomainError;
    fn try_from(parts: MoneyParts) -> Result<Self, Self::Error> {
        Money::new(parts.amount_minor, parts.currency)
    }
}

impl Money {
    /// Prices and totals are never negative; refunds are their own events, not negative money.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, DomainError> {
        if !(0..=MAX_AMOUNT_MINOR).contains(&amount_minor) {
            return Err(DomainError::invalid(
                "amount_minor",
                format!("must be between 0 and {MAX_AMOUNT_MINOR}"),
            ));
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount_minor: 0,
            currency,
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, DomainError> {
        self.same_currency(other.currency)?;
        let amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .filter(|sum| *sum <= MAX_AMOUNT_MINOR)
            .ok_or(DomainError::AmountOverflow)?;
        Ok(Money {
            amount_minor,
            ..self
        })
    }

    pub fn checked_mul(self, quantity: u32) -> Result<Money, DomainError> {
        let amount_minor = self
            .amount_minor
            .checked_mul(i64::from(quantity))
            .filter(|product| *product <= MAX_AMOUNT_MINOR)
            .ok_or(DomainError::AmountOverflow)?;
        Ok(Money {
            amount_minor,
            ..self
        })
    }

    pub fn same_currency(&self, other: Currency) -> Result<(), DomainError> {
        if self.currency == other {
            Ok(())
        } else {
            Err(DomainError::CurrencyMismatch {
                expected: self.currency.to_string(),
                got: other.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::parse("EUR").unwrap()).unwrap()
    }

    #[test]
    fn currency_must_be_three_upper_case_letters() {
        assert!(Currency::parse("EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_are_bounded() {
        let eur = Currency::parse("EUR").unwrap();
        assert!(Money::new(-1, eur).is_err());
        assert!(Money::new(MAX_AMOUNT_MINOR + 1, eur).is_err());
        assert!(Money::new(MAX_AMOUNT_MINOR, eur).is_ok());
    }

    #[test]
    fn adding_other_currency_is_refused() {
        let usd = Money::new(1, Currency::parse("USD").unwrap()).unwrap();
        assert!(matches!(
            eur(1).checked_add(usd),
            Err(DomainError::CurrencyMismatch { .. })
        ));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let max = eur(MAX_AMOUNT_MINOR);
        assert_eq!(max.checked_add(eur(1)), Err(DomainError::AmountOverflow));
        assert_eq!(max.checked_mul(2), Err(DomainError::AmountOverflow));
        assert_eq!(eur(250).checked_mul(3), Ok(eur(750)));
    }

    #[test]
    fn deserializing_checks_the_sign() {
        assert!(serde_json::from_str::<Money>(r#"{"amount_minor":-5,"currency":"EUR"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount_minor":5,"currency":"eur"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Money>(r#"{"amount_minor":5,"currency":"EUR"}"#).unwrap(),
            eur(5)
        );
    }

    #[test]
    fn serializes_as_code_and_minor_units() {
        let json = serde_json::to_value(eur(1999)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"amount_minor": 1999, "currency": "EUR"})
        );
    }
}
