//! Per-caller views of answers. Secrets are found by structure (`structure`): wherever an
//! entity, a typed subtree or a secret-named member sits, at any depth, in any wrapper and in
//! string fields that hold JSON. Each is resolved, shown as a reference or masked, per the
//! caller's policy for its kind and the permission of the entity that holds it; every other
//! `secret:` / `fernet:` string is masked for every caller, bots included (the safety net).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::json::{deep, parse_answer, to_string};
use super::refusal::Unreadable;
use super::structure::{Scan, Scanner};
use super::{MASK, REFERENCE_PREFIX};
use crate::config::ReadAction;
use crate::error::GatewayError;
use crate::policy::narrower;
use crate::rules::jsonpath::{get, get_mut, render, Step};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::{FernetKeys, PREFIX as FERNET_PREFIX};
use crate::secrets::SecretStore;

/// Whether a resolving caller may see the values of one entity (the upstream's `ViewAll`).
pub(crate) trait Permit: Sync {
    fn allows<'a>(
        &'a self,
        fqn: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
}

pub(crate) struct ReadCtx<'a> {
    pub(crate) rules: &'a RuleSet,
    /// The rule of the route the answer came from.
    pub(crate) rule: &'a Rule,
    /// What this caller sees, per rule (same order as `rules.rules`).
    pub(crate) actions: &'a [ReadAction],
    pub(crate) fernet: &'a FernetKeys,
    pub(crate) store: &'a dyn SecretStore,
    /// The answer is the entity's subtree at these keys (user token routes).
    pub(crate) response_at: &'a [String],
    /// When set, resolving needs the upstream's permission per entity (deny by default).
    pub(crate) permit: Option<&'a dyn Permit>,
    /// The raw answer may hold a reference or a token ([`may_hold_references`]); when it
    /// cannot, the safety net has nothing to look for.
    pub(crate) markers: bool,
}

/// Fields masked because resolving them failed (reported in a response header).
pub(crate) type Degraded = Vec<String>;

/// JSON inside a string inside a string ... this many times at most.
const MAX_EMBEDDING: usize = 16;

type DocFuture<'s> = Pin<Box<dyn Future<Output = Result<(), GatewayError>> + Send + 's>>;

/// One document being rewritten: the answer, or a JSON string inside it.
struct DocCtx {
    /// Where the document sits in an entity of the route's kind (empty when unknown).
    anchor: Vec<Step>,
    /// What the holder of a JSON string may see (`None` for the answer itself).
    inherited: Option<ReadAction>,
    /// Rendered path of the string the document came from (`$` for the answer).
    prefix: String,
    nesting: usize,
}

/// A secret field of a document, as found.
struct Field {
    steps: Vec<Step>,
    action: ReadAction,
    /// A failure to resolve it fails the answer (rather than masking it).
    strict: bool,
    /// A `mask_only` rule names it: its value is plain upstream; "resolve" shows it as it
    /// is and never reads the store.
    mask_only: bool,
    original: Value,
}

fn refused(why: Unreadable) -> GatewayError {
    GatewayError::ReadRefused(why)
}

