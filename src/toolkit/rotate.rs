//! `rotate-fernet`: with the new key first in `FERNET_KEY` and the old ones after it, every
//! `fernet:` value the upstream holds (values and wrapped references, wherever they sit in a
//! ruled entity) is re-encrypted with the new key, one JSON Patch per entity; the embedded
//! store's values at rest are re-encrypted in one transaction before the walk
//! (`EmbeddedStore::reencrypt`). A token already under the new key is left alone, so a second
//! run changes nothing. Afterwards the old keys can go: `audit` with the new key alone proves
//! every token and stored value opens.

use serde_json::Value;

use super::report::{Action, EntityReport, Outcome};
use super::runner::Job;
use super::{label, EntityError, Toolkit};
use crate::rewrite::{classify, patch, FieldValue};
use crate::rules::jsonpath::{get_mut, render, Step};
use crate::rules::Rule;
use crate::secrets::fernet::PREFIX;

pub(crate) struct Rotate<'t, 'a> {
    pub(crate) tk: &'t Toolkit<'a>,
}

/// Every string of `doc` that is a `fernet:` token, with where it is.
fn fernet_values(doc: &Value) -> Vec<(Vec<Step>, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(&Value, Vec<Step>)> = vec![(doc, Vec::new())];
    while let Some((v, at)) = stack.pop() {
        match v {
            Value::String(s) if s.starts_with(PREFIX) => out.push((at, s.clone())),
            Value::Object(m) => {
                for (k, c) in m.iter().rev() {
                    let mut next = at.clone();
                    next.push(Step::Key(k.clone()));
                    stack.push((c, next));
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate().rev() {
                    let mut next = at.clone();
                    next.push(Step::Index(i));
                    stack.push((c, next));
                }
            }
            _ => {}
        }
    }
    out
}

impl Job for Rotate<'_, '_> {
    fn command(&self) -> &'static str {
        "rotate-fernet"
    }

    async fn entity(
        &self,
        rule: &Rule,
        mut entity: Value,
        dry_run: bool,
    ) -> Result<EntityReport, EntityError> {
        let tk = self.tk;
        let mut report = tk.open(rule, &mut entity).await?;
        let mut doc = entity.clone();
        let mut unopened = Vec::new();
        for (at, token) in fernet_values(&entity) {
            if tk.fernet.opens_with_first(&token) {
                continue;
            }
            let field = render(&at);
            let Ok(plain) = tk.fernet.decrypt(&token) else {
                report.field(field.clone(), Action::Left, None);
                unopened.push(field);
                continue;
            };
            let fresh = tk
                .fernet
                .encrypt(&plain)
                .map_err(|e| EntityError::Failed(format!("{field}: {e}")))?;
            if let Some(slot) = get_mut(&mut doc, &at) {
                *slot = Value::String(fresh);
            }
            let reference = match classify(&Value::String(plain)) {
                Some(FieldValue::Reference(r)) => Some(r),
                _ => None,
            };
            report.field(field, Action::ReEncrypted, reference);
        }
        let changed = report
            .fields
            .iter()
            .any(|f| f.action == Action::ReEncrypted);
        if changed && !dry_run {
            tk.patch_upstream(rule, &report.id, &patch::diff(&entity, &doc))
                .await?;
        }
        report.outcome = if changed {
            Outcome::Changed
        } else {
            Outcome::Unchanged
        };
        if !unopened.is_empty() {
            report.outcome = Outcome::Failed;
            report.error = Some(format!(
                "no configured key opens the fernet: token at {}",
                unopened.join(", ")
            ));
        }
        Ok(report)
    }

    fn lines(&self, r: &EntityReport, dry_run: bool) -> Vec<String> {
        let verb = if dry_run {
            "would re-encrypt"
        } else {
            "re-encrypted"
        };
        let who = label(&r.kind, &r.name);
        r.fields
            .iter()
            .filter(|f| f.action == Action::ReEncrypted)
            .map(|f| match &f.secret_id {
                Some(id) => format!("{verb} {who} {} (reference to secret:{id})", f.field),
                None => format!("{verb} {who} {}", f.field),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_fernet_string_is_found_wherever_it_sits() {
        let doc = json!({"a": "fernet:x", "b": {"c": ["plain", "fernet:y"]}, "d": "secret:/z"});
        let found: Vec<String> = fernet_values(&doc)
            .iter()
            .map(|(at, _)| render(at))
            .collect();
        assert_eq!(found, vec!["$.a", "$.b.c[1]"]);
    }
}
