use serde::{Deserialize, Serialize};

use crate::{Aggregate, DomainError, Money, Sku};

/// A product's display name: trimmed, 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String, min_length = 1, max_length = 200))]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars == 0 || chars > 200 {
            return Err(DomainError::invalid("name", "must be 1 to 200 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProductName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ProductName> for String {
    fn from(value: ProductName) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ProductEvent {
    ProductCreated {
        sku: Sku,
        name: ProductName,
        price: Money,
    },
}

/// A catalog entry. Its price is what orders are charged: totals are never taken from the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub details: Option<ProductDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductDetails {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Money,
}

impl Product {
    pub fn create(
        &self,
        sku: Sku,
        name: ProductName,
        price: Money,
    ) -> Result<Vec<ProductEvent>, DomainError> {
        if self.details.is_some() {
            return Err(DomainError::AlreadyExists { what: "product" });
        }
        Ok(vec![ProductEvent::ProductCreated { sku, name, price }])
    }
}

impl Aggregate for Product {
    type Event = ProductEvent;

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductCreated { sku, name, price } => {
                self.details = Some(ProductDetails {
                    sku: sku.clone(),
                    name: name.clone(),
                    price: *price,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;

    #[test]
    fn a_product_is_created_once() {
        let mut product = Product::default();
        let price = Money::new(1999, Currency::parse("EUR").unwrap()).unwrap();
        let events = product
            .create(
                Sku::parse("MUG").unwrap(),
                ProductName::parse(" Mug ").unwrap(),
                price,
            )
            .unwrap();
        product.apply_all(events);
        assert_eq!(product.details.as_ref().unwrap().name.as_str(), "Mug");
        let again = product.create(
            Sku::parse("MUG").unwrap(),
            ProductName::parse("Mug").unwrap(),
            price,
        );
        assert_eq!(again, Err(DomainError::AlreadyExists { what: "product" }));
    }

    #[test]
    fn names_are_checked() {
        assert!(ProductName::parse("   ").is_err());
        assert!(ProductName::parse("a\u{0}b").is_err());
        assert!(ProductName::parse(&"x".repeat(201)).is_err());
    }
}
