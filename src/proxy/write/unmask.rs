//! Phase 3 for `mask_only` rules: secrets OpenMetadata keeps in clear outside connections
//! (webhook keys, SMTP and LDAP passwords, sink tokens, app credentials). The server needs
//! these values, so they are forwarded as they are and nothing goes to the key store; what the
//! gateway must keep from the upstream is the mask a caller sends back in place of a value.
//!
//! A write whose fields hold a mask (`*********` or `**********`) is judged against the entity
//! as the upstream holds it now, read with the service token under the kind's lock (held
//! until the upstream has answered): each mask becomes the value the upstream holds at that
//! same field; a mask with nothing behind it is refused (422) and nothing is forwarded.
//! - create (POST/PUT on the collection) and actions with a body: the caller's bytes with
//!   only the masks replaced; the entity is the one the rule's `current_route` names (filled
//!   from the route's parameters, then the body's members); a route's `body_at` says the body
//!   is the entity's subtree there (an app's trigger takes its `appConfiguration`);
//! - PATCH (JSON Patch or merge patch): applied locally to the entity (or its `body_at`
//!   subtree: a setting's `config_value`), masks replaced, and the JSON Patch from what the
//!   upstream holds to the result is forwarded. A `move` or `copy` out of a secret field is
//!   refused (422): it would put a value people may not see where they can see it.
//!
//! The write guard checks what leaves: no mask in place of a value.

use bytes::Bytes;
use http::HeaderValue;
use serde_json::Value;
use tokio::sync::OwnedMutexGuard;

use super::{is_write, refuse_too_deep, set_body_headers, Prepared};
use crate::error::GatewayError;
use crate::http::body::{self, full};
use crate::http::upstream::encode_segment;
use crate::proxy::Gateway;
use crate::rewrite::json::parse_strict;
use crate::rewrite::patch::{self, Media, PatchBody};
use crate::rewrite::{classify, spans, FieldValue};
use crate::rules::jsonpath::{get, render, Step};
use crate::rules::{Op, RouteMatch, Rule, RuleSet};
use crate::secrets::transaction::Plan;

/// The entity a write's masks stand for, read under its lock.
struct Current {
    entity: Value,
    lock: OwnedMutexGuard<()>,
}

impl Gateway {
    /// A write on a `mask_only` route (module doc).
    pub(super) async fn prepare_mask_only(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        incoming: hyper::body::Incoming,
    ) -> Result<Prepared, GatewayError> {
        if !is_write(&parts.method) {
            self.refuse_body(incoming).await?;
            return Ok(Prepared::unchanged(body::empty()));
        }
        let raw = self.read_body(&parts.headers, incoming).await?;
        match (m.op(), raw) {
            (Op::Patch, None) => Err(GatewayError::BadRequest("a PATCH needs a body".into())),
            (Op::Patch, Some(raw)) => self.unmask_patch(rules, m, parts, raw).await,
            (_, None) => Ok(Prepared::unchanged(body::empty())),
            (_, Some(raw)) => self.unmask_body(rules, m, parts, raw).await,
        }
    }

