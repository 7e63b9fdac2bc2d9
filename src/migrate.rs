//! `om-secrets-proxy migrate [--dry-run]`: moves the secrets OpenMetadata still holds into the
//! configured store, the way OpenMetadata's own migration did, but with a dry run and without
//! stopping at the first entity that fails (its #12941).
//!
//! A migration is the write path with an empty request: for every ruled entity kind that keeps
//! secrets (automations workflows are short-lived test runs and are skipped), in order:
//! 1. `list`  – page through the collection upstream with the service token (`include=all`;
//!    a kind's `credentials_route` supplies fields the list does not carry, e.g. bot JWTs);
//! 2. `strip` – the entity is stripped exactly as a write of it would be: plain values and
//!    `fernet:` tokens that open to one move to the store under the write path's ids,
//!    references stay; a mask means the token cannot read secrets (a failure);
//! 3. in a dry run, report and stop here;
//! 4. `store` – one store transaction per entity (claiming its id root);
//! 5. `patch` – one JSON Patch upstream from the entity to the stripped entity; when the
//!    upstream refuses it, the store writes are undone.
//!
//! Output: one line per field moved (or to move) and per failure, never a value; then a summary.

use http::{header, HeaderValue, Method, Request};
use serde_json::Value;

use crate::error::GatewayError;
use crate::http::body;
use crate::http::upstream::{encode_segment, Upstream};
use crate::rewrite::patch;
use crate::rewrite::strip::{AuditOp, Stripper};
use crate::rewrite::{classify, FieldValue};
use crate::rules::ids::IdBuilder;
use crate::rules::jsonpath::{get, render};
use crate::rules::{Rule, RuleSet};
use crate::secrets::fernet::FernetKeys;
use crate::secrets::transaction::StoreTxn;
use crate::secrets::SecretStore;

/// Entities fetched per page.
const PAGE: usize = 100;

/// What a migration did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub entities: usize,
    pub moved: usize,
    pub already: usize,
    pub failures: usize,
}

/// A migration over the upstream, the store, the rules and the id builder.
pub struct Migrator<'a> {
    pub upstream: &'a Upstream,
    pub store: &'a dyn SecretStore,
    pub rules: &'a RuleSet,
    pub ids: &'a IdBuilder,
    pub fernet: &'a FernetKeys,
    pub wrap_references: bool,
    pub max_body_bytes: usize,
    /// `Bearer <service token>`: only bots read secrets in clear.
    pub service_auth: HeaderValue,
}

/// One entity's outcome.
enum Outcome {
    Moved(Vec<String>),
    Nothing,
}

