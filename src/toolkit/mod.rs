//! The operator's toolkit for secrets OpenMetadata already holds: `migrate` (into the store),
//! `migrate --reverse` (back out as Fernet tokens), `rotate-fernet` and `audit`.
//!
//! Every command walks the ruled entities upstream with the service token, one entity at a
//! time, in the same order (`cursor`), at a chosen pace with a progress display (`progress`).
//! The commands that change anything are entity jobs run by one driver (`runner`): a
//! checkpoint written after each entity lets an interrupted run (Ctrl-C, SIGKILL, a lost
//! connection) continue where it stopped (`checkpoint`), and every entity's outcome goes to
//! an optional JSON report (`report`) that never holds a value.

pub mod audit;
mod checkpoint;
pub mod commands;
mod cursor;
mod progress;
pub(crate) mod report;
mod reverse;
mod rotate;
pub(crate) mod runner;

use http::{header, HeaderValue, Method, Request};
use serde_json::Value;

use crate::error::GatewayError;
use crate::http::body;
use crate::http::upstream::{encode_segment, Upstream};
use crate::rewrite::{classify, FieldValue};
use crate::rules::ids::IdBuilder;
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::FernetKeys;
use crate::secrets::{SecretStore, StoreError};

pub use runner::RunOptions;

/// What every command works with: the upstream (read and patched with the service token), the
/// store, the rules and the id builder of one gateway configuration.
pub(crate) struct Toolkit<'a> {
    pub(crate) upstream: &'a Upstream,
    pub(crate) store: &'a dyn SecretStore,
    pub(crate) rules: &'a RuleSet,
    pub(crate) ids: &'a IdBuilder,
    pub(crate) fernet: &'a FernetKeys,
    /// Values live in the store (managed providers) rather than upstream as Fernet tokens.
    pub(crate) managed: bool,
    pub(crate) wrap_references: bool,
    pub(crate) max_body_bytes: usize,
    /// `Bearer <service token>`: only bots read secrets in clear.
    pub(crate) service_auth: HeaderValue,
}

/// Where an entity's secrets live and who owns that place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The id root, e.g. `/openmetadata/database/mysql-test`.
    pub root: String,
    /// The owner recorded in the root's marker.
    pub owner: String,
}

/// The id root and owner of an entity as OpenMetadata holds it: the one place the toolkit
/// asks, built as the write path builds them for a write of the same entity.
/// The owner is the entity: `<kind>:<name>`, or `<kind>:<parent FQN>.<name>` for scoped kinds
/// (ingestion pipelines), as `rewrite::owner` records it; the root is the first candidate
/// (an entity whose root is taken by another of its name is found by the write path's
/// `rewrite::owner::locate`).
pub fn identity(ids: &IdBuilder, rule: &Rule, entity: &Value) -> Identity {
    let name = entity_name(entity);
    let fqn = match crate::rewrite::owner::scope_of(rule, entity) {
        Ok(Some(parent)) => crate::rewrite::owner::fqn_add(&parent, name),
        _ => name.to_string(),
    };
    Identity {
        root: ids.root(&rule.root_template, name),
        owner: format!("{}:{fqn}", rule.kind),
    }
}

fn entity_name(entity: &Value) -> &str {
    text(entity, "name")
}

/// The string under `key` of an entity, or `""`.
pub(crate) fn text<'v>(entity: &'v Value, key: &str) -> &'v str {
    entity.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Why one entity could not be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntityError {
    /// This entity only: recorded as failed, the run goes on.
    Failed(String),
    /// OpenMetadata or the store cannot be reached: the run stops, and the next run starts
    /// with this entity.
    Stop(String),
}

impl EntityError {
    pub(crate) fn message(&self) -> &str {
        match self {
            EntityError::Failed(m) | EntityError::Stop(m) => m,
        }
    }
}

impl From<GatewayError> for EntityError {
    fn from(e: GatewayError) -> EntityError {
        match e {
            GatewayError::BadGateway(_)
            | GatewayError::GatewayTimeout(_)
            | GatewayError::StoreUnavailable(_) => EntityError::Stop(e.public_message()),
            other => EntityError::Failed(other.public_message()),
        }
    }
}

impl From<crate::http::upstream::UpstreamError> for EntityError {
    fn from(e: crate::http::upstream::UpstreamError) -> EntityError {
        GatewayError::from(e).into()
    }
}

impl From<StoreError> for EntityError {
    /// A value the store cannot read is this entity's problem; anything else stops the run.
    fn from(e: StoreError) -> EntityError {
        tracing::warn!(error = %e, detail = e.detail(), "secret store call failed");
        match e {
            StoreError::Invalid(_) => EntityError::Failed(format!("the secrets store: {e}")),
            _ => EntityError::Stop(format!("the secrets store: {e}")),
        }
    }
}

/// The rules of the kinds a command covers: those named by `--kind` (any stored kind), else
/// every rule `default` picks. An unknown name is an error that lists the known ones.
/// `mask_only` kinds are never covered: their values stay in OpenMetadata by design.
pub(crate) fn select_kinds<'r>(
    rules: &'r RuleSet,
    kinds: &[String],
    default: impl Fn(&Rule) -> bool,
) -> Result<Vec<&'r Rule>, String> {
    let stored = || rules.rules.iter().filter(|r| !r.is_mask_only());
    if kinds.is_empty() {
        return Ok(stored().filter(|r| default(r)).collect());
    }
    let mut out: Vec<&Rule> = Vec::new();
    for k in kinds {
        let Some(rule) = stored().find(|r| r.kind.eq_ignore_ascii_case(k)) else {
            let known: Vec<&str> = stored().map(|r| r.kind.as_str()).collect();
            return Err(format!(
                "--kind {k:?}: no rule file has this kind; known kinds: {}",
                known.join(", ")
            ));
        };
        if !out.iter().any(|r| std::ptr::eq(*r, rule)) {
            out.push(rule);
        }
    }
    // Rule-file order, whatever order the flags came in, so a resumed run walks alike.
    out.sort_by_key(|r| rules.rules.iter().position(|x| std::ptr::eq(x, *r)));
    Ok(out)
}

