//! Byte-exact edits of a JSON document: the values at given locations are replaced and every
//! other byte is kept as the caller sent it (numbers of any size, key order, string escapes,
//! whitespace). Creates are forwarded this way, so the gateway changes nothing that is not a
//! secret by construction.
//!
//! The input must already have passed [`super::json::parse_strict`] (valid JSON, no duplicate
//! keys): this scanner only finds value boundaries, it does not validate.

use serde_json::Value;

use crate::rules::jsonpath::Step;

/// A location that was asked for but not found, or input that is not the JSON it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the body changed shape between parsing and rewriting")]
pub(crate) struct SpanError;

/// Replaces the value at each location with the JSON text of its new value.
pub(crate) fn replace_values(
    raw: &[u8],
    edits: &[(Vec<Step>, Value)],
) -> Result<Vec<u8>, SpanError> {
    if edits.is_empty() {
        return Ok(raw.to_vec());
    }
    let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(edits.len());
    let mut scanner = Scanner {
        b: raw,
        i: 0,
        edits,
        path: Vec::new(),
        spans: &mut spans,
    };
    scanner.ws();
    scanner.value()?;
    if spans.len() != edits.len() {
        return Err(SpanError);
    }
    spans.sort_by_key(|s| s.0);
    let mut out = Vec::with_capacity(raw.len() + 64 * edits.len());
    let mut at = 0;
    for (start, end, edit) in spans {
        if start < at {
            return Err(SpanError);
        }
        out.extend_from_slice(&raw[at..start]);
        out.extend_from_slice(edits[edit].1.to_string().as_bytes());
        at = end;
    }
    out.extend_from_slice(&raw[at..]);
    Ok(out)
}

struct Scanner<'a, 's> {
    b: &'a [u8],
    i: usize,
    edits: &'a [(Vec<Step>, Value)],
    path: Vec<Step>,
    spans: &'s mut Vec<(usize, usize, usize)>,
}

impl Scanner<'_, '_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// Is the current path an edit target, or a prefix of one (worth descending into)?
    fn interest(&self) -> (Option<usize>, bool) {
        let mut target = None;
        let mut below = false;
        for (n, (steps, _)) in self.edits.iter().enumerate() {
            // Compared from the deepest step: siblings differ there, so most checks end at once.
            if steps.len() >= self.path.len()
                && steps[..self.path.len()]
                    .iter()
                    .rev()
                    .eq(self.path.iter().rev())
            {
                if steps.len() == self.path.len() {
                    target = Some(n);
                } else {
                    below = true;
                }
            }
        }
        (target, below)
    }

    fn value(&mut self) -> Result<(), SpanError> {
        let (target, below) = self.interest();
        let start = self.i;
        if target.is_some() || below {
            match self.b.get(self.i) {
                Some(b'{') if target.is_none() => self.object()?,
                Some(b'[') if target.is_none() => self.array()?,
                _ => self.skip()?,
            }
        } else {
            self.skip()?;
        }
        if let Some(n) = target {
            self.spans.push((start, self.i, n));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<(), SpanError> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.key()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(SpanError);
            }
            self.i += 1;
            self.ws();
            self.path.push(Step::Key(key));
            self.value()?;
            self.path.pop();
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(SpanError),
            }
        }
    }

    fn array(&mut self) -> Result<(), SpanError> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        let mut n = 0;
        loop {
            self.ws();
            self.path.push(Step::Index(n));
            self.value()?;
            self.path.pop();
            n += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(SpanError),
            }
        }
    }

    /// An object key, unescaped.
    fn key(&mut self) -> Result<String, SpanError> {
        let start = self.i;
        self.string()?;
        let text = &self.b[start..self.i];
        if !text.contains(&b'\\') {
            return std::str::from_utf8(&text[1..text.len() - 1])
                .map(str::to_string)
                .map_err(|_| SpanError);
        }
        serde_json::from_slice::<String>(text).map_err(|_| SpanError)
    }

    fn string(&mut self) -> Result<(), SpanError> {
        if self.b.get(self.i) != Some(&b'"') {
            return Err(SpanError);
        }
        self.i += 1;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => self.i += 1,
            }
        }
        Err(SpanError)
    }

    /// Skips one value of any kind.
    fn skip(&mut self) -> Result<(), SpanError> {
        match self.b.get(self.i) {
            Some(b'"') => self.string(),
            Some(b'{') | Some(b'[') => {
                let mut depth = 0usize;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                Err(SpanError)
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.b.len()
                    && !matches!(
                        self.b[self.i],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
                if self.i == start {
                    Err(SpanError)
                } else {
                    Ok(())
                }
            }
            None => Err(SpanError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(s: &str) -> Step {
        Step::Key(s.to_string())
    }

    #[test]
    fn only_the_named_values_change_and_every_other_byte_stays() {
        let raw = br#"{ "b" : 12345678901234567890123, "x":"caf\u00e9\/", "connection":{"config":{"password":"hunter2","port":-1.5E+3}} ,"a":[1,{"k":"v"}]}"#;
        let out = replace_values(
            raw,
            &[(
                vec![k("connection"), k("config"), k("password")],
                json!("secret:/x"),
            )],
        )
        .unwrap();
        let expected = br#"{ "b" : 12345678901234567890123, "x":"caf\u00e9\/", "connection":{"config":{"password":"secret:/x","port":-1.5E+3}} ,"a":[1,{"k":"v"}]}"#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(expected.to_vec()).unwrap()
        );
    }

    #[test]
    fn escaped_keys_and_array_elements_are_found() {
        let raw = br#"{"serv\u0065rs":[{"key":"a"},{"key":"b\"c"}]}"#;
        let out = replace_values(
            raw,
            &[
                (vec![k("servers"), Step::Index(1), k("key")], Value::Null),
                (vec![k("servers"), Step::Index(0), k("key")], json!("r0")),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"serv\u0065rs":[{"key":"r0"},{"key":null}]}"#.to_vec()
        );
    }

    #[test]
    fn a_location_that_is_not_there_is_an_error() {
        assert_eq!(
            replace_values(br#"{"a":1}"#, &[(vec![k("b")], json!(1))]),
            Err(SpanError)
        );
    }

    #[test]
    fn strings_holding_brackets_and_quotes_are_skipped_whole() {
        let raw = br#"{"s":"}]\"{[","t":{"u":"]}"},"p":"v"}"#;
        let out = replace_values(raw, &[(vec![k("p")], json!("w"))]).unwrap();
        assert_eq!(out, br#"{"s":"}]\"{[","t":{"u":"]}"},"p":"w"}"#.to_vec());
    }
}
