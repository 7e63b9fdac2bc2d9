//! Phase 6: answers rewritten per caller.
//!
//! Ruled answers fail closed: an answer is either read whole (any depth up to
//! `rewrite::json::READ_MAX_DEPTH`), rewritten by structure (`rewrite::structure`) and
//! re-serialised, or refused with a 502 naming the reason (`refusal.rs`), for every
//! caller, bots included. Only an empty body passes unread. A CSV export's text answer is the
//! one exception to "must be JSON": it must be UTF-8 text, and holding a `secret:` or
//! `fernet:` marker refuses it for callers who do not resolve.
//!
//! Unruled JSON answers pass the safety net: scanned for the markers of `rewrite::scan` (a reference or token, or `\u`) and,
//! only when found, parsed and masked for callers who do not resolve.
//!
//! Upstream bodies are time-limited: one the gateway reads must arrive whole within
//! `upstream.body_timeout_ms` (504 otherwise); one it streams may not stall longer than that.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::{Gateway, Live};
use crate::config::{PolicyConfig, ReadAction};
use crate::error::GatewayError;
use crate::http::body::{self, collect_within, full, Body, CollectError, CollectTimedError};
use crate::http::encoding::{decode, DecodeError};
use crate::policy::{decide_for, CallerClass};
use crate::refusal::{looks_compressed, Unreadable};
use crate::rewrite::json::{parse_answer, to_vec};
use crate::rewrite::response::{may_hold_references, Permit, ReadCtx};
use crate::rules::{Op, RouteMatch, Rule, RuleSet};

pub(crate) static X_MASKED_FIELDS: http::HeaderName =
    http::HeaderName::from_static("x-omsp-masked-fields");

/// On a ruled answer to a caller who does not get values: what they see instead, and why.
pub(crate) static X_SECRETS: http::HeaderName = http::HeaderName::from_static("x-omsp-secrets");

/// The rule an answer is rewritten by.
pub(super) struct Scope<'a> {
    pub(crate) rules: &'a RuleSet,
    pub(crate) rule: &'a Rule,
    /// The answer is the entity's subtree at these keys (user token routes).
    pub(crate) response_at: &'a [String],
    pub(crate) op: Op,
    /// Values the gateway put in place of masks on this request's way up (masked-only
    /// kinds): removed from the answer wherever they stand for a caller who may not see them.
    pub(crate) filled: &'a [String],
}

/// Who reads the answer.
pub(super) struct Reader<'a> {
    pub(crate) class: CallerClass,
    /// The verified token's subject (`policy.mask_only.reveal_to`).
    pub(crate) sub: &'a str,
    pub(crate) policy: &'a PolicyConfig,
    pub(crate) permit: Option<&'a dyn Permit>,
    /// The verified token is a person's personal access token.
    pub(crate) personal: bool,
}

/// The [`X_SECRETS`] header for a caller whose action on the answer's kind is not `resolve`.
fn secrets_header(action: ReadAction, reader: &Reader<'_>) -> Option<HeaderValue> {
    let shown = match action {
        ReadAction::Resolve => return None,
        ReadAction::Reference => "references",
        ReadAction::Mask => "masked",
    };
    let why = match reader.class {
        CallerClass::Anonymous => "no verified token",
        CallerClass::User if reader.personal => {
            "a personal access token is a person's; a bot's token reads values"
        }
        CallerClass::User => "the caller is not a bot",
        CallerClass::Bot => "the read policy for this bot and kind",
    };
    HeaderValue::from_str(&format!("{shown}; reason=\"{why}\"")).ok()
}

