//! Intrinsic functions (`States.Format(...)` and the rest), parsed when a definition is loaded
//! and evaluated against a state's input and the context object.

use base64::Engine as _;
use serde_json::{Number, Value};
use sha2::Digest as _;

use crate::path::Path;

/// The functions this interpreter knows, with the arguments each takes (min, max).
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("States.Format", 1, usize::MAX),
    ("States.StringToJson", 1, 1),
    ("States.JsonToString", 1, 1),
    ("States.Array", 0, usize::MAX),
    ("States.ArrayPartition", 2, 2),
    ("States.ArrayContains", 2, 2),
    ("States.ArrayRange", 3, 3),
    ("States.ArrayGetItem", 2, 2),
    ("States.ArrayLength", 1, 1),
    ("States.ArrayUnique", 1, 1),
    ("States.Base64Encode", 1, 1),
    ("States.Base64Decode", 1, 1),
    ("States.Hash", 2, 2),
    ("States.JsonMerge", 3, 3),
    ("States.MathRandom", 2, 3),
    ("States.MathAdd", 2, 2),
    ("States.StringSplit", 2, 2),
    ("States.UUID", 0, 0),
];

/// Hash algorithms `States.Hash` takes here (MD5 and SHA-1 are refused: weak, and not in the
/// crates this project uses).
const HASHES: &[&str] = &["SHA-256", "SHA-384", "SHA-512"];

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Literal(Value),
    Path(Path),
    Call(Call),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub args: Vec<Arg>,
}

impl Call {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parser = Parser { text, at: 0 };
        let call = parser.call()?;
        parser.blank();
        if parser.at != text.len() {
            return Err(format!("{text:?}: unexpected text after the call"));
        }
        Ok(call)
    }

    /// Evaluates it; an error is the cause of a `States.IntrinsicFailure`.
    pub fn eval(&self, input: &Value, context: &Value) -> Result<Value, String> {
        let args = self
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Literal(v) => Ok(v.clone()),
                Arg::Path(p) => p
                    .select(input, context)
                    .ok_or_else(|| format!("{}: {p} selects nothing", self.name)),
                Arg::Call(c) => c.eval(input, context),
            })
            .collect::<Result<Vec<_>, _>>()?;
        apply(&self.name, &args)
    }
}