    /// A create or action body: the caller's bytes with only the masks replaced.
    async fn unmask_body(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        raw: Bytes,
    ) -> Result<Prepared, GatewayError> {
        let doc = parse_strict(&raw).map_err(GatewayError::BadRequest)?;
        let at = body_at(m);
        refuse_too_deep(&wrap_at(&at, doc.clone()))?;
        let masks = masked_fields(rules, m.rule, &at, &doc);
        if masks.is_empty() {
            if !at.is_empty() {
                // A body that is part of the entity (an app's trigger with a configuration
                // override, which OpenMetadata lays over the configuration it holds): it keeps
                // every held secret it leaves out, so it may not move them (as a patch).
                self.refuse_override_moving_secrets(rules, m, &at, &doc)
                    .await?;
            }
            self.guard(rules, m.rule, None)
                .check(&wrap_at(&at, doc), None)?;
            return Ok(self.forward_bytes(parts, raw.to_vec(), None));
        }
        let path = current_path(m, m.rule.current_route.as_deref(), &doc).ok_or_else(|| {
            GatewayError::Unprocessable(format!(
                "{}: a mask was sent, but the body does not name the {} it stands for",
                render(&masks[0]),
                m.rule.kind
            ))
        })?;
        let current = self.current(m.rule, &path).await?;
        let sent = wrap_at(&at, doc);
        let spots: Vec<Vec<Step>> = rules
            .find_secrets_under(m.rule, &[], &sent)
            .into_iter()
            .map(|f| f.steps)
            .collect();
        let mut edits = Vec::with_capacity(masks.len());
        let mut filled = Vec::with_capacity(masks.len());
        for steps in &masks {
            refuse_redirect(m.rule, steps, &sent, &current.entity, &spots)?;
            let held = held_value(&current.entity, steps)?;
            filled.extend(held.as_str().map(str::to_string));
            edits.push((steps[at.len()..].to_vec(), held));
        }
        let out = spans::replace_values(&raw, &edits)
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let outgoing = parse_strict(&out).map_err(GatewayError::Internal)?;
        self.guard(rules, m.rule, None)
            .check(&wrap_at(&at, outgoing), None)?;
        Ok(self.unmasked(parts, out, None, current, filled))
    }

    /// [`refuse_changes_around_kept_secrets`] for a body laid over what the entity holds at
    /// `at` (a merge). An entity that cannot be read holds nothing to keep.
    async fn refuse_override_moving_secrets(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        at: &[Step],
        doc: &Value,
    ) -> Result<(), GatewayError> {
        let Some(path) = current_path(m, m.rule.current_route.as_deref(), doc) else {
            return Ok(());
        };
        let held = self.held(m.rule, &path).await?;
        let Some(target) = held.as_ref().and_then(|h| get(h, at)).cloned() else {
            return Ok(());
        };
        let secrets = |d: &Value| -> Vec<Vec<Step>> {
            rules
                .find_secrets_under(m.rule, at, d)
                .into_iter()
                .map(|f| f.steps[at.len()..].to_vec())
                .collect()
        };
        let body = PatchBody::Merge(doc.clone());
        let result = patch::apply(&target, &body, &secrets)?;
        refuse_changes_around_kept_secrets(m.rule, at, &body, &target, &result, &secrets)
    }

    /// A PATCH: applied locally, masks replaced, the difference forwarded as a JSON Patch.
    async fn unmask_patch(
        &self,
        rules: &RuleSet,
        m: &RouteMatch<'_>,
        parts: &mut http::request::Parts,
        raw: Bytes,
    ) -> Result<Prepared, GatewayError> {
        let media = Media::of(&parts.headers);
        if !matches!(media, Media::JsonPatch | Media::MergePatch) {
            return Err(GatewayError::UnsupportedMediaType(
                "PATCH takes application/json-patch+json or application/merge-patch+json".into(),
            ));
        }
        let body = PatchBody::parse(media, parse_strict(&raw).map_err(GatewayError::BadRequest)?)?;
        let route = m.route.map(|r| r.path.as_str()).unwrap_or_default();
        let path = current_path(m, Some(route), &Value::Null).ok_or_else(|| {
            GatewayError::Unprocessable("the entity to patch cannot be named".into())
        })?;
        let current = self.current(m.rule, &path).await?;
        let at = body_at(m);
        let target = get(&current.entity, &at).cloned().ok_or_else(|| {
            GatewayError::Unprocessable(format!(
                "{} could not be read from OpenMetadata",
                render(&at)
            ))
        })?;
        let secrets = |d: &Value| -> Vec<Vec<Step>> {
            rules
                .find_secrets_under(m.rule, &at, d)
                .into_iter()
                .map(|f| f.steps[at.len()..].to_vec())
                .collect()
        };
        refuse_moves_out_of_secrets(&body, &target, &secrets)?;
        let mut result = patch::apply(&target, &body, &secrets)?;
        refuse_changes_around_kept_secrets(m.rule, &at, &body, &target, &result, &secrets)?;
        let mut filled = Vec::new();
        let sent = wrap_at(&at, result.clone());
        // The secrets the patch writes (equal to the held value or not: comparing would
        // answer a guess); those it leaves alone are not sent.
        let touched = patch::touched(&body, &target);
        let spots: Vec<Vec<Step>> = secrets(&result)
            .into_iter()
            .filter(|s| touched.iter().any(|t| s.starts_with(t)))
            .map(|s| [at.as_slice(), &s].concat())
            .collect();
        for steps in secrets(&result) {
            let v = get(&result, &steps);
            // A mask the upstream already held (an old bug stored it) and the patch left alone
            // is not forwarded: the diff leaves it out.
            if v.and_then(classify) == Some(FieldValue::Mask) && get(&target, &steps) != v {
                let abs = [at.as_slice(), &steps].concat();
                refuse_redirect(m.rule, &abs, &sent, &current.entity, &spots)?;
                let held = held_value(&current.entity, &abs)?;
                filled.extend(held.as_str().map(str::to_string));
                if let Some(slot) = crate::rules::jsonpath::get_mut(&mut result, &steps) {
                    *slot = held;
                }
            }
        }
        refuse_too_deep(&wrap_at(&at, result.clone()))?;
        let ops = patch::diff(&target, &result);
        let mut after = target.clone();
        patch::apply_own(&mut after, &ops)?;
        self.guard(rules, m.rule, None)
            .check(&wrap_at(&at, after), Some(&wrap_at(&at, target)))?;
        let ct = HeaderValue::from_static("application/json-patch+json");
        Ok(self.unmasked(parts, patch::to_bytes(&ops), Some(ct), current, filled))
    }

