//! The ruled half of the pipeline: request bodies of writes lose their secrets to the store
//! (`rewrite_request`), answers are rewritten per caller (`rewrite_response`), and store
//! changes are undone when the upstream refuses a write.

use std::io::Read;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::{ConnInfo, Gateway, Live};
use crate::config::ReadAction;
use crate::error::GatewayError;
use crate::http::body::{self, collect_limited, full, Body, CollectError};
use crate::policy::{decide, CallerClass};
use crate::rewrite::json::parse_strict;
use crate::rewrite::request::{Plan, WriteCtx};
use crate::rewrite::response::Permit;
use crate::rewrite::response::{mask_references, may_hold_references, ReadCtx};
use crate::rules::jsonpath::Step;
use crate::rules::{Op, RouteMatch, Rule, RuleSet};

pub static X_MASKED_FIELDS: http::HeaderName =
    http::HeaderName::from_static("x-omsp-masked-fields");

/// Decodes a request or response body by its Content-Encoding.
pub fn decode(headers: &HeaderMap, bytes: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    let Some(enc) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(bytes);
    };
    let enc = enc
        .to_str()
        .map_err(|_| DecodeError::Unsupported)?
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let res = match enc.as_str() {
        "" | "identity" => return Ok(bytes),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&bytes[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        "deflate" => {
            // RFC 9110 deflate is zlib; some senders use raw deflate.
            let r = flate2::read::ZlibDecoder::new(&bytes[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out);
            if r.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(&bytes[..])
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out)
            } else {
                r
            }
        }
        "br" => brotli_decompressor::Decompressor::new(&bytes[..], 4096)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        _ => return Err(DecodeError::Unsupported),
    };
    res.map_err(|_| DecodeError::Corrupt)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(Bytes::from(out))
}

#[derive(Debug)]
pub enum DecodeError {
    Unsupported,
    Corrupt,
    TooLarge,
}

fn is_write(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// Parses a JSON Pointer into steps against `doc` (`-` becomes the array's length).
fn pointer_steps(doc: &Value, pointer: &str) -> Result<Vec<Step>, GatewayError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(GatewayError::BadRequest(format!(
            "JSON Patch path {pointer:?} must start with '/'"
        )));
    };
    let mut cur = Some(doc);
    let mut steps = Vec::new();
    for raw in rest.split('/') {
        let tok = raw.replace("~1", "/").replace("~0", "~");
        let step = match cur {
            Some(Value::Array(a)) => {
                if tok == "-" {
                    Step::Index(a.len())
                } else {
                    Step::Index(tok.parse().map_err(|_| {
                        GatewayError::BadRequest(format!(
                            "JSON Patch path {pointer:?} has a bad array index"
                        ))
                    })?)
                }
            }
            _ => Step::Key(tok),
        };
        cur = cur.and_then(|v| match (&step, v) {
            (Step::Key(k), Value::Object(m)) => m.get(k),
            (Step::Index(i), Value::Array(a)) => a.get(*i),
            _ => None,
        });
        steps.push(step);
    }
    Ok(steps)
}

