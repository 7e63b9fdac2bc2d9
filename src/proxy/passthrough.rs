//! Steps 5 and 6 for a route without rules: the request is forwarded as it came (hop-by-hop
//! headers out, forwarding headers in) and the answer streams back, except that a JSON
//! answer for a caller who does not resolve passes the safety net.
//!
//! Which answers the net reads: those of a JSON or text media type (or none), and those of
//! any other type whose first bytes are JSON (a client reads them as JSON whatever the type
//! says; one that is not JSON after all goes out as it came). The UI's scripts, XML and images
//! stream as they come. An answer the net cannot read as UTF-8 (a declared UTF-16/32 or other
//! charset, a UTF-16/32 byte order mark, JSON's first character with a NUL byte beside it) is
//! refused (502) for callers the net works for.
//!
//! The safety net reads the answer's chunks as they arrive, scanning each once (a marker
//! split across two chunks is still seen). An answer within `max_body_bytes` is held until
//! its end, because a marker in its last chunk means the whole answer must be parsed and
//! masked; without a marker the chunks go out as they came, never copied. An identity-encoded
//! answer larger than that streams on once the limit is passed, scanned as it flows, with
//! the last few bytes (`rewrite::scan::CARRY`) of every chunk held back until the next chunk is scanned: should a marker
//! appear, the answer is cut off before any byte of it (the client sees a broken answer, as
//! it would a 502). An encoded (gzip, ...) answer larger than the limit is a 502.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::context::RequestCtx;
use super::{headers, Gateway};
use crate::error::GatewayError;
use crate::http::body::{self, full, Body, BoxError};
use crate::rewrite::net_scan::NetScan;
use crate::rewrite::response::mask_references;
use crate::rewrite::scan::json_like;

/// What the safety net does for one caller on an unruled route.
pub(super) struct Net {
    /// Mask `secret:` / `fernet:` strings (callers who do not resolve).
    pub(crate) refs: bool,
    /// Mask `mask_only` rules' fields (callers who may not see them): the rules in force.
    pub(crate) mask_only: Option<std::sync::Arc<super::Live>>,
}

impl Net {
    fn scan(&self) -> NetScan {
        let words = self.mask_only.as_ref().map(|l| l.rules.net_words().clone());
        NetScan::new(self.refs, words)
    }

    /// The parsed answer, masked as this caller needs.
    fn mask(&self, doc: &mut Value) {
        if self.refs {
            mask_references(doc);
        }
        if let Some(live) = &self.mask_only {
            crate::rewrite::mask_only::mask_fields(&live.rules, doc);
        }
    }
}

impl Gateway {
    /// Forwards a request on a route without rules and returns the answer through `net`.
    pub(super) async fn pass_through(
        &self,
        req: Request<Incoming>,
        ctx: &RequestCtx,
        net: Net,
    ) -> Result<Response<Body>, GatewayError> {
        let (conn, request_id) = (ctx.conn, &ctx.request_id);
        let (mut parts, incoming) = req.into_parts();
        let uri = self.upstream.uri_from(parts.uri.path_and_query())?;
        if (net.refs || net.mask_only.is_some()) && parts.headers.contains_key(header::RANGE) {
            // A part of an answer can begin inside a marker (`secret:...` without its quote),
            // where the safety net would not see it: such callers get whole answers.
            parts.headers.remove(header::RANGE);
            parts.headers.remove(header::IF_RANGE);
        }
        headers::forward(
            &mut parts.headers,
            parts.uri.authority(),
            conn.remote.ip(),
            conn.https,
            request_id,
        );
        // A client that sends its body too slowly is cut off (408).
        let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outgoing = if HttpBody::is_end_stream(&incoming) {
            body::stream(incoming)
        } else {
            body::stream(body::Timed::new(
                incoming,
                body::Limit::Total(self.client_body_timeout),
                Some(slow.clone()),
            ))
        };
        let mut upstream_req = Request::new(outgoing);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = parts.headers;
        let resp = match self.upstream.send(upstream_req).await {
            Err(_) if slow.load(std::sync::atomic::Ordering::Relaxed) => {
                return Err(self.client_too_slow())
            }
            other => other?,
        };
        self.unruled_answer(resp, net).await
    }

