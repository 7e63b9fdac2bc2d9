//! `audit`: proves an installation clean, or finds what was written around the gateway.
//!
//! Every ruled entity is read with the service token, and every secret field is judged by the
//! rule the write guard enforces (`rewrite::guard`): with a managed provider, a field holds
//! exactly the reference the gateway would have built for it (its own id, bare or
//! Fernet-wrapped, or an id under a prefix its rule grants) and that id is in the store, or
//! it is empty. Anything else is a finding:
//! - `plaintext`: a value in clear;
//! - `fernet-plaintext`: a Fernet token of a value (expected with `db` and non-managed
//!   providers, where it is how values travel);
//! - `fernet-undecryptable`: a `fernet:` token no configured key opens;
//! - `mask`: a mask OpenMetadata stored (an old bug) instead of the value;
//! - `foreign-reference`: a reference to another id than the field's own (another entity's,
//!   or another field's);
//! - `dangling-reference`: the field's own reference, but the store does not hold the id.
//!
//! With a managed provider and every kind audited, the store's ids under the gateway's head
//! that nothing refers to are orphans (owner markers `<root>/.owner` are not secrets and are
//! ignored; a field holding a mask counts as referring to its own id, which the write path
//! keeps for it); `--delete-orphans` removes them. With the embedded store every value is also
//! read, so one no configured key opens (after `rotate-fernet`, with the new key alone) is
//! found. With non-managed providers references are the user's own and are not judged.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::cursor::Cursor;
use super::progress::{Pacer, Progress};
use super::{identity, EntityError, Toolkit};
use crate::rewrite::{classify, FieldValue, REFERENCE_PREFIX};
use crate::rules::jsonpath::{get, render};
use crate::rules::Rule;
use crate::secrets::fernet::PREFIX as FERNET_PREFIX;
use crate::secrets::transaction::owner_marker;
use crate::secrets::StoreError;

/// What is wrong with one secret field.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Problem {
    Plaintext,
    FernetPlaintext,
    FernetUndecryptable,
    Mask,
    ForeignReference,
    DanglingReference,
}

impl Problem {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Problem::Plaintext => "plaintext",
            Problem::FernetPlaintext => "fernet-plaintext",
            Problem::FernetUndecryptable => "fernet-undecryptable",
            Problem::Mask => "mask",
            Problem::ForeignReference => "foreign-reference",
            Problem::DanglingReference => "dangling-reference",
        }
    }
}

/// One secret field that holds something other than its reference. Never a value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) id: String,
    /// JSONPath of the field.
    pub(crate) field: String,
    pub(crate) problem: Problem,
    /// The id the field refers to (reference findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<String>,
    /// The id the gateway would have built for the field (managed providers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expected: Option<String>,
}

/// An entity that could not be read whole.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Unread {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) error: String,
}

/// Everything an audit found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct AuditResult {
    /// No finding, no unread entity, no unreadable value, no orphan left.
    pub(crate) clean: bool,
    pub(crate) entities: usize,
    pub(crate) secret_fields: usize,
    /// Findings by problem, plus `orphan` and `unreadable-secret`.
    pub(crate) counts: BTreeMap<&'static str, usize>,
    pub(crate) findings: Vec<Finding>,
    pub(crate) failed: Vec<Unread>,
    /// Orphans are judged only with a managed provider and every kind audited.
    pub(crate) orphans_checked: bool,
    pub(crate) orphans: Vec<String>,
    pub(crate) orphans_deleted: Vec<String>,
    /// Stored ids whose value no configured key opens (embedded store).
    pub(crate) unreadable: Vec<String>,
}

/// The flags of `audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    pub kinds: Vec<String>,
    pub rate: Option<f64>,
    pub delete_orphans: bool,
    /// Read every stored value (the embedded store: local and cheap).
    pub read_values: bool,
}

struct Auditor<'t, 'a> {
    tk: &'t Toolkit<'a>,
    /// Ids the store holds under the gateway's head.
    listed: BTreeSet<String>,
    /// Ids any audited entity refers to, anywhere in it.
    referenced: BTreeSet<String>,
    result: AuditResult,
}

