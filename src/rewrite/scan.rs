//! The safety net's byte scan, chunk by chunk: whether a JSON answer could hold something
//! the net masks (a string starting with a reference or a token, `"secret:` or `"fernet:`; a
//! reference or token inside a string, `secret:/` or `fernet:gA`; or a `\u` escape that could
//! spell any of them), fed the answer's chunks as they arrive, so that no answer is scanned
//! twice and a marker split across two chunks is still seen.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The longest marker (`fernet:gA`) is 9 bytes: a marker split across chunks has at most 8 in
/// the first.
pub(crate) const CARRY: usize = 8;

/// Every marker has `et:` in it: one search for that (rare in JSON), each hit checked.
static ET_COLON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"et:"));

/// Whether `bytes` holds a marker, in two passes of the cheapest kind (a 3-byte search and a
/// 1-byte one). Ids always start with `/` and Fernet tokens with `gA` (version byte 0x80), so
/// the markers inside strings are those two spellings.
pub(crate) fn has_marker(bytes: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = ET_COLON.find(&bytes[at..]) {
        let i = at + i;
        let at_ = |from: usize, len: usize| i.checked_sub(from).and_then(|s| bytes.get(s..s + len));
        if matches!(at_(5, 8), Some(b"\"secret:") | Some(b"\"fernet:"))
            || at_(4, 8) == Some(b"secret:/")
            || at_(4, 9) == Some(b"fernet:gA")
        {
            return true;
        }
        at = i + 3;
    }
    memchr::memchr_iter(b'\\', bytes).any(|i| bytes.get(i + 1) == Some(&b'u'))
}

/// Scans a byte stream chunk by chunk; remembers the last [`CARRY`] bytes so that markers
/// across chunk boundaries are found.
#[derive(Debug, Default)]
pub(crate) struct MarkerScan {
    tail: [u8; CARRY],
    tail_len: usize,
    seen: bool,
}

impl MarkerScan {
    /// Scans the next chunk; true once any marker has been seen, in this chunk or before.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.seen {
            return true;
        }
        // The boundary: the previous tail and the head of this chunk.
        let head = &chunk[..chunk.len().min(CARRY)];
        let mut window = [0u8; 2 * CARRY];
        window[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        window[self.tail_len..self.tail_len + head.len()].copy_from_slice(head);
        let window = &window[..self.tail_len + head.len()];
        if (self.tail_len > 0 && has_marker(window)) || has_marker(chunk) {
            self.seen = true;
            return true;
        }
        // The new tail: the last CARRY bytes of everything seen so far.
        if chunk.len() >= CARRY {
            self.tail.copy_from_slice(&chunk[chunk.len() - CARRY..]);
            self.tail_len = CARRY;
        } else {
            let keep = window.len().min(CARRY);
            let start = window.len() - keep;
            let mut tail = [0u8; CARRY];
            tail[..keep].copy_from_slice(&window[start..]);
            self.tail = tail;
            self.tail_len = keep;
        }
        false
    }

    pub(crate) fn seen(&self) -> bool {
        self.seen
    }
}

/// Whether a `Content-Type` may be JSON the safety net must read: none at all, anything
/// naming `json`, or any `text/` type (compared ignoring case, without allocating).
pub(crate) fn json_like(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(v) = content_type else { return true };
    let Ok(ct) = v.to_str() else { return true };
    let b = ct.as_bytes();
    const JSON: &[u8] = b"application/json";
    (b.len() >= JSON.len() && b[..JSON.len()].eq_ignore_ascii_case(JSON))
        || (b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"text/"))
        || b.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], sizes: &[usize]) -> bool {
        let mut s = MarkerScan::default();
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let n = sizes[i % sizes.len()].min(body.len() - at);
            s.feed(&body[at..at + n]);
            at += n;
            i += 1;
        }
        s.seen()
    }

    #[test]
    fn a_marker_split_at_every_position_across_chunks_is_seen() {
        for marker in [
            &b"\"secret:"[..],
            b"\"fernet:",
            b"\\u",
            b"a secret:/",
            b"x fernet:gA",
        ] {
            let mut body = br#"{"description":"a long enough answer","x":"#.to_vec();
            body.extend_from_slice(marker);
            body.extend_from_slice(br#"/a/b"}"#);
            for split in 1..body.len() {
                let mut s = MarkerScan::default();
                s.feed(&body[..split]);
                assert!(
                    s.feed(&body[split..]),
                    "{} split at {split}",
                    String::from_utf8_lossy(marker)
                );
            }
        }
    }

    #[test]
    fn a_marker_spread_over_one_byte_chunks_is_seen() {
        let body = br#"{"a":"b","c":"secret:/x"}"#;
        for size in 1..=9 {
            assert!(scan_in_pieces(body, &[size]), "chunks of {size}");
            assert!(
                scan_in_pieces(body, &[size, 1, 3]),
                "chunks of {size}, 1, 3"
            );
        }
    }

    #[test]
    fn answers_without_markers_pass_in_any_chunking() {
        let body = br#"{"a":"secrets: are fine","b":"fernet","c":"secret"}"#;
        for size in 1..=body.len() {
            assert!(!scan_in_pieces(body, &[size]), "chunks of {size}");
        }
        assert!(!has_marker(body));
    }

    #[test]
    fn the_chunked_scan_agrees_with_the_whole_body_scan() {
        let bodies: [&[u8]; 4] = [
            br#"{"a":"secret:/x"}"#,
            br#"{"a":"fernet:gAAA"}"#,
            br#"{"a":"\u0073ecret:/x"}"#,
            br#"{"a":"plain","b":[1,2,3]}"#,
        ];
        for body in bodies {
            assert_eq!(
                scan_in_pieces(body, &[3, 5]),
                crate::rewrite::response::may_hold_references(body)
            );
        }
    }

    #[test]
    fn json_and_text_types_are_read_others_are_not() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(json_like(None));
        assert!(json_like(Some(&v("application/JSON; charset=utf-8"))));
        assert!(json_like(Some(&v("application/vnd.api+json"))));
        assert!(json_like(Some(&v("Text/plain"))));
        assert!(!json_like(Some(&v("image/png"))));
        assert!(!json_like(Some(&v("application/octet-stream"))));
        let odd = http::HeaderValue::from_bytes(b"application/\xffx").unwrap();
        assert!(
            json_like(Some(&odd)),
            "an unreadable type is read to be safe"
        );
    }
}
