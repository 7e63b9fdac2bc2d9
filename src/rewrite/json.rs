//! A strict JSON reader for inspected bodies: duplicate object keys and absurd nesting are
//! refused (a duplicate key could make the gateway and the upstream read different values).
//! Numbers keep their exact text (serde_json's `arbitrary_precision`), so a value the gateway
//! re-serialises carries `12345678901234567890123` as it came, never as a rounded float.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

pub const MAX_DEPTH: usize = 64;

/// serde_json's private map key for a number under `arbitrary_precision`.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

struct Strict(usize);

impl<'de> de::DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom("nesting is too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict(self.0 + 1))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Value::Object(Map::new()));
        };
        // With `arbitrary_precision`, serde_json hands a number over as a one-entry map under
        // this private key, its value the number's exact text.
        if first == NUMBER_TOKEN {
            let text: String = map.next_value()?;
            return serde_json::from_str::<serde_json::Number>(&text)
                .map(Value::Number)
                .map_err(de::Error::custom);
        }
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom("nesting is too deep"));
        }
        let mut out = Map::new();
        let v = map.next_value_seed(Strict(self.0 + 1))?;
        out.insert(first, v);
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom("duplicate object key"));
            }
            let v = map.next_value_seed(Strict(self.0 + 1))?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `bytes` strictly; the error message says what is wrong (never echoes the input).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de::DeserializeSeed::deserialize(Strict(0), &mut de).map_err(|e| describe(&e))?;
    de.end().map_err(|e| describe(&e))?;
    Ok(v)
}

fn describe(e: &serde_json::Error) -> String {
    let what = if e.to_string().contains("duplicate object key") {
        "duplicate object key"
    } else if e.to_string().contains("nesting is too deep") {
        "nesting is too deep"
    } else {
        "invalid JSON"
    };
    format!(
        "request body: {what} at line {} column {}",
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#)
            .unwrap_err()
            .contains("duplicate"));
        assert!(parse_strict(br#"{"x":{"p":"1","p":"2"}}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_strict(deep.as_bytes()).unwrap_err().contains("deep"));
    }

    #[test]
    fn ordinary_json_parses_in_order() {
        let v = parse_strict(br#"{"b":1,"a":[true,null,"x"]}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"b":1,"a":[true,null,"x"]}"#);
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let text = r#"{"big":12345678901234567890123,"neg":-0.000000000000000000001,"e":1e+400,"f":1.50,"i":-7}"#;
        let v = parse_strict(text.as_bytes()).unwrap();
        assert_eq!(v.to_string(), text);
    }

    #[test]
    fn the_private_number_key_holding_no_number_is_refused() {
        // serde_json cannot tell this key from its own number encoding; a value that is not
        // a number's text is refused rather than kept as an object the upstream reads apart.
        assert!(parse_strict(br#"{"$serde_json::private::Number":"hunter2"}"#).is_err());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
    }
}