impl Gateway {
    /// Reads a request body that must be inspected: limited, decoded, strictly parsed.
    async fn read_json_body(
        &self,
        headers: &HeaderMap,
        incoming: Incoming,
    ) -> Result<Option<Value>, GatewayError> {
        let raw = match collect_limited(incoming, self.max_body_bytes).await {
            Ok(b) => b,
            Err(CollectError::TooLarge) => {
                return Err(GatewayError::PayloadTooLarge(format!(
                    "request body is larger than {} bytes",
                    self.max_body_bytes
                )))
            }
            Err(CollectError::Io(_)) => {
                return Err(GatewayError::BadRequest(
                    "request body could not be read".into(),
                ))
            }
        };
        let bytes = decode(headers, raw, self.max_body_bytes).map_err(|e| match e {
            DecodeError::Unsupported => GatewayError::UnsupportedEncoding(
                "request Content-Encoding is not one of gzip, deflate, br, identity".into(),
            ),
            DecodeError::Corrupt => GatewayError::BadRequest(
                "request body does not decode per its Content-Encoding".into(),
            ),
            DecodeError::TooLarge => GatewayError::PayloadTooLarge(format!(
                "decoded request body is larger than {} bytes",
                self.max_body_bytes
            )),
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_strict(&bytes)
            .map(Some)
            .map_err(GatewayError::BadRequest)
    }

    /// The service a test-connection workflow names, for filling its masked fields.
    async fn workflow_service(
        &self,
        doc: &Value,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Option<(String, Option<Value>)>, GatewayError> {
        let req = doc.get("request");
        let (Some(name), Some(kind)) = (
            req.and_then(|r| r.get("serviceName"))
                .and_then(Value::as_str),
            req.and_then(|r| r.get("serviceType"))
                .and_then(Value::as_str),
        ) else {
            return Ok(None);
        };
        let kind = kind.to_ascii_lowercase();
        let root = self.ids.root(&format!("{kind}/{{name}}"), name);
        let service = if self.provider.is_managed() {
            None
        } else {
            self.fetch_path(
                &format!(
                    "/api/v1/services/{kind}Services/name/{}",
                    encode_segment(name)
                ),
                caller_auth,
            )
            .await?
            .and_then(|s| s.pointer("/connection/config").cloned())
        };
        Ok(Some((root, service)))
    }

    /// GET of the entity a PATCH/DELETE names, with the service token (or the caller's).
    async fn fetch_entity(
        &self,
        m: &RouteMatch<'_>,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Option<Value>, GatewayError> {
        let path = if let Some(fqn) = m.param("fqn") {
            format!("{}/name/{}", m.rule.collection, encode_segment(fqn))
        } else if let Some(id) = m.param("id") {
            format!("{}/{}", m.rule.collection, encode_segment(id))
        } else {
            return Ok(None);
        };
        self.fetch_path(&format!("{path}?include=all"), caller_auth)
            .await
    }

    /// A JSON GET of the upstream with the service token (or the caller's); `None` unless 2xx.
    pub(crate) async fn fetch_path(
        &self,
        path: &str,
        caller_auth: Option<&HeaderValue>,
    ) -> Result<Option<Value>, GatewayError> {
        let mut req = Request::new(body::empty());
        *req.uri_mut() = self.upstream.uri_for(path)?;
        if let Some(t) = &self.service_token {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                req.headers_mut().insert(header::AUTHORIZATION, v);
            }
        } else if let Some(a) = caller_auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let resp = self.upstream.send(req).await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let bytes = collect_limited(resp.into_body(), self.max_body_bytes)
            .await
            .map_err(|_| GatewayError::BadGateway("upstream entity could not be read".into()))?;
        Ok(serde_json::from_slice(&bytes).ok())
    }

    fn write_ctx<'a>(
        &'a self,
        rules: &'a RuleSet,
        rule: &'a Rule,
        name: &str,
        existing: Option<&'a Value>,
    ) -> WriteCtx<'a> {
        WriteCtx {
            rules,
            rule,
            ids: &self.ids,
            root: self.ids.root(&rule.root_template, name),
            provider: self.provider,
            fernet: &self.fernet,
            wrap_references: self.wrap_references,
            store: self.store.as_ref(),
            existing,
            mask_source: None,
        }
    }