/// A reference held in a field: `secret:<id>` bare or Fernet-wrapped (opened with any key).
pub(crate) fn reference_in(v: &Value, fernet: &FernetKeys) -> Option<String> {
    match classify(v)? {
        FieldValue::Reference(r) => Some(r),
        FieldValue::Fernet(t) => match classify(&Value::String(fernet.decrypt(&t).ok()?))? {
            FieldValue::Reference(r) => Some(r),
            _ => None,
        },
        _ => None,
    }
}

impl Toolkit<'_> {
    /// A JSON GET upstream with the service token; `None` when refused.
    pub(crate) async fn get(&self, path: &str) -> Result<Option<Value>, GatewayError> {
        Ok(self
            .upstream
            .get_json(path, Some(&self.service_auth), self.max_body_bytes)
            .await?)
    }

    /// The start of every job's work on one entity: completed (see [`Toolkit::complete`]) and
    /// given an empty report; an entity without an id fails.
    pub(crate) async fn open(
        &self,
        rule: &Rule,
        entity: &mut Value,
    ) -> Result<report::EntityReport, EntityError> {
        self.complete(rule, entity).await?;
        let report = report::EntityReport::of(rule, entity);
        if report.id.is_empty() {
            return Err(EntityError::Failed("the entity has no id".into()));
        }
        Ok(report)
    }

    /// Completes an entity from its kind's credentials route (bot users' JWTs), which lists
    /// leave out.
    pub(crate) async fn complete(
        &self,
        rule: &Rule,
        entity: &mut Value,
    ) -> Result<(), EntityError> {
        let Some(route) = &rule.credentials_route else {
            return Ok(());
        };
        let id = entity
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| EntityError::Failed("the entity has no id".into()))?;
        let path = format!(
            "{}{}",
            rule.collection,
            route.replace("{id}", &encode_segment(id))
        );
        let field = rule.field_base.first().cloned().unwrap_or_default();
        if let Some(v) = self.get(&path).await? {
            entity[field] = v;
        }
        Ok(())
    }

    /// One JSON Patch of an entity upstream with the service token. A refusal is this entity's
    /// failure; 502/503/504 and no answer at all mean OpenMetadata is not reachable (stop).
    pub(crate) async fn patch_upstream(
        &self,
        rule: &Rule,
        id: &str,
        ops: &json_patch::Patch,
    ) -> Result<(), EntityError> {
        let path = format!("{}/{}", rule.collection, encode_segment(id));
        let mut req = Request::new(body::full(crate::rewrite::patch::to_bytes(ops)));
        *req.method_mut() = Method::PATCH;
        *req.uri_mut() = self.upstream.uri_for(&path)?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json-patch+json"),
        );
        req.headers_mut()
            .insert(header::AUTHORIZATION, self.service_auth.clone());
        let resp = self.upstream.send(req).await?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(()),
            502..=504 => Err(EntityError::Stop(format!(
                "OpenMetadata answered the patch with status {status} (unavailable)"
            ))),
            _ => Err(EntityError::Failed(format!(
                "OpenMetadata refused the patch with status {status}"
            ))),
        }
    }
}

/// `"<kind> \"<name>\""`, how output lines name an entity.
pub(crate) fn label(kind: &str, name: &str) -> String {
    format!("{kind} {name:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
            &[],
        )
        .expect("rules")
    }

    #[test]
    fn without_kinds_the_default_picks_and_named_kinds_come_in_rule_file_order() {
        let rules = rules();
        let all = select_kinds(&rules, &[], |r| r.migrate).expect("kinds");
        assert!(all.iter().all(|r| r.migrate));
        assert!(!all.iter().any(|r| r.kind == "workflow"));
        let two = select_kinds(
            &rules,
            &["ingestionPipeline".into(), "databaseService".into()],
            |_| false,
        )
        .expect("kinds");
        let names: Vec<&str> = two.iter().map(|r| r.kind.as_str()).collect();
        let pos = |k: &str| rules.rules.iter().position(|r| r.kind == k);
        assert_eq!(names.len(), 2);
        assert!(pos(names[0]) < pos(names[1]));
        let wf = select_kinds(&rules, &["workflow".into()], |r| r.migrate).expect("kinds");
        assert_eq!(wf[0].kind, "workflow");
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_known_ones() {
        let err = select_kinds(&rules(), &["tables".into()], |_| true).unwrap_err();
        assert!(
            err.contains("tables") && err.contains("databaseService"),
            "{err}"
        );
    }

    #[test]
    fn a_reference_is_found_bare_or_fernet_wrapped() {
        let keys = FernetKeys::new(&[FernetKeys::generate_key()]).expect("key");
        let wrapped = keys.encrypt("secret:/om/database/a/password").expect("enc");
        assert_eq!(
            reference_in(&Value::String(wrapped), &keys).as_deref(),
            Some("/om/database/a/password")
        );
        assert_eq!(
            reference_in(&Value::String("secret:/om/x".into()), &keys).as_deref(),
            Some("/om/x")
        );
        let plain = keys.encrypt("hunter2").expect("enc");
        assert_eq!(reference_in(&Value::String(plain), &keys), None);
        assert_eq!(reference_in(&Value::String("hunter2".into()), &keys), None);
    }
}