/// On ruled routes: HEAD is asked as GET (so the rewritten length is the one announced), and
/// no partial or compressed answer escapes rewriting.
pub(super) fn ask_for_whole_answers(parts: &mut http::request::Parts) {
    if parts.method == http::Method::HEAD {
        parts.method = http::Method::GET;
    }
    parts.headers.remove(header::RANGE);
    parts.headers.remove(header::IF_RANGE);
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

fn refused(why: Unreadable) -> GatewayError {
    GatewayError::ReadRefused(why)
}

fn blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// A JSON answer by its media type or its first byte (a byte order mark counts as JSON's,
/// so it is refused rather than read as text).
fn is_json(headers: &http::HeaderMap, body: &[u8]) -> bool {
    let by_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    let rest = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = rest.iter().find(|b| !b.is_ascii_whitespace());
    by_type || matches!(first, Some(b'{') | Some(b'['))
}

impl Gateway {
    /// Rewrites a ruled answer (fail closed). Unruled answers take the streaming safety net
    /// of `passthrough.rs`.
    pub(super) async fn rewrite_answer(
        &self,
        resp: Response<Incoming>,
        scope: Scope<'_>,
        reader: Reader<'_>,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, incoming) = resp.into_parts();
        super::headers::strip_hop_by_hop(&mut parts.headers);
        self.ruled_answer(parts, incoming, scope, reader).await
    }

    /// A ruled answer: read whole and rewritten, or refused.
    async fn ruled_answer(
        &self,
        parts: http::response::Parts,
        incoming: Incoming,
        scope: Scope<'_>,
        reader: Reader<'_>,
    ) -> Result<Response<Body>, GatewayError> {
        let raw = self.collect_answer(incoming).await?;
        if blank(&raw) {
            return Ok(Response::from_parts(parts, full(raw)));
        }
        let decoded = self.decode_answer(&parts.headers, raw)?;
        if looks_compressed(&decoded) {
            return Err(refused(Unreadable::Compressed));
        }
        let actions: Vec<ReadAction> = scope
            .rules
            .rules
            .iter()
            .map(|r| decide_for(reader.class, reader.sub, reader.policy, r))
            .collect();
        let action = decide_for(reader.class, reader.sub, reader.policy, scope.rule);
        let mut parts = parts;
        if let Some(v) = secrets_header(action, &reader) {
            parts.headers.insert(X_SECRETS.clone(), v);
        }
        if actions.contains(&ReadAction::Resolve) {
            // This caller may get values: no cache keeps the answer.
            parts.headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, private"),
            );
        }
        if scope.op == Op::Export && !is_json(&parts.headers, &decoded) {
            let text = std::str::from_utf8(&decoded).map_err(|_| refused(Unreadable::NotText))?;
            if action != ReadAction::Resolve
                && (text.contains(crate::rewrite::REFERENCE_PREFIX)
                    || text.contains(crate::secrets::fernet::PREFIX))
            {
                return Err(refused(Unreadable::TextMarker));
            }
            return Ok(respond(parts, decoded, &[]));
        }
        // Values the gateway filled in for masks: an upstream error may quote the forwarded
        // body, so its message is withheld whole (scrubbing the values out would tell a caller
        // which text of theirs equals one). A success is masked by structure as always.
        if !scope.filled.is_empty() && action != ReadAction::Resolve && !parts.status.is_success() {
            return Err(GatewayError::RefusalWithheld(parts.status));
        }
        let mut doc = parse_answer(&decoded).map_err(refused)?;
        let ctx = ReadCtx {
            rules: scope.rules,
            rule: scope.rule,
            actions: &actions,
            fernet: &self.fernet,
            store: self.store.as_ref(),
            response_at: scope.response_at,
            permit: reader.permit,
            markers: may_hold_references(&decoded),
        };
        let degraded = ctx.rewrite(&mut doc).await?;

        if action == ReadAction::Resolve {
            self.metrics
                .secrets_resolved
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(respond(parts, self.serialise(&doc)?, &degraded))
    }

    /// The whole upstream body, within `max_body_bytes` and `upstream.body_timeout_ms`.
    async fn collect_answer(&self, incoming: Incoming) -> Result<Bytes, GatewayError> {
        let within = self.upstream_body_timeout;
        collect_within(incoming, self.max_body_bytes, within)
            .await
            .map_err(|e| match e {
                CollectTimedError::TimedOut => GatewayError::GatewayTimeout(format!(
                    "upstream answer did not arrive whole within {} ms",
                    within.as_millis()
                )),
                CollectTimedError::Collect(CollectError::TooLarge) => refused(Unreadable::TooLarge),
                CollectTimedError::Collect(CollectError::Io) => refused(Unreadable::Incomplete),
            })
    }

    fn decode_answer(&self, headers: &http::HeaderMap, raw: Bytes) -> Result<Bytes, GatewayError> {
        decode(headers, raw, self.max_body_bytes).map_err(|e| match e {
            DecodeError::TooLarge => refused(Unreadable::TooLarge),
            DecodeError::Unsupported | DecodeError::Corrupt => refused(Unreadable::Encoding),
        })
    }

    fn serialise(&self, doc: &Value) -> Result<Bytes, GatewayError> {
        to_vec(doc)
            .map(Bytes::from)
            .map_err(|e| GatewayError::Internal(format!("re-serialising an answer: {e}")))
    }

    /// With `policy.bot_requires_view_all`, a resolving caller needs the upstream's `ViewAll`.
    pub(super) fn view_all_permit<'a>(
        &'a self,
        action: ReadAction,
        live: &Live,
        m: &RouteMatch<'_>,
        auth: Option<HeaderValue>,
    ) -> Option<ViewAll<'a>> {
        (action == ReadAction::Resolve && live.policy.bot_requires_view_all).then(|| ViewAll {
            gw: self,
            auth,
            resource: m.rule.permission_resource.clone(),
        })
    }
}

