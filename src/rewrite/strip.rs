//! The write table of the contract, applied to the entity as OpenMetadata will hold it: every
//! secret field's value is classified and replaced by what the upstream may see, and the store
//! changes this needs are collected in a [`Plan`] that the store transaction carries out before
//! anything is forwarded.
//!
//! Judging the resulting entity, not the request's operations, is what makes moved, copied and
//! re-ordered secrets safe: wherever a value ends up, the field it ends up in gets it.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{classify, FieldValue, REFERENCE_PREFIX};
use crate::error::GatewayError;
use crate::rules::ids::{is_buildable, IdBuilder};
use crate::rules::jsonpath::{get, get_mut, render, Step};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::{FernetKeys, PREFIX as FERNET_PREFIX};
use crate::secrets::ownership::{inside_a_nested_root, Owner};
use crate::secrets::transaction::{Claim, Plan};
use crate::secrets::SecretStore;

/// What happened to one secret field, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditEntry {
    /// The field's JSONPath.
    pub(crate) field: String,
    pub(crate) secret_id: String,
    pub(crate) op: AuditOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditOp {
    /// A value was stored.
    Put,
    /// A value was Fernet-encrypted in place (db and non-managed providers).
    Encrypt,
    /// A reference was kept.
    Reference,
    /// A mask kept the stored secret.
    Keep,
    /// A reference that moved to another field was re-keyed to that field's own id.
    Rekey,
    /// A secret was deleted.
    Delete,
}

impl AuditOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuditOp::Put => "put",
            AuditOp::Encrypt => "encrypt",
            AuditOp::Reference => "reference",
            AuditOp::Keep => "keep",
            AuditOp::Rekey => "rekey",
            AuditOp::Delete => "delete",
        }
    }
}

/// What a reference or a value becomes upstream: `secret:<id>`, Fernet-wrapped when `wrap`.
pub(crate) fn forwarded_reference(
    fernet: &FernetKeys,
    wrap: bool,
    id: &str,
) -> Result<String, GatewayError> {
    let r = format!("{REFERENCE_PREFIX}{id}");
    if wrap {
        return fernet
            .encrypt(&r)
            .map_err(|e| GatewayError::Internal(e.to_string()));
    }
    Ok(r)
}

/// The service a test-connection workflow names, whose secrets its masks stand for.
pub(crate) struct MaskSource {
    /// Steps of the workflow's connection config (`request.connection.config`).
    pub(crate) base: Vec<Step>,
    /// The service's id root, e.g. `/openmetadata/database/mysql-prod`.
    pub(crate) service_root: String,
    /// The service's `connection.config` as the upstream holds it (non-managed providers).
    pub(crate) service_config: Option<Value>,
    /// The service's root is owned (its marker names the service).
    pub(crate) service_owned: bool,
    /// The ids the service refers to as the upstream holds it (managed providers): in an
    /// owned root only these may be copied into a workflow ([`Stripper::held`]).
    pub(crate) service_held: BTreeSet<String>,
}

/// Everything the write table needs for one entity.
pub(crate) struct Stripper<'a> {
    pub(crate) rules: &'a RuleSet,
    pub(crate) rule: &'a Rule,
    pub(crate) ids: &'a IdBuilder,
    /// The entity's id root, e.g. `/openmetadata/database/mysql-test`.
    pub(crate) root: String,
    /// Who owns the root (claimed when the first secret is stored under it).
    pub(crate) owner: Owner,
    /// The entity's root from an earlier version (a name with `/`): references there are
    /// its own and are re-keyed into `root`.
    pub(crate) legacy_root: Option<String>,
    /// Values go to the store (managed providers) rather than travelling as Fernet tokens.
    pub(crate) managed: bool,
    pub(crate) fernet: &'a FernetKeys,
    pub(crate) wrap_references: bool,
    pub(crate) store: &'a dyn SecretStore,
    pub(crate) mask_source: Option<MaskSource>,
    /// The root's owner marker names this entity: the gateway stored its values for an
    /// entity of this kind and name.
    pub(crate) owned: bool,
    /// The ids the entity refers to as the upstream holds it, when the caller read it
    /// (creates that carry masks or references into an owned root); `strip`'s `current` adds
    /// its own. In an owned root a mask or a reference keeps a stored value only when the
    /// entity as the upstream holds it refers to it: a value the gateway stored for an
    /// earlier entity of the same name, deleted without the gateway seeing it (OpenMetadata's
    /// recursive delete of a service takes its pipelines with it), is no one's to inherit by
    /// name. Values provisioned outside the gateway (no owner marker) are kept as the
    /// contract says: "keep the secret already stored for that field".
    pub(crate) held: BTreeSet<String>,
}

