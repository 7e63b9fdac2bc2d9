//! `om-secrets-proxy migrate [--dry-run]`: moves the secrets OpenMetadata still holds into the
//! configured store, the way OpenMetadata's own migration did, but with a dry run and without
//! stopping at the first entity that fails (its #12941).
//!
//! For every ruled entity kind except automations workflows (short-lived test runs), in order:
//! 1. `list`     – page through the collection upstream with the service token (`include=all`;
//!    bot users' credentials come from `/users/auth-mechanism/{id}`);
//! 2. `classify` – each secret field: a plain value or a `fernet:` token that decrypts to one
//!    is moved; a `secret:` reference (bare or Fernet-wrapped) is already migrated; a mask means
//!    the token cannot read secrets (a failure: the service token must be a bot's);
//! 3. `plan`     – the secret id of each field, exactly as the write path builds it;
//! 4. in a dry run, report and stop here;
//! 5. `store`    – claim the id root (collisions are refused) and write all values of the entity
//!    in one store transaction;
//! 6. `patch`    – one JSON Patch upstream replacing each value with its reference; when the
//!    upstream refuses it, the store writes are undone.
//!
//! Output: one line per field moved (or to move) and per failure, never a value; then a summary.

use http::{header, HeaderValue, Method, Request};
use serde_json::Value;

use crate::error::GatewayError;
use crate::http::body;
use crate::proxy::Gateway;
use crate::rewrite::request::{forwarded_reference, Plan};
use crate::rewrite::{classify, FieldValue};
use crate::rules::jsonpath::{render, Step};
use crate::rules::Rule;

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

/// One field to move.
struct Move {
    steps: Vec<Step>,
    id: String,
    value: String,
}