impl Migrator<'_> {
    /// Runs the migration; `out` receives each report line.
    pub async fn run(
        &self,
        dry_run: bool,
        out: &mut dyn FnMut(String),
    ) -> Result<Summary, GatewayError> {
        let mut summary = Summary::default();
        for rule in self.rules.rules.iter().filter(|r| r.migrate) {
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("{}?limit={PAGE}&include=all", rule.collection);
                if let Some(q) = &rule.list_query {
                    path.push('&');
                    path.push_str(q);
                }
                if let Some(a) = &after {
                    path.push_str("&after=");
                    path.push_str(&encode_segment(a));
                }
                let page = self.get(&path).await?.ok_or_else(|| {
                    GatewayError::BadGateway(format!(
                        "listing {} failed: OpenMetadata refused or did not answer",
                        rule.collection
                    ))
                })?;
                for entity in page["data"].as_array().cloned().unwrap_or_default() {
                    summary.entities += 1;
                    let label = format!(
                        "{} {:?}",
                        rule.kind,
                        entity
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                    );
                    match self.entity(rule, entity, dry_run, &mut summary).await {
                        Ok(Outcome::Moved(lines)) => lines.into_iter().for_each(&mut *out),
                        Ok(Outcome::Nothing) => {}
                        Err(why) => {
                            summary.failures += 1;
                            out(format!("failed {label}: {why}"));
                        }
                    }
                }
                after = page["paging"]["after"].as_str().map(str::to_string);
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(summary)
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, GatewayError> {
        self.upstream
            .get_json(path, Some(&self.service_auth), self.max_body_bytes)
            .await
    }

    /// Completes an entity from its kind's credentials route (bot users' JWTs).
    async fn complete(&self, rule: &Rule, entity: &mut Value) -> Result<(), String> {
        let Some(route) = &rule.credentials_route else {
            return Ok(());
        };
        let id = entity
            .get("id")
            .and_then(Value::as_str)
            .ok_or("the entity has no id")?;
        let path = format!(
            "{}{}",
            rule.collection,
            route.replace("{id}", &encode_segment(id))
        );
        let field = rule.field_base.first().cloned().unwrap_or_default();
        if let Some(v) = self.get(&path).await.map_err(|e| e.public_message())? {
            entity[field] = v;
        }
        Ok(())
    }

    async fn entity(
        &self,
        rule: &Rule,
        mut entity: Value,
        dry_run: bool,
        summary: &mut Summary,
    ) -> Result<Outcome, String> {
        self.complete(rule, &mut entity).await?;
        let name = entity
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let id = entity
            .get("id")
            .and_then(Value::as_str)
            .ok_or("the entity has no id")?
            .to_string();
        for f in self.rules.find_secrets(rule, &entity) {
            if get(&entity, &f.steps).and_then(classify) == Some(FieldValue::Mask) {
                return Err(format!(
                    "{}: OpenMetadata answered with a mask; the service token must be a bot's",
                    render(&f.steps)
                ));
            }
        }
        let at = crate::rewrite::owner::locate_existing(
            self.store,
            self.ids,
            self.fernet,
            rule,
            &entity,
            true,
        )
        .await
        .map_err(|e| e.public_message())?;
        let stripper = Stripper {
            rules: self.rules,
            rule,
            ids: self.ids,
            root: at.root,
            owner: at.owner,
            legacy_root: at.legacy_root,
            managed: true,
            fernet: self.fernet,
            wrap_references: self.wrap_references,
            store: self.store,
            mask_source: None,
        };
        let mut result = entity.clone();
        let stripped = stripper
            .strip(&mut result, Some(&entity))
            .await
            .map_err(|e| e.public_message())?;
        let label = format!("{} {name:?}", rule.kind);
        let verb = if dry_run { "would move" } else { "moved" };
        let mut lines = Vec::new();
        let mut moved = 0;
        for a in &stripped.audit {
            match a.op {
                AuditOp::Put | AuditOp::Rekey => {
                    moved += 1;
                    lines.push(format!(
                        "{verb} {label} {} -> secret:{}",
                        a.field, a.secret_id
                    ));
                }
                AuditOp::Reference | AuditOp::Keep => summary.already += 1,
                _ => {}
            }
        }
        if moved == 0 {
            return Ok(Outcome::Nothing);
        }
        if !dry_run {
            let txn = StoreTxn::begin(self.store, &stripped.plan)
                .await
                .map_err(|e| GatewayError::from(e).public_message())?;
            let ops = patch::diff(&entity, &result);
            match self.patch_upstream(rule, &id, &ops).await {
                Ok(()) => txn.commit().await,
                Err(why) => {
                    txn.rollback().await;
                    return Err(why);
                }
            }
        }
        summary.moved += moved;
        Ok(Outcome::Moved(lines))
    }

    /// One JSON Patch of an entity upstream, with the service token; the reason when refused.
    async fn patch_upstream(
        &self,
        rule: &Rule,
        id: &str,
        ops: &json_patch::Patch,
    ) -> Result<(), String> {
        let path = format!("{}/{}", rule.collection, encode_segment(id));
        let mut req = Request::new(body::full(patch::to_bytes(ops)));
        *req.method_mut() = Method::PATCH;
        *req.uri_mut() = self.upstream.uri_for(&path).map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json-patch+json"),
        );
        req.headers_mut()
            .insert(header::AUTHORIZATION, self.service_auth.clone());
        let resp = self
            .upstream
            .send(req)
            .await
            .map_err(|e| e.public_message())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "OpenMetadata refused the patch with status {}; the store writes were undone",
                resp.status().as_u16()
            ))
        }
    }
}

/// The migrator of a built app; refuses providers that keep secrets in OpenMetadata and a
/// missing service token.
pub fn migrator<'a>(
    gateway: &'a crate::proxy::Gateway,
    rules: &'a RuleSet,
) -> Result<Migrator<'a>, GatewayError> {
    if !gateway.managed {
        return Err(GatewayError::BadRequest(
            "migrate moves secrets into a managed store (embedded, managed-aws, managed-aws-ssm, managed-openbao); \
             this provider keeps them in OpenMetadata"
                .into(),
        ));
    }
    let Some(service_auth) = gateway.service_auth.clone() else {
        return Err(GatewayError::BadRequest(
            "migrate needs upstream.service_token (OMSP_SERVICE_TOKEN): a bot's JWT, since only bots read secrets in clear"
                .into(),
        ));
    };
    Ok(Migrator {
        upstream: &gateway.upstream,
        store: gateway.store.as_ref(),
        rules,
        ids: &gateway.ids,
        fernet: &gateway.fernet,
        wrap_references: gateway.wrap_references,
        max_body_bytes: gateway.max_body_bytes,
        service_auth,
    })
}