    /// The answer on a route without rules: streamed, or read by the safety net (module doc).
    pub(super) async fn unruled_answer(
        &self,
        resp: Response<Incoming>,
        net: Net,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let scan = net.scan();
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        let identity = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
        let mut incoming = incoming;
        let mut first = None;
        if scan.active() && json_like(content_type) && foreign_charset(content_type) {
            return Err(unreadable_charset());
        }
        if scan.active() && !json_like(content_type) && identity {
            // Another media type: JSON all the same by its first bytes (which a client reads
            // as JSON whatever the type says) is read by the net; anything else streams.
            first = self.first_chunk(&mut incoming).await?;
            let looks = first.as_deref().map_or(Start::Other, start_of);
            if looks == Start::Wide || (looks == Start::Json && foreign_charset(content_type)) {
                return Err(unreadable_charset());
            }
            if looks == Start::Other {
                let rest = body::Timed::new(
                    incoming,
                    body::Limit::Idle(self.upstream_body_timeout),
                    None,
                );
                return Ok(Response::from_parts(
                    parts,
                    body::stream(Prepend { first, rest }),
                ));
            }
        } else if !scan.active() || !json_like(content_type) {
            // Streamed as it comes; an upstream that stalls longer than the idle limit is cut off.
            let timed = body::Timed::new(
                incoming,
                body::Limit::Idle(self.upstream_body_timeout),
                None,
            );
            return Ok(Response::from_parts(parts, body::stream(timed)));
        }
        let held = match self.hold_for_scan(incoming, first, identity, scan).await? {
            Hold::Whole(held) => held,
            Hold::Streaming(body) => return Ok(Response::from_parts(parts, Body::new(body))),
        };
        if identity && !held.scan.seen() {
            return Ok(Response::from_parts(
                parts,
                Body::new(Scanned::replay(held.chunks)),
            ));
        }
        let typed_json = json_like(parts.headers.get(header::CONTENT_TYPE));
        self.mask_held(
            parts,
            concat(held.chunks, held.total),
            identity,
            typed_json,
            &net,
        )
    }

    /// Reads the answer's chunks, scanning each once, until its end or until it passes
    /// `max_body_bytes` (then an identity answer without a marker so far streams on).
    async fn hold_for_scan(
        &self,
        mut incoming: Incoming,
        first: Option<Bytes>,
        identity: bool,
        scan: NetScan,
    ) -> Result<Hold, GatewayError> {
        let mut held = Held {
            scan,
            chunks: VecDeque::new(),
            total: 0,
        };
        let mut first = first;
        let mut sniffed = false;
        loop {
            let data = match first.take() {
                Some(data) => data,
                None => match self.next_data(&mut incoming).await? {
                    Some(data) => data,
                    None => return Ok(Hold::Whole(held)),
                },
            };
            // How the answer begins, judged at its first chunk that is not all white space.
            if identity && !sniffed && !data.iter().all(|c| c.is_ascii_whitespace() || *c == 0) {
                sniffed = true;
                if start_of(&data) == Start::Wide {
                    return Err(unreadable_charset());
                }
            }
            held.total += data.len();
            if identity {
                held.scan.feed(&data);
            }
            held.chunks.push_back(data);
            if held.total > self.max_body_bytes {
                if !identity || held.scan.seen() {
                    return Err(GatewayError::BadGateway(
                        "upstream answer is too large to inspect".into(),
                    ));
                }
                return Ok(Hold::Streaming(Scanned::streaming(
                    held.chunks,
                    incoming,
                    held.scan,
                )));
            }
        }
    }

