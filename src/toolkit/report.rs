//! What a run did to each entity: the lines of the checkpoint and of `--report FILE`. Field
//! paths, secret ids, actions and reasons only: never a value.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rules::Rule;

/// What happened to one entity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// Its secret fields were rewritten upstream (in a dry run: would be).
    Changed,
    /// Nothing to do.
    Unchanged,
    /// Something could not be done; `error` says what. Fields listed were still handled.
    Failed,
}

/// What happened to one secret field (or, for `rotate-fernet`, one `fernet:` value).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Action {
    /// A value moved into the store.
    Moved,
    /// A reference to another field of the same entity now points at this field's own id.
    Rekeyed,
    /// A reference to another entity's secret: its value was copied under this field's id.
    Copied,
    /// Already this field's reference.
    Reference,
    /// A mask OpenMetadata stored: replaced by the reference to what the store holds.
    Kept,
    /// A stored value went back upstream as a Fernet token (`migrate --reverse`).
    Restored,
    /// A Fernet token was re-encrypted with the first key (`rotate-fernet`).
    ReEncrypted,
    /// Left as it was: nothing better can be put there (see the entity's error).
    Left,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Moved => "moved",
            Action::Rekeyed => "rekeyed",
            Action::Copied => "copied",
            Action::Reference => "reference",
            Action::Kept => "kept",
            Action::Restored => "restored",
            Action::ReEncrypted => "re-encrypted",
            Action::Left => "left",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct FieldReport {
    /// JSONPath of the field.
    pub(crate) field: String,
    pub(crate) action: Action,
    /// The id the field refers to afterwards (or, restored, referred to before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secret_id: Option<String>,
    /// Copied: the other entity's id the value came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct EntityReport {
    pub(crate) kind: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) outcome: Outcome,
    #[serde(default)]
    pub(crate) fields: Vec<FieldReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl EntityReport {
    /// An empty report for an entity of `rule`'s kind.
    pub(crate) fn of(rule: &Rule, entity: &Value) -> EntityReport {
        let s = |k: &str| super::text(entity, k).to_string();
        EntityReport {
            kind: rule.kind.clone(),
            id: s("id"),
            name: s("name"),
            outcome: Outcome::Unchanged,
            fields: Vec::new(),
            error: None,
        }
    }

    /// The checkpoint's key: kind and id.
    pub(crate) fn key(&self) -> (String, String) {
        (self.kind.clone(), self.id.clone())
    }

    pub(crate) fn field(&mut self, field: String, action: Action, secret_id: Option<String>) {
        self.fields.push(FieldReport {
            field,
            action,
            secret_id,
            from: None,
        });
    }
}

/// Counts over a run's reports.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) entities: usize,
    pub(crate) changed: usize,
    pub(crate) unchanged: usize,
    pub(crate) failed: usize,
    /// Fields by action.
    pub(crate) fields: BTreeMap<&'static str, usize>,
}

impl Tally {
    pub(crate) fn of(reports: &[EntityReport]) -> Tally {
        let mut t = Tally::default();
        for r in reports {
            t.entities += 1;
            match r.outcome {
                Outcome::Changed => t.changed += 1,
                Outcome::Unchanged => t.unchanged += 1,
                Outcome::Failed => t.failed += 1,
            }
            for f in &r.fields {
                *t.fields.entry(f.action.as_str()).or_default() += 1;
            }
        }
        t
    }

    /// Fields with any of these actions.
    pub(crate) fn count(&self, actions: &[Action]) -> usize {
        actions
            .iter()
            .map(|a| self.fields.get(a.as_str()).copied().unwrap_or(0))
            .sum()
    }
}

/// The `--report FILE` document.
#[derive(Debug, Serialize)]
pub(crate) struct ReportFile<'a> {
    pub(crate) command: &'a str,
    pub(crate) dry_run: bool,
    /// Every entity of the walk was handled (false: stopped or interrupted; run again).
    pub(crate) complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stopped: Option<&'a str>,
    pub(crate) summary: &'a Tally,
    pub(crate) entities: &'a [EntityReport],
}

/// Writes the report whole or not at all (a temporary file renamed over `path`).
pub(crate) fn write_report(path: &Path, report: &ReportFile<'_>) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: cannot write the report: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome, actions: &[Action]) -> EntityReport {
        EntityReport {
            kind: "databaseService".into(),
            id: "1".into(),
            name: "a".into(),
            outcome,
            fields: actions
                .iter()
                .map(|a| FieldReport {
                    field: "$.x".into(),
                    action: *a,
                    secret_id: None,
                    from: None,
                })
                .collect(),
            error: None,
        }
    }

    #[test]
    fn a_tally_counts_entities_by_outcome_and_fields_by_action() {
        let t = Tally::of(&[
            report(Outcome::Changed, &[Action::Moved, Action::Reference]),
            report(Outcome::Unchanged, &[Action::Reference]),
            report(Outcome::Failed, &[Action::Left]),
        ]);
        assert_eq!((t.entities, t.changed, t.unchanged, t.failed), (3, 1, 1, 1));
        assert_eq!(t.count(&[Action::Reference]), 2);
        assert_eq!(t.count(&[Action::Moved, Action::Copied]), 1);
    }

    #[test]
    fn a_report_line_round_trips_and_names_actions_in_kebab_case() {
        let r = report(Outcome::Changed, &[Action::ReEncrypted]);
        let line = serde_json::to_string(&r).expect("json");
        assert!(
            line.contains("\"re-encrypted\"") && line.contains("\"changed\""),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<EntityReport>(&line).expect("parse"),
            r
        );
    }
}