impl ReadCtx<'_> {
    /// Rewrites an answer of any shape for this caller.
    pub(crate) async fn rewrite(&self, doc: &mut Value) -> Result<Degraded, GatewayError> {
        let scanner = Scanner::new(self.rules, self.rule);
        let mut degraded = Vec::new();
        let at = self
            .response_at
            .iter()
            .map(|k| Step::Key(k.clone()))
            .collect();
        let top = DocCtx {
            anchor: at,
            inherited: None,
            prefix: "$".into(),
            nesting: 0,
        };
        self.rewrite_doc(&scanner, doc, top, &mut degraded).await?;
        Ok(degraded)
    }

    fn rewrite_doc<'s>(
        &'s self,
        scanner: &'s Scanner<'s>,
        doc: &'s mut Value,
        dc: DocCtx,
        degraded: &'s mut Degraded,
    ) -> DocFuture<'s> {
        Box::pin(async move {
            if dc.nesting > MAX_EMBEDDING {
                return Err(refused(Unreadable::JsonString));
            }
            let scan = scanner.scan(doc, &dc.anchor);
            let seen = self.owner_actions(&scan, scanner.scope(), &dc).await;
            let fields = self.secret_fields(&scan, &seen, &dc, doc);
            let mut rewritten = Vec::new();
            for e in &scan.embedded {
                let Some(Value::String(s)) = get(doc, &e.steps) else {
                    continue;
                };
                let mut inner = match parse_answer(s.as_bytes()) {
                    Ok(v) => v,
                    Err(_) if e.must_parse => return Err(refused(Unreadable::JsonString)),
                    // Free text that looks like JSON: the safety net still masks markers in it.
                    Err(_) => continue,
                };
                let inner_dc = DocCtx {
                    anchor: e.anchor.clone(),
                    inherited: Some(seen[e.owner]),
                    prefix: join(&dc.prefix, &e.steps),
                    nesting: dc.nesting + 1,
                };
                self.rewrite_doc(scanner, &mut inner, inner_dc, degraded)
                    .await?;
                let text = to_string(&inner)
                    .map_err(|e| GatewayError::Internal(format!("re-serialising: {e}")))?;
                rewritten.push((e.steps.clone(), text));
            }
            if self.markers {
                mask_references(doc);
            }
            for (steps, text) in rewritten {
                if let Some(slot) = get_mut(doc, &steps) {
                    *slot = Value::String(text);
                }
            }
            for f in fields {
                let path = || join(&dc.prefix, &f.steps);
                let shown = if f.mask_only {
                    revealed(f.action, f.original)
                } else {
                    self.shown(f.action, f.original, f.strict, path, degraded)
                        .await?
                };
                if let Some(slot) = get_mut(doc, &f.steps) {
                    *slot = shown;
                }
            }
            Ok(())
        })
    }

    /// Every secret location once, with the narrowest action that applies there, whether a
    /// failure to resolve it fails the answer, and the value it holds (empty ones are left).
    fn secret_fields(
        &self,
        scan: &Scan,
        seen: &[ReadAction],
        dc: &DocCtx,
        doc: &Value,
    ) -> Vec<Field> {
        // Only the answer's own entity fails whole when a secret cannot be resolved; the
        // entities of a list, a wrapper or a history are masked field by field.
        let own_entity =
            dc.inherited.is_none() && (!scan.owners[0].rules.is_empty() || !dc.anchor.is_empty());
        // Per location: whether a rule names it, the narrowest action of the rules that do
        // (a location no rule names is masked), and whether it fails the answer.
        let mut fields: BTreeMap<&[Step], (bool, ReadAction, bool, bool)> = BTreeMap::new();
        for h in &scan.hits {
            let a = narrower(seen[h.owner], self.actions[h.rule]);
            let strict = own_entity && h.owner == 0;
            let plain = self.rules.rules[h.rule].is_mask_only();
            let f = fields
                .entry(&h.steps)
                .or_insert((h.scoped, a, strict, plain));
            match (f.0, h.scoped) {
                (false, true) => *f = (true, a, strict, plain),
                (true, true) => {
                    f.1 = narrower(f.1, a);
                    f.2 |= strict;
                    f.3 |= plain;
                }
                _ => {}
            }
        }
        fields
            .into_iter()
            .filter_map(|(steps, (scoped, action, strict, mask_only))| {
                let action = if scoped { action } else { ReadAction::Mask };
                let v = get(doc, steps)?;
                let keep = match v {
                    Value::String(s) => !s.is_empty(),
                    Value::Number(_) | Value::Bool(_) => true,
                    _ => false,
                };
                keep.then(|| Field {
                    steps: steps.to_vec(),
                    action,
                    strict,
                    mask_only,
                    original: v.clone(),
                })
            })
            .collect()
    }

    /// What the caller may see of each owner's secrets: the narrowest policy of the kinds
    /// it is an entity of (or what holds it), then, to resolve, the upstream's permission
    /// for it when one is required (no name, no permission).
    async fn owner_actions(&self, scan: &Scan, scope: usize, dc: &DocCtx) -> Vec<ReadAction> {
        let mut out = Vec::with_capacity(scan.owners.len());
        for (i, o) in scan.owners.iter().enumerate() {
            let mut a = o
                .rules
                .iter()
                .map(|r| self.actions[*r])
                .fold(ReadAction::Resolve, narrower);
            let inherited = i == 0 && o.rules.is_empty() && dc.inherited.is_some();
            if i == 0 {
                a = narrower(a, dc.inherited.unwrap_or(self.actions[scope]));
            }
            if a == ReadAction::Resolve && !inherited {
                if let Some(permit) = self.permit {
                    let allowed = match &o.fqn {
                        Some(f) => permit.allows(f).await,
                        None => false,
                    };
                    if !allowed {
                        a = ReadAction::Mask;
                    }
                }
            }
            out.push(a);
        }
        out
    }

    /// A secret field's value as this caller sees it.
    async fn shown(
        &self,
        action: ReadAction,
        original: Value,
        strict: bool,
        path: impl Fn() -> String,
        degraded: &mut Degraded,
    ) -> Result<Value, GatewayError> {
        let s = match original {
            Value::String(s) => s,
            // A number or boolean under a secret's name is a plain value.
            other if action == ReadAction::Resolve => return Ok(other),
            _ => return Ok(Value::String(MASK.into())),
        };
        let shown = match action {
            ReadAction::Mask => MASK.to_string(),
            ReadAction::Reference => self.as_reference(&s),
            ReadAction::Resolve => match self.resolve(&s).await {
                Ok(Some(v)) => v,
                Ok(None) => {
                    degraded.push(path());
                    MASK.to_string()
                }
                Err(e) => {
                    if !strict || self.rule.policy.mask_on_resolve_failure {
                        degraded.push(path());
                        MASK.to_string()
                    } else {
                        return Err(e);
                    }
                }
            },
        };
        Ok(Value::String(shown))
    }

    /// A reference is shown as it is; a Fernet-wrapped reference is unwrapped; anything
    /// else (a plain value, an undecryptable token) is masked.
    fn as_reference(&self, s: &str) -> String {
        if s.starts_with(REFERENCE_PREFIX) {
            return s.to_string();
        }
        if s.starts_with(FERNET_PREFIX) {
            if let Ok(plain) = self.fernet.decrypt(s) {
                if plain.starts_with(REFERENCE_PREFIX) {
                    return plain;
                }
            }
        }
        MASK.to_string()
    }

    /// The plain value, `None` when it cannot be had (absent, undecryptable).
    async fn resolve(&self, s: &str) -> Result<Option<String>, GatewayError> {
        let mut value = s.to_string();
        if value.starts_with(FERNET_PREFIX) {
            match self.fernet.decrypt(&value) {
                Ok(p) => value = p,
                Err(_) => return Ok(None),
            }
        }
        if let Some(id) = value.strip_prefix(REFERENCE_PREFIX) {
            return match self.store.get(id).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    tracing::warn!(error = %e, detail = e.detail(), "store read failed while resolving");
                    Err(GatewayError::StoreUnavailable(
                        "the secrets store is unreachable; secret fields cannot be resolved".into(),
                    ))
                }
            };
        }
        Ok(Some(value))
    }
}

