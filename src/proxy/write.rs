//! Phase 3: a ruled request's body, judged by the entity it produces.
//!
//! - create (POST/PUT on the collection): the body is the entity; it is stripped, and what is
//!   forwarded is the caller's bytes with only the secret values replaced;
//! - patch: the caller's whole patch (JSON Patch or merge patch, by media type) is applied
//!   locally to the entity as the upstream holds it, the result is stripped, and a JSON Patch
//!   from the upstream's document to the stripped result is forwarded;
//! - hard delete: the entity's secrets are deleted once the upstream has deleted it;
//! - any other ruled route: a body may carry references but never a value;
//! - GET, HEAD, DELETE and OPTIONS carry no body.
//!
//! Whatever the route, the write guard checks the entity as the upstream will hold it before
//! a byte is forwarded (`rewrite::guard`). A create or patch that would leave an entity nested
//! deeper than `rewrite::json::MAX_DEPTH` levels is refused (400), so every entity written
//! through the gateway reads back masked.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::OwnedMutexGuard;

use super::Gateway;
use crate::error::GatewayError;
use crate::http::body::{self, collect_within, full, Body, CollectError, CollectTimedError};
use crate::http::encoding::{decode, DecodeError};
use crate::http::upstream::encode_segment;
use crate::rewrite::guard::Guard;
use crate::rewrite::json::{self, parse_strict};
use crate::rewrite::patch::{self, Media, PatchBody};
use crate::rewrite::strip::{AuditEntry, AuditOp, MaskSource, Stripped, Stripper};
use crate::rewrite::{classify, spans, FieldValue};
use crate::rules::jsonpath::{render, Step};
use crate::rules::{Op, RouteMatch, Rule, RuleSet};
use crate::secrets::transaction::Plan;

/// What phase 3 hands to the store transaction and the forwarder.
pub(super) struct Prepared {
    pub body: Body,
    pub plan: Plan,
    pub audit: Vec<AuditEntry>,
    /// Held until the upstream has answered, so store and upstream agree on the last writer.
    pub lock: Option<OwnedMutexGuard<()>>,
}

impl Prepared {
    fn unchanged(body: Body) -> Prepared {
        Prepared {
            body,
            plan: Plan::default(),
            audit: Vec::new(),
            lock: None,
        }
    }
}

