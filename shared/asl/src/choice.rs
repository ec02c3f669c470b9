//! Choice rules: comparisons of a variable with a value or another path, and their
//! combinations with `And`, `Or` and `Not`.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Test { variable: Path, test: Test },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Compare {
        kind: Kind,
        order: Order,
        against: Operand,
    },
    StringMatches(String),
    Is(Check, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Equals,
    LessThan,
    GreaterThan,
    LessThanEquals,
    GreaterThanEquals,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Value(Value),
    Path(Path),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Null,
    Present,
    Numeric,
    String,
    Boolean,
    Timestamp,
}

const KINDS: [(&str, Kind); 4] = [
    ("String", Kind::String),
    ("Numeric", Kind::Numeric),
    ("Boolean", Kind::Boolean),
    ("Timestamp", Kind::Timestamp),
];
const ORDERS: [(&str, Order); 5] = [
    ("Equals", Order::Equals),
    ("LessThanEquals", Order::LessThanEquals),
    ("GreaterThanEquals", Order::GreaterThanEquals),
    ("LessThan", Order::LessThan),
    ("GreaterThan", Order::GreaterThan),
];
const CHECKS: [(&str, Check); 6] = [
    ("IsNull", Check::Null),
    ("IsPresent", Check::Present),
    ("IsNumeric", Check::Numeric),
    ("IsString", Check::String),
    ("IsBoolean", Check::Boolean),
    ("IsTimestamp", Check::Timestamp),
];