/// Audits the entities of `rules`; `every_kind` says they are all the ruled kinds (orphans
/// can be judged). An error means the audit could not finish.
pub(crate) async fn audit(
    tk: &Toolkit<'_>,
    rules: Vec<&Rule>,
    every_kind: bool,
    opts: &AuditOptions,
) -> Result<AuditResult, String> {
    let orphans_checked = tk.managed && every_kind;
    if opts.delete_orphans && !orphans_checked {
        return Err(
            "--delete-orphans needs a managed provider and every kind audited (no --kind)".into(),
        );
    }
    let stop = |e: StoreError| format!("the secrets store: {e}");
    let listed: BTreeSet<String> = if tk.managed {
        let head = format!("{}/", tk.ids.head());
        tk.store
            .list(&head)
            .await
            .map_err(stop)?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut a = Auditor {
        tk,
        listed,
        referenced: BTreeSet::new(),
        result: AuditResult {
            orphans_checked,
            ..Default::default()
        },
    };
    a.walk(rules, opts.rate).await?;
    if orphans_checked {
        a.orphans(opts.delete_orphans).await.map_err(stop)?;
    }
    if opts.read_values {
        a.read_values().await.map_err(stop)?;
    }
    Ok(a.finish())
}

impl Auditor<'_, '_> {
    async fn walk(&mut self, rules: Vec<&Rule>, rate: Option<f64>) -> Result<(), String> {
        let tk = self.tk;
        let mut cursor = Cursor::new(tk, rules);
        let mut progress = Progress::new("audit", cursor.total().await, 0);
        let mut pacer = Pacer::new(rate);
        let mut seen: HashSet<(String, String)> = HashSet::new();
        loop {
            let (rule, mut entity) = match cursor.next().await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => return Err(e.message().to_string()),
            };
            let s = |k: &str| super::text(&entity, k).to_string();
            let (id, name) = (s("id"), s("name"));
            if !seen.insert((rule.kind.clone(), id.clone())) {
                continue;
            }
            pacer.wait().await;
            self.result.entities += 1;
            let judged = match tk.complete(rule, &mut entity).await {
                Ok(()) => self.entity(rule, &entity, &id, &name).await,
                Err(e) => Err(e),
            };
            match judged {
                Ok(()) => {}
                Err(EntityError::Stop(why)) => return Err(why),
                Err(EntityError::Failed(error)) => self.result.failed.push(Unread {
                    kind: rule.kind.clone(),
                    name,
                    id,
                    error,
                }),
            }
            progress.inc();
        }
        progress.finish();
        Ok(())
    }

    async fn entity(
        &mut self,
        rule: &Rule,
        entity: &Value,
        id: &str,
        name: &str,
    ) -> Result<(), EntityError> {
        let tk = self.tk;
        self.collect_references(entity);
        let root = identity(tk.ids, rule, entity).root;
        for f in tk.rules.find_secrets(rule, entity) {
            let Some(v) = get(entity, &f.steps) else {
                continue;
            };
            self.result.secret_fields += 1;
            let own = tk.ids.id(&root, rule.field_steps(&f.steps));
            if let Some((problem, reference)) = self.judge(rule, &own, v).await? {
                if problem == Problem::Mask {
                    // A mask stands for what the store holds under the field's own id (the
                    // write path keeps it): that secret is not an orphan.
                    self.referenced.insert(own.clone());
                }
                self.result.findings.push(Finding {
                    kind: rule.kind.clone(),
                    name: name.to_string(),
                    id: id.to_string(),
                    field: render(&f.steps),
                    problem,
                    reference,
                    expected: tk.managed.then_some(own),
                });
            }
        }
        Ok(())
    }

    /// What is wrong with the value `v` of a field whose own id is `own`, if anything.
    async fn judge(
        &self,
        rule: &Rule,
        own: &str,
        v: &Value,
    ) -> Result<Option<(Problem, Option<String>)>, EntityError> {
        let tk = self.tk;
        let (kind, wrapped) = match classify(v) {
            Some(FieldValue::Fernet(t)) => match tk.fernet.decrypt(&t) {
                Ok(p) => (classify(&Value::String(p)), true),
                Err(_) => return Ok(Some((Problem::FernetUndecryptable, None))),
            },
            k => (k, false),
        };
        let problem = match kind {
            None | Some(FieldValue::Clear) => None,
            Some(FieldValue::Mask) => Some((Problem::Mask, None)),
            Some(FieldValue::Plain(_) | FieldValue::Fernet(_)) if wrapped => {
                tk.managed.then_some((Problem::FernetPlaintext, None))
            }
            Some(FieldValue::Plain(_) | FieldValue::Fernet(_)) => Some((Problem::Plaintext, None)),
            Some(FieldValue::Reference(_)) if !tk.managed => None,
            Some(FieldValue::Reference(r)) => {
                let granted = rule
                    .allowed_reference_prefixes
                    .iter()
                    .any(|p| r.starts_with(p.as_str()));
                if r != own && !granted {
                    Some((Problem::ForeignReference, Some(r)))
                } else if !self.exists(&r).await? {
                    Some((Problem::DanglingReference, Some(r)))
                } else {
                    None
                }
            }
        };
        Ok(problem)
    }

    /// The store holds `id` (asked when the listing did not show it: listings of some stores
    /// lag behind their writes).
    async fn exists(&self, id: &str) -> Result<bool, EntityError> {
        if self.listed.contains(id) {
            return Ok(true);
        }
        Ok(self.tk.store.get(id).await?.is_some())
    }

    /// Every `secret:` reference anywhere in the entity (bare or Fernet-wrapped) keeps its id
    /// from being an orphan.
    fn collect_references(&mut self, doc: &Value) {
        let mut stack = vec![doc];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    let opened = if s.starts_with(FERNET_PREFIX) {
                        self.tk.fernet.decrypt(s).ok()
                    } else {
                        None
                    };
                    let s = opened.as_deref().unwrap_or(s);
                    if let Some(id) = s.strip_prefix(REFERENCE_PREFIX) {
                        self.referenced.insert(id.to_string());
                    }
                }
                Value::Array(a) => stack.extend(a.iter()),
                Value::Object(m) => stack.extend(m.values()),
                _ => {}
            }
        }
    }

    /// Stored ids nothing refers to (owner markers aside); deleted when asked.
    async fn orphans(&mut self, delete: bool) -> Result<(), StoreError> {
        let orphans: Vec<String> = self
            .listed
            .iter()
            .filter(|id| !self.referenced.contains(*id) && !is_owner_marker(id))
            .cloned()
            .collect();
        if delete {
            for id in &orphans {
                self.tk.store.delete(id).await?;
                self.result.orphans_deleted.push(id.clone());
            }
        }
        self.result.orphans = orphans;
        Ok(())
    }

    /// Reads every stored value: one no configured key opens is `unreadable`.
    async fn read_values(&mut self) -> Result<(), StoreError> {
        for id in &self.listed {
            match self.tk.store.get(id).await {
                Ok(_) => {}
                Err(StoreError::Invalid(_)) => self.result.unreadable.push(id.clone()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> AuditResult {
        let r = &mut self.result;
        r.findings.sort_by(|a, b| {
            (a.problem, &a.kind, &a.name, &a.field).cmp(&(b.problem, &b.kind, &b.name, &b.field))
        });
        for f in &r.findings {
            *r.counts.entry(f.problem.as_str()).or_default() += 1;
        }
        let remaining = r.orphans.len() - r.orphans_deleted.len();
        if !r.orphans.is_empty() {
            r.counts.insert("orphan", r.orphans.len());
        }
        if !r.unreadable.is_empty() {
            r.counts.insert("unreadable-secret", r.unreadable.len());
        }
        r.clean = r.findings.is_empty()
            && r.failed.is_empty()
            && r.unreadable.is_empty()
            && remaining == 0;
        self.result
    }
}

fn is_owner_marker(id: &str) -> bool {
    id.rsplit_once('/')
        .is_some_and(|(root, _)| owner_marker(root) == id)
}
