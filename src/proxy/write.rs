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
//! `mask_only` rules (values the upstream keeps in clear) take their own path: `unmask.rs`.
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
use crate::rewrite::guard::{secret_in_json_text, Guard, URL_PASSWORD};
use crate::rewrite::json::{self, parse_strict};
use crate::rewrite::owner::{self, Located};
use crate::rewrite::patch::{self, Media, PatchBody};
use crate::rewrite::strip::{
    held_references, is_within, references_within, AuditEntry, AuditOp, MaskSource, Stripped,
    Stripper,
};
use crate::rewrite::{classify, spans, FieldValue};
use crate::rules::jsonpath::{get, render, Step};
use crate::rules::{Op, RouteMatch, Rule, RuleSet};
use crate::secrets::ownership::{self, owner_marker};
use crate::secrets::transaction::Plan;

mod unmask;

/// What phase 3 hands to the store transaction and the forwarder.
pub(super) struct Prepared {
    pub(crate) body: Body,
    pub(crate) plan: Plan,
    pub(crate) audit: Vec<AuditEntry>,
    /// Held until the upstream has answered, so store and upstream agree on the last writer.
    pub(crate) lock: Option<OwnedMutexGuard<()>>,
    /// Values the gateway put in place of masks (masked-only kinds): scrubbed from the
    /// upstream's answer for callers who may not see them, wherever they stand in it (an
    /// error message quoting the forwarded body).
    pub(crate) filled: Vec<String>,
}