    /// The answer's next data frame (trailers are not forwarded on buffered answers), within
    /// the idle limit.
    async fn next_data(&self, incoming: &mut Incoming) -> Result<Option<Bytes>, GatewayError> {
        let idle = self.upstream_body_timeout;
        loop {
            let Ok(next) = tokio::time::timeout(idle, incoming.frame()).await else {
                return Err(GatewayError::GatewayTimeout(format!(
                    "the upstream answer stalled for more than {} ms",
                    idle.as_millis()
                )));
            };
            let Some(frame) = next else {
                return Ok(None);
            };
            let frame =
                frame.map_err(|_| GatewayError::BadGateway("upstream answer broke off".into()))?;
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
    }

    /// The answer's first data up to its first byte that is not white space (or NUL: UTF-16
    /// white space), within `max_body_bytes` (`None`: it has none).
    async fn first_chunk(&self, incoming: &mut Incoming) -> Result<Option<Bytes>, GatewayError> {
        let mut got = BytesMut::new();
        while let Some(data) = self.next_data(incoming).await? {
            got.extend_from_slice(&data);
            let blank = got.iter().all(|c| c.is_ascii_whitespace() || *c == 0);
            if !blank || got.len() > self.max_body_bytes {
                break;
            }
        }
        Ok((!got.is_empty()).then(|| got.freeze()))
    }

    /// A whole answer that may hold a marker: decoded, parsed and masked (an encoded answer
    /// whose decoded bytes hold no marker goes out as it came).
    /// An answer of another media type that only began like JSON and is not JSON goes out
    /// as it came, as other media types do.
    fn mask_held(
        &self,
        mut parts: http::response::Parts,
        raw: Bytes,
        identity: bool,
        typed_json: bool,
        net: &Net,
    ) -> Result<Response<Body>, GatewayError> {
        let decoded =
            crate::http::encoding::decode(&parts.headers, raw.clone(), self.max_body_bytes)
                .map_err(|_| {
                    GatewayError::BadGateway(
                        "upstream answer cannot be decoded for inspection".into(),
                    )
                })?;
        if start_of(&decoded) == Start::Wide {
            return Err(unreadable_charset());
        }
        if !identity && !net.scan().feed(&decoded) {
            return Ok(Response::from_parts(parts, full(raw)));
        }
        let text = decoded.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&decoded);
        let bytes = match serde_json::from_slice::<Value>(text) {
            Ok(mut doc) => {
                net.mask(&mut doc);
                Bytes::from(doc.to_string())
            }
            // One JSON document per line (NDJSON), whatever the type says: each masked.
            Err(_) if ndjson(text) => {
                let mut out = Vec::with_capacity(text.len());
                for line in text.split(|c| *c == b'\n') {
                    match serde_json::from_slice::<Value>(line) {
                        Ok(mut doc) => {
                            net.mask(&mut doc);
                            out.extend_from_slice(doc.to_string().as_bytes());
                        }
                        Err(_) => out.extend_from_slice(line),
                    }
                    out.push(b'\n');
                }
                out.pop();
                Bytes::from(out)
            }
            Err(_) if !typed_json => return Ok(Response::from_parts(parts, full(raw))),
            Err(_) => {
                return Err(GatewayError::BadGateway(
                    "upstream answer could hold secrets and is not JSON".into(),
                ))
            }
        };
        for h in [
            header::CONTENT_ENCODING,
            header::ETAG,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
        ] {
            parts.headers.remove(h);
        }
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        if parts.status == StatusCode::PARTIAL_CONTENT {
            parts.status = StatusCode::OK;
        }
        Ok(Response::from_parts(parts, full(bytes)))
    }
}

/// A body whose first chunk was already read (to see how the answer begins).
struct Prepend<B> {
    first: Option<Bytes>,
    rest: B,
}

impl<B> HttpBody for Prepend<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let n = self.first.as_ref().map_or(0, |c| c.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + n);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + n);
        }
        hint
    }
}

/// How an answer begins, for the safety net.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// JSON in UTF-8 (an object or an array, after white space and a byte order mark).
    Json,
    /// UTF-16 or UTF-32 (a byte order mark, or JSON's first characters with NUL bytes
    /// between them): the net reads UTF-8 only, and a client reads these as JSON.
    Wide,
    Other,
}

fn start_of(b: &[u8]) -> Start {
    const BOMS: [&[u8]; 4] = [
        b"\x00\x00\xFE\xFF",
        b"\xFF\xFE\x00\x00",
        b"\xFE\xFF",
        b"\xFF\xFE",
    ];
    if BOMS.iter().any(|bom| b.starts_with(bom)) {
        return Start::Wide;
    }
    let body = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    let opens = |c: u8| matches!(c, b'{' | b'[');
    // JSON's first character with a NUL byte beside it: UTF-16 or UTF-32.
    if let Some(i) = body
        .iter()
        .position(|c| !(c.is_ascii_whitespace() || *c == 0))
    {
        let beside = body.get(i + 1) == Some(&0) || (i > 0 && body[i - 1] == 0);
        if opens(body[i]) && beside {
            return Start::Wide;
        }
    }
    match body.iter().copied().find(|c| !c.is_ascii_whitespace()) {
        Some(c) if opens(c) => Start::Json,
        _ => Start::Other,
    }
}

/// Every line of `text` that is not blank is a JSON document, and there are two or more.
fn ndjson(text: &[u8]) -> bool {
    let mut n = 0;
    for line in text.split(|c| *c == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
            return false;
        }
        n += 1;
    }
    n >= 2
}

/// The media type declares a character set other than UTF-8 (or its ASCII subset).
fn foreign_charset(ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    ct.split(';').skip(1).any(|p| {
        let Some((k, v)) = p.split_once('=') else {
            return false;
        };
        let v = v.trim().trim_matches('"').to_ascii_lowercase();
        k.trim().eq_ignore_ascii_case("charset")
            && !matches!(v.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii")
    })
}

fn unreadable_charset() -> GatewayError {
    GatewayError::BadGateway(
        "upstream answer could hold secrets and is not UTF-8: the safety net cannot read it".into(),
    )
}

/// An answer's chunks read so far, with the marker scan over them.
struct Held {
    scan: NetScan,
    chunks: VecDeque<Bytes>,
    total: usize,
}

/// What `hold_for_scan` ends with: the whole answer, or a body that streams the rest.
enum Hold {
    Whole(Held),
    Streaming(Scanned),
}

fn concat(mut chunks: VecDeque<Bytes>, total: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(total);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    out.freeze()
}

/// Removes the last `carry` bytes from the end of `chunks` (across chunks) and returns them.
fn split_tail(chunks: &mut VecDeque<Bytes>, carry: usize) -> Bytes {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut need = carry;
    while need > 0 {
        let Some(mut last) = chunks.pop_back() else {
            break;
        };
        if last.len() > need {
            parts.push(last.split_off(last.len() - need));
            chunks.push_back(last);
            need = 0;
        } else {
            need -= last.len();
            parts.push(last);
        }
    }
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(carry);
            for p in parts.iter().rev() {
                out.extend_from_slice(p);
            }
            out.freeze()
        }
    }
}