/// The result of stripping one entity.
#[derive(Debug, Default)]
pub(crate) struct Stripped {
    pub(crate) plan: Plan,
    /// The new value of every secret field that changed, by location (for byte-exact edits).
    pub(crate) edits: Vec<(Vec<Step>, Value)>,
    pub(crate) audit: Vec<AuditEntry>,
    /// Secret fields left as they were because nothing better can be put there: a mask stored
    /// upstream by an old bug with nothing behind it, or a Fernet token no configured key opens.
    pub(crate) left: Vec<String>,
}

/// What a mask stands for.
enum Kept {
    /// A reference, judged like one the caller sent.
    Reference(String),
    /// The named service's secret (workflows): its value is copied to the field's own id.
    Copy(String),
    /// A value the upstream holds (db and non-managed providers), forwarded as it is.
    Verbatim(String),
}

/// What stripping collects while it walks the fields.
#[derive(Default)]
struct Acc {
    /// [`Stripper::held`] and the ids `current` refers to.
    held: BTreeSet<String>,
    out: Stripped,
    rekeys: Vec<Rekey>,
    cleared: Vec<String>,
    /// The field each secret id was given to (managed providers), to refuse two sharing one.
    ids: std::collections::HashMap<String, Vec<Step>>,
}

impl Acc {
    /// Puts the field's new value in place and audits it.
    fn set(
        &mut self,
        doc: &mut Value,
        steps: &[Step],
        value: Value,
        field: String,
        secret_id: String,
        op: AuditOp,
    ) {
        set(doc, steps, value, &mut self.out.edits);
        self.out.audit.push(AuditEntry {
            field,
            secret_id,
            op,
        });
    }
}

/// A value read from the store for a re-keyed reference: (source id, field id).
struct Rekey {
    from: String,
    to: String,
}