    /// Rewrites a ruled write's body. Returns the body to forward, the plan, the id root.
    async fn rewrite_write(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        headers: &HeaderMap,
        doc: Value,
    ) -> Result<(Value, Plan, Option<String>), GatewayError> {
        let mut plan = Plan::default();
        match m.op() {
            Op::Create => {
                let mut doc = doc;
                if !doc.is_object() {
                    return Err(GatewayError::BadRequest(
                        "request body must be a JSON object".into(),
                    ));
                }
                refuse_bad_shape(rules, m.rule, &doc)?;
                let found = rules.find_secrets(m.rule, &doc);
                if found.is_empty() {
                    return Ok((doc, plan, None));
                }
                let Some(name) = doc.get("name").and_then(Value::as_str).map(str::to_string) else {
                    return Err(GatewayError::BadRequest(
                        "request body has secret fields but no \"name\"".into(),
                    ));
                };
                let service = if m.rule.kind == "workflow" {
                    self.workflow_service(&doc, headers.get(header::AUTHORIZATION))
                        .await?
                } else {
                    None
                };
                let mut ctx = self.write_ctx(rules, m.rule, &name, None);
                if let Some((service_root, config)) = &service {
                    ctx.mask_source = Some(crate::rewrite::request::MaskSource {
                        base: ["request", "connection", "config"]
                            .iter()
                            .map(|k| Step::Key(k.to_string()))
                            .collect(),
                        service_root: service_root.clone(),
                        service_config: config.as_ref(),
                    });
                }
                ctx.rewrite(&[], &mut doc, &mut plan).await?;
                plan.owner = Some((ctx.root.clone(), format!("{}:{name}", m.rule.kind)));
                Ok((doc, plan, Some(ctx.root)))
            }
            Op::Patch => {
                let auth = headers.get(header::AUTHORIZATION);
                let Some(existing) = self.fetch_entity(m, auth).await? else {
                    return Err(GatewayError::Unprocessable(
                        "the entity to patch could not be read from OpenMetadata".into(),
                    ));
                };
                let name = existing
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let ctx = self.write_ctx(rules, m.rule, &name, Some(&existing));
                plan.owner = Some((ctx.root.clone(), format!("{}:{name}", m.rule.kind)));
                let merge = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| ct.to_ascii_lowercase().contains("merge-patch"));
                let mut doc = doc;
                if merge || doc.is_object() {
                    refuse_bad_shape(rules, m.rule, &doc)?;
                    ctx.rewrite(&[], &mut doc, &mut plan).await?;
                    return Ok((doc, plan, Some(ctx.root)));
                }
                let Value::Array(ops) = &mut doc else {
                    return Err(GatewayError::BadRequest(
                        "a JSON Patch must be an array of operations".into(),
                    ));
                };
                let mut working = existing.clone();
                for op in ops.iter_mut() {
                    let kind = op
                        .get("op")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let path = op
                        .get("path")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            GatewayError::BadRequest(
                                "a JSON Patch operation has no \"path\"".into(),
                            )
                        })?
                        .to_string();
                    let steps = pointer_steps(&working, &path)?;
                    match kind.as_str() {
                        "add" | "replace" | "test" => {
                            let Some(value) = op.get_mut("value") else {
                                return Err(GatewayError::BadRequest(format!(
                                    "JSON Patch {kind} needs a \"value\""
                                )));
                            };
                            if kind == "test" {
                                // Never compare a plaintext the upstream no longer holds: a
                                // secret in a test value is compared here, against the store.
                                self.rewrite_test_value(&ctx, &steps, value, &working)
                                    .await?;
                            } else {
                                if kind == "replace" {
                                    if let Some(old) = crate::rules::jsonpath::get(&working, &steps)
                                    {
                                        for f in rules.find_secrets_under(m.rule, &steps, old) {
                                            plan.deletes.push(
                                                self.ids
                                                    .id(&ctx.root, m.rule.field_steps(&f.steps)),
                                            );
                                        }
                                    }
                                }
                                ctx.rewrite(&steps, value, &mut plan).await?;
                            }
                        }
                        "remove" => {
                            if let Some(old) = crate::rules::jsonpath::get(&working, &steps) {
                                for f in rules.find_secrets_under(m.rule, &steps, old) {
                                    let id = self.ids.id(&ctx.root, m.rule.field_steps(&f.steps));
                                    plan.audit.push((
                                        crate::rules::jsonpath::render(&f.steps),
                                        id.clone(),
                                        "delete",
                                    ));
                                    plan.deletes.push(id);
                                }
                            }
                        }
                        "move" | "copy" => {}
                        other => {
                            return Err(GatewayError::BadRequest(format!(
                                "JSON Patch op {other:?} is not an RFC 6902 operation"
                            )))
                        }
                    }
                    let one: json_patch::Patch =
                        serde_json::from_value(Value::Array(vec![op.clone()])).map_err(|_| {
                            GatewayError::BadRequest("malformed JSON Patch operation".into())
                        })?;
                    if kind != "test" {
                        json_patch::patch(&mut working, &one).map_err(|_| {
                            GatewayError::BadRequest(format!(
                                "JSON Patch operation {kind} {path:?} cannot be applied"
                            ))
                        })?;
                    }
                }
                refuse_bad_shape(rules, m.rule, &working)?;
                // A replaced secret that got a new value in the same request is not deleted.
                let put_ids: Vec<&String> = plan.puts.iter().map(|(id, _)| id).collect();
                let kept: Vec<String> = rules
                    .find_secrets(m.rule, &working)
                    .iter()
                    .map(|f| self.ids.id(&ctx.root, m.rule.field_steps(&f.steps)))
                    .collect();
                plan.deletes
                    .retain(|d| !put_ids.contains(&d) && !kept.contains(d));
                Ok((doc, plan, Some(ctx.root)))
            }
            _ => {
                // Any other ruled write (actions, unknown sub-routes) may carry references but
                // never a value: refuse rather than forward one.
                refuse_bad_shape(rules, m.rule, &doc)?;
                for f in rules.find_secrets(m.rule, &doc) {
                    let v = crate::rules::jsonpath::get(&doc, &f.steps);
                    if matches!(
                        v.and_then(crate::rewrite::classify),
                        Some(crate::rewrite::FieldValue::Plain(_))
                            | Some(crate::rewrite::FieldValue::Fernet(_))
                    ) {
                        return Err(GatewayError::BadRequest(format!(
                            "{}: secret values are not accepted on this route",
                            crate::rules::jsonpath::render(&f.steps)
                        )));
                    }
                }
                Ok((doc, plan, None))
            }
        }
    }

    async fn rewrite_test_value(
        &self,
        ctx: &WriteCtx<'_>,
        steps: &[Step],
        value: &mut Value,
        working: &Value,
    ) -> Result<(), GatewayError> {
        let rules = ctx.rules;
        for f in rules.find_secrets_under(ctx.rule, steps, value) {
            let rel = &f.steps[steps.len()..];
            let Some(slot) = crate::rules::jsonpath::get_mut(value, rel) else {
                continue;
            };
            let Some(s) = slot.as_str().map(str::to_string) else {
                continue;
            };
            let held = crate::rules::jsonpath::get(working, &f.steps)
                .cloned()
                .unwrap_or(Value::Null);
            if s.starts_with(crate::rewrite::REFERENCE_PREFIX)
                || s.starts_with(crate::secrets::fernet::PREFIX)
            {
                continue;
            }
            let id = self.ids.id(&ctx.root, ctx.rule.field_steps(&f.steps));
            let stored = self.store.get(&id).await.map_err(|_| {
                GatewayError::StoreUnavailable(
                    "the secrets store is unreachable; nothing was forwarded".into(),
                )
            })?;
            *slot = if stored.as_deref() == Some(s.as_str()) {
                held
            } else {
                Value::String("secret:/omsp/test-mismatch".into())
            };
        }
        Ok(())
    }

    /// Refuses a write whose id root already holds another entity's secrets (names like
    /// `a b`, `a.b` and `a_b`, or a pipeline service and an ingestion pipeline both named
    /// `x`, map to one root); claims an unclaimed root as part of the plan.
    pub(crate) async fn claim_root(&self, plan: &mut Plan) -> Result<(), GatewayError> {
        if !self.provider.is_managed() || plan.puts.is_empty() {
            return Ok(());
        }
        let Some((root, owner)) = plan.owner.clone() else {
            return Ok(());
        };
        let marker = crate::rewrite::request::owner_marker(&root);
        match self.store.get(&marker).await {
            Ok(Some(o)) if o == owner => Ok(()),
            Ok(Some(_)) => Err(GatewayError::Conflict(format!(
                "secret ids under {root} already belong to another entity whose name maps to the same id; rename this entity"
            ))),
            Ok(None) => {
                plan.puts.insert(0, (marker, owner));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, detail = e.detail(), "store read failed");
                Err(GatewayError::StoreUnavailable("the secrets store is unreachable; nothing was forwarded".into()))
            }
        }
    }

    /// Writes the plan's values; on failure undoes what was written. Returns the undo log.
    pub(crate) async fn apply_plan(
        &self,
        plan: &Plan,
    ) -> Result<Vec<(String, Option<String>)>, GatewayError> {
        let unavailable = || {
            GatewayError::StoreUnavailable(
                "the secrets store is unreachable; nothing was forwarded".into(),
            )
        };
        if plan.puts.is_empty() {
            return Ok(Vec::new());
        }
        let mut undo: Vec<(String, Option<String>)> = Vec::with_capacity(plan.puts.len());
        for (id, _) in &plan.puts {
            match self.store.get(id).await {
                Ok(previous) => undo.push((id.clone(), previous)),
                Err(e) => {
                    tracing::warn!(error = %e, detail = e.detail(), "store read failed before write");
                    return Err(unavailable());
                }
            }
        }
        if let Err(e) = self.store.put_many(&plan.puts).await {
            tracing::warn!(error = %e, detail = e.detail(), "store write failed");
            self.rollback(&undo).await;
            return Err(unavailable());
        }
        self.metrics
            .secrets_written
            .fetch_add(plan.puts.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(undo)
    }

    pub(crate) async fn rollback(&self, undo: &[(String, Option<String>)]) {
        for (id, previous) in undo.iter().rev() {
            let r = match previous {
                Some(v) => self.store.put(id, v).await,
                None => self.store.delete(id).await,
            };
            if let Err(e) = r {
                tracing::error!(secret_id = %id, error = %e, "could not undo a store write");
            }
        }
    }

    /// The ruled pipeline.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ruled(
        &self,
        live: &Live,
        m: RouteMatch<'_>,
        req: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
        caller: CallerClass,
        sub: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let rules = &live.rules;
        let (mut parts, incoming) = req.into_parts();
        let caller_auth = parts.headers.get(header::AUTHORIZATION).cloned();
        // HEAD answers exactly like GET: the upstream is asked with GET so the rewritten
        // length is the one announced (hyper sends no body for HEAD).
        if parts.method == Method::HEAD {
            parts.method = Method::GET;
        }
        // No partial or compressed answers escape rewriting.
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );

        // rewrite_request
        let mut plan = Plan::default();
        let mut lock = None;
        let forward_body = if is_write(&parts.method) {
            match self.read_json_body(&parts.headers, incoming).await? {
                Some(doc) => {
                    let (doc, p, r) = self.rewrite_write(rules, &m, &parts.headers, doc).await?;
                    if let Some(r) = &r {
                        lock = Some(self.entity_lock(r).lock_owned().await);
                    }
                    plan = p;
                    parts.headers.remove(header::CONTENT_ENCODING);
                    let bytes = Bytes::from(doc.to_string());
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    full(bytes)
                }
                None => body::empty(),
            }
        } else {
            body::stream(incoming)
        };
        let hard_delete = parts.method == Method::DELETE
            && m.op() == Op::Delete
            && crate::http::path::query_param(parts.uri.query(), "hardDelete")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let delete_root = if hard_delete {
            self.fetch_entity(&m, parts.headers.get(header::AUTHORIZATION))
                .await?
                .and_then(|e| {
                    e.get("name")
                        .and_then(Value::as_str)
                        .map(|n| self.ids.root(&m.rule.root_template, n))
                })
        } else {
            None
        };
        self.claim_root(&mut plan).await?;
        let undo = self.apply_plan(&plan).await?;

        // forward
        let upstream_req = self.upstream_request(parts, forward_body, conn, request_id)?;
        let resp = match self.upstream.send(upstream_req).await {
            Ok(r) => r,
            Err(e) => {
                self.rollback(&undo).await;
                return Err(e);
            }
        };
        let ok = resp.status().is_success();
        if !ok {
            self.rollback(&undo).await;
        } else {
            for id in &plan.deletes {
                if let Err(e) = self.store.delete(id).await {
                    tracing::warn!(secret_id = %id, error = %e, "could not delete a cleared secret");
                }
            }
            if let Some(r) = &delete_root {
                match self.store.list(&format!("{r}/")).await {
                    Ok(ids) => {
                        for id in ids {
                            let _ = self.store.delete(&id).await;
                            tracing::info!(target: "omsp::audit", sub, kind = %m.rule.kind, secret_id = %id, op = "delete", outcome = "ok", "secret");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not list secrets of a hard-deleted entity")
                    }
                }
            }
        }
        drop(lock);
        // audit
        for (field, id, op) in &plan.audit {
            tracing::info!(target: "omsp::audit", sub, kind = %m.rule.kind, field = %field, secret_id = %id, op, outcome = if ok { "ok" } else { "undone" }, "secret");
        }

        // rewrite_response
        let action = decide(caller, &live.policy, &m.rule.policy);
        let response_at: &[String] = m.route.map(|r| r.response_at.as_slice()).unwrap_or(&[]);
        let permit =
            (action == ReadAction::Resolve && live.policy.bot_requires_view_all).then(|| ViewAll {
                gw: self,
                auth: caller_auth.clone(),
                resource: if m.rule.kind == "botUser" {
                    "user".to_string()
                } else {
                    m.rule.kind.clone()
                },
            });
        self.rewrite_answer(
            resp,
            Some((rules, m.rule, response_at)),
            action,
            permit.as_ref().map(|p| p as &dyn Permit),
        )
        .await
    }

    /// Rewrites an answer: per rule when one applies; the safety net always, for callers
    /// who do not resolve.
    pub(super) async fn rewrite_answer(
        &self,
        resp: Response<Incoming>,
        rule: Option<(&RuleSet, &Rule, &[String])>,
        action: ReadAction,
        permit: Option<&dyn Permit>,
    ) -> Result<Response<Body>, GatewayError> {
        if rule.is_none() {
            return self.unruled_answer(resp, action).await;
        }
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
        if rule.is_none() && (!json_like || action == ReadAction::Resolve) {
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
        if rule.is_none() && !may_hold_references(&decoded) {
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
        if let Some((rules, rule, at)) = rule {
            let ctx = ReadCtx {
                rules,
                rule,
                action,
                fernet: &self.fernet,
                store: self.store.as_ref(),
                response_at: at,
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
}

/// Asks the upstream's permission API, with the caller's own token, whether the caller has
/// `ViewAll` on an entity; answers are cached for 30 s per (token, resource, entity).
struct ViewAll<'a> {
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
                encode_segment(&self.resource),
                encode_segment(fqn)
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

/// Percent-encodes one path segment for the gateway's own upstream reads.
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A 400 when a scalar stands where an object leading to a secret field belongs (see
/// [`RuleSet::shape_error`]). The message names the field, never its value.
fn refuse_bad_shape(rules: &RuleSet, rule: &Rule, doc: &Value) -> Result<(), GatewayError> {
    match rules.shape_error(rule, doc) {
        Some(at) => Err(GatewayError::BadRequest(format!(
            "{at} must be an object: it leads to secret fields"
        ))),
        None => Ok(()),
    }
}
