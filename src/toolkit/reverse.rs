//! `migrate --reverse`: the way out. Every secret field that holds a reference (bare or
//! Fernet-wrapped) gets the referenced value back as a `fernet:` token of the first configured
//! key, in one JSON Patch per entity; for teams leaving a managed provider or removing the
//! gateway (OpenMetadata must have the same `FERNET_KEY` to read the tokens).
//!
//! The store is only read: its secrets stay until the operator has checked OpenMetadata reads
//! the tokens. Nothing refers to them afterwards, so `audit` lists them as orphans and
//! `audit --delete-orphans` removes them. Fields that hold no reference (values, tokens, masks)
//! stay as they are.

use serde_json::Value;

use super::report::{Action, EntityReport, Outcome};
use super::runner::Job;
use super::{label, reference_in, EntityError, Toolkit};
use crate::rewrite::patch;
use crate::rules::jsonpath::{get, get_mut, render};
use crate::rules::Rule;

pub(crate) struct Reverse<'t, 'a> {
    pub(crate) tk: &'t Toolkit<'a>,
}

impl Job for Reverse<'_, '_> {
    fn command(&self) -> &'static str {
        "migrate --reverse"
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
        for f in tk.rules.find_secrets(rule, &entity) {
            let Some(r) = get(&entity, &f.steps).and_then(|v| reference_in(v, tk.fernet)) else {
                continue;
            };
            let field = render(&f.steps);
            let Some(value) = tk.store.get(&r).await? else {
                return Err(EntityError::Failed(format!(
                    "{field}: refers to secret:{r}, which the store does not hold; nothing of this entity was changed"
                )));
            };
            let token = tk
                .fernet
                .encrypt(&value)
                .map_err(|e| EntityError::Failed(format!("{field}: {e}")))?;
            if let Some(slot) = get_mut(&mut doc, &f.steps) {
                *slot = Value::String(token);
            }
            report.field(field, Action::Restored, Some(r));
        }
        if report.fields.is_empty() {
            return Ok(report);
        }
        if !dry_run {
            tk.patch_upstream(rule, &report.id, &patch::diff(&entity, &doc))
                .await?;
        }
        report.outcome = Outcome::Changed;
        Ok(report)
    }

    fn lines(&self, r: &EntityReport, dry_run: bool) -> Vec<String> {
        let verb = if dry_run { "would restore" } else { "restored" };
        let who = label(&r.kind, &r.name);
        r.fields
            .iter()
            .map(|f| {
                format!(
                    "{verb} {who} {} from secret:{} as a fernet: token",
                    f.field,
                    f.secret_id.as_deref().unwrap_or_default()
                )
            })
            .collect()
    }
}