/// A rewritten answer: decoded, fresh length, no validator or range of the original.
fn respond(mut parts: http::response::Parts, bytes: Bytes, degraded: &[String]) -> Response<Body> {
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::ETAG);
    parts.headers.remove(header::CONTENT_RANGE);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    if !degraded.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&degraded.join(", ")) {
            parts.headers.insert(X_MASKED_FIELDS.clone(), v);
        }
    }
    if parts.status == StatusCode::PARTIAL_CONTENT {
        parts.status = StatusCode::OK;
    }
    Response::from_parts(parts, full(bytes))
}

/// Asks the upstream's permission API, with the caller's own token, whether the caller has
/// `ViewAll` on an entity; answers are cached for 30 s per (token, resource, entity).
pub(super) struct ViewAll<'a> {
    gw: &'a Gateway,
    auth: Option<HeaderValue>,
    resource: String,
}

const PERMISSION_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Permit for ViewAll<'_> {
    fn allows<'a>(
        &'a self,
        fqn: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let Some(auth) = &self.auth else { return false };
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (auth.as_bytes(), &self.resource, fqn).hash(&mut h);
                h.finish()
            };
            if let Ok(c) = self.gw.permissions.lock() {
                if let Some((ok, at)) = c.get(&key) {
                    if at.elapsed() < PERMISSION_TTL {
                        return *ok;
                    }
                }
            }
            let path = format!(
                "/api/v1/permissions/{}/name/{}",
                crate::http::upstream::encode_segment(&self.resource),
                crate::http::upstream::encode_segment(fqn)
            );
            let Ok(uri) = self.gw.upstream.uri_for(&path) else {
                return false;
            };
            let mut req = Request::new(body::empty());
            *req.uri_mut() = uri;
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
            let ok = match self.gw.upstream.send(req).await {
                Ok(resp) if resp.status().is_success() => {
                    match collect_within(resp.into_body(), 1 << 20, self.gw.upstream_body_timeout)
                        .await
                    {
                        Ok(b) => serde_json::from_slice::<Value>(&b)
                            .ok()
                            .and_then(|v| v.get("permissions").and_then(Value::as_array).cloned())
                            .is_some_and(|ps| {
                                ps.iter().any(|p| {
                                    p.get("operation").and_then(Value::as_str) == Some("ViewAll")
                                        && p.get("access").and_then(Value::as_str) == Some("allow")
                                })
                            }),
                        Err(_) => false,
                    }
                }
                _ => false,
            };
            if let Ok(mut c) = self.gw.permissions.lock() {
                if c.len() > 10_000 {
                    c.clear();
                }
                c.insert(key, (ok, std::time::Instant::now()));
            }
            ok
        })
    }
}
