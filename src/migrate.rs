//! `om-secrets-proxy migrate`: moves the secrets OpenMetadata still holds into the configured
//! store, the way OpenMetadata's own migration did, but with a dry run, a resumable walk and
//! without stopping at the first entity that fails (its #12941). The walk, checkpoint,
//! progress, pace and report are the toolkit's (`toolkit::runner`); this file is one entity.
//!
//! A migration is the write path with an empty request: for every entity of the chosen kinds
//! (by default every kind that keeps secrets; automations workflows are short-lived test runs
//! and are skipped unless named with `--kind`):
//! 1. `complete` – a kind's `credentials_route` supplies fields lists leave out (bot JWTs);
//! 2. `adopt`    – a reference to another entity's secret (written around the gateway) is
//!    replaced by that secret's value, so the entity gets its own copy;
//! 3. `strip`    – the entity is stripped exactly as a write of it would be: plain values and
//!    `fernet:` tokens that open to one move to the store under the write path's ids,
//!    references stay, a mask OpenMetadata stored becomes the reference to what the store
//!    holds for the field; a mask with nothing behind it, or a token no key opens, is left
//!    and named (a failure);
//! 4. in a dry run, report and stop here;
//! 5. `store`    – one store transaction per entity (claiming its id root);
//! 6. `patch`    – one JSON Patch upstream from the entity to the stripped entity; when the
//!    upstream refuses it, the store writes are undone.
//!
//! Running it again finds nothing to do: a migrated field is a reference.

use serde_json::Value;

use crate::error::GatewayError;
use crate::rewrite::patch;
use crate::rewrite::strip::{AuditOp, Stripped, Stripper};
use crate::rewrite::{classify, FieldValue};
use crate::rules::jsonpath::{get, get_mut, render};
use crate::rules::Rule;
use crate::secrets::transaction::StoreTxn;
use crate::toolkit::report::{Action, EntityReport, FieldReport, Outcome};
use crate::toolkit::runner::Job;
use crate::toolkit::{label, reference_in, EntityError, Toolkit};

/// One entity's migration, for the toolkit's runner.
pub(crate) struct Migrator<'t, 'a> {
    pub(crate) tk: &'t Toolkit<'a>,
}

/// A reference to another entity's secret whose value the entity now gets its own copy of.
struct Adopted {
    field: String,
    from: String,
}

impl Job for Migrator<'_, '_> {
    fn command(&self) -> &'static str {
        "migrate"
    }

    async fn entity(
        &self,
        rule: &Rule,
        mut entity: Value,
        dry_run: bool,
    ) -> Result<EntityReport, EntityError> {
        let tk = self.tk;
        let mut report = tk.open(rule, &mut entity).await?;
        let at = crate::rewrite::owner::locate_existing(
            tk.store, tk.ids, tk.fernet, rule, &entity, true,
        )
        .await
        .map_err(|e| EntityError::Failed(e.public_message()))?;
        let stripper = Stripper {
            rules: tk.rules,
            rule,
            ids: tk.ids,
            root: at.root,
            owner: at.owner,
            legacy_root: at.legacy_root,
            owned: at.owned,
            managed: true,
            fernet: tk.fernet,
            wrap_references: tk.wrap_references,
            store: tk.store,
            mask_source: None,
            held: Default::default(),
        };
        let mut result = entity.clone();
        let copies = self.adopt(&stripper, &mut result).await?;
        let stripped = stripper.strip(&mut result, Some(&entity)).await?;
        keep_equivalent_references(tk, rule, &entity, &mut result);
        fields(&stripped, &copies, &mut report);
        let ops = patch::diff(&entity, &result);
        let changed = !ops.0.is_empty();
        if changed && !dry_run {
            let txn = StoreTxn::begin(tk.store, &stripped.plan)
                .await
                .map_err(|e| EntityError::from(GatewayError::from(e)))?;
            if let Err(e) = tk.patch_upstream(rule, &report.id, &ops).await {
                txn.rollback().await;
                return Err(match e {
                    EntityError::Failed(m) => {
                        EntityError::Failed(format!("{m}; the store writes were undone"))
                    }
                    stop => stop,
                });
            }
            txn.commit().await;
        }
        report.outcome = if changed {
            Outcome::Changed
        } else {
            Outcome::Unchanged
        };
        left(tk, rule, &entity, &stripped, &mut report);
        Ok(report)
    }

    fn lines(&self, r: &EntityReport, dry_run: bool) -> Vec<String> {
        let who = label(&r.kind, &r.name);
        r.fields
            .iter()
            .filter_map(|f| {
                let id = f.secret_id.as_deref().unwrap_or_default();
                let (now, would) = match f.action {
                    Action::Moved | Action::Rekeyed => ("moved", "would move"),
                    Action::Copied => ("copied", "would copy"),
                    Action::Kept => ("replaced the mask of", "would replace the mask of"),
                    _ => return None,
                };
                let verb = if dry_run { would } else { now };
                Some(match &f.from {
                    Some(from) => {
                        format!("{verb} {who} {} from secret:{from} -> secret:{id}", f.field)
                    }
                    None => format!("{verb} {who} {} -> secret:{id}", f.field),
                })
            })
            .collect()
    }
}

