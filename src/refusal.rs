//! Why a ruled answer could not be fully read and rewritten. Such an answer never reaches a
//! caller, bots included: it is replaced by a 502 that names the reason, counted in
//! `/metrics` (`omsp_reads_refused_total{reason}`) and in the access line (`read_refused`).

/// The deepest nesting the gateway reads in an answer; deeper answers are refused (502).
pub(crate) const READ_MAX_DEPTH: usize = 10_000;
/// The parser's message for nesting beyond its limit.
pub(crate) const TOO_DEEP: &str = "nesting is deeper than";

/// One reason an answer is refused; [`Unreadable::as_str`] is the stable name operators see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Larger than `server.max_body_bytes`.
    TooLarge,
    /// The upstream's body broke off.
    Incomplete,
    /// A `Content-Encoding` the gateway cannot decode, or a body that does not decode by it.
    Encoding,
    /// Compressed bytes (gzip, zlib) without a `Content-Encoding` that says so.
    Compressed,
    /// A leading UTF-8 byte order mark.
    Bom,
    /// Not JSON at all, or broken JSON.
    NotJson,
    /// Bytes after the JSON document.
    TrailingBytes,
    /// `NaN` or `Infinity`, which JSON does not have.
    NonFinite,
    /// Nested deeper than the gateway reads ([`READ_MAX_DEPTH`]).
    TooDeep,
    /// A string field that holds JSON (a version, a change's old or new value) which does not
    /// parse.
    JsonString,
    /// A text answer (CSV export) that is not UTF-8 text.
    NotText,
    /// A text answer (CSV export) holding a `secret:` reference or a `fernet:` token, for a
    /// caller who may not see them.
    TextMarker,
}

impl Unreadable {
    pub(crate) const ALL: [Unreadable; 12] = [
        Unreadable::TooLarge,
        Unreadable::Incomplete,
        Unreadable::Encoding,
        Unreadable::Compressed,
        Unreadable::Bom,
        Unreadable::NotJson,
        Unreadable::TrailingBytes,
        Unreadable::NonFinite,
        Unreadable::TooDeep,
        Unreadable::JsonString,
        Unreadable::NotText,
        Unreadable::TextMarker,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unreadable::TooLarge => "too_large",
            Unreadable::Incomplete => "incomplete",
            Unreadable::Encoding => "encoding",
            Unreadable::Compressed => "compressed",
            Unreadable::Bom => "bom",
            Unreadable::NotJson => "not_json",
            Unreadable::TrailingBytes => "trailing_bytes",
            Unreadable::NonFinite => "non_finite",
            Unreadable::TooDeep => "too_deep",
            Unreadable::JsonString => "json_string",
            Unreadable::NotText => "not_text",
            Unreadable::TextMarker => "text_marker",
        }
    }

    /// Position in [`Unreadable::ALL`] (metrics keep one counter per reason).
    pub(crate) fn index(self) -> usize {
        Unreadable::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }

    /// The message of the 502; never a byte of the answer.
    pub(crate) fn message(self) -> String {
        let why = match self {
            Unreadable::TooLarge => "it is too large to inspect".to_string(),
            Unreadable::Incomplete => "it broke off".to_string(),
            Unreadable::Encoding => "its Content-Encoding cannot be decoded".to_string(),
            Unreadable::Compressed => {
                "it is compressed without a Content-Encoding saying so".to_string()
            }
            Unreadable::Bom => "it starts with a byte order mark".to_string(),
            Unreadable::NotJson => "it is not valid JSON".to_string(),
            Unreadable::TrailingBytes => "it has bytes after the JSON document".to_string(),
            Unreadable::NonFinite => {
                "it holds NaN or Infinity, which JSON does not have".to_string()
            }
            Unreadable::TooDeep => format!("it is nested deeper than {} levels", READ_MAX_DEPTH),
            Unreadable::JsonString => "a string field holding JSON does not parse".to_string(),
            Unreadable::NotText => "it is neither JSON nor UTF-8 text".to_string(),
            Unreadable::TextMarker => {
                "it is text holding secret references or Fernet tokens".to_string()
            }
        };
        format!(
            "upstream answer refused: the gateway cannot fully read it to hide its secrets ({}): {why}",
            self.as_str()
        )
    }

    /// Why `bytes` (already decoded per its `Content-Encoding`) cannot be read as JSON, from the
    /// parser's error and a look at the bytes.
    pub(crate) fn classify(bytes: &[u8], err: &serde_json::Error) -> Unreadable {
        let text = err.to_string();
        if bytes.starts_with(b"\xEF\xBB\xBF") {
            Unreadable::Bom
        } else if looks_compressed(bytes) {
            Unreadable::Compressed
        } else if text.contains(TOO_DEEP) {
            Unreadable::TooDeep
        } else if text.contains("trailing characters") {
            Unreadable::TrailingBytes
        } else if memchr::memmem::find(bytes, b"NaN").is_some()
            || memchr::memmem::find(bytes, b"Infinity").is_some()
        {
            Unreadable::NonFinite
        } else {
            Unreadable::NotJson
        }
    }
}

/// gzip's magic bytes, or a zlib header (what `deflate` sends): neither can start JSON or text.
pub(crate) fn looks_compressed(bytes: &[u8]) -> bool {
    match bytes {
        [0x1f, 0x8b, ..] => true,
        [0x78, second, ..] => [0x01, 0x5e, 0x9c, 0xda].contains(second),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(bytes: &[u8]) -> Unreadable {
        crate::rewrite::json::parse_answer(bytes)
            .err()
            .expect("must not parse")
    }

    #[test]
    fn every_reason_has_its_own_name_and_index() {
        let names: std::collections::HashSet<_> =
            Unreadable::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Unreadable::ALL.len());
        for (i, r) in Unreadable::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn odd_answers_are_named_by_what_is_wrong() {
        assert_eq!(reason(b"\xEF\xBB\xBF{\"a\":1}"), Unreadable::Bom);
        assert_eq!(reason(b"\x1f\x8b\x08\x00rest"), Unreadable::Compressed);
        assert_eq!(reason(b"{\"a\":1} x"), Unreadable::TrailingBytes);
        assert_eq!(reason(b"{\"a\":NaN}"), Unreadable::NonFinite);
        assert_eq!(reason(b"{\"a\":-Infinity}"), Unreadable::NonFinite);
        assert_eq!(reason(b"<html>oops</html>"), Unreadable::NotJson);
        assert_eq!(reason(b"{\"a\":"), Unreadable::NotJson);
    }

    #[test]
    fn the_message_names_the_reason_and_never_the_answer() {
        let m = Unreadable::TrailingBytes.message();
        assert!(m.contains("trailing_bytes"), "{m}");
        assert!(m.contains("bytes after the JSON document"), "{m}");
    }
}
