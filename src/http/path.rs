//! Request-path normalisation for rule matching.
//!
//! The path is read the way the upstream (Jetty + Jersey) could read it, taking the widest
//! reading wherever servers differ, so that no spelling of a ruled route escapes its rule:
//! percent-escapes are decoded (upper or lower case, `%2F` included, which then separates
//! segments), `;` matrix parameters are dropped from each segment, empty and `.` segments
//! vanish (duplicate and trailing slashes), and `\` separates segments too. Literal
//! matching is case-insensitive. What cannot be read safely (`..` in any spelling, an
//! encoded NUL or control byte, a broken escape, non-UTF-8) is refused: the caller gets a
//! 400 and nothing is forwarded. The raw path is what gets forwarded.

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    DotDot,
    BadEscape,
    ControlByte,
    NotUtf8,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::DotDot => "request path contains a '..' segment",
            PathError::BadEscape => "request path contains an invalid percent-escape",
            PathError::ControlByte => "request path contains an encoded NUL or control character",
            PathError::NotUtf8 => "request path does not decode to UTF-8",
        })
    }
}

/// Decoded path segments, for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormPath {
    pub(crate) segments: Vec<String>,
}

impl NormPath {
    pub fn parse(raw: &str) -> Result<NormPath, PathError> {
        let mut segments = Vec::with_capacity(8);
        let bytes = raw.as_bytes();
        let mut start = 0;
        for i in 0..=bytes.len() {
            if i < bytes.len() && bytes[i] != b'/' && bytes[i] != b'\\' {
                continue;
            }
            // One segment (separators are ASCII, so these are char boundaries).
            let whole = &raw[start..i];
            start = i + 1;
            // Matrix parameters belong to the segment before decoding (Jersey's reading);
            // one pass finds where they start, escapes and control bytes.
            let (mut end, mut escaped, mut control) = (whole.len(), false, false);
            for (j, &b) in whole.as_bytes().iter().enumerate() {
                if b == b';' {
                    end = j;
                    break;
                }
                escaped |= b == b'%';
                control |= b < 0x20 || b == 0x7f;
            }
            let raw_seg = &whole[..end];
            if !escaped {
                // Nothing to decode (the common case): the same checks, no copy to decode into.
                if control {
                    return Err(PathError::ControlByte);
                }
                match raw_seg {
                    "" | "." => {}
                    ".." => return Err(PathError::DotDot),
                    s => segments.push(s.to_string()),
                }
                continue;
            }
            let decoded = percent_decode(raw_seg)?;
            // A decoded separator separates (the wider reading).
            for seg in decoded.split(['/', '\\']) {
                let seg = seg.split(';').next().unwrap_or("");
                match seg {
                    "" | "." => {}
                    ".." => return Err(PathError::DotDot),
                    s => segments.push(s.to_string()),
                }
            }
        }
        Ok(NormPath { segments })
    }

    pub(crate) fn canonical(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            s.push_str(seg);
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; refuses broken escapes, control bytes and non-UTF-8.
pub(crate) fn percent_decode(s: &str) -> Result<String, PathError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathError::ControlByte);
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// The first value of a query parameter, decoded (`+` is a space), as Jersey reads it.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Ok(k) = percent_decode(&k.replace('+', " ")) else {
            continue;
        };
        if k == name {
            return percent_decode(&v.replace('+', " ")).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> String {
        NormPath::parse(p).unwrap().canonical()
    }

    #[test]
    fn duplicate_slashes_and_dot_segments_vanish() {
        assert_eq!(canon("//api/./v1//services/"), "/api/v1/services");
    }

    #[test]
    fn encoded_slash_separates_segments() {
        assert_eq!(
            canon("/api/v1/services%2FdatabaseServices"),
            "/api/v1/services/databaseServices"
        );
        assert_eq!(
            canon("/api/v1/services%2fdatabaseServices"),
            "/api/v1/services/databaseServices"
        );
    }

    #[test]
    fn escapes_of_letters_decode() {
        assert_eq!(canon("/api/v1/%73ervices"), "/api/v1/services");
    }

    #[test]
    fn matrix_parameters_are_dropped() {
        assert_eq!(
            canon("/api;x=1/v1/services;jsessionid=2"),
            "/api/v1/services"
        );
    }

    #[test]
    fn dot_dot_in_any_spelling_is_refused() {
        assert_eq!(NormPath::parse("/api/../x"), Err(PathError::DotDot));
        assert_eq!(NormPath::parse("/api/%2e%2E/x"), Err(PathError::DotDot));
        assert_eq!(NormPath::parse("/api/.%2e;x/y"), Err(PathError::DotDot));
    }

    #[test]
    fn nul_and_broken_escapes_are_refused() {
        assert_eq!(NormPath::parse("/api/%00"), Err(PathError::ControlByte));
        assert_eq!(NormPath::parse("/api/%zz"), Err(PathError::BadEscape));
        assert_eq!(NormPath::parse("/api/%4"), Err(PathError::BadEscape));
        assert_eq!(NormPath::parse("/api/%ff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("a=1&hardDelete=true"), "hardDelete").as_deref(),
            Some("true")
        );
        assert_eq!(
            query_param(Some("hard%44elete=true"), "hardDelete").as_deref(),
            Some("true")
        );
        assert_eq!(query_param(None, "x"), None);
        assert_eq!(
            query_param(Some("hardDelete=false&hardDelete=true"), "hardDelete").as_deref(),
            Some("false")
        );
    }
}