/// A `mask_only` field as the caller sees it: the value the upstream holds when the caller may
/// see it (`Resolve`, "reveal"), unless it is (or quotes) a reference or a token, which are
/// never resolved here; the mask otherwise.
fn revealed(action: ReadAction, original: Value) -> Value {
    match (action, &original) {
        (ReadAction::Resolve, Value::String(s)) if !holds_marker(s) => original,
        (ReadAction::Resolve, Value::Number(_) | Value::Bool(_)) => original,
        _ => Value::String(MASK.into()),
    }
}

/// The safety net: masks every string that is a reference or a token, or quotes one (`"secret:`
/// inside a JSON text), at any depth; a reference or token inside other text (a test-connection
/// step's message naming an id) is replaced by the mask where it stands.
pub(crate) fn mask_references(v: &mut Value) {
    match v {
        Value::String(s) if holds_marker(s) => {
            *s = match whole_is_marked(s) {
                true => MASK.to_string(),
                false => mask_tokens(s),
            };
        }
        Value::Array(a) => deep(|| a.iter_mut().for_each(mask_references)),
        Value::Object(m) => deep(|| m.values_mut().for_each(mask_references)),
        _ => {}
    }
}

/// A reference or a token inside text: ids start with `/`, Fernet tokens with `gA`.
const INNER_MARKERS: [&str; 2] = ["secret:/", "fernet:gA"];

fn whole_is_marked(s: &str) -> bool {
    s.starts_with(REFERENCE_PREFIX)
        || s.starts_with(FERNET_PREFIX)
        || s.contains("\"secret:")
        || s.contains("\"fernet:")
}

