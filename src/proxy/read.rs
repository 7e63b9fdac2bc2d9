//! Phase 6: answers rewritten per caller. Ruled answers are parsed and every secret field is
//! resolved, shown as a reference or masked; unruled JSON answers pass the safety net (any
//! `secret:` / `fernet:` string is masked for callers who do not resolve).

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::{Gateway, Live};
use crate::config::ReadAction;
use crate::error::GatewayError;
use crate::http::body::{self, collect_limited, full, Body, CollectError};
use crate::http::encoding::decode;
use crate::rewrite::response::{mask_references, may_hold_references, Permit, ReadCtx};
use crate::rules::{RouteMatch, Rule, RuleSet};

pub static X_MASKED_FIELDS: http::HeaderName =
    http::HeaderName::from_static("x-omsp-masked-fields");

/// The rule an answer is rewritten by.
pub(super) struct Scope<'a> {
    pub rules: &'a RuleSet,
    pub rule: &'a Rule,
    /// The answer is the entity's subtree at these keys (user token routes).
    pub response_at: &'a [String],
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

impl Gateway {
    /// Rewrites an answer: per rule when one applies; the safety net always, for callers
    /// who do not resolve.
    pub(super) async fn rewrite_answer(
        &self,
        resp: Response<Incoming>,
        scope: Option<Scope<'_>>,
        action: ReadAction,
        permit: Option<&dyn Permit>,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, incoming) = resp.into_parts();
        super::headers::strip_hop_by_hop(&mut parts.headers);
        let json_like = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| {
                ct.to_ascii_lowercase().contains("json")
                    || ct.to_ascii_lowercase().starts_with("text/")
            });
        // Unruled answers stream unless the safety net must read them.
        if scope.is_none() && (!json_like || action == ReadAction::Resolve) {
            return Ok(Response::from_parts(parts, body::stream(incoming)));
        }
        let raw = match collect_limited(incoming, self.max_body_bytes).await {
            Ok(b) => b,
            Err(CollectError::TooLarge) => {
                return Err(GatewayError::BadGateway(
                    "upstream answer is too large to inspect".into(),
                ))
            }
            Err(CollectError::Io(_)) => {
                return Err(GatewayError::BadGateway("upstream answer broke off".into()))
            }
        };
        let decoded = decode(&parts.headers, raw.clone(), self.max_body_bytes).map_err(|_| {
            GatewayError::BadGateway("upstream answer cannot be decoded for inspection".into())
        })?;
        if scope.is_none() && !may_hold_references(&decoded) {
            // Nothing to mask: the answer goes out exactly as it came.
            return Ok(Response::from_parts(parts, full(raw)));
        }
        let mut doc: Value = match serde_json::from_slice(&decoded) {
            Ok(v) => v,
            Err(_) => {
                if may_hold_references(&decoded) && action != ReadAction::Resolve {
                    return Err(GatewayError::BadGateway(
                        "upstream answer could hold secrets and is not JSON".into(),
                    ));
                }
                return Ok(Response::from_parts(parts, full(raw)));
            }
        };
        let mut degraded = Vec::new();
        if let Some(scope) = scope {
            let ctx = ReadCtx {
                rules: scope.rules,
                rule: scope.rule,
                action,
                fernet: &self.fernet,
                store: self.store.as_ref(),
                response_at: scope.response_at,
                permit,
            };
            degraded = ctx.rewrite(&mut doc).await?;
            if action == ReadAction::Resolve {
                self.metrics
                    .secrets_resolved
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        } else if action != ReadAction::Resolve {
            mask_references(&mut doc);
        }
        let bytes = Bytes::from(doc.to_string());
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::ETAG);
        parts.headers.remove(header::CONTENT_RANGE);
        parts.headers.remove(header::ACCEPT_RANGES);
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
        Ok(Response::from_parts(parts, full(bytes)))
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
                    match collect_limited(resp.into_body(), 1 << 20).await {
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