impl Stripper<'_> {
    /// What the upstream receives for a reference to `id`.
    fn reference(&self, id: &str) -> Result<Value, GatewayError> {
        forwarded_reference(self.fernet, self.wrap_references, id).map(Value::String)
    }

    pub(crate) fn own(&self, id: &str) -> bool {
        is_within(id, &self.root) || self.legacy_root.as_ref().is_some_and(|l| is_within(id, l))
    }

    /// The root `id` lies under (this entity's, or its legacy one).
    fn root_of(&self, id: &str) -> &str {
        match &self.legacy_root {
            Some(l) if is_within(id, l) => l,
            _ => &self.root,
        }
    }

    /// `id` lies under a prefix the rule lets any entity refer to.
    pub(crate) fn granted(&self, id: &str) -> bool {
        self.rule
            .allowed_reference_prefixes
            .iter()
            .any(|p| id.starts_with(p.as_str()))
    }

    /// Rewrites every secret field of `doc` (the entity as the upstream will hold it).
    /// `current` is the entity as the upstream holds it now, when known: masks fall back to
    /// it, and ids it referred to that `doc` no longer does are deleted after the write.
    pub(crate) async fn strip(
        &self,
        doc: &mut Value,
        current: Option<&Value>,
    ) -> Result<Stripped, GatewayError> {
        let found = self.rules.find_secrets(self.rule, doc);
        self.strip_found(doc, current, found).await
    }

    /// [`Stripper::strip`] with the secret fields of `doc` already found
    /// (`RuleSet::find_secrets` of this very `doc`).
    pub(crate) async fn strip_found(
        &self,
        doc: &mut Value,
        current: Option<&Value>,
        found: Vec<crate::rules::Found>,
    ) -> Result<Stripped, GatewayError> {
        let mut acc = Acc {
            held: self.held.clone(),
            ..Acc::default()
        };
        if let Some(c) = current {
            acc.held
                .extend(held_references(self.rules, self.rule, c, self.fernet));
        }
        for f in found {
            self.field(doc, current, &f.steps, &mut acc).await?;
        }
        let mut out = acc.out;
        self.read_rekeys(&acc.rekeys, &mut out.plan).await?;
        if self.managed {
            self.plan_deletes(doc, current, acc.cleared, &mut out);
            if !out.plan.puts.is_empty() {
                out.plan.claim = Some(Claim {
                    root: self.root.clone(),
                    owner: self.owner.clone(),
                });
            }
        }
        Ok(out)
    }

    /// The write table for one secret field at `steps`.
    async fn field(
        &self,
        doc: &mut Value,
        current: Option<&Value>,
        steps: &[Step],
        acc: &mut Acc,
    ) -> Result<(), GatewayError> {
        let Some(slot) = get(doc, steps) else {
            return Ok(());
        };
        let field = render(steps);
        let id = self.ids.id(&self.root, self.rule.field_steps(steps));
        // Two secret fields whose names differ only by case, `_` or `-` (free-form options:
        // `api_key` and `apiKey`) get one id, so one value would silently stand for both:
        // refused (422) unless one of them holds nothing.
        if self.managed && !slot.is_null() {
            if let Some(other) = acc.ids.insert(id.clone(), steps.to_vec()) {
                if other != steps {
                    return Err(GatewayError::Unprocessable(format!(
                        "{} and {} would share the secret id {id}; send one of them",
                        render(&other),
                        render(steps)
                    )));
                }
            }
        }
        let held = current.and_then(|c| get(c, steps));
        let untouched = held == Some(slot);
        let Some(kind) = classify(slot) else {
            return Err(GatewayError::BadRequest(format!(
                "{field}: a secret field must hold a string, not an object or array"
            )));
        };
        let Some(kind) = self.open_fernet(kind, &field, untouched)? else {
            acc.out.left.push(field);
            return Ok(());
        };
        let (kind, via_mask) = match kind {
            FieldValue::Mask => match self.mask(steps, &id, held, &acc.held).await? {
                Some(Kept::Reference(r)) => (FieldValue::Reference(r), true),
                Some(kept) => {
                    let value = match kept {
                        Kept::Copy(from) => {
                            acc.rekeys.push(Rekey {
                                from,
                                to: id.clone(),
                            });
                            self.reference(&id)?
                        }
                        Kept::Verbatim(v) | Kept::Reference(v) => Value::String(v),
                    };
                    acc.set(doc, steps, value, field, id, AuditOp::Keep);
                    return Ok(());
                }
                None if untouched => {
                    acc.out.left.push(field);
                    return Ok(());
                }
                None if !self.managed => {
                    return Err(GatewayError::Unprocessable(format!(
                        "{field}: a masked value was sent but OpenMetadata holds no value for it; send the value"
                    )))
                }
                None => {
                    return Err(GatewayError::Unprocessable(format!(
                        "{field}: a masked value was sent but no secret is stored for it"
                    )))
                }
            },
            FieldValue::Reference(r)
                if self.managed && self.owned && !acc.held.contains(&r) && self.own(&r) =>
            {
                if self.stored(&r).await? {
                    return Err(GatewayError::Unprocessable(format!(
                        "{field}: the reference names a stored secret this entity does not hold in OpenMetadata; send the value"
                    )));
                }
                (FieldValue::Reference(r), false)
            }
            k => (k, false),
        };
        let (value, op, audit_id) = self.value_for(kind, &id, &field, acc)?;
        let op = if via_mask && op == AuditOp::Reference {
            AuditOp::Keep
        } else {
            op
        };
        if op == AuditOp::Delete && !self.managed {
            set(doc, steps, value, &mut acc.out.edits);
        } else {
            acc.set(doc, steps, value, field, audit_id, op);
        }
        Ok(())
    }

    /// What the upstream receives for a classified value, the audit op and the id it names.
    fn value_for(
        &self,
        kind: FieldValue,
        id: &str,
        field: &str,
        acc: &mut Acc,
    ) -> Result<(Value, AuditOp, String), GatewayError> {
        Ok(match kind {
            FieldValue::Plain(plain) if self.managed => {
                acc.out.plan.puts.push((id.to_string(), plain));
                (self.reference(id)?, AuditOp::Put, id.to_string())
            }
            FieldValue::Plain(plain) => {
                let token = self
                    .fernet
                    .encrypt(&plain)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
                (Value::String(token), AuditOp::Encrypt, id.to_string())
            }
            FieldValue::Reference(r) => {
                check_reference_syntax(&r, self.managed, field)?;
                if !self.managed {
                    let v = Value::String(format!("{REFERENCE_PREFIX}{r}"));
                    (v, AuditOp::Reference, r)
                } else if r == id || self.granted(&r) {
                    (self.reference(&r)?, AuditOp::Reference, r)
                } else if self.own(&r) {
                    acc.rekeys.push(Rekey {
                        from: r,
                        to: id.to_string(),
                    });
                    (self.reference(id)?, AuditOp::Rekey, id.to_string())
                } else {
                    return Err(GatewayError::Unprocessable(format!(
                        "{field}: the reference is outside this entity's secrets ({}/...)",
                        self.root
                    )));
                }
            }
            FieldValue::Clear => {
                acc.cleared.push(id.to_string());
                (Value::Null, AuditOp::Delete, id.to_string())
            }
            FieldValue::Mask | FieldValue::Fernet(_) => {
                return Err(GatewayError::Internal("unresolved secret field".into()))
            }
        })
    }

    /// A `fernet:` value opened with the configured keys: its plain value or the reference it
    /// wraps. `None`: no key opens it and it is what the upstream already holds (left as is).
    fn open_fernet(
        &self,
        kind: FieldValue,
        field: &str,
        untouched: bool,
    ) -> Result<Option<FieldValue>, GatewayError> {
        let FieldValue::Fernet(token) = kind else {
            return Ok(Some(kind));
        };
        match self.fernet.decrypt(&token) {
            Ok(plain) => Ok(Some(match classify(&Value::String(plain.clone())) {
                Some(FieldValue::Reference(r)) => FieldValue::Reference(r),
                _ => FieldValue::Plain(plain),
            })),
            Err(_) if untouched => Ok(None),
            Err(_) => Err(GatewayError::BadRequest(format!(
                "{field}: the fernet: value cannot be decrypted with the configured keys"
            ))),
        }
    }

    /// What a mask at `steps` stands for: the reference the upstream holds there, the secret
    /// stored under the field's id, or (workflows) the named service's; with db and
    /// non-managed providers, the token or reference the upstream holds, kept verbatim.
    async fn mask(
        &self,
        steps: &[Step],
        id: &str,
        held: Option<&Value>,
        held_ids: &BTreeSet<String>,
    ) -> Result<Option<Kept>, GatewayError> {
        let from_service = self
            .mask_source
            .as_ref()
            .filter(|m| steps.len() > m.base.len() && steps[..m.base.len()] == m.base[..])
            .map(|m| (m, &steps[m.base.len()..]));
        if !self.managed {
            let verbatim = |v: Option<&Value>| {
                v.and_then(Value::as_str)
                    .filter(|s| s.starts_with(REFERENCE_PREFIX) || s.starts_with(FERNET_PREFIX))
                    .map(|s| Kept::Verbatim(s.to_string()))
            };
            return Ok(verbatim(held).or_else(|| {
                from_service.and_then(|(m, rel)| {
                    verbatim(m.service_config.as_ref().and_then(|c| get(c, rel)))
                })
            }));
        }
        let held_kind = held
            .and_then(classify)
            .and_then(|k| self.open_fernet(k, "", true).ok().flatten());
        if let Some(FieldValue::Reference(r)) = &held_kind {
            return Ok(Some(Kept::Reference(r.clone())));
        }
        // The entity refers to this field's id elsewhere (a value that moved), or holds a
        // mask in this very field (an old OpenMetadata bug stored masks): still its own.
        let holds_mask = matches!(held_kind, Some(FieldValue::Mask));
        if (!self.owned || held_ids.contains(id) || holds_mask) && self.stored(id).await? {
            return Ok(Some(Kept::Reference(id.to_string())));
        }
        if let Some((m, rel)) = from_service {
            let sid = self.ids.id(&m.service_root, rel);
            if (!m.service_owned || m.service_held.contains(&sid)) && self.stored(&sid).await? {
                return Ok(Some(Kept::Copy(sid)));
            }
        }
        Ok(None)
    }

    async fn stored(&self, id: &str) -> Result<bool, GatewayError> {
        Ok(self.store.get(id).await?.is_some())
    }

    /// Reads the value behind every re-keyed reference before anything is written, so a
    /// field that gets a new value and a reference that moved away from it both end right.
    async fn read_rekeys(&self, rekeys: &[Rekey], plan: &mut Plan) -> Result<(), GatewayError> {
        for r in rekeys {
            // Ids written before names were kept to one segment can hold another entity's
            // root inside this one's (`team` and `team/prod`): never copied from there.
            if inside_a_nested_root(self.store, self.root_of(&r.from), &r.from).await? {
                return Err(GatewayError::Unprocessable(format!(
                    "a reference names a secret of another entity ({})",
                    r.from
                )));
            }
            match self.store.get(&r.from).await? {
                Some(v) => plan.puts.push((r.to.clone(), v)),
                None => {
                    return Err(GatewayError::Unprocessable(format!(
                        "a reference names a secret that does not exist ({})",
                        r.from
                    )))
                }
            }
        }
        Ok(())
    }

    /// Ids this entity referred to (or cleared) that nothing refers to after the write.
    fn plan_deletes(
        &self,
        doc: &Value,
        current: Option<&Value>,
        cleared: Vec<String>,
        out: &mut Stripped,
    ) {
        let after = self.own_references(doc);
        let written: BTreeSet<&String> = out.plan.puts.iter().map(|(id, _)| id).collect();
        let mut gone: BTreeSet<String> = cleared.into_iter().collect();
        if let Some(c) = current {
            gone.extend(self.own_references(c));
        }
        out.plan.deletes = gone
            .into_iter()
            .filter(|id| !after.contains(id) && !written.contains(id) && self.own(id))
            .collect();
    }

    /// The ids inside this entity's root that anything in it refers to (a reference moved
    /// to a field that is not a secret still keeps its id alive).
    fn own_references(&self, doc: &Value) -> BTreeSet<String> {
        let mut ids = references_within(doc, &self.root, self.fernet);
        if let Some(l) = &self.legacy_root {
            ids.extend(references_within(doc, l, self.fernet));
        }
        ids
    }
}