impl Prepared {
    fn unchanged(body: Body) -> Prepared {
        Prepared {
            body,
            plan: Plan::default(),
            audit: Vec::new(),
            lock: None,
            filled: Vec::new(),
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
        if m.rule.is_mask_only() {
            return self.prepare_mask_only(rules, m, parts, incoming).await;
        }
        if !is_write(&parts.method) {
            self.refuse_body(incoming).await?;
            let hard = flag(parts.uri.query(), "hardDelete");
            if parts.method == Method::DELETE && m.op() == Op::Delete && hard {
                let recursive = flag(parts.uri.query(), "recursive");
                return self.prepare_hard_delete(rules, m, recursive).await;
            }
            return Ok(Prepared::unchanged(body::empty()));
        }
        match m.op() {
            Op::Create => self.prepare_create(rules, m, parts, incoming).await,
            Op::Patch => self.prepare_patch(rules, m, parts, incoming).await,
            _ => self.prepare_action(rules, m, parts, incoming).await,
        }
    }

    /// A bot's hard delete (`/bots` has no rule): OpenMetadata deletes the bot's user with it
    /// (the bot contains it), a deletion no request for the user shows the gateway. Such a
    /// request is handled as the hard delete of that user, so the user's secrets go once
    /// OpenMetadata has answered the bot's delete with success. `None` (the request passes
    /// through as sent): not a bot's hard delete, or the bot or its user cannot be read.
    pub(super) async fn deleted_bots_user<'r>(
        &self,
        rules: &'r RuleSet,
        method: &Method,
        path: &crate::http::path::NormPath,
        query: Option<&str>,
    ) -> Option<RouteMatch<'r>> {
        if method != Method::DELETE || !flag(query, "hardDelete") {
            return None;
        }
        let s: Vec<&str> = path.segments.iter().map(String::as_str).collect();
        let is = |x: &str, w: &str| x.eq_ignore_ascii_case(w);
        let bot = match s.as_slice() {
            [a, v, b, rest @ ..] if is(a, "api") && is(v, "v1") && is(b, "bots") => rest,
            _ => return None,
        };
        let path = match bot {
            [id] => format!("/api/v1/bots/{}", encode_segment(id)),
            [x, id] if is(x, "async") => format!("/api/v1/bots/{}", encode_segment(id)),
            [n, fqn] if is(n, "name") => format!("/api/v1/bots/name/{}", encode_segment(fqn)),
            [n, fqn, x] if is(n, "name") && is(x, "async") => {
                format!("/api/v1/bots/name/{}", encode_segment(fqn))
            }
            _ => return None,
        };
        let bot = self
            .upstream
            .get_json(
                &format!("{path}?include=all"),
                self.service_auth.as_ref(),
                self.max_body_bytes,
            )
            .await
            .ok()??;
        let user = bot.get("botUser")?.get("id")?.as_str()?;
        rules.bot_user_delete(user)
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
                CollectTimedError::Collect(CollectError::Io) => {
                    GatewayError::BadRequest("request body could not be read".into())
                }
            })?;
        let bytes = decode(headers, raw, limit).map_err(|e| match e {
            DecodeError::Unsupported => GatewayError::UnsupportedEncoding(
                "request Content-Encoding is not one of gzip, deflate, br, identity".into(),
            ),
            // The contract's "a Content-Encoding the gateway cannot decode" (415) covers a
            // body that does not decode in the encoding it names.
            DecodeError::Corrupt => GatewayError::UnsupportedEncoding(
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
        at: Located,
        mask_source: Option<MaskSource>,
    ) -> Stripper<'a> {
        Stripper {
            rules,
            rule,
            ids: &self.ids,
            root: at.root,
            owner: at.owner,
            legacy_root: at.legacy_root,
            owned: at.owned,
            managed: self.managed,
            fernet: &self.fernet,
            wrap_references: self.wrap_references,
            store: self.store.as_ref(),
            mask_source,
            held: Default::default(),
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
        let found = rules.find_secrets(m.rule, &doc);
        let fields: Vec<&[Step]> = found.iter().map(|f| f.steps.as_slice()).collect();
        refuse_secret_in_json_text(rules, m.rule, &doc, &fields)?;
        let has_secrets = !found.is_empty();
        let Some(name) = doc.get("name").and_then(Value::as_str).map(str::to_string) else {
            if has_secrets {
                return Err(GatewayError::BadRequest(
                    "request body has secret fields but no \"name\"".into(),
                ));
            }
            return Ok(self.forward_bytes(parts, raw.to_vec(), None));
        };
        if !has_secrets {
            // Nothing to strip, no root to claim (and no parent to read).
            return Ok(self.forward_bytes(parts, raw.to_vec(), None));
        }
        // Without a key store of the gateway's own (`db`, non-managed providers), a mask keeps
        // what OpenMetadata holds in the field (a `fernet:` token or a `secret:` reference),
        // so the entity as it holds it is read first.
        let verbatim_masks = !self.managed
            && found.iter().any(|f| {
                matches!(
                    get(&doc, &f.steps).and_then(classify),
                    Some(FieldValue::Mask)
                )
            });
        // Only managed providers keep secrets under roots, which scoped kinds pick by parent.
        let scope = match self.managed || verbatim_masks {
            true => {
                let caller = parts.headers.get(header::AUTHORIZATION);
                self.parent_fqn(rules, m.rule, &doc, caller).await?
            }
            false => None,
        };
        let entity_path = || {
            let fqn = match &scope {
                Some(parent) => owner::fqn_add(parent, &name),
                None => name.clone(),
            };
            format!("{}/name/{}", m.rule.collection, encode_segment(&fqn))
        };
        let current = match verbatim_masks {
            true => self.fetch_path(m.rule, &entity_path()).await?,
            false => None,
        };
        let mask_source = self.mask_source(rules, m.rule, &doc).await?;
        let lock = self
            .entity_locks
            .lock(&owner::lock_key(&self.ids, m.rule, &name))
            .await;
        let entity = owner::Entity {
            rule: m.rule,
            name: &name,
            scope: scope.as_deref(),
            current: None,
        };
        let at = owner::locate(
            self.store.as_ref(),
            &self.ids,
            &self.fernet,
            &entity,
            self.managed,
        )
        .await?;
        let mut stripper = self.stripper(rules, m.rule, at, mask_source);
        if stripper.owned && found.iter().any(|f| keeps_a_value(get(&doc, &f.steps))) {
            if let Some(held) = self.fetch_path(m.rule, &entity_path()).await? {
                stripper.held = held_references(rules, m.rule, &held, &self.fernet);
            }
        }
        // `doc` is as `found` was taken from it.
        let stripped = stripper
            .strip_found(&mut doc, current.as_ref(), found)
            .await?;
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
        let lock = self
            .entity_locks
            .lock(&owner::lock_key(&self.ids, m.rule, &name))
            .await;
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
        let result_secrets = secrets(&result);
        if entity_name(&result) != name && !result_secrets.is_empty() {
            return Err(GatewayError::Unprocessable(
                "renaming an entity that holds secrets is not supported through the gateway: its secret ids are built from its name".into(),
            ));
        }
        refuse_too_deep(&result)?;
        refuse_bad_shape(rules, m.rule, &result)?;
        let fields: Vec<&[Step]> = result_secrets.iter().map(Vec::as_slice).collect();
        refuse_secret_in_json_text(rules, m.rule, &result, &fields)?;
        let at = if secrets(&current).is_empty() && result_secrets.is_empty() {
            // No secret before or after: no root to look up (whoever owns it).
            Located::none(&self.ids, m.rule, &name)
        } else {
            self.locate_existing(m.rule, &current).await?
        };
        let stripper = self.stripper(rules, m.rule, at, None);
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
        refuse_secret_values(rules, m.rule, &doc)?;
        let found = rules.find_secrets(m.rule, &doc);
        let fields: Vec<&[Step]> = found.iter().map(|f| f.steps.as_slice()).collect();
        refuse_secret_in_json_text(rules, m.rule, &doc, &fields)?;
        // A JSON Patch sent where none is expected is judged by the fields it would set.
        for placed in crate::rewrite::patch::placed_values(&doc).unwrap_or_default() {
            refuse_secret_values(rules, m.rule, &placed)?;
        }
        self.guard(rules, m.rule, None).check(&doc, None)?;
        Ok(self.forward_bytes(parts, raw.to_vec(), None))
    }

    /// A hard delete: once the upstream has deleted the entity, its secrets go: every id
    /// under each root whose owner marker names it (none when no root is its own; its
    /// root from an earlier version too), except what lies under another entity's root
    /// nested inside (ids written before names were kept to one segment), each marker last.
    ///
    /// `recursive`: OpenMetadata deletes the entity's children with it (a service's ingestion
    /// pipelines) without a request for them passing the gateway, so their secrets go too.
    async fn prepare_hard_delete(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        recursive: bool,
    ) -> Result<Prepared, GatewayError> {
        let Some(entity) = self.fetch_entity(m).await? else {
            return Ok(Prepared::unchanged(body::empty()));
        };
        let name = entity_name(&entity);
        let lock = self
            .entity_locks
            .lock(&owner::lock_key(&self.ids, m.rule, &name))
            .await;
        let mut deletes = self.owned_ids(m.rule, &entity).await?;
        if recursive && self.managed {
            for (rule, child) in self.children(rules, m.rule, &entity).await? {
                deletes.extend(self.owned_ids(rule, &child).await?);
            }
        }
        if deletes.is_empty() {
            return Ok(Prepared::unchanged(body::empty()));
        }
        let audit = deletes
            .iter()
            .filter(|id| !id.ends_with(ownership::MARKER))
            .map(|id| AuditEntry {
                field: String::new(),
                secret_id: id.clone(),
                op: AuditOp::Delete,
            })
            .collect();
        Ok(Prepared {
            body: body::empty(),
            plan: Plan {
                deletes,
                ..Plan::default()
            },
            audit,
            lock: Some(lock),
            filled: Vec::new(),
        })
    }

    /// Every id an existing entity's secrets have under roots it owns (markers last per
    /// root); none when its root is another entity's.
    async fn owned_ids(&self, rule: &Rule, entity: &Value) -> Result<Vec<String>, GatewayError> {
        let at = match self.locate_existing(rule, entity).await {
            Ok(at) => at,
            // Another entity's root: nothing there is this entity's.
            Err(GatewayError::Conflict(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        if at.owned {
            ids.extend(self.ids_of(&at.root, entity).await?);
        }
        if let Some(legacy) = &at.legacy_root {
            ids.extend(self.ids_of(legacy, entity).await?);
        }
        Ok(ids)
    }

    /// The entities of scoped kinds (ingestion pipelines) that belong to `entity`, listed
    /// from the upstream with the service token (`?service=<FQN>`, every page).
    async fn children<'r>(
        &self,
        rules: &'r RuleSet,
        rule: &Rule,
        entity: &Value,
    ) -> Result<Vec<(&'r Rule, Value)>, GatewayError> {
        let Some(fqn) = entity
            .get("fullyQualifiedName")
            .or_else(|| entity.get("name"))
            .and_then(Value::as_str)
        else {
            return Ok(Vec::new());
        };
        if rule.scope.is_some() {
            return Ok(Vec::new());
        }
        let id = entity.get("id").and_then(Value::as_str);
        let mut out = Vec::new();
        // Children live beside their parents' collections (ingestion pipelines among the
        // services): a bot user, say, has none.
        let siblings = |child: &Rule| {
            let parent = |c: &str| c.rsplit_once('/').map(|(p, _)| p.to_string());
            parent(&child.collection) == parent(&rule.collection)
        };
        for child_rule in rules
            .rules
            .iter()
            .filter(|r| r.scope.is_some() && siblings(r))
        {
            let mut after: Option<String> = None;
            loop {
                let mut path = format!(
                    "{}?service={}&include=all&limit=100",
                    child_rule.collection,
                    encode_segment(fqn)
                );
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", encode_segment(a)));
                }
                let Some(page) = self
                    .upstream
                    .get_json(&path, self.service_auth.as_ref(), self.max_body_bytes)
                    .await?
                else {
                    break;
                };
                for child in page["data"].as_array().into_iter().flatten() {
                    // Only what names this very entity as its parent (a server may ignore the
                    // filter, and services of different kinds may share a name): by id, or,
                    // for a reference without one, by kind and fully qualified name.
                    let reference = child_rule.scope.as_ref().map(|s| s.reference.as_str());
                    let Some(parent) = child.get(reference.unwrap_or_default()) else {
                        continue;
                    };
                    let text = |k: &str| parent.get(k).and_then(Value::as_str);
                    let same = match (text("id"), id) {
                        (Some(a), Some(b)) => a == b,
                        _ => {
                            text("type").is_some_and(|t| t.eq_ignore_ascii_case(&rule.kind))
                                && text("fullyQualifiedName").or_else(|| text("name")) == Some(fqn)
                        }
                    };
                    if same {
                        out.push((child_rule, child.clone()));
                    }
                }
                after = page["paging"]["after"].as_str().map(str::to_string);
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The ids an entity owning `root` has: everything under it but another entity's nested
    /// root, plus what the entity refers to there (a listing may lag behind), marker last.
    async fn ids_of(&self, root: &str, entity: &Value) -> Result<Vec<String>, GatewayError> {
        let listed = self.store.list(&format!("{root}/")).await?;
        let marker = owner_marker(root);
        let nested: Vec<&str> = listed
            .iter()
            .filter(|id| **id != marker)
            .filter_map(|id| id.strip_suffix(&format!("/{}", ownership::MARKER)))
            .collect();
        let mut ids: std::collections::BTreeSet<String> = listed
            .iter()
            .filter(|id| **id != marker && !nested.iter().any(|n| is_within(id, n)))
            .filter(|id| !id.ends_with(ownership::MARKER))
            .cloned()
            .collect();
        ids.extend(references_within(entity, root, &self.fernet));
        let mut out: Vec<String> = ids.into_iter().collect();
        out.push(marker);
        Ok(out)
    }

    /// [`owner::locate_existing`] with this gateway's store and keys.
    async fn locate_existing(&self, rule: &Rule, entity: &Value) -> Result<Located, GatewayError> {
        owner::locate_existing(
            self.store.as_ref(),
            &self.ids,
            &self.fernet,
            rule,
            entity,
            self.managed,
        )
        .await
    }

    /// The fully qualified name of the parent a create body names (`service` of an
    /// ingestion pipeline), read from OpenMetadata: the reference's `id` is what OpenMetadata
    /// goes by (its `fullyQualifiedName` only without one), so the gateway reads the parent
    /// rather than trusting the body. Read with the service token, else the caller's.
    async fn parent_fqn(
        &self,
        rules: &RuleSet,
        rule: &Rule,
        doc: &Value,
        caller: Option<&HeaderValue>,
    ) -> Result<Option<String>, GatewayError> {
        let Some(scope) = &rule.scope else {
            return Ok(None);
        };
        let field = &scope.reference;
        let bad = |why: &str| GatewayError::BadRequest(format!("\"{field}\": {why}"));
        let r = doc
            .get(field)
            .filter(|r| r.is_object())
            .ok_or_else(|| bad("an entity reference ({\"id\", \"type\"}) is required"))?;
        let kind = r.get("type").and_then(Value::as_str).unwrap_or_default();
        let collection = rules
            .rules
            .iter()
            .find(|p| p.kind.eq_ignore_ascii_case(kind))
            .map(|p| p.collection.as_str())
            .ok_or_else(|| bad("\"type\" must name a service kind, e.g. databaseService"))?;
        let path = match (
            r.get("id").and_then(Value::as_str),
            r.get("fullyQualifiedName").and_then(Value::as_str),
        ) {
            (Some(id), _) => format!("{collection}/{}", encode_segment(id)),
            (None, Some(fqn)) => format!("{collection}/name/{}", encode_segment(fqn)),
            (None, None) => return Err(bad("an \"id\" or \"fullyQualifiedName\" is required")),
        };
        let auth = self.service_auth.as_ref().or(caller);
        let parent = self
            .upstream
            .get_json(&path, auth, self.max_body_bytes)
            .await?;
        parent
            .as_ref()
            .and_then(|p| p.get("fullyQualifiedName"))
            .and_then(Value::as_str)
            .map(|f| Some(f.to_string()))
            .ok_or_else(|| {
                GatewayError::Unprocessable(format!(
                    "the {field} this {} names could not be read from OpenMetadata",
                    rule.kind
                ))
            })
    }

    /// The service a test-connection workflow names, whose secrets its masks stand for.
    async fn mask_source(
        &self,
        rules: &RuleSet,
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
        // The service's rule: its root template and its kind as owner markers name it.
        let Some(service_rule) = rules
            .rules
            .iter()
            .find(|r| r.kind.eq_ignore_ascii_case(&format!("{kind}Service")))
        else {
            return Ok(None);
        };
        let service = owner::Entity {
            rule: service_rule,
            name,
            scope: None,
            current: None,
        };
        let at = match owner::locate(
            self.store.as_ref(),
            &self.ids,
            &self.fernet,
            &service,
            self.managed,
        )
        .await
        {
            Ok(at) => at,
            // The root is another entity's: its secrets are not the named service's.
            Err(GatewayError::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The service as the upstream holds it: its config (values, for non-managed
        // providers) and the ids it refers to (managed: only those may be copied).
        let path = format!(
            "/api/v1/services/{kind}Services/name/{}",
            encode_segment(name)
        );
        let service = self
            .upstream
            .get_json(&path, self.service_auth.as_ref(), self.max_body_bytes)
            .await?;
        let service_held = service
            .as_ref()
            .map(|s| held_references(rules, service_rule, s, &self.fernet))
            .unwrap_or_default();
        let service_config = service.and_then(|s| s.pointer("/connection/config").cloned());
        let service_config = service_config.filter(|_| !self.managed);
        Ok(Some(MaskSource {
            base: ["request", "connection", "config"]
                .iter()
                .map(|k| Step::Key(k.to_string()))
                .collect(),
            service_owned: at.owned,
            service_root: at.root,
            service_config,
            service_held,
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
        self.fetch_path(m.rule, &path).await
    }

    /// [`Self::fetch_entity`] of the entity at `path` (under the upstream's API).
    async fn fetch_path(&self, rule: &Rule, path: &str) -> Result<Option<Value>, GatewayError> {
        let auth = self.service_auth.as_ref();
        let limit = self.max_body_bytes;
        let mut entity = None;
        if let Some(fields) = &rule.entity_fields {
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
            &rule.credentials_route,
            entity.get("id").and_then(Value::as_str),
        ) {
            let cpath = format!(
                "{}{}",
                rule.collection,
                route.replace("{id}", &encode_segment(id))
            );
            if let (Some(v), Some(field)) = (
                self.upstream.get_json(&cpath, auth, limit).await?,
                rule.field_base.first(),
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
            filled: Vec::new(),
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

/// A 422 when a string of a safety-net subtree holds a JSON text with a secret member (see
/// [`secret_in_json_text`]): the gateway stores whole fields, so the credential must come as a
/// field of its own. The message names the field and the member, never the value.
fn refuse_secret_in_json_text(
    rules: &RuleSet,
    rule: &Rule,
    doc: &Value,
    fields: &[&[Step]],
) -> Result<(), GatewayError> {
    if rule.is_mask_only() {
        return Ok(());
    }
    match secret_in_json_text(rules, rule, doc, fields) {
        Some(at) if at.member == URL_PASSWORD => Err(GatewayError::Unprocessable(format!(
            "{}: this text holds {URL_PASSWORD}; the gateway stores whole fields, not parts of a string: send the password in a field of its own (the connection's password)",
            at.field
        ))),
        Some(at) => Err(GatewayError::Unprocessable(format!(
            "{}: this text holds JSON with a secret member ({}); the gateway stores whole fields, not parts of a string: send the credential as a field of its own",
            at.field, at.member
        ))),
        None => Ok(()),
    }
}

/// A body that holds a secret value (plain or `fernet:`) at a rule's secret path or under a
/// secret-looking name is refused: routes other than create and patch take references only.
fn refuse_secret_values(
    rules: &RuleSet,
    rule: &crate::rules::Rule,
    doc: &Value,
) -> Result<(), GatewayError> {
    for f in rules
        .find_secrets(rule, doc)
        .into_iter()
        .chain(rules.find_by_name(doc))
    {
        let v = crate::rules::jsonpath::get(doc, &f.steps);
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
    Ok(())
}

/// Whether a secret field's value asks to keep a stored one (a mask, a reference, or a
/// Fernet token, which may wrap a reference): the entity as the upstream holds it decides.
/// A query flag set to `true` (any case, as Jersey reads it).
fn flag(query: Option<&str>, name: &str) -> bool {
    crate::http::path::query_param(query, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn keeps_a_value(v: Option<&Value>) -> bool {
    matches!(
        v.and_then(classify),
        Some(FieldValue::Mask | FieldValue::Reference(_) | FieldValue::Fernet(_))
    )
}