impl Migrator<'_, '_> {
    /// Replaces each reference to another entity's secret by that secret's value (read from
    /// the store), so the strip stores it under the field's own id.
    async fn adopt(&self, s: &Stripper<'_>, doc: &mut Value) -> Result<Vec<Adopted>, EntityError> {
        let tk = self.tk;
        let mut copies = Vec::new();
        for f in tk.rules.find_secrets(s.rule, doc) {
            let Some(r) = get(doc, &f.steps).and_then(|v| reference_in(v, tk.fernet)) else {
                continue;
            };
            let own_id = tk.ids.id(&s.root, s.rule.field_steps(&f.steps));
            if r == own_id || s.own(&r) || s.granted(&r) {
                continue;
            }
            let field = render(&f.steps);
            let Some(value) = tk.store.get(&r).await? else {
                return Err(EntityError::Failed(format!(
                    "{field}: refers to another entity's secret, which the store does not hold (secret:{r})"
                )));
            };
            if let Some(slot) = get_mut(doc, &f.steps) {
                *slot = Value::String(value);
            }
            copies.push(Adopted { field, from: r });
        }
        Ok(copies)
    }
}

/// Where the strip rebuilt a reference to the same id (a Fernet-wrapped one is new bytes each
/// time), the entity keeps the one it has, so a second run finds nothing to change.
fn keep_equivalent_references(tk: &Toolkit<'_>, rule: &Rule, entity: &Value, result: &mut Value) {
    for f in tk.rules.find_secrets(rule, entity) {
        let Some(before) = get(entity, &f.steps) else {
            continue;
        };
        let Some(slot) = get_mut(result, &f.steps) else {
            continue;
        };
        if slot != before
            && reference_in(before, tk.fernet).is_some()
            && reference_in(before, tk.fernet) == reference_in(slot, tk.fernet)
        {
            *slot = before.clone();
        }
    }
}

/// The report's field lines, from the strip's audit entries.
fn fields(stripped: &Stripped, copies: &[Adopted], report: &mut EntityReport) {
    for a in &stripped.audit {
        let copy = copies.iter().find(|c| c.field == a.field);
        let action = match (a.op, copy) {
            (AuditOp::Put, Some(_)) => Action::Copied,
            (AuditOp::Put, None) => Action::Moved,
            (AuditOp::Rekey, _) => Action::Rekeyed,
            (AuditOp::Reference, _) => Action::Reference,
            (AuditOp::Keep, _) => Action::Kept,
            _ => continue,
        };
        report.fields.push(FieldReport {
            field: a.field.clone(),
            action,
            secret_id: Some(a.secret_id.clone()),
            from: copy.map(|c| c.from.clone()),
        });
    }
}

/// Fields the strip left as they were make the entity a failure that names them.
fn left(
    tk: &Toolkit<'_>,
    rule: &Rule,
    entity: &Value,
    stripped: &Stripped,
    report: &mut EntityReport,
) {
    if stripped.left.is_empty() {
        return;
    }
    let found = tk.rules.find_secrets(rule, entity);
    let mut why = Vec::new();
    for field in &stripped.left {
        let held = found
            .iter()
            .find(|f| render(&f.steps) == *field)
            .and_then(|f| get(entity, &f.steps))
            .and_then(classify);
        why.push(match held {
            Some(FieldValue::Mask) => format!(
                "{field}: OpenMetadata holds a mask and the store holds nothing for it (an old OpenMetadata bug stored the mask, or the service token is not a bot's and cannot read secrets); set the value again through the gateway"
            ),
            _ => format!("{field}: holds a fernet: token no configured key opens (FERNET_KEY)"),
        });
        report.field(field.clone(), Action::Left, None);
    }
    report.outcome = Outcome::Failed;
    report.error = Some(why.join("; "));
}
