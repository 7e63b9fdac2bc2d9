//! Header handling for a hop (RFC 9110 section 7.6.1) and the forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The headers that are hop-by-hop on their own; a `match` on the name, so checking a
/// message's headers costs a few comparisons each, no hashing.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    match name.as_str() {
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade" => true,
        // Method overrides: the upstream must see the method the gateway judged.
        "x-http-method-override" | "x-http-method" | "x-method-override" => true,
        // proxy-connection, proxy-authenticate, proxy-authorization and any other Proxy-*.
        n => n.starts_with("proxy-"),
    }
}

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers: the fixed list, every `Proxy-*` header, and every
/// header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names, nothing hashed or removed.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let (first, more) = (connection.next().cloned(), connection.next().is_some());
    match (first, more) {
        (None, _) => {}
        // The usual case, one Connection header: no list to build.
        (Some(only), false) => remove_named(headers, &only),
        (Some(_), true) => {
            let all: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            for v in &all {
                remove_named(headers, v);
            }
        }
    }
    while let Some(name) = headers.keys().find(|k| is_hop_by_hop(k)).cloned() {
        headers.remove(&name);
    }
}

/// Removes the headers a `Connection` value names.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(v) = connection.to_str() else { return };
    for token in v.split(',') {
        // By name as text: no header name is built for a token that names nothing.
        // `keep-alive` is hop-by-hop itself and goes with the others.
        let token = token.trim();
        if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
            headers.remove(token);
        }
    }
}

/// A caller-supplied request id is kept when it is short printable ASCII; otherwise a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if let Ok(s) = v.to_str() {
            if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
                return v.clone();
            }
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * (31 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Appends the client address to `X-Forwarded-For` and sets proto and host.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client: std::net::IpAddr,
    https: bool,
    host: Option<&str>,
) {
    let client = client.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client}"),
        _ => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
}

/// The request headers of a forwarded request, in place: hop-by-hop headers out, the
/// forwarding headers and the request id in. The same result as [`strip_hop_by_hop`] then
/// [`set_forwarded`] with the request's host, without copying the host or formatting the
/// client address on every request.
pub(crate) fn forward(
    headers: &mut HeaderMap,
    authority: Option<&http::uri::Authority>,
    client: std::net::IpAddr,
    https: bool,
    request_id: &HeaderValue,
) {
    // X-Forwarded-Host: the Host header when it is readable text, else the URI's authority
    // (HTTP/2's :authority).
    let host = match headers.get(header::HOST) {
        Some(h) if h.to_str().is_ok() => Some(h.clone()),
        _ => authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    strip_hop_by_hop(headers);
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {client}")).ok()
        }
        _ => Some(client_address(client)),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// The client address as a header value, remembered per thread for the last address seen
/// (a connection's requests all come from one).
fn client_address(ip: std::net::IpAddr) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(std::net::IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, v)) = last.as_ref() {
            if *seen == ip {
                return v.clone();
            }
        }
        let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((ip, v.clone()));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_proxy_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn every_hop_by_hop_header_is_removed_in_any_case() {
        let names = [
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "Proxy-Authorization",
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
        ];
        let mut h = HeaderMap::new();
        for n in names {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        // A Connection token naming nothing, or not a header name, changes nothing else.
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, bad name, , X-Private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
        // Several Connection headers: each one's names go.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("x-a"));
        h.append("connection", HeaderValue::from_static("keep-alive, X-B"));
        for n in ["x-a", "x-b", "keep-alive", "x-c"] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-c"]);
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            true,
            Some("gw.example"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gw.example");
    }

    #[test]
    fn forward_matches_strip_then_set_forwarded() {
        let id = HeaderValue::from_static("rid-1");
        let cases: [&[(&str, &str)]; 4] = [
            &[("host", "gw.example:8586"), ("accept", "*/*")],
            &[
                ("host", "gw.example"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "1"),
                ("proxy-foo", "1"),
                ("x-forwarded-for", "10.0.0.1"),
            ],
            &[("x-forwarded-for", " "), ("te", "trailers")],
            &[],
        ];
        for (n, case) in cases.iter().enumerate() {
            for ip in ["127.0.0.1", "::1", "127.0.0.1"] {
                let ip: std::net::IpAddr = ip.parse().unwrap();
                let mut h = HeaderMap::new();
                for (k, v) in case.iter() {
                    h.append(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_static(v),
                    );
                }
                let mut expected = h.clone();
                let host = expected
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                strip_hop_by_hop(&mut expected);
                set_forwarded(&mut expected, ip, n % 2 == 0, host.as_deref());
                expected.insert(X_REQUEST_ID.clone(), id.clone());
                forward(&mut h, None, ip, n % 2 == 0, &id);
                assert_eq!(h, expected, "case {n}, {ip}");
            }
        }
        // Without a Host header (HTTP/2), the URI's authority is the forwarded host.
        let mut h = HeaderMap::new();
        let authority = http::uri::Authority::from_static("h2.example");
        forward(&mut h, Some(&authority), [10, 0, 0, 2].into(), true, &id);
        assert_eq!(h["x-forwarded-host"], "h2.example");
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
    }

    #[test]
    fn a_bad_request_id_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&h), "abc-1");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        let fresh = request_id(&HeaderMap::new());
        assert_eq!(fresh.len(), 32);
        assert!(fresh.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fresh, request_id(&HeaderMap::new()));
    }
}