/// Whether `id` lies under `root` (`<root>/...`).
pub(crate) fn is_within(id: &str, root: &str) -> bool {
    id.len() > root.len() + 1 && id.starts_with(root) && id.as_bytes()[root.len()] == b'/'
}

/// The ids `entity` (of `rule`'s kind) refers to in its secret fields, bare or
/// Fernet-wrapped: what it holds, for [`Stripper::held`]. A reference anywhere else (a
/// `description` anyone may write) holds nothing.
pub(crate) fn held_references(
    rules: &RuleSet,
    rule: &Rule,
    entity: &Value,
    fernet: &FernetKeys,
) -> BTreeSet<String> {
    rules
        .find_secrets(rule, entity)
        .iter()
        .filter_map(|f| get(entity, &f.steps))
        .flat_map(|v| references_within(v, "", fernet))
        .collect()
}

/// The ids under `root` that anything in `doc` refers to, bare or Fernet-wrapped.
pub(crate) fn references_within(doc: &Value, root: &str, fernet: &FernetKeys) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                let opened;
                let s = if s.starts_with(FERNET_PREFIX) {
                    match fernet.decrypt(s) {
                        Ok(p) => {
                            opened = p;
                            opened.as_str()
                        }
                        Err(_) => continue,
                    }
                } else {
                    s.as_str()
                };
                if let Some(r) = s.strip_prefix(REFERENCE_PREFIX) {
                    if is_within(r, root) {
                        ids.insert(r.to_string());
                    }
                }
            }
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    ids
}

