//! The JSON reader and writer for inspected bodies.
//!
//! - Writes ([`parse_strict`]): duplicate object keys are refused (they could make the gateway
//!   and the upstream read different values) and so is nesting deeper than [`MAX_DEPTH`], the
//!   same limit the entity a write produces is held to (`proxy::write`).
//! - Reads ([`parse_answer`]): any depth up to [`READ_MAX_DEPTH`], far beyond what OpenMetadata
//!   stores (its JSON library stops at 1,000 levels by default), so no entity a write could
//!   leave is unreadable. Duplicate keys are kept last-wins: the caller gets the gateway's
//!   re-serialised document, which has one of each.
//!
//! Both recurse on a stack that grows on the heap when it runs low (`stacker`), and so does
//! [`to_vec`]; [`DeepValue`] drops without recursion: a deep document cannot overflow a
//! worker's stack. Numbers keep their exact value (serde_json's `arbitrary_precision`), so a
//! value the gateway
//! re-serialises carries `12345678901234567890123` or `1e400` with its exact value, never
//! rounded to a float or refused as out of range.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::refusal::Unreadable;

/// The deepest nesting a write may send or leave an entity with (an object holding an object
/// is 2 levels). The reads are tested at this depth and far beyond.
pub(crate) const MAX_DEPTH: usize = 128;

/// serde_json's private map key for a number under `arbitrary_precision`.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Parsing and serialising look at the stack every this many levels (a few levels of frames,
/// even unoptimised, fit in the red zone of [`deep`]).
const GROW_EVERY: usize = 4;

pub(crate) use crate::refusal::{READ_MAX_DEPTH, TOO_DEEP};
/// Runs `f` with enough stack for every recursion over a document (defined with the JSON
/// paths, which the rules walk too).
pub(crate) use crate::rules::jsonpath::deep;

#[derive(Clone, Copy)]
struct Seed {
    /// Containers already open around this value.
    depth: usize,
    limit: usize,
    refuse_duplicates: bool,
}

impl Seed {
    fn inner(self) -> Seed {
        Seed {
            depth: self.depth + 1,
            ..self
        }
    }

    fn open<E: de::Error>(self) -> Result<(), E> {
        if self.depth >= self.limit {
            return Err(E::custom(format!("{TOO_DEEP} {} levels", self.limit)));
        }
        Ok(())
    }
}

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth % GROW_EVERY == 0 {
            deep(|| d.deserialize_any(self))
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Seed {
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
        self.open()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.inner())? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            self.open()?;
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
        self.open()?;
        let mut out = Map::new();
        let v = map.next_value_seed(self.inner())?;
        out.insert(first, v);
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self.inner())?;
            // One look-up per member: the key is hashed once.
            match out.entry(k) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(v);
                }
                serde_json::map::Entry::Occupied(_) if self.refuse_duplicates => {
                    drop_deep(v);
                    return Err(de::Error::custom("duplicate object key"));
                }
                serde_json::map::Entry::Occupied(mut slot) => drop_deep(slot.insert(v)),
            }
        }
        Ok(Value::Object(out))
    }
}

fn parse(bytes: &[u8], seed: Seed) -> Result<Value, serde_json::Error> {
    // Valid UTF-8 checked once for the whole text, so serde_json does not check each string
    // again; otherwise the slice reader finds and reports the bad bytes as before.
    match std::str::from_utf8(bytes) {
        Ok(text) => run(&mut serde_json::Deserializer::from_str(text), seed),
        Err(_) => run(&mut serde_json::Deserializer::from_slice(bytes), seed),
    }
}

/// As [`parse`], for deeply nested documents: an error deep inside makes serde_json locate
/// it again at every level on the way out, which over a slice rescans the text each time
/// (depth x size); a reader keeps its position as it goes. Slower, so only for answers the
/// slice parse gave up on at [`SLICE_DEPTH`].
fn parse_deep(bytes: &[u8], seed: Seed) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(bytes);
    run(&mut de, seed)
}

fn run<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    seed: Seed,
) -> Result<Value, serde_json::Error> {
    // The seed counts depth itself, beyond serde_json's fixed 128.
    de.disable_recursion_limit();
    let v = de::DeserializeSeed::deserialize(seed, &mut *de)?;
    if let Err(e) = de.end() {
        drop_deep(v);
        return Err(e);
    }
    Ok(v)
}

/// Answers nested deeper than this are parsed again with [`parse_deep`].
const SLICE_DEPTH: usize = 256;

