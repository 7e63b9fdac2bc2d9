//! The write table of the contract, applied to one subtree of a request body: each secret
//! field's value is classified and replaced by what the upstream may see; the store changes
//! it needs are collected in a [`Plan`] that the proxy carries out before forwarding.

use serde_json::Value;

use super::{classify, FieldValue, REFERENCE_PREFIX};
use crate::config::Provider;
use crate::error::GatewayError;
use crate::rules::ids::IdBuilder;
use crate::rules::jsonpath::{get, get_mut, render, Step};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::FernetKeys;
use crate::secrets::SecretStore;

/// Store changes a request needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// (id, value): written before forwarding.
    pub puts: Vec<(String, String)>,
    /// Ids deleted once the upstream has accepted the write.
    pub deletes: Vec<String>,
    /// (JSONPath, id, operation) for the audit log.
    pub audit: Vec<(String, String, &'static str)>,
    /// (id root, owner): who the secrets under the root belong to (`<kind>:<entity name>`).
    pub owner: Option<(String, String)>,
}

/// What the upstream receives for a secret id: `secret:<id>`, Fernet-wrapped when `wrap`.
pub fn forwarded_reference(
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

/// The marker that records which entity owns an id root. `.` never occurs in a field part,
/// so it cannot meet a real secret id.
pub fn owner_marker(root: &str) -> String {
    format!("{root}/.owner")
}

/// Everything the write table needs.
pub struct WriteCtx<'a> {
    pub rules: &'a RuleSet,
    pub rule: &'a Rule,
    pub ids: &'a IdBuilder,
    /// The entity's id root, e.g. `/openmetadata/database/mysql-test`.
    pub root: String,
    pub provider: Provider,
    pub fernet: &'a FernetKeys,
    pub wrap_references: bool,
    pub store: &'a dyn SecretStore,
    /// The entity as the upstream has it now, when known (masks fall back to it).
    pub existing: Option<&'a Value>,
    /// Where masks may also be filled from: a test-connection workflow for an existing
    /// service carries that service's masked fields (OpenMetadata fills them the same way).
    pub mask_source: Option<MaskSource<'a>>,
}

/// The service a test-connection workflow names.
pub struct MaskSource<'a> {
    /// Steps of the workflow's connection config (`request.connection.config`).
    pub base: Vec<Step>,
    /// The service's id root, e.g. `/openmetadata/database/mysql-prod`.
    pub service_root: String,
    /// The service's `connection.config` as the upstream holds it (non-managed providers).
    pub service_config: Option<&'a Value>,
}