/// Puts `value` at `steps` and records the edit when it changes anything.
fn set(doc: &mut Value, steps: &[Step], value: Value, edits: &mut Vec<(Vec<Step>, Value)>) {
    if let Some(slot) = get_mut(doc, steps) {
        if *slot != value {
            *slot = value.clone();
            edits.push((steps.to_vec(), value));
        }
    }
}

/// Refuses a reference the gateway could not have built: empty, `.` or `..` segments, control
/// characters; with a managed provider, also anything outside the id alphabet
/// ([`is_buildable`]: `/`-separated segments of `a-z`, `0-9`, `_`, `-`), which also keeps
/// owner markers (`<root>/.owner`) out of reach.
pub(crate) fn check_reference_syntax(
    id: &str,
    managed: bool,
    field: &str,
) -> Result<(), GatewayError> {
    let bad = |why: &str| {
        Err(GatewayError::Unprocessable(format!(
            "{field}: the reference is not a secret id ({why})"
        )))
    };
    let Some(rest) = id.strip_prefix('/') else {
        return bad("it must start with '/'");
    };
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, '.' and '..' segments are not allowed");
        }
        if seg.chars().any(char::is_control) {
            return bad("control characters are not allowed");
        }
    }
    if managed && !is_buildable(id) {
        return bad("ids hold only a-z, 0-9, '_', '-' and '/'");
    }
    Ok(())
}