    /// The entity at `path` (under the rule's collection) as the upstream holds it, read with
    /// the service token under the lock of the kind (one lock per kind: an entity named by id
    /// and by name is one entity, and these kinds are written rarely).
    async fn current(&self, rule: &Rule, path: &str) -> Result<Current, GatewayError> {
        let lock = self
            .entity_locks
            .lock(&format!("mask_only:{}", rule.kind))
            .await;
        let entity = self.held(rule, path).await?.ok_or_else(|| {
            GatewayError::Unprocessable(format!(
                "a mask was sent, but the {} it stands for could not be read from OpenMetadata",
                rule.kind
            ))
        })?;
        Ok(Current { entity, lock })
    }

    /// The entity at `path` (under the rule's collection) as the upstream holds it, read with
    /// the service token; `None` when the upstream has none.
    async fn held(&self, rule: &Rule, path: &str) -> Result<Option<Value>, GatewayError> {
        Ok(self
            .upstream
            .get_json(
                &format!("{}{path}", rule.collection),
                self.service_auth.as_ref(),
                self.max_body_bytes,
            )
            .await?)
    }

    fn unmasked(
        &self,
        parts: &mut http::request::Parts,
        bytes: Vec<u8>,
        content_type: Option<HeaderValue>,
        current: Current,
        filled: Vec<String>,
    ) -> Prepared {
        set_body_headers(&mut parts.headers, bytes.len(), content_type);
        Prepared {
            body: full(bytes),
            plan: Plan::default(),
            audit: Vec::new(),
            lock: Some(current.lock),
            filled,
        }
    }
}

/// The route's `body_at` as steps (empty: the body is the entity).
fn body_at(m: &RouteMatch<'_>) -> Vec<Step> {
    m.route
        .map(|r| r.body_at.iter().map(|k| Step::Key(k.clone())).collect())
        .unwrap_or_default()
}

/// `value` placed at `at` in an otherwise empty entity (what the rule's paths are written for).
fn wrap_at(at: &[Step], value: Value) -> Value {
    at.iter().rev().fold(value, |inner, step| match step {
        Step::Key(k) => {
            let mut m = serde_json::Map::new();
            m.insert(k.clone(), inner);
            Value::Object(m)
        }
        Step::Index(_) => Value::Array(vec![inner]),
    })
}

/// The secret fields (steps from the entity's root) of a body sitting at `at` that hold a mask.
fn masked_fields(rules: &RuleSet, rule: &Rule, at: &[Step], doc: &Value) -> Vec<Vec<Step>> {
    rules
        .find_secrets_under(rule, at, doc)
        .into_iter()
        .filter(|f| get(doc, &f.steps[at.len()..]).and_then(classify) == Some(FieldValue::Mask))
        .map(|f| f.steps)
        .collect()
}