fn apply(name: &str, args: &[Value]) -> Result<Value, String> {
    let fail = |why: &str| format!("{name}: {why}");
    let arg = |i: usize| args.get(i).ok_or_else(|| fail("an argument is missing"));
    let text = |i: usize| -> Result<&str, String> {
        arg(i)?
            .as_str()
            .ok_or_else(|| fail(&format!("argument {} must be a string", i + 1)))
    };
    let array = |i: usize| -> Result<&Vec<Value>, String> {
        arg(i)?
            .as_array()
            .ok_or_else(|| fail(&format!("argument {} must be an array", i + 1)))
    };
    // Step Functions rounds a number with a fraction to the nearest integer.
    let integer = |i: usize| -> Result<i64, String> {
        let v = arg(i)?;
        v.as_i64()
            .or_else(|| {
                v.as_f64()
                    .map(f64::round)
                    .filter(|f| f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| fail(&format!("argument {} must be a number", i + 1)))
    };
    match name {
        "States.Format" => {
            let template = text(0)?;
            let mut out = String::new();
            let mut values = args.iter().skip(1);
            let mut chars = template.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '{' if chars.peek() == Some(&'}') => {
                        chars.next();
                        let value = values
                            .next()
                            .ok_or_else(|| fail("more {} than arguments"))?;
                        match value {
                            Value::String(s) => out.push_str(s),
                            other => out.push_str(&other.to_string()),
                        }
                    }
                    other => out.push(other),
                }
            }
            if values.next().is_some() {
                return Err(fail("more arguments than {}"));
            }
            Ok(Value::String(out))
        }
        "States.StringToJson" => serde_json::from_str(text(0)?).map_err(|e| fail(&e.to_string())),
        "States.JsonToString" => Ok(Value::String(arg(0)?.to_string())),
        "States.Array" => Ok(Value::Array(args.to_vec())),
        "States.ArrayPartition" => {
            let size = usize::try_from(integer(1)?)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| fail("the chunk size must be positive"))?;
            Ok(Value::Array(
                array(0)?
                    .chunks(size)
                    .map(|c| Value::Array(c.to_vec()))
                    .collect(),
            ))
        }
        "States.ArrayContains" => Ok(Value::Bool(array(0)?.contains(arg(1)?))),
        "States.ArrayRange" => {
            let (start, end, step) = (integer(0)?, integer(1)?, integer(2)?);
            if step == 0 {
                return Err(fail("the step must not be 0"));
            }
            let mut out = Vec::new();
            let mut at = start;
            while (step > 0 && at <= end) || (step < 0 && at >= end) {
                if out.len() >= 1000 {
                    return Err(fail("a range has at most 1000 items"));
                }
                out.push(Value::from(at));
                at = at.checked_add(step).ok_or_else(|| fail("overflow"))?;
            }
            Ok(Value::Array(out))
        }
        "States.ArrayGetItem" => {
            let index = usize::try_from(integer(1)?).map_err(|_| fail("a negative index"))?;
            array(0)?
                .get(index)
                .cloned()
                .ok_or_else(|| fail("the index is out of range"))
        }
        "States.ArrayLength" => Ok(Value::from(array(0)?.len())),
        "States.ArrayUnique" => {
            let mut out: Vec<Value> = Vec::new();
            for v in array(0)? {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(Value::Array(out))
        }
        "States.Base64Encode" => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(text(0)?),
        )),
        "States.Base64Decode" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text(0)?)
                .map_err(|e| fail(&e.to_string()))?;
            String::from_utf8(bytes)
                .map(Value::String)
                .map_err(|_| fail("the decoded data is not UTF-8"))
        }
        "States.Hash" => {
            let data = text(0)?;
            let digest = match text(1)? {
                "SHA-256" => hex::encode(sha2::Sha256::digest(data)),
                "SHA-384" => hex::encode(sha2::Sha384::digest(data)),
                "SHA-512" => hex::encode(sha2::Sha512::digest(data)),
                other => return Err(fail(&format!("{other} is not one of {HASHES:?}"))),
            };
            Ok(Value::String(digest))
        }
        "States.JsonMerge" => {
            if arg(2)? != &Value::Bool(false) {
                return Err(fail("only a shallow merge (false) is supported"));
            }
            let (Some(a), Some(b)) = (arg(0)?.as_object(), arg(1)?.as_object()) else {
                return Err(fail("both arguments must be objects"));
            };
            let mut merged = a.clone();
            merged.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(Value::Object(merged))
        }
        "States.MathRandom" => {
            let (start, end) = (integer(0)?, integer(1)?);
            if end <= start {
                return Err(fail("the end must be above the start"));
            }
            let span = end.abs_diff(start);
            let seed = match args.get(2) {
                Some(_) => integer(2)?.unsigned_abs(),
                None => uuid::Uuid::new_v4().as_u64_pair().0,
            };
            let offset = splitmix(seed) % span;
            Ok(Value::from(start.saturating_add_unsigned(offset)))
        }
        "States.MathAdd" => {
            let (a, b) = (integer(0)?, integer(1)?);
            let range = -(1i64 << 31)..(1i64 << 31);
            if !range.contains(&a) || !range.contains(&b) {
                return Err(fail("arguments must be 32-bit integers"));
            }
            Ok(Value::from(a + b))
        }
        "States.StringSplit" => {
            let delimiters: Vec<char> = text(1)?.chars().collect();
            Ok(Value::Array(
                text(0)?
                    .split(|c| delimiters.contains(&c))
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ))
        }
        "States.UUID" => Ok(Value::String(uuid::Uuid::new_v4().to_string())),
        other => Err(format!("{other} is not a known intrinsic function")),
    }
}