/// A scanned answer going out: chunks already read, then (past the limit) the rest of the
/// upstream body, scanned as it flows with each chunk's last bytes held back.
struct Scanned {
    ready: VecDeque<Bytes>,
    rest: Option<Rest>,
    remaining: u64,
}

struct Rest {
    incoming: Incoming,
    scan: NetScan,
    /// Bytes not sent until the next chunk is scanned (a marker could start in them).
    held: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl Scanned {
    fn replay(ready: VecDeque<Bytes>) -> Scanned {
        let remaining = ready.iter().map(|c| c.len() as u64).sum();
        Scanned {
            ready,
            rest: None,
            remaining,
        }
    }

    fn streaming(mut ready: VecDeque<Bytes>, incoming: Incoming, scan: NetScan) -> Scanned {
        let held = split_tail(&mut ready, scan.carry());
        Scanned {
            ready,
            rest: Some(Rest {
                incoming,
                scan,
                held,
                trailers: None,
            }),
            remaining: 0,
        }
    }
}

impl HttpBody for Scanned {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(c) = this.ready.pop_front() {
                this.remaining = this.remaining.saturating_sub(c.len() as u64);
                return Poll::Ready(Some(Ok(Frame::data(c))));
            }
            let Some(rest) = this.rest.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(t) = rest.trailers.take() {
                this.rest = None;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut rest.incoming).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    let held = std::mem::take(&mut rest.held);
                    this.rest = None;
                    if !held.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if rest.scan.feed(&data) {
                            this.rest = None;
                            return Poll::Ready(Some(Err(
                                "upstream answer holds a secret reference past the inspection limit"
                                    .into(),
                            )));
                        }
                        let held = std::mem::take(&mut rest.held);
                        if !held.is_empty() {
                            this.ready.push_back(held);
                        }
                        this.ready.push_back(data);
                        rest.held = split_tail(&mut this.ready, rest.scan.carry());
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            let held = std::mem::take(&mut rest.held);
                            if !held.is_empty() {
                                this.ready.push_back(held);
                            }
                            rest.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.rest.is_none() {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_utf16_or_utf32_and_foreign_charsets_are_told_apart() {
        let utf16le: Vec<u8> = "{\"a\": 1}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let utf16be: Vec<u8> = "  [1]".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(start_of(&utf16le), Start::Wide);
        assert_eq!(start_of(&utf16be), Start::Wide);
        assert_eq!(start_of(b"\xFF\xFEx"), Start::Wide);
        assert_eq!(start_of(b"\xEF\xBB\xBF {\"a\":1}"), Start::Json);
        assert_eq!(start_of(b" [1]"), Start::Json);
        for other in [
            &b"<xml/>"[..],
            b"\x89PNG\r\n\x1a\n\x00\x00",
            b"!function(){}",
            b"",
        ] {
            assert_eq!(start_of(other), Start::Other, "{other:?}");
        }
        let ct = |v: &str| HeaderValue::from_str(v).ok();
        assert!(foreign_charset(
            ct("application/json; charset=utf-16le").as_ref()
        ));
        assert!(foreign_charset(
            ct("text/plain;charset=\"UTF-32\"").as_ref()
        ));
        assert!(!foreign_charset(
            ct("application/json; charset=UTF-8").as_ref()
        ));
        assert!(!foreign_charset(ct("application/json").as_ref()));
        assert!(!foreign_charset(None));
    }

    #[test]
    fn split_tail_takes_the_last_bytes_across_chunks() {
        let mut q: VecDeque<Bytes> = ["abcdef", "gh", "ij"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let tail = split_tail(&mut q, 7);
        assert_eq!(&tail[..], b"defghij");
        assert_eq!(q, VecDeque::from(vec![Bytes::from_static(b"abc")]));
        let mut short: VecDeque<Bytes> = VecDeque::from(vec![Bytes::from_static(b"ab")]);
        assert_eq!(&split_tail(&mut short, 7)[..], b"ab");
        assert!(short.is_empty());
    }
}
