//! Per-caller views of answers: every secret field is resolved, shown as a reference, or
//! masked; for callers who do not resolve, any `secret:` / `fernet:` string anywhere is
//! masked too (the safety net).

use serde_json::Value;

use super::{MASK, REFERENCE_PREFIX};
use crate::config::ReadAction;
use crate::error::GatewayError;
use crate::rules::jsonpath::{get_mut, render, Step};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::{FernetKeys, PREFIX as FERNET_PREFIX};
use crate::secrets::SecretStore;

/// Whether a resolving caller may see the values of one entity (the upstream's `ViewAll`).
pub trait Permit: Sync {
    fn allows<'a>(
        &'a self,
        fqn: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
}

pub struct ReadCtx<'a> {
    pub rules: &'a RuleSet,
    pub rule: &'a Rule,
    pub action: ReadAction,
    pub fernet: &'a FernetKeys,
    pub store: &'a dyn SecretStore,
    /// The answer is the entity's subtree at these keys (user token routes).
    pub response_at: &'a [String],
    /// When set, resolving needs the upstream's permission per entity (deny by default).
    pub permit: Option<&'a dyn Permit>,
}

/// Fields masked because resolving them failed (reported in a response header).
pub type Degraded = Vec<String>;

impl ReadCtx<'_> {
    /// Rewrites an answer of any shape: an entity, a list (`data[]`), a version history
    /// (`versions[]` of JSON strings).
    pub async fn rewrite(&self, doc: &mut Value) -> Result<Degraded, GatewayError> {
        let mut degraded = Vec::new();
        let at: Vec<Step> = self
            .response_at
            .iter()
            .map(|k| Step::Key(k.clone()))
            .collect();
        let mut skip: Vec<&str> = Vec::new();
        if let Some(items) = doc.get_mut("data").and_then(Value::as_array_mut) {
            skip.push("data");
            for item in items.iter_mut() {
                self.rewrite_entity(&at, item, true, &[], &mut degraded)
                    .await?;
            }
        }
        if let Some(versions) = doc.get_mut("versions").and_then(Value::as_array_mut) {
            skip.push("versions");
            for v in versions.iter_mut() {
                match v {
                    Value::String(s) => {
                        if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                            self.rewrite_entity(&at, &mut inner, true, &[], &mut degraded)
                                .await?;
                            *s = inner.to_string();
                        } else if self.action != ReadAction::Resolve
                            && (s.contains(REFERENCE_PREFIX) || s.contains(FERNET_PREFIX))
                        {
                            *s = MASK.to_string();
                        }
                    }
                    other => {
                        self.rewrite_entity(&at, other, true, &[], &mut degraded)
                            .await?
                    }
                }
            }
        }
        self.rewrite_entity(&at, doc, false, &skip, &mut degraded)
            .await?;
        Ok(degraded)
    }

    async fn rewrite_entity(
        &self,
        at: &[Step],
        doc: &mut Value,
        in_list: bool,
        skip_top: &[&str],
        degraded: &mut Degraded,
    ) -> Result<(), GatewayError> {
        let mut action = self.action;
        if action == ReadAction::Resolve {
            if let Some(permit) = self.permit {
                let fqn = doc
                    .get("fullyQualifiedName")
                    .or_else(|| doc.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let allowed = match &fqn {
                    Some(f) => permit.allows(f).await,
                    None => false,
                };
                if !allowed {
                    action = ReadAction::Mask;
                }
            }
        }
        let found = self.rules.find_secrets_under(self.rule, at, doc);
        // Read every secret field first: the safety net below masks any reference or token
        // left anywhere else, then each secret field gets what this caller may see.
        let originals: Vec<(Vec<Step>, String)> = found
            .into_iter()
            .filter_map(|f| {
                let s = crate::rules::jsonpath::get(doc, &f.steps[at.len()..])?
                    .as_str()?
                    .to_string();
                (!s.is_empty()).then_some((f.steps, s))
            })
            .collect();
        if self.action != ReadAction::Resolve || action != self.action {
            match &mut *doc {
                Value::Object(m) => {
                    for (k, v) in m.iter_mut() {
                        if !skip_top.contains(&k.as_str()) {
                            mask_references(v);
                        }
                    }
                }
                other => mask_references(other),
            }
        }
        for (steps, s) in originals {
            let rel = &steps[at.len()..];
            let Some(slot) = get_mut(doc, rel) else {
                continue;
            };
            let shown = match action {
                ReadAction::Mask => MASK.to_string(),
                ReadAction::Reference => self.as_reference(&s),
                ReadAction::Resolve => match self.resolve(&s).await {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        degraded.push(render(&steps));
                        MASK.to_string()
                    }
                    Err(e) => {
                        if in_list || self.rule.policy.mask_on_resolve_failure {
                            degraded.push(render(&steps));
                            MASK.to_string()
                        } else {
                            return Err(e);
                        }
                    }
                },
            };
            *slot = Value::String(shown);
        }
        Ok(())
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

/// The safety net: masks every string that starts with `secret:` or `fernet:`.
pub fn mask_references(v: &mut Value) {
    match v {
        Value::String(s) if s.starts_with(REFERENCE_PREFIX) || s.starts_with(FERNET_PREFIX) => {
            *s = MASK.to_string();
        }
        Value::Array(a) => a.iter_mut().for_each(mask_references),
        Value::Object(m) => m.values_mut().for_each(mask_references),
        _ => {}
    }
}

/// Whether a raw body could hold something the safety net masks (a fast byte scan; `\u`
/// catches escaped spellings such as "\u0073ecret:").
pub fn may_hold_references(body: &[u8]) -> bool {
    use memchr::memmem;
    memmem::find(body, b"\"secret:").is_some()
        || memmem::find(body, b"\"fernet:").is_some()
        || memmem::find(body, b"\\u").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scan_sees_references_tokens_and_escaped_spellings() {
        assert!(may_hold_references(br#"{"a":"secret:/x"}"#));
        assert!(may_hold_references(br#"{"a":"fernet:gAAA"}"#));
        assert!(may_hold_references(br#"{"a":"\u0073ecret:/x"}"#));
        assert!(!may_hold_references(
            br#"{"a":"secrets: are fine","b":"fernet"}"#
        ));
    }

    #[test]
    fn the_safety_net_masks_references_anywhere() {
        let mut v = serde_json::json!({"x": ["secret:/a", {"y": "fernet:t"}], "z": "secret"});
        mask_references(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"x": ["*********", {"y": "*********"}], "z": "secret"})
        );
    }
}