fn is_write(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

impl Gateway {
    pub(super) async fn prepare_write(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        incoming: Incoming,
    ) -> Result<Prepared, GatewayError> {
        if !is_write(&parts.method) {
            self.refuse_body(incoming).await?;
            let hard = crate::http::path::query_param(parts.uri.query(), "hardDelete")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if parts.method == Method::DELETE && m.op() == Op::Delete && hard {
                return self.prepare_hard_delete(m).await;
            }
            return Ok(Prepared::unchanged(body::empty()));
        }
        match m.op() {
            Op::Create => self.prepare_create(rules, m, parts, incoming).await,
            Op::Patch => self.prepare_patch(rules, m, parts, incoming).await,
            _ => self.prepare_action(rules, m, parts, incoming).await,
        }
    }

    /// A body on GET, HEAD, DELETE or OPTIONS of a ruled route is refused, never forwarded.
    async fn refuse_body(&self, incoming: Incoming) -> Result<(), GatewayError> {
        if http_body::Body::is_end_stream(&incoming) {
            return Ok(());
        }
        let bytes = collect_within(incoming, self.max_body_bytes, self.client_body_timeout)
            .await
            .map_err(|e| match e {
                CollectTimedError::TimedOut => self.client_too_slow(),
                CollectTimedError::Collect(_) => {
                    GatewayError::BadRequest("request body could not be read".into())
                }
            })?;
        if bytes.is_empty() {
            return Ok(());
        }
        Err(GatewayError::BadRequest(
            "a body is not accepted with GET, HEAD, DELETE or OPTIONS on this route".into(),
        ))
    }

    /// Reads a body that must be inspected: limited and decoded. `None` when it is empty.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        incoming: Incoming,
    ) -> Result<Option<Bytes>, GatewayError> {
        let limit = self.max_body_bytes;
        let raw = collect_within(incoming, limit, self.client_body_timeout)
            .await
            .map_err(|e| match e {
                CollectTimedError::TimedOut => self.client_too_slow(),
                CollectTimedError::Collect(CollectError::TooLarge) => {
                    GatewayError::PayloadTooLarge(format!(
                        "request body is larger than {limit} bytes"
                    ))
                }
                CollectTimedError::Collect(CollectError::Io(_)) => {
                    GatewayError::BadRequest("request body could not be read".into())
                }
            })?;
        let bytes = decode(headers, raw, limit).map_err(|e| match e {
            DecodeError::Unsupported => GatewayError::UnsupportedEncoding(
                "request Content-Encoding is not one of gzip, deflate, br, identity".into(),
            ),
            DecodeError::Corrupt => GatewayError::BadRequest(
                "request body does not decode per its Content-Encoding".into(),
            ),
            DecodeError::TooLarge => GatewayError::PayloadTooLarge(format!(
                "decoded request body is larger than {limit} bytes"
            )),
        })?;
        Ok((!bytes.iter().all(u8::is_ascii_whitespace)).then_some(bytes))
    }

    fn stripper<'a>(
        &'a self,
        rules: &'a RuleSet,
        rule: &'a Rule,
        name: &str,
        mask_source: Option<MaskSource>,
    ) -> Stripper<'a> {
        Stripper {
            rules,
            rule,
            ids: &self.ids,
            root: self.ids.root(&rule.root_template, name),
            owner: format!("{}:{name}", rule.kind),
            managed: self.managed,
            fernet: &self.fernet,
            wrap_references: self.wrap_references,
            store: self.store.as_ref(),
            mask_source,
        }
    }

    fn guard<'a>(&'a self, rules: &'a RuleSet, rule: &'a Rule, root: Option<&'a str>) -> Guard<'a> {
        Guard {
            rules,
            rule,
            ids: &self.ids,
            fernet: &self.fernet,
            root,
            managed: self.managed,
        }
    }

    /// POST/PUT of an entity: the caller's bytes with only the secret values replaced.
    async fn prepare_create(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        incoming: Incoming,
    ) -> Result<Prepared, GatewayError> {
        let Some(raw) = self.read_body(&parts.headers, incoming).await? else {
            return Ok(Prepared::unchanged(body::empty()));
        };
        let mut doc = parse_strict(&raw).map_err(GatewayError::BadRequest)?;
        if !doc.is_object() {
            return Err(GatewayError::BadRequest(
                "request body must be a JSON object".into(),
            ));
        }
        refuse_too_deep(&doc)?;
        refuse_bad_shape(rules, m.rule, &doc)?;
        let Some(name) = doc.get("name").and_then(Value::as_str).map(str::to_string) else {
            if !rules.find_secrets(m.rule, &doc).is_empty() {
                return Err(GatewayError::BadRequest(
                    "request body has secret fields but no \"name\"".into(),
                ));
            }
            return Ok(self.forward_bytes(parts, raw.to_vec(), None));
        };
        let mask_source = self.mask_source(m.rule, &doc).await?;
        let stripper = self.stripper(rules, m.rule, &name, mask_source);
        let lock = self.entity_locks.lock(&stripper.root).await;
        let stripped = stripper.strip(&mut doc, None).await?;
        let out = spans::replace_values(&raw, &stripped.edits)
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        // The guard reads what actually leaves.
        let outgoing = parse_strict(&out).map_err(GatewayError::Internal)?;
        self.guard(rules, m.rule, Some(&stripper.root))
            .check(&outgoing, None)?;
        Ok(self.prepared(parts, out, None, stripped, lock))
    }

    /// PATCH: applied locally to the upstream's entity; the forwarded JSON Patch turns that
    /// entity into the stripped result.
    async fn prepare_patch(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        incoming: Incoming,
    ) -> Result<Prepared, GatewayError> {
        let media = Media::of(&parts.headers);
        if !matches!(media, Media::JsonPatch | Media::MergePatch) {
            return Err(GatewayError::UnsupportedMediaType(
                "PATCH takes application/json-patch+json or application/merge-patch+json".into(),
            ));
        }
        let Some(raw) = self.read_body(&parts.headers, incoming).await? else {
            return Err(GatewayError::BadRequest("a PATCH needs a body".into()));
        };
        let body = PatchBody::parse(media, parse_strict(&raw).map_err(GatewayError::BadRequest)?)?;
        let unreadable = || {
            GatewayError::Unprocessable(
                "the entity to patch could not be read from OpenMetadata".into(),
            )
        };
        let first = self.fetch_entity(m).await?.ok_or_else(unreadable)?;
        let name = entity_name(&first);
        let stripper = self.stripper(rules, m.rule, &name, None);
        let lock = self.entity_locks.lock(&stripper.root).await;
        // Read again under the lock: another write of this entity may have just finished.
        let current = self.fetch_entity(m).await?.ok_or_else(unreadable)?;
        if entity_name(&current) != name {
            return Err(unreadable());
        }
        let secrets = |d: &Value| -> Vec<Vec<Step>> {
            rules
                .find_secrets(m.rule, d)
                .into_iter()
                .map(|f| f.steps)
                .collect()
        };
        let mut result = patch::apply(&current, &body, &secrets)?;
        if !result.is_object() {
            return Err(GatewayError::BadRequest(
                "the patch would leave the entity as something other than a JSON object".into(),
            ));
        }
        if entity_name(&result) != name && !secrets(&result).is_empty() {
            return Err(GatewayError::Unprocessable(
                "renaming an entity that holds secrets is not supported through the gateway: its secret ids are built from its name".into(),
            ));
        }
        refuse_too_deep(&result)?;
        refuse_bad_shape(rules, m.rule, &result)?;
        let stripped = stripper.strip(&mut result, Some(&current)).await?;
        let ops = patch::diff(&current, &result);
        let mut after = current.clone();
        patch::apply_own(&mut after, &ops)?;
        self.guard(rules, m.rule, Some(&stripper.root))
            .check(&after, Some(&current))?;
        let ct = HeaderValue::from_static("application/json-patch+json");
        Ok(self.prepared(
            parts,
            ops.to_string().into_bytes(),
            Some(ct),
            stripped,
            lock,
        ))
    }

    /// Any other ruled write: references may pass, values never; a body the gateway cannot
    /// read as JSON is refused.
    async fn prepare_action(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        incoming: Incoming,
    ) -> Result<Prepared, GatewayError> {
        let media = Media::of(&parts.headers);
        let Some(raw) = self.read_body(&parts.headers, incoming).await? else {
            return Ok(Prepared::unchanged(body::empty()));
        };
        if m.op() == Op::Import && media == Media::Other {
            // CSV imports: OpenMetadata's CSV formats carry no connection fields.
            return Ok(self.forward_bytes(parts, raw.to_vec(), None));
        }
        if !matches!(
            media,
            Media::Json | Media::Missing | Media::JsonPatch | Media::MergePatch
        ) {
            return Err(GatewayError::UnsupportedMediaType(
                "this route takes a JSON body".into(),
            ));
        }
        let doc = parse_strict(&raw).map_err(GatewayError::BadRequest)?;
        refuse_bad_shape(rules, m.rule, &doc)?;
        for f in rules
            .find_secrets(m.rule, &doc)
            .into_iter()
            .chain(rules.find_by_name(&doc))
        {
            let v = crate::rules::jsonpath::get(&doc, &f.steps);
            if matches!(
                v.and_then(classify),
                Some(FieldValue::Plain(_)) | Some(FieldValue::Fernet(_))
            ) {
                return Err(GatewayError::BadRequest(format!(
                    "{}: secret values are not accepted on this route",
                    render(&f.steps)
                )));
            }
        }
        self.guard(rules, m.rule, None).check(&doc, None)?;
        Ok(self.forward_bytes(parts, raw.to_vec(), None))
    }

    /// A hard delete: the entity's secrets go once the upstream has deleted it.
    async fn prepare_hard_delete(&self, m: &RouteMatch<'_>) -> Result<Prepared, GatewayError> {
        let Some(entity) = self.fetch_entity(m).await? else {
            return Ok(Prepared::unchanged(body::empty()));
        };
        let root = self.ids.root(&m.rule.root_template, &entity_name(&entity));
        let lock = self.entity_locks.lock(&root).await;
        let ids = self.store.list(&format!("{root}/")).await?;
        let audit = ids
            .iter()
            .map(|id| AuditEntry {
                field: String::new(),
                secret_id: id.clone(),
                op: AuditOp::Delete,
            })
            .collect();
        Ok(Prepared {
            body: body::empty(),
            plan: Plan {
                deletes: ids,
                ..Plan::default()
            },
            audit,
            lock: Some(lock),
        })
    }

    /// The service a test-connection workflow names, whose secrets its masks stand for.
    async fn mask_source(
        &self,
        rule: &Rule,
        doc: &Value,
    ) -> Result<Option<MaskSource>, GatewayError> {
        if !rule.masks_from_service {
            return Ok(None);
        }
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
        let service_config = if self.managed {
            None
        } else {
            let path = format!(
                "/api/v1/services/{kind}Services/name/{}",
                encode_segment(name)
            );
            self.upstream
                .get_json(&path, self.service_auth.as_ref(), self.max_body_bytes)
                .await?
                .and_then(|s| s.pointer("/connection/config").cloned())
        };
        Ok(Some(MaskSource {
            base: ["request", "connection", "config"]
                .iter()
                .map(|k| Step::Key(k.to_string()))
                .collect(),
            service_root: self.ids.root(&format!("{kind}/{{name}}"), name),
            service_config,
        }))
    }

    /// GET of the entity a PATCH/DELETE names, with the service token: with the kind's
    /// `entity_fields` (asked again without them if the server refuses), completed from its
    /// `credentials_route` (bot users' authentication mechanism).
    async fn fetch_entity(&self, m: &RouteMatch<'_>) -> Result<Option<Value>, GatewayError> {
        let path = if let Some(fqn) = m.param("fqn") {
            format!("{}/name/{}", m.rule.collection, encode_segment(fqn))
        } else if let Some(id) = m.param("id") {
            format!("{}/{}", m.rule.collection, encode_segment(id))
        } else {
            return Ok(None);
        };
        let auth = self.service_auth.as_ref();
        let limit = self.max_body_bytes;
        let mut entity = None;
        if let Some(fields) = &m.rule.entity_fields {
            let q = format!(
                "{path}?include=all&fields={}",
                encode_segment(fields).replace("%2C", ",")
            );
            entity = self.upstream.get_json(&q, auth, limit).await?;
        }
        if entity.is_none() {
            entity = self
                .upstream
                .get_json(&format!("{path}?include=all"), auth, limit)
                .await?;
        }
        let Some(mut entity) = entity else {
            return Ok(None);
        };
        if let (Some(route), Some(id)) = (
            &m.rule.credentials_route,
            entity.get("id").and_then(Value::as_str),
        ) {
            let cpath = format!(
                "{}{}",
                m.rule.collection,
                route.replace("{id}", &encode_segment(id))
            );
            if let (Some(v), Some(field)) = (
                self.upstream.get_json(&cpath, auth, limit).await?,
                m.rule.field_base.first(),
            ) {
                entity[field.as_str()] = v;
            }
        }
        Ok(Some(entity))
    }

    fn forward_bytes(
        &self,
        parts: &mut http::request::Parts,
        bytes: Vec<u8>,
        content_type: Option<HeaderValue>,
    ) -> Prepared {
        set_body_headers(&mut parts.headers, bytes.len(), content_type);
        Prepared::unchanged(full(bytes))
    }

    fn prepared(
        &self,
        parts: &mut http::request::Parts,
        bytes: Vec<u8>,
        content_type: Option<HeaderValue>,
        stripped: Stripped,
        lock: OwnedMutexGuard<()>,
    ) -> Prepared {
        set_body_headers(&mut parts.headers, bytes.len(), content_type);
        Prepared {
            body: full(bytes),
            plan: stripped.plan,
            audit: stripped.audit,
            lock: Some(lock),
        }
    }
}

/// The body is forwarded decoded, with its own length.
fn set_body_headers(headers: &mut HeaderMap, len: usize, content_type: Option<HeaderValue>) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, ct);
    }
}

fn entity_name(entity: &Value) -> String {
    entity
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A 400 when the entity a write leaves would nest deeper than the gateway's limit
/// ([`json::MAX_DEPTH`]): every entity a write accepts must read back masked, and reads are
/// tested at that depth and far beyond (`json::READ_MAX_DEPTH`).
fn refuse_too_deep(entity: &Value) -> Result<(), GatewayError> {
    let depth = json::depth(entity);
    if depth > json::MAX_DEPTH {
        return Err(GatewayError::BadRequest(format!(
            "the entity would be nested {depth} levels deep; the gateway accepts at most {} levels",
            json::MAX_DEPTH
        )));
    }
    Ok(())
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