/// The deepest nesting of `bytes` read as JSON (strings skipped), counted no further than
/// just past `stop`. One pass; inside strings it jumps from quote to backslash.
fn nesting(b: &[u8], stop: usize) -> usize {
    let (mut i, mut depth, mut max) = (0, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => loop {
                i += 1;
                let Some(rest) = b.get(i..) else { return max };
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => return max,
                    Some(off) if rest[off] == b'\\' => i += off + 1,
                    Some(off) => {
                        i += off;
                        break;
                    }
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > stop {
                        return max;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// Parses a request body strictly; the error message says what is wrong (never echoes the
/// input).
pub(crate) fn parse_strict(bytes: &[u8]) -> Result<Value, String> {
    let seed = Seed {
        depth: 0,
        limit: MAX_DEPTH,
        refuse_duplicates: true,
    };
    parse(bytes, seed).map_err(|e| describe(&e))
}

/// Parses an upstream answer (or a JSON string inside one); the error says why it cannot be
/// read.
pub fn parse_answer(bytes: &[u8]) -> Result<DeepValue, Unreadable> {
    let seed = Seed {
        depth: 0,
        limit: SLICE_DEPTH,
        refuse_duplicates: false,
    };
    match parse(bytes, seed) {
        Ok(value) => {
            return Ok(DeepValue { value, deep: false });
        }
        Err(e) if !e.to_string().contains(TOO_DEEP) => {
            return Err(Unreadable::classify(bytes, &e));
        }
        Err(_) => {}
    }
    // Deeper than the fast parse goes: refused outright past the limit, else read again.
    if nesting(bytes, READ_MAX_DEPTH) > READ_MAX_DEPTH {
        return Err(Unreadable::TooDeep);
    }
    let seed = Seed {
        limit: READ_MAX_DEPTH,
        ..seed
    };
    parse_deep(bytes, seed)
        .map(|value| DeepValue { value, deep: true })
        .map_err(|e| Unreadable::classify(bytes, &e))
}

fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = if text.contains("duplicate object key") {
        "duplicate object key".to_string()
    } else if text.contains(TOO_DEEP) {
        format!("nesting is deeper than the gateway's limit of {MAX_DEPTH} levels")
    } else {
        "invalid JSON".to_string()
    };
    format!(
        "request body: {what} at line {} column {}",
        e.line(),
        e.column()
    )
}

/// How deeply `v` nests: 0 for a scalar, 1 for `{}` or `[1]`, 2 for `{"a":{}}`. Iterative.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut todo = vec![(v, 0usize)];
    while let Some((v, d)) = todo.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                todo.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d + 1);
                todo.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Serialises `v` compactly at any depth.
pub fn to_vec(v: &Value) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Deep(v, 0))
}

/// Serialises `v` compactly at any depth, as a string.
pub(crate) fn to_string(v: &Value) -> Result<String, serde_json::Error> {
    to_vec(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A value and how deep it sits.
struct Deep<'a>(&'a Value, usize);

impl Serialize for Deep<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let level = || match self.0 {
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(&Deep(x, self.1 + 1))?;
                }
                seq.end()
            }
            Value::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, &Deep(v, self.1 + 1))?;
                }
                map.end()
            }
            scalar => scalar.serialize(s),
        };
        if self.1 % GROW_EVERY == 0 {
            deep(level)
        } else {
            level()
        }
    }
}

/// Drops a document without recursion (a `Value`'s own drop recurses once per level).
pub(crate) fn drop_deep(v: Value) {
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Array(a) => todo.extend(a),
            Value::Object(m) => todo.extend(m.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// A parsed answer. One that was nested deeply is dropped without recursion, whatever path
/// leaves the function holding it.
pub struct DeepValue {
    value: Value,
    deep: bool,
}

impl Drop for DeepValue {
    fn drop(&mut self) {
        if self.deep {
            drop_deep(std::mem::take(&mut self.value));
        }
    }
}

impl std::ops::Deref for DeepValue {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl std::ops::DerefMut for DeepValue {
    fn deref_mut(&mut self) -> &mut Value {
        &mut self.value
    }
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

    fn nested(levels: usize) -> String {
        "{\"a\":".repeat(levels - 1) + "{}" + &"}".repeat(levels - 1)
    }

    #[test]
    fn a_write_nested_deeper_than_the_limit_is_refused_naming_it() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let e = parse_strict(deep.as_bytes()).unwrap_err();
        assert!(
            e.contains("deeper than the gateway's limit of 128 levels"),
            "{e}"
        );
        let at_limit = nested(MAX_DEPTH);
        let v = parse_strict(at_limit.as_bytes()).unwrap();
        assert_eq!(depth(&v), MAX_DEPTH);
    }

    #[test]
    fn answers_parse_and_serialise_far_deeper_than_writes_may_go() {
        let text = nested(READ_MAX_DEPTH);
        let v = parse_answer(text.as_bytes()).unwrap();
        assert_eq!(depth(&v), READ_MAX_DEPTH);
        assert_eq!(to_vec(&v).unwrap(), text.as_bytes());
    }

    #[test]
    fn answers_deeper_than_the_read_limit_are_refused_as_too_deep() {
        let text = nested(READ_MAX_DEPTH + 1);
        assert_eq!(
            parse_answer(text.as_bytes()).err(),
            Some(Unreadable::TooDeep)
        );
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert_eq!(nesting(br#"{"a":[1,{"b":"{[{[\"]"}]}"#, 100), 3);
        assert_eq!(nesting(br#"["\\",["x"]]"#, 100), 2);
        assert_eq!(nesting(b"[[[[[[", 3), 4);
        assert_eq!(nesting(br#"{"unterminated"#, 100), 1);
    }

    #[test]
    fn a_broken_deep_answer_is_refused_quickly() {
        let text = "[".repeat(READ_MAX_DEPTH - 5) + "NaN" + &"]".repeat(READ_MAX_DEPTH - 5);
        let started = std::time::Instant::now();
        assert_eq!(
            parse_answer(text.as_bytes()).err(),
            Some(Unreadable::NonFinite)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn answers_keep_the_last_of_duplicate_keys() {
        let v = parse_answer(br#"{"a":1,"a":{"b":2}}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"a":{"b":2}}"#);
    }

    #[test]
    fn huge_exponents_keep_their_text_in_answers() {
        // Out of f64's range, yet read and written back with its value (the exponent's
        // spelling is normalised).
        let v = parse_answer(br#"{"x":1e400,"y":-1E-400}"#).unwrap();
        assert_eq!(to_string(&v).unwrap(), r#"{"x":1e+400,"y":-1e-400}"#);
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