/// Where a masked field's value goes is its context: the element of an array of the rule's
/// subtree holding it (one alert destination, one workflow node), else that whole subtree (an
/// app's configuration, a setting's value, the security configuration). A mask is kept only
/// while every plain member the caller sends in that context is what the upstream holds:
/// otherwise a person who sees only the mask could send the value to a host, endpoint or
/// account of their choosing (an alert's test to their own webhook, an app run against their
/// own database). 422, naming the member that differs, never a value; sending the value itself
/// (or another one) is always accepted.
fn refuse_redirect(
    rule: &Rule,
    steps: &[Step],
    sent: &Value,
    held: &Value,
    secrets_sent: &[Vec<Step>],
) -> Result<(), GatewayError> {
    let ctx = context_of(rule, steps);
    let (Some(sent_ctx), held_ctx) = (get(sent, &ctx), get(held, &ctx)) else {
        return Ok(());
    };
    let mut at = Vec::new();
    // A value sent in clear for another secret of the context counts as a change whatever it
    // is: comparing it with the held one would tell a caller whether a guess was right.
    let secret = |rel: &[Step]| secrets_sent.contains(&[ctx.as_slice(), rel].concat());
    match first_difference(sent_ctx, held_ctx, &mut at, &secret) {
        None => Ok(()),
        Some(diff) => Err(GatewayError::Unprocessable(format!(
            "{}: a mask was sent while {} differs from what OpenMetadata holds; a masked value is kept only where everything around it is unchanged: send the value itself to change where it goes",
            render(steps),
            render(&[ctx.as_slice(), &diff].concat())
        ))),
    }
}

/// A patch keeps every held secret it does not write: where such a secret goes (its context,
/// as for a mask: [`refuse_redirect`]) must then stay as it is, or a person could send a value
/// they never see to a host of their choosing by patching only the host (an alert's endpoint,
/// the SMTP server, an app's database host). 422 when an op writes, inside the context of a
/// secret it leaves alone, a place that can direct it: a member that is not a secret, set to
/// text or a structure (a host, a URL, a port written as text; switches and numbers do not
/// count), or a secret whose name says it is a place (`endpoint`, `url`, `uri`, `host`,
/// `address`, `server`: a Slack webhook's URL is both). Whatever the values: no answer tells
/// whether a value equals the held one. Writing a new value for another secret (rotating one
/// key of a destination) is accepted, and so is writing the kept secret too.
fn refuse_changes_around_kept_secrets(
    rule: &Rule,
    at: &[Step],
    body: &PatchBody,
    target: &Value,
    result: &Value,
    secrets: &dyn Fn(&Value) -> Vec<Vec<Step>>,
) -> Result<(), GatewayError> {
    let touched = patch::touched(body, target);
    let within = |outer: &[Step], inner: &[Step]| inner.starts_with(outer);
    let held_secrets = secrets(target);
    let holds = |s: &Vec<Step>| {
        matches!(
            get(target, s).and_then(classify),
            Some(FieldValue::Plain(_) | FieldValue::Reference(_) | FieldValue::Fernet(_))
        )
    };
    // Adding, removing, moving or copying elements of an array that holds secrets shifts
    // every element after them: what an op names is then no longer what it touches, so such
    // a patch is refused whatever it does (send the whole array, masks for what is unchanged).
    for array in patch::reshaped_arrays(body, target) {
        if held_secrets.iter().any(|s| within(&array, s) && holds(s)) {
            return Err(GatewayError::Unprocessable(format!(
                "the patch adds, removes or moves elements of {}, which holds secrets: send the whole of it instead, with masks for the secrets that stay",
                render(&[at, array.as_slice()].concat())
            )));
        }
    }
    let secret_now = secrets(result);
    // A place in or under a secret field (a header inside `headers`, say).
    let is_secret = |t: &Vec<Step>| {
        held_secrets
            .iter()
            .chain(&secret_now)
            .any(|s| t.starts_with(s))
    };
    let place = |t: &[Step]| matches!(t.last(), Some(Step::Key(k)) if named(k, PLACES));
    // A secret place counts whether or not its new value equals the held one (comparing it
    // would answer a guess); a plain member counts when its text or structure changes.
    let directs = |t: &Vec<Step>| {
        if is_secret(t) {
            // Rotating a secret is the caller's own value; a new one (another header next to
            // a kept key) changes how the request goes, as a place does.
            return place(t) || get(target, t).is_none();
        }
        let text = |v: Option<&Value>| v.is_some_and(|v| !v.is_boolean() && !v.is_number());
        // Switches and numbers that say how a secret travels count too (TLS off, a port).
        let transport = matches!(t.last(), Some(Step::Key(k)) if steers(k));
        get(result, t) != get(target, t)
            && (transport || text(get(result, t)) || text(get(target, t)))
    };
    for kept in &held_secrets {
        if !holds(kept) || touched.iter().any(|t| within(t, kept)) {
            continue;
        }
        let abs = [at, kept.as_slice()].concat();
        let ctx = context_of(rule, &abs);
        let rel = ctx.get(at.len()..).unwrap_or_default();
        let changed = touched.iter().find(|t| within(rel, t) && directs(t));
        if let Some(t) = changed {
            return Err(GatewayError::Unprocessable(format!(
                "the patch changes {} next to {}, which it does not send; a secret is kept only where everything that directs it is unchanged: send its value too",
                render(&[at, t.as_slice()].concat()),
                render(&abs)
            )));
        }
    }
    Ok(())
}