impl Gateway {
    /// Runs the migration; `out` receives each report line.
    pub async fn migrate(
        &self,
        dry_run: bool,
        out: &mut dyn FnMut(String),
    ) -> Result<Summary, GatewayError> {
        if !self.provider.is_managed() {
            return Err(GatewayError::BadRequest(
                "migrate moves secrets into a managed store (embedded, managed-aws, managed-aws-ssm, managed-openbao); \
                 this provider keeps them in OpenMetadata"
                    .into(),
            ));
        }
        if self.service_token.is_none() {
            return Err(GatewayError::BadRequest(
                "migrate needs upstream.service_token (OMSP_SERVICE_TOKEN): a bot's JWT, since only bots read secrets in clear"
                    .into(),
            ));
        }
        let live = self.live();
        let mut summary = Summary::default();
        for rule in live.rules.rules.iter().filter(|r| r.kind != "workflow") {
            let bots =
                rule.field_base.first().map(String::as_str) == Some("authenticationMechanism");
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("{}?limit={PAGE}&include=all", rule.collection);
                if bots {
                    path.push_str("&isBot=true");
                }
                if let Some(a) = &after {
                    path.push_str("&after=");
                    path.push_str(&crate::proxy::secure::encode_segment(a));
                }
                let page = self.fetch_path(&path, None).await?.ok_or_else(|| {
                    GatewayError::BadGateway(format!(
                        "listing {} failed: OpenMetadata refused or did not answer",
                        rule.collection
                    ))
                })?;
                let entities = page["data"].as_array().cloned().unwrap_or_default();
                for mut entity in entities {
                    if bots {
                        if entity.get("isBot").and_then(Value::as_bool) != Some(true) {
                            continue;
                        }
                        let Some(id) = entity.get("id").and_then(Value::as_str) else {
                            continue;
                        };
                        let am = self
                            .fetch_path(
                                &format!(
                                    "{}/auth-mechanism/{}",
                                    rule.collection,
                                    crate::proxy::secure::encode_segment(id)
                                ),
                                None,
                            )
                            .await?;
                        if let Some(am) = am {
                            entity["authenticationMechanism"] = am;
                        }
                    }
                    summary.entities += 1;
                    self.migrate_entity(rule, &entity, dry_run, &mut summary, out)
                        .await;
                }
                after = page["paging"]["after"].as_str().map(str::to_string);
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(summary)
    }

    async fn migrate_entity(
        &self,
        rule: &Rule,
        entity: &Value,
        dry_run: bool,
        summary: &mut Summary,
        out: &mut dyn FnMut(String),
    ) {
        let name = entity
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let label = format!("{} {name:?}", rule.kind);
        let mut fail = |summary: &mut Summary, why: String| {
            summary.failures += 1;
            out(format!("failed {label}: {why}"));
        };
        let Some(id) = entity.get("id").and_then(Value::as_str) else {
            fail(summary, "the entity has no id".into());
            return;
        };
        // 2-3. classify and plan
        let live = self.live();
        let root = self.ids.root(&rule.root_template, name);
        let mut moves = Vec::new();
        for f in live.rules.find_secrets(rule, entity) {
            let Some(v) = crate::rules::jsonpath::get(entity, &f.steps) else {
                continue;
            };
            let field = render(&f.steps);
            let value = match classify(v) {
                Some(FieldValue::Plain(p)) => p,
                Some(FieldValue::Fernet(token)) => match self.fernet.decrypt(&token) {
                    Ok(p) if p.starts_with(crate::rewrite::REFERENCE_PREFIX) => {
                        summary.already += 1;
                        continue;
                    }
                    Ok(p) => p,
                    Err(_) => {
                        fail(
                            summary,
                            format!("{field}: its fernet: value cannot be decrypted with the configured keys"),
                        );
                        return;
                    }
                },
                Some(FieldValue::Reference(_)) => {
                    summary.already += 1;
                    continue;
                }
                Some(FieldValue::Mask) => {
                    fail(
                        summary,
                        format!("{field}: OpenMetadata answered with a mask; the service token must be a bot's"),
                    );
                    return;
                }
                Some(FieldValue::Clear) | None => continue,
            };
            let sid = self.ids.id(&root, rule.field_steps(&f.steps));
            moves.push(Move {
                steps: f.steps,
                id: sid,
                value,
            });
        }
        if moves.is_empty() {
            return;
        }
        let verb = if dry_run { "would move" } else { "moved" };
        let report = |out: &mut dyn FnMut(String), moves: &[Move]| {
            for m in moves {
                out(format!(
                    "{verb} {label} {} -> secret:{}",
                    render(&m.steps),
                    m.id
                ));
            }
        };
        // 4. dry run
        if dry_run {
            summary.moved += moves.len();
            report(out, &moves);
            return;
        }
        // 5. store
        let mut plan = Plan {
            puts: moves
                .iter()
                .map(|m| (m.id.clone(), m.value.clone()))
                .collect(),
            owner: Some((root.clone(), format!("{}:{name}", rule.kind))),
            ..Plan::default()
        };
        if let Err(e) = self.claim_root(&mut plan).await {
            fail(summary, e.public_message());
            return;
        }
        let undo = match self.apply_plan(&plan).await {
            Ok(u) => u,
            Err(e) => {
                fail(summary, e.public_message());
                return;
            }
        };
        // 6. patch
        let mut ops = Vec::with_capacity(moves.len());
        for m in &moves {
            let forwarded = match forwarded_reference(&self.fernet, self.wrap_references, &m.id) {
                Ok(r) => r,
                Err(e) => {
                    self.rollback(&undo).await;
                    fail(summary, e.public_message());
                    return;
                }
            };
            ops.push(
                serde_json::json!({"op": "replace", "path": pointer(&m.steps), "value": forwarded}),
            );
        }
        match self.patch_upstream(rule, id, &Value::Array(ops)).await {
            Ok(()) => {
                summary.moved += moves.len();
                report(out, &moves);
            }
            Err(why) => {
                self.rollback(&undo).await;
                fail(summary, why);
            }
        }
    }

    /// One JSON Patch of an entity upstream, with the service token; the reason when refused.
    async fn patch_upstream(&self, rule: &Rule, id: &str, ops: &Value) -> Result<(), String> {
        let path = format!(
            "{}/{}",
            rule.collection,
            crate::proxy::secure::encode_segment(id)
        );
        let mut req = Request::new(body::full(ops.to_string()));
        *req.method_mut() = Method::PATCH;
        *req.uri_mut() = self.upstream.uri_for(&path).map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json-patch+json"),
        );
        if let Some(t) = &self.service_token {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                req.headers_mut().insert(header::AUTHORIZATION, v);
            }
        }
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

/// The RFC 6901 pointer of a location.
fn pointer(steps: &[Step]) -> String {
    let mut p = String::new();
    for s in steps {
        p.push('/');
        match s {
            Step::Key(k) => p.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => p.push_str(&i.to_string()),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_tilde_and_slash() {
        let steps = vec![
            Step::Key("connection".into()),
            Step::Key("a/b~c".into()),
            Step::Index(3),
        ];
        assert_eq!(pointer(&steps), "/connection/a~1b~0c/3");
    }
}
