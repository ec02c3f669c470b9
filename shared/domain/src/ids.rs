//! Identifiers parsed once at the edge; a value of these types is always well formed.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::DomainError;

fn check(
    field: &'static str,
    value: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
) -> Result<(), DomainError> {
    if value.is_empty() || value.len() > max {
        return Err(DomainError::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !value.chars().all(ok) {
        return Err(DomainError::invalid(
            field,
            "contains characters that are not allowed",
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal, $pattern:tt, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = $pattern))]
        pub struct $name(String);

        impl $name {
            /// Checks the text and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, DomainError> {
                let value = value.into();
                check($field, &value, $max, $ok)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

string_id!(
    /// A stock-keeping unit: upper-case letters, digits, `.`, `_` and `-`, as SKUs are printed on
    /// labels. Upper case only, so path words such as `low-stock` can never be a SKU.
    Sku, "sku", 64, "^[A-Z0-9._-]{1,64}$", |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
);
string_id!(
    /// The shop a caller belongs to; every key in the store starts with it.
    TenantId, "tenant", 64, "^[A-Za-z0-9._-]{1,64}$", id_char
);
string_id!(
    /// The customer, as the identity provider's subject. Pseudonymous: no contact data.
    CustomerId, "customer", 128, "^[!-\"$-~]{1,128}$", |c: char| c.is_ascii_graphic() && c != '#'
);
string_id!(
    /// An order, chosen by the server (time-ordered, so listing by id lists by age).
    OrderId, "order id", 64, "^[A-Za-z0-9._-]{1,64}$", id_char
);
string_id!(
    /// A reservation (a hold on stock for a cart), chosen by the server.
    ReservationId, "reservation id", 64, "^[A-Za-z0-9._-]{1,64}$", id_char
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_label_style_codes() {
        assert!(Sku::parse("TSHIRT-RED-XL").is_ok());
        assert!(Sku::parse("A.1_2").is_ok());
    }

    #[test]
    fn sku_rejects_lower_case_empty_and_long() {
        assert!(Sku::parse("low-stock").is_err());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("A".repeat(65)).is_err());
        assert!(Sku::parse("A B").is_err());
    }

    #[test]
    fn customer_cannot_contain_key_separator() {
        assert!(CustomerId::parse("auth0|123").is_ok());
        assert!(CustomerId::parse("a#b").is_err());
    }

    #[test]
    fn ids_deserialize_through_validation() {
        let bad: Result<Sku, _> = serde_json::from_str("\"bad sku\"");
        assert!(bad.is_err());
    }
}