/// The context of a secret field at `steps` ([`refuse_redirect`]).
fn context_of(rule: &Rule, steps: &[Step]) -> Vec<Step> {
    let base = rule.safety_net.iter().chain(&rule.shape).find(|b| {
        b.len() <= steps.len()
            && b.iter()
                .zip(steps)
                .all(|(k, s)| matches!(s, Step::Key(x) if x == k))
    });
    let Some(base) = base else {
        // Outside every subtree: the whole entity.
        return Vec::new();
    };
    let mut ctx = steps[..base.len()].to_vec();
    if let Some(i @ Step::Index(_)) = steps.get(base.len()) {
        ctx.push(i.clone());
    }
    ctx
}

/// Words in the name of a member that says where a secret goes.
const PLACES: &[&str] = &[
    "endpoint",
    "url",
    "uri",
    "host",
    "address",
    "server",
    "connection",
    "dsn",
];

/// Words in the name of a member that says how a secret travels.
const TRANSPORT: &[&str] = &[
    "ssl", "tls", "verify", "secure", "trust", "cert", "port", "protocol", "scheme", "strategy",
];

fn named(name: &str, words: &[&str]) -> bool {
    let k = name.to_ascii_lowercase();
    words.iter().any(|w| k.contains(w))
}

/// A member name that says where or how a secret travels: places (`endpoint`, `url`, `host`,
/// a connection string, ...) and transport (TLS switches, trust stores, ports, schemes).
fn steers(name: &str) -> bool {
    named(name, PLACES) || named(name, TRANSPORT)
}

/// Members OpenMetadata itself updates as it works (a destination's delivery status): a body
/// read a while ago and sent back may differ there without going anywhere else.
const VOLATILE: &[&str] = &["statusDetails"];

/// The first scalar of `sent` that `held` does not hold the same at the same place: secret
/// fields included (an endpoint that carries a token is one), masks excepted (they are what
/// is being kept); members `sent` leaves out do not count.
fn first_difference(
    sent: &Value,
    held: Option<&Value>,
    at: &mut Vec<Step>,
    secret: &dyn Fn(&[Step]) -> bool,
) -> Option<Vec<Step>> {
    match sent {
        mask if classify(mask) == Some(FieldValue::Mask) => None,
        _ if secret(at) => Some(at.clone()),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
            .find_map(|(k, child)| {
                at.push(Step::Key(k.clone()));
                let d = first_difference(child, held.and_then(|h| h.get(k)), at, secret);
                at.pop();
                d
            })
            .or_else(|| {
                // A held member that says how the secret travels, left out: removed (TLS off,
                // the trust store gone), so it counts as a change too.
                let held = held.and_then(Value::as_object)?;
                held.iter()
                    .filter(|(k, v)| !m.contains_key(*k) && !v.is_null() && steers(k))
                    .map(|(k, _)| [at.as_slice(), &[Step::Key(k.clone())]].concat())
                    .next()
            }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, child)| {
            at.push(Step::Index(i));
            let d = first_difference(child, held.and_then(|h| h.get(i)), at, secret);
            at.pop();
            d
        }),
        scalar => (held != Some(scalar)).then(|| at.clone()),
    }
}