fn holds_marker(s: &str) -> bool {
    whole_is_marked(s) || INNER_MARKERS.iter().any(|m| s.contains(m))
}

/// `s` with every reference or token in it (the marker and the id or token characters after
/// it) replaced by the mask.
fn mask_tokens(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((at, m)) = INNER_MARKERS
        .iter()
        .filter_map(|m| rest.find(m).map(|at| (at, m)))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str(MASK);
        let tail = &rest[at + m.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '=')))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `$.a` joined with `$.b[0]` is `$.a.b[0]`.
fn join(prefix: &str, steps: &[Step]) -> String {
    format!("{prefix}{}", &render(steps)[1..])
}

/// Whether a raw body could hold something the safety net masks (a fast byte scan, the
/// chunked scan's; `\u` catches escaped spellings such as "\u0073ecret:").
pub(crate) fn may_hold_references(body: &[u8]) -> bool {
    super::scan::has_marker(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scan_sees_references_tokens_and_escaped_spellings() {
        assert!(may_hold_references(br#"{"a":"secret:/x"}"#));
        assert!(may_hold_references(br#"{"a":"fernet:gAAA"}"#));
        assert!(may_hold_references(br#"{"a":"\u0073ecret:/x"}"#));
        assert!(may_hold_references(
            br#"{"a":"could not read secret:/om/x"}"#
        ));
        assert!(may_hold_references(br#"{"a":"SET x=fernet:gAAAAB"}"#));
        assert!(!may_hold_references(
            br#"{"a":"secrets: are fine","b":"fernet"}"#
        ));
    }

    proptest::proptest! {
        /// Text with references and tokens at generated places: none survives the safety net,
        /// and every piece of text around them does, in order.
        #[test]
        fn no_reference_or_token_survives_inside_generated_text(
            parts in proptest::collection::vec(
                ("[ a-z.:;,!?()\"'{}\\[\\]]{0,12}", 0usize..3, "[a-z0-9/_-]{1,20}"), 1..6),
        ) {
            let mut text = String::new();
            let mut kept = Vec::new();
            for (plain, kind, id) in &parts {
                // Plain pieces that cannot run into a marker's id or token characters.
                let plain = format!(" {plain} ");
                text.push_str(&plain);
                kept.push(plain);
                match kind {
                    0 => text.push_str(&format!("secret:/{id}")),
                    1 => text.push_str(&format!("fernet:gA{}", id.replace('/', "A"))),
                    _ => {}
                }
            }
            let mut v = Value::String(text.clone());
            mask_references(&mut v);
            let out = v.as_str().unwrap_or_default().to_string();
            proptest::prop_assert!(!out.contains("secret:/") && !out.contains("fernet:gA"), "{text} -> {out}");
            if out != MASK {
                // Masked where they stand: the text around them is all still there, in order.
                let mut at = 0;
                for k in &kept {
                    let found = out[at..].find(k.as_str());
                    proptest::prop_assert!(found.is_some(), "{k:?} lost: {text} -> {out}");
                    at += found.unwrap_or(0) + k.len();
                }
            }
        }
    }

    #[test]
    fn a_reference_or_token_inside_text_is_masked_where_it_stands() {
        let mut v = serde_json::json!({
            "message": "could not read secret:/openmetadata/database/victim/authtype/password; retry",
            "init": "SET x=fernet:gAAAAABpAAAA-_=; SET y=secret:/a and fernet:gAB",
            "plain": "a secret: no, fernet: no, secret:x no"});
        mask_references(&mut v);
        assert_eq!(v["message"], format!("could not read {MASK}; retry"));
        assert_eq!(v["init"], format!("SET x={MASK}; SET y={MASK} and {MASK}"));
        assert_eq!(v["plain"], "a secret: no, fernet: no, secret:x no");
    }

    #[test]
    fn the_safety_net_masks_references_anywhere() {
        let mut v = serde_json::json!({"x": ["secret:/a", {"y": "fernet:t"}], "z": "secret",
                                       "q": "{\"p\":\"secret:/b\"} and more", "ok": "a secret: no"});
        mask_references(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"x": ["*********", {"y": "*********"}], "z": "secret",
                               "q": "*********", "ok": "a secret: no"})
        );
    }
}