/// Resolves the escapes a string literal keeps: `\\`, `\{`, `\}`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            other => out.push(other),
        }
    }
    out
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn blank(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.blank();
        if self.rest().starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn call(&mut self) -> Result<Call, String> {
        self.blank();
        let rest = self.rest();
        let end = rest
            .find('(')
            .ok_or_else(|| format!("{:?}: '(' is missing", self.text))?;
        let name = rest.get(..end).unwrap_or_default().trim().to_owned();
        self.at += end + 1;
        let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(n, _, _)| *n == name) else {
            return Err(format!("{name} is not a supported intrinsic function"));
        };
        let mut args = Vec::new();
        if !self.eat(')') {
            loop {
                args.push(self.arg()?);
                if self.eat(')') {
                    break;
                }
                if !self.eat(',') {
                    return Err(format!("{:?}: expected ',' or ')'", self.text));
                }
            }
        }
        if args.len() < min || args.len() > max {
            return Err(format!("{name} does not take {} arguments", args.len()));
        }
        for (n, arg) in args.iter_mut().enumerate() {
            let template = name == "States.Format" && n == 0;
            if let (false, Arg::Literal(Value::String(s))) = (template, arg) {
                *s = unescape(s);
            }
        }
        if name == "States.Hash"
            && let Some(Arg::Literal(Value::String(algorithm))) = args.get(1)
            && !HASHES.contains(&algorithm.as_str())
        {
            return Err(format!("States.Hash: {algorithm} is not one of {HASHES:?}"));
        }
        if name == "States.JsonMerge"
            && let Some(Arg::Literal(deep)) = args.get(2)
            && deep != &Value::Bool(false)
        {
            return Err("States.JsonMerge: only a shallow merge (false) is supported".into());
        }
        Ok(Call { name, args })
    }

    fn arg(&mut self) -> Result<Arg, String> {
        self.blank();
        let rest = self.rest();
        if rest.starts_with('\'') {
            return self.string().map(|s| Arg::Literal(Value::String(s)));
        }
        if rest.starts_with("States.") {
            return self.call().map(Arg::Call);
        }
        // A path, number, boolean or null runs to the next ',' or ')' at this level.
        let end = rest.find([',', ')']).unwrap_or(rest.len());
        let token = rest.get(..end).unwrap_or_default().trim().to_owned();
        self.at += end;
        if token.starts_with('$') {
            return Path::parse(&token).map(Arg::Path);
        }
        match token.as_str() {
            "true" => Ok(Arg::Literal(Value::Bool(true))),
            "false" => Ok(Arg::Literal(Value::Bool(false))),
            "null" => Ok(Arg::Literal(Value::Null)),
            number => serde_json::from_str::<Number>(number)
                .map(|n| Arg::Literal(Value::Number(n)))
                .map_err(|_| format!("{:?}: {number:?} is not an argument", self.text)),
        }
    }

    /// A single-quoted string; `\'`, `\\`, `\{` and `\}` escape. Only `\'` is resolved here:
    /// the others are kept for `States.Format`'s template, and resolved for any other use.
    fn string(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, '\'')) => out.push('\''),
                    Some((_, b @ ('{' | '}' | '\\'))) => {
                        out.push('\\');
                        out.push(b);
                    }
                    _ => return Err(format!("{:?}: a bad escape in a string", self.text)),
                },
                '\'' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                other => out.push(other),
            }
        }
        Err(format!("{:?}: a string is not closed", self.text))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn eval(text: &str, input: Value) -> Result<Value, String> {
        Call::parse(text)?.eval(&input, &json!({"Execution": {"Name": "run-1"}}))
    }

    #[test]
    fn evaluates_each_function() {
        let input = json!({"name": "Ada", "n": 3, "list": [1, 2, 2, 3], "obj": {"a": 1}, "json": "{\"k\":[1]}"});
        let cases = [
            (
                "States.Format('Hello, {}! You have {} items.', $.name, $.n)",
                json!("Hello, Ada! You have 3 items."),
            ),
            (
                "States.Format('literal \\{\\} and {}', $$.Execution.Name)",
                json!("literal {} and run-1"),
            ),
            ("States.StringToJson($.json)", json!({"k": [1]})),
            ("States.JsonToString($.obj)", json!("{\"a\":1}")),
            (
                "States.Array('a', 1, true, null, $.n)",
                json!(["a", 1, true, null, 3]),
            ),
            ("States.ArrayPartition($.list, 3)", json!([[1, 2, 2], [3]])),
            ("States.ArrayContains($.list, 3)", json!(true)),
            ("States.ArrayRange(1, 9, 3)", json!([1, 4, 7])),
            ("States.ArrayGetItem($.list, 3)", json!(3)),
            ("States.ArrayLength($.list)", json!(4)),
            ("States.ArrayUnique($.list)", json!([1, 2, 3])),
            ("States.Base64Encode('Ada')", json!("QWRh")),
            ("States.Base64Decode('QWRh')", json!("Ada")),
            (
                "States.Hash('abc', 'SHA-256')",
                json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ),
            (
                "States.JsonMerge($.obj, States.StringToJson('{\"b\":2}'), false)",
                json!({"a": 1, "b": 2}),
            ),
            ("States.MathAdd($.n, -5)", json!(-2)),
            ("States.MathAdd(1.4, 1.6)", json!(3)),
            ("States.StringSplit('a,b;;c', ',;')", json!(["a", "b", "c"])),
            ("States.Format('a\\\\b \\{}')", json!("a\\b {}")),
            ("States.Array('it\\'s', '\\{x\\}')", json!(["it's", "{x}"])),
            ("States.MathRandom(5, 6)", json!(5)),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text, input.clone()), Ok(want), "{text}");
        }
        let id = eval("States.UUID()", json!({})).unwrap();
        assert!(uuid::Uuid::parse_str(id.as_str().unwrap()).is_ok());
        let seeded = eval("States.MathRandom(0, 1000, 7)", json!({})).unwrap();
        assert_eq!(
            seeded,
            eval("States.MathRandom(0, 1000, 7)", json!({})).unwrap()
        );
    }

    #[test]
    fn refuses_unknown_functions_and_bad_arity_when_parsed() {
        for bad in [
            "States.Nope(1)",
            "States.UUID(1)",
            "States.MathAdd(1)",
            "States.Hash('x', 'MD5')",
            "States.JsonMerge($.a, $.b, true)",
            "States.Format('x'",
            "States.Format('x') extra",
        ] {
            assert!(Call::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn fails_at_run_time_on_bad_values() {
        assert!(eval("States.Format('{} {}', 1)", json!({})).is_err());
        assert!(eval("States.MathAdd($.missing, 1)", json!({})).is_err());
        assert!(eval("States.MathAdd(2147483648, 1)", json!({})).is_err());
        assert!(eval("States.Hash(1, 'SHA-256')", json!({})).is_err());
        assert!(eval("States.ArrayGetItem(States.Array(1), 5)", json!({})).is_err());
        assert!(eval("States.StringToJson('{')", json!({})).is_err());
    }
}