impl WriteCtx<'_> {
    /// What the upstream receives for a reference.
    fn forwarded_reference(&self, id: &str) -> Result<Value, GatewayError> {
        forwarded_reference(self.fernet, self.wrap_references, id).map(Value::String)
    }

    /// Is a caller-typed reference inside this entity's scope?
    fn reference_allowed(&self, id: &str) -> bool {
        let own = format!("{}/", self.root);
        id.starts_with(&own)
            || self
                .rule
                .allowed_reference_prefixes
                .iter()
                .any(|p| id.starts_with(p.as_str()))
    }

    /// Rewrites every secret inside `value`, which sits at `at` in the entity.
    pub async fn rewrite(
        &self,
        at: &[Step],
        value: &mut Value,
        plan: &mut Plan,
    ) -> Result<(), GatewayError> {
        let found = self.rules.find_secrets_under(self.rule, at, value);
        for f in found {
            let rel = &f.steps[at.len()..];
            let Some(slot) = get_mut(value, rel) else {
                continue;
            };
            let field = render(&f.steps);
            let Some(kind) = classify(slot) else {
                // An object or array where a secret string belongs: OpenMetadata would quote
                // it back in its error, so it is never forwarded.
                return Err(GatewayError::BadRequest(format!(
                    "{field}: a secret field must hold a string, not an object or array"
                )));
            };
            let id = self.ids.id(&self.root, self.rule.field_steps(&f.steps));
            let kind = match kind {
                FieldValue::Fernet(token) => match self.fernet.decrypt(&token) {
                    Ok(plain) => match classify(&Value::String(plain.clone())) {
                        Some(FieldValue::Reference(r)) => FieldValue::Reference(r),
                        _ => FieldValue::Plain(plain),
                    },
                    Err(_) => {
                        return Err(GatewayError::BadRequest(format!(
                        "{field}: the fernet: value cannot be decrypted with the configured keys"
                    )))
                    }
                },
                k => k,
            };
            let replacement = match kind {
                FieldValue::Plain(plain) => {
                    if self.provider.is_managed() {
                        plan.puts.push((id.clone(), plain));
                        plan.audit.push((field, id.clone(), "put"));
                        self.forwarded_reference(&id)?
                    } else {
                        plan.audit.push((field, id.clone(), "encrypt"));
                        Value::String(
                            self.fernet
                                .encrypt(&plain)
                                .map_err(|e| GatewayError::Internal(e.to_string()))?,
                        )
                    }
                }
                FieldValue::Reference(r) => {
                    if self.provider.is_managed() && !self.reference_allowed(&r) {
                        return Err(GatewayError::Unprocessable(format!(
                            "{field}: the reference is outside this entity's secrets ({}/...)",
                            self.root
                        )));
                    }
                    plan.audit.push((field, r.clone(), "reference"));
                    if self.provider.is_managed() {
                        self.forwarded_reference(&r)?
                    } else {
                        Value::String(format!("{REFERENCE_PREFIX}{r}"))
                    }
                }
                FieldValue::Mask => {
                    let kept = self.kept_for_mask(&f.steps, &id).await?;
                    match kept {
                        Some(v) => {
                            plan.audit.push((field, id.clone(), "keep"));
                            v
                        }
                        None => {
                            return Err(GatewayError::Unprocessable(format!(
                                "{field}: a masked value was sent but no secret is stored for it"
                            )))
                        }
                    }
                }
                FieldValue::Clear => {
                    if self.provider.is_managed() {
                        plan.deletes.push(id.clone());
                        plan.audit.push((field, id.clone(), "delete"));
                    }
                    Value::Null
                }
                FieldValue::Fernet(_) => {
                    return Err(GatewayError::Internal(
                        "fernet value left after decryption".into(),
                    ))
                }
            };
            *slot = replacement;
        }
        Ok(())
    }

    /// What a mask stands for: the stored secret's reference (managed), or the value the
    /// upstream already holds (db and non-managed providers).
    async fn kept_for_mask(&self, steps: &[Step], id: &str) -> Result<Option<Value>, GatewayError> {
        let from_service = self
            .mask_source
            .as_ref()
            .filter(|m| steps.len() > m.base.len() && steps[..m.base.len()] == m.base[..])
            .map(|m| (m, &steps[m.base.len()..]));
        if self.provider.is_managed() {
            if self.stored(id).await? {
                return Ok(Some(self.forwarded_reference(id)?));
            }
            if let Some((m, rel)) = from_service {
                let sid = self.ids.id(&m.service_root, rel);
                if self.stored(&sid).await? {
                    return Ok(Some(self.forwarded_reference(&sid)?));
                }
            }
            return Ok(None);
        }
        let held = |doc: Option<&Value>, at: &[Step]| {
            doc.and_then(|e| get(e, at))
                .and_then(Value::as_str)
                .filter(|s| {
                    s.starts_with(REFERENCE_PREFIX) || s.starts_with(crate::secrets::fernet::PREFIX)
                })
                .map(|s| Value::String(s.to_string()))
        };
        Ok(held(self.existing, steps)
            .or_else(|| from_service.and_then(|(m, rel)| held(m.service_config, rel))))
    }

    async fn stored(&self, id: &str) -> Result<bool, GatewayError> {
        match self.store.get(id).await {
            Ok(v) => Ok(v.is_some()),
            Err(e) => {
                tracing::warn!(error = %e, detail = e.detail(), "store read failed");
                Err(GatewayError::StoreUnavailable(
                    "the secrets store is unreachable; nothing was forwarded".into(),
                ))
            }
        }
    }
}