impl Rule {
    /// Reads a rule; `top` says whether it is one of a Choice state's `Choices` (which carry
    /// `Next`, read by the caller) or nested (which must not).
    pub fn parse(value: &Value, top: bool) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("a choice rule must be an object".into());
        };
        let allowed_extra: &[&str] = if top {
            &["Next", "Comment"]
        } else {
            &["Comment"]
        };
        let combinators: Vec<&String> = map
            .keys()
            .filter(|k| matches!(k.as_str(), "And" | "Or" | "Not"))
            .collect();
        if let [combinator] = combinators.as_slice() {
            expect_keys(map, &[combinator.as_str()], allowed_extra)?;
            let inner = map.get(combinator.as_str()).unwrap_or(&Value::Null);
            return match combinator.as_str() {
                "Not" => Ok(Rule::Not(Box::new(Rule::parse(inner, false)?))),
                name => {
                    let Value::Array(rules) = inner else {
                        return Err(format!("{name} takes a list of rules"));
                    };
                    if rules.is_empty() {
                        return Err(format!("{name} takes at least one rule"));
                    }
                    let rules = rules
                        .iter()
                        .map(|r| Rule::parse(r, false))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(if name == "And" {
                        Rule::And(rules)
                    } else {
                        Rule::Or(rules)
                    })
                }
            };
        }
        if combinators.len() > 1 {
            return Err("a choice rule takes one of And, Or and Not".into());
        }
        let variable = match map.get("Variable") {
            Some(Value::String(text)) => Path::parse(text)?,
            _ => return Err("a choice rule needs Variable (a path) or And, Or, Not".into()),
        };
        if !variable.is_definite() {
            return Err(format!("Variable {variable} must name one value"));
        }
        let operators: Vec<&String> = map
            .keys()
            .filter(|k| !matches!(k.as_str(), "Variable" | "Next" | "Comment"))
            .collect();
        let [operator] = operators.as_slice() else {
            return Err(format!(
                "a choice rule on {variable} takes exactly one comparison, not {operators:?}"
            ));
        };
        expect_keys(map, &["Variable", operator.as_str()], allowed_extra)?;
        let operand = map.get(operator.as_str()).unwrap_or(&Value::Null);
        let test = parse_test(operator, operand)?;
        Ok(Rule::Test { variable, test })
    }

    /// Whether the rule holds. A variable that is not there fails the execution
    /// (`States.Runtime`), except for `IsPresent`, as on Step Functions.
    pub fn holds(&self, input: &Value, context: &Value) -> Result<bool, String> {
        match self {
            Rule::And(rules) => {
                for rule in rules {
                    if !rule.holds(input, context)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Rule::Or(rules) => {
                for rule in rules {
                    if rule.holds(input, context)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Rule::Not(rule) => Ok(!rule.holds(input, context)?),
            Rule::Test { variable, test } => {
                let value = variable.select(input, context);
                if let Test::Is(Check::Present, want) = test {
                    return Ok(value.is_some() == *want);
                }
                let value = value.ok_or_else(|| {
                    format!("Invalid path {variable}: the choice's variable is not in the input")
                })?;
                match test {
                    Test::Is(check, want) => Ok(is(*check, &value) == *want),
                    Test::StringMatches(pattern) => {
                        Ok(value.as_str().is_some_and(|s| wildcard(pattern, s)))
                    }
                    Test::Compare {
                        kind,
                        order,
                        against,
                    } => {
                        let other = match against {
                            Operand::Value(v) => v.clone(),
                            Operand::Path(p) => p.select(input, context).ok_or_else(|| {
                                format!(
                                    "Invalid path {p}: the choice's operand is not in the input"
                                )
                            })?,
                        };
                        Ok(compare(*kind, &value, &other).is_some_and(|o| order.admits(o)))
                    }
                }
            }
        }
    }
}

fn parse_test(operator: &str, operand: &Value) -> Result<Test, String> {
    if let Some((_, check)) = CHECKS.iter().find(|(n, _)| *n == operator) {
        let Value::Bool(want) = operand else {
            return Err(format!("{operator} takes true or false"));
        };
        return Ok(Test::Is(*check, *want));
    }
    if operator == "StringMatches" {
        let Value::String(pattern) = operand else {
            return Err("StringMatches takes a string".into());
        };
        return Ok(Test::StringMatches(pattern.clone()));
    }
    let (name, by_path) = match operator.strip_suffix("Path") {
        Some(name) => (name, true),
        None => (operator, false),
    };
    let (kind, rest) = KINDS
        .iter()
        .find_map(|(k, kind)| name.strip_prefix(k).map(|rest| (*kind, rest)))
        .ok_or_else(|| format!("{operator} is not a supported comparison"))?;
    let order = ORDERS
        .iter()
        .find(|(o, _)| *o == rest)
        .map(|(_, order)| *order)
        .ok_or_else(|| format!("{operator} is not a supported comparison"))?;
    if kind == Kind::Boolean && order != Order::Equals {
        return Err(format!("{operator} is not a supported comparison"));
    }
    let against = if by_path {
        match operand {
            Value::String(text) => Operand::Path(Path::parse(text)?),
            _ => return Err(format!("{operator} takes a path")),
        }
    } else {
        let fits = match kind {
            Kind::String => operand.is_string(),
            Kind::Numeric => operand.is_number(),
            Kind::Boolean => operand.is_boolean(),
            Kind::Timestamp => operand.as_str().and_then(timestamp).is_some(),
        };
        if !fits {
            return Err(format!("{operator} does not take {operand}"));
        }
        Operand::Value(operand.clone())
    };
    Ok(Test::Compare {
        kind,
        order,
        against,
    })
}

impl Order {
    fn admits(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Order::Equals => o == Equal,
            Order::LessThan => o == Less,
            Order::GreaterThan => o == Greater,
            Order::LessThanEquals => o != Greater,
            Order::GreaterThanEquals => o != Less,
        }
    }
}

/// How two values compare as `kind`; `None` when either is not of that kind (the rule fails).
fn compare(kind: Kind, a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match kind {
        // By UTF-16 code units, as Step Functions (Java) orders strings.
        Kind::String => Some(a.as_str()?.encode_utf16().cmp(b.as_str()?.encode_utf16())),
        Kind::Numeric => a.as_f64()?.partial_cmp(&b.as_f64()?),
        Kind::Boolean => Some(a.as_bool()?.cmp(&b.as_bool()?)),
        Kind::Timestamp => Some(timestamp(a.as_str()?)?.cmp(&timestamp(b.as_str()?)?)),
    }
}

fn is(check: Check, value: &Value) -> bool {
    match check {
        Check::Null => value.is_null(),
        Check::Present => true,
        Check::Numeric => value.is_number(),
        Check::String => value.is_string(),
        Check::Boolean => value.is_boolean(),
        Check::Timestamp => value.as_str().and_then(timestamp).is_some(),
    }
}

/// An RFC 3339 timestamp with an uppercase `T` and `Z`, as ASL asks.
pub fn timestamp(text: &str) -> Option<OffsetDateTime> {
    if text.contains('t') || text.contains('z') {
        return None;
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// `*` matches any run of characters; `\*` is a star and `\\` a backslash.
fn wildcard(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Token {
        Star,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => tokens.extend(chars.next().map(Token::Char)),
            '*' => tokens.push(Token::Star),
            other => tokens.push(Token::Char(other)),
        }
    }
    let text: Vec<char> = text.chars().collect();
    // Classic two-pointer match with backtracking to the last star.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::Char(c)) if Some(c) == text.get(t) => {
                t += 1;
                p += 1;
            }
            Some(Token::Star) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    tokens
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|t| *t == Token::Star)
}

fn expect_keys(map: &Map<String, Value>, required: &[&str], extra: &[&str]) -> Result<(), String> {
    for key in map.keys() {
        if !required.contains(&key.as_str()) && !extra.contains(&key.as_str()) {
            return Err(format!("a choice rule does not take {key}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn holds(rule: Value, input: Value) -> Result<bool, String> {
        Rule::parse(&rule, false)?.holds(&input, &json!({}))
    }

    #[test]
    fn every_comparison_operator() {
        let input = json!({"s": "b", "n": 5, "t": true, "ts": "2026-11-26T10:00:00Z", "other": 5, "null": null});
        let cases = [
            (json!({"Variable": "$.s", "StringEquals": "b"}), true),
            (json!({"Variable": "$.s", "StringLessThan": "c"}), true),
            (json!({"Variable": "$.s", "StringGreaterThan": "c"}), false),
            (
                json!({"Variable": "$.s", "StringLessThanEquals": "b"}),
                true,
            ),
            (
                json!({"Variable": "$.s", "StringGreaterThanEquals": "c"}),
                false,
            ),
            (json!({"Variable": "$.s", "StringEqualsPath": "$.s"}), true),
            (json!({"Variable": "$.s", "StringMatches": "*b"}), true),
            (json!({"Variable": "$.n", "NumericEquals": 5}), true),
            (
                json!({"Variable": "$.n", "NumericEqualsPath": "$.other"}),
                true,
            ),
            (json!({"Variable": "$.n", "NumericLessThan": 5.5}), true),
            (json!({"Variable": "$.n", "NumericGreaterThan": 5}), false),
            (json!({"Variable": "$.n", "NumericLessThanEquals": 5}), true),
            (
                json!({"Variable": "$.n", "NumericGreaterThanEquals": 6}),
                false,
            ),
            (
                json!({"Variable": "$.n", "NumericLessThanPath": "$.other"}),
                false,
            ),
            (json!({"Variable": "$.t", "BooleanEquals": true}), true),
            (json!({"Variable": "$.t", "BooleanEqualsPath": "$.t"}), true),
            (
                json!({"Variable": "$.ts", "TimestampEquals": "2026-11-26T10:00:00Z"}),
                true,
            ),
            (
                json!({"Variable": "$.ts", "TimestampLessThan": "2026-11-26T10:00:01Z"}),
                true,
            ),
            (
                json!({"Variable": "$.ts", "TimestampGreaterThan": "2026-11-26T11:00:00+02:00"}),
                true,
            ),
            (
                json!({"Variable": "$.ts", "TimestampLessThanEquals": "2026-11-26T10:00:00Z"}),
                true,
            ),
            (
                json!({"Variable": "$.ts", "TimestampGreaterThanEquals": "2027-01-01T00:00:00Z"}),
                false,
            ),
            (
                json!({"Variable": "$.ts", "TimestampEqualsPath": "$.ts"}),
                true,
            ),
            (json!({"Variable": "$.null", "IsNull": true}), true),
            (json!({"Variable": "$.n", "IsNull": false}), true),
            (json!({"Variable": "$.missing", "IsPresent": false}), true),
            (json!({"Variable": "$.n", "IsPresent": true}), true),
            (json!({"Variable": "$.n", "IsNumeric": true}), true),
            (json!({"Variable": "$.s", "IsString": true}), true),
            (json!({"Variable": "$.t", "IsBoolean": true}), true),
            (json!({"Variable": "$.ts", "IsTimestamp": true}), true),
            (json!({"Variable": "$.s", "IsTimestamp": true}), false),
            // A value of another kind does not match.
            (json!({"Variable": "$.n", "StringEquals": "5"}), false),
            (
                json!({"And": [{"Variable": "$.n", "NumericEquals": 5}, {"Variable": "$.s", "StringEquals": "b"}]}),
                true,
            ),
            (
                json!({"Or": [{"Variable": "$.n", "NumericEquals": 1}, {"Variable": "$.s", "StringEquals": "b"}]}),
                true,
            ),
            (
                json!({"Not": {"Variable": "$.n", "NumericEquals": 5}}),
                false,
            ),
        ];
        for (rule, want) in cases {
            assert_eq!(holds(rule.clone(), input.clone()), Ok(want), "{rule}");
        }
    }

    #[test]
    fn a_missing_variable_fails_unless_asking_if_present() {
        assert!(
            holds(
                json!({"Variable": "$.missing", "StringEquals": "x"}),
                json!({})
            )
            .is_err()
        );
    }

    #[test]
    fn wildcards_match_as_step_functions_does() {
        assert!(wildcard("log-*.txt", "log-2026.txt"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b", "ac"));
        assert!(wildcard("a\\*b", "a*b"));
        assert!(!wildcard("a\\*b", "axb"));
    }

    #[test]
    fn refuses_malformed_rules() {
        for bad in [
            json!({"Variable": "$.a"}),
            json!({"Variable": "$.a", "StringEquals": 1}),
            json!({"Variable": "$.a", "NumericEquals": "1"}),
            json!({"Variable": "$.a", "BooleanLessThan": true}),
            json!({"Variable": "$.a", "TimestampEquals": "yesterday"}),
            json!({"Variable": "$.a", "StringEquals": "x", "NumericEquals": 1}),
            json!({"Variable": "$.a[*]", "StringEquals": "x"}),
            json!({"And": []}),
            json!({"Variable": "$.a", "StringEquals": "x", "Next": "B"}),
            json!({"Variable": "$.a", "Frobnicates": "x"}),
        ] {
            assert!(Rule::parse(&bad, false).is_err(), "{bad} should be refused");
        }
    }
}
