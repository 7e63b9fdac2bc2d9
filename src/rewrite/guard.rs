//! The write invariant, enforced in one place on what actually leaves: the entity as the
//! upstream will hold it after the forwarded body is applied.
//!
//! For every secret field at path P (by the rules or the name-based safety net):
//! - managed providers: P holds exactly the reference to P's own id (bare, or Fernet-wrapped
//!   per `wrap_references`), a reference under a prefix its rule grants, or null;
//! - `db` and non-managed providers: P holds a `fernet:` token, a `secret:` reference, or null;
//! - either way, a value the upstream already held and the gateway cannot improve (a Fernet
//!   token no configured key opens, a mask an old OpenMetadata bug stored) may stay as it was.
//!
//! For a `mask_only` rule's fields (values the upstream keeps in clear) the one rule is: never
//! the mask in place of a value (unless the upstream already held exactly that).
//!
//! Anything else means the write path has a bug: the write is refused (500) and nothing is
//! forwarded. The message names the field, never its value.

use serde_json::Value;

use super::{classify, FieldValue};
use crate::error::GatewayError;
use crate::rules::ids::IdBuilder;
use crate::rules::jsonpath::{get, render};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::FernetKeys;

/// What the guard needs to know about the entity's secrets.
pub struct Guard<'a> {
    pub rules: &'a RuleSet,
    pub rule: &'a Rule,
    pub ids: &'a IdBuilder,
    pub fernet: &'a FernetKeys,
    /// The entity's id root; `None` on routes that carry no entity (actions): there, any
    /// reference may pass but never a value.
    pub root: Option<&'a str>,
    pub managed: bool,
}

impl Guard<'_> {
    /// Checks `outgoing` (the entity as the upstream will hold it); `current` is what it holds
    /// now, when known.
    pub fn check(&self, outgoing: &Value, current: Option<&Value>) -> Result<(), GatewayError> {
        for f in self.rules.find_secrets(self.rule, outgoing) {
            let Some(v) = get(outgoing, &f.steps) else {
                continue;
            };
            if v.is_null() {
                continue;
            }
            let untouched = current.and_then(|c| get(c, &f.steps)) == Some(v);
            let allowed = if self.rule.is_mask_only() {
                // The upstream needs these values in clear; what must never reach it is the
                // mask in place of one (unless it already held that).
                untouched || classify(v) != Some(FieldValue::Mask)
            } else {
                self.allowed(v, &f.steps, untouched)
            };
            if !allowed {
                let field = render(&f.steps);
                tracing::error!(field = %field, kind = %self.rule.kind, "write guard: a secret field would leave unprotected; refused");
                return Err(GatewayError::Internal(format!(
                    "write guard refused {field}: it would reach OpenMetadata unprotected"
                )));
            }
        }
        Ok(())
    }

    fn allowed(&self, v: &Value, steps: &[crate::rules::jsonpath::Step], untouched: bool) -> bool {
        let Some(kind) = classify(v) else {
            return false;
        };
        let opened = match &kind {
            FieldValue::Fernet(t) => match self.fernet.decrypt(t) {
                Ok(p) => classify(&Value::String(p)),
                // An unopened token the upstream already held stays; a new one never comes
                // from the gateway unless it can open it.
                Err(_) => return untouched,
            },
            _ => Some(kind.clone()),
        };
        match (opened, self.managed) {
            (Some(FieldValue::Clear), _) => true,
            (Some(FieldValue::Mask), _) => untouched,
            (Some(FieldValue::Plain(_)), true) => false,
            // db / non-managed: a value travels only as a Fernet token.
            (Some(FieldValue::Plain(_)), false) => matches!(kind, FieldValue::Fernet(_)),
            (Some(FieldValue::Reference(r)), true) => match self.root {
                Some(root) => {
                    r == self.ids.id(root, self.rule.field_steps(steps))
                        || self
                            .rule
                            .allowed_reference_prefixes
                            .iter()
                            .any(|p| r.starts_with(p.as_str()))
                }
                None => true,
            },
            (Some(FieldValue::Reference(_)), false) => true,
            (Some(FieldValue::Fernet(_)), _) | (None, _) => false,
        }
    }
}