/// What a mask at `steps` stands for: the value the upstream holds there; 422 when it holds
/// none (absent, empty, null, or a mask itself). The message names the field, not a value.
fn held_value(current: &Value, steps: &[Step]) -> Result<Value, GatewayError> {
    let held = get(current, steps);
    match held.and_then(classify) {
        Some(FieldValue::Plain(_) | FieldValue::Reference(_) | FieldValue::Fernet(_)) => {
            Ok(held.cloned().unwrap_or(Value::Null))
        }
        _ => Err(GatewayError::Unprocessable(format!(
            "{}: a mask was sent, but OpenMetadata holds no value there to keep",
            render(steps)
        ))),
    }
}

/// `template` (`/name/{name}`, `/{config_type}`, `/{id}`) with each `{x}` filled from the
/// route's parameters, else from the body's top-level string member `x`; `None` when one
/// cannot be filled.
fn current_path(m: &RouteMatch<'_>, template: Option<&str>, doc: &Value) -> Option<String> {
    let template = template?;
    let mut out = String::new();
    for seg in template.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let v = m
                    .param(name)
                    .or_else(|| doc.get(name).and_then(Value::as_str))
                    .filter(|v| !v.is_empty())?;
                out.push_str(&encode_segment(v));
            }
            None => out.push_str(seg),
        }
    }
    Some(out)
}

/// A JSON Patch `move` or `copy` whose source holds, or lies inside, a secret field.
fn refuse_moves_out_of_secrets(
    body: &PatchBody,
    target: &Value,
    secrets: &dyn Fn(&Value) -> Vec<Vec<Step>>,
) -> Result<(), GatewayError> {
    let PatchBody::Json(p) = body else {
        return Ok(());
    };
    let origin = secrets(target);
    for op in &p.0 {
        let from = match op {
            json_patch::PatchOperation::Move(o) => o.from.as_str(),
            json_patch::PatchOperation::Copy(o) => o.from.as_str(),
            _ => continue,
        };
        let from = patch::steps_of(target, from);
        let related = |s: &Vec<Step>| {
            let n = s.len().min(from.len());
            s[..n] == from[..n]
        };
        if origin.iter().any(related) {
            return Err(GatewayError::Unprocessable(
                "JSON Patch move and copy operations may not take a masked-only secret field (or what holds one)"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_context_differs_by_any_member_sent_but_not_by_masks_omissions_or_delivery_status() {
        let held = json!({"endpoint": "https://a", "secretKey": "k", "timeout": 10,
                          "statusDetails": {"status": "failed", "lastFailedAt": 2},
                          "headers": {"X": "v"}});
        let same = json!({"endpoint": "https://a", "secretKey": "*********",
                          "statusDetails": {"status": "active", "lastFailedAt": 1}});
        assert_eq!(
            first_difference(&same, Some(&held), &mut Vec::new(), &|_| false),
            None
        );
        for (sent, at) in [
            (
                json!({"endpoint": "https://b", "secretKey": "*********"}),
                "endpoint",
            ),
            (json!({"secretKey": "*********", "timeout": 11}), "timeout"),
            (
                json!({"secretKey": "*********", "headers": {"X": "v", "Y": "w"}}),
                "Y",
            ),
            (
                json!({"secretKey": "*********", "proxy": "https://b"}),
                "proxy",
            ),
        ] {
            let d =
                first_difference(&sent, Some(&held), &mut Vec::new(), &|_| false).expect("differs");
            assert!(render(&d).contains(at), "{sent}: {}", render(&d));
        }
    }
}
