//! Whose secrets a write touches: the entity's identity (its kind and fully qualified name:
//! the name for top-level entities, `<service FQN>.<name>` for ingestion pipelines) and the
//! id root its secrets live under, found through the owner markers
//! (`secrets::ownership`). The write path and `migrate` both ask here, so an entity gets the
//! same root whichever writes it.
//!
//! A kind with a `scope` (ingestion pipelines) has two candidate roots: `root`
//! (`pipeline/<name>`, the id OpenMetadata builds) and `scope.root`
//! (`ingestion/<service FQN>/<name>`), taken when another entity already owns the first:
//! the second pipeline of one name under another service keeps its own secrets.

use serde_json::Value;

use super::strip::references_within;
use crate::error::GatewayError;
use crate::rules::ids::IdBuilder;
use crate::rules::Rule;
use crate::secrets::fernet::FernetKeys;
use crate::secrets::ownership::{self, Owner, OwnershipError};
use crate::secrets::SecretStore;

/// An entity whose secrets are written.
pub(crate) struct Entity<'a> {
    pub(crate) rule: &'a Rule,
    pub(crate) name: &'a str,
    /// The parent's fully qualified name (scoped kinds only).
    pub(crate) scope: Option<&'a str>,
    /// The entity as the upstream holds it, when it exists.
    pub(crate) current: Option<&'a Value>,
}

/// Where an entity's secrets live and who it is.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub(crate) root: String,
    pub(crate) owner: Owner,
    /// The root's marker names the entity already.
    pub(crate) owned: bool,
    /// The root an earlier version gave the entity (its name holds `/`) when the entity
    /// owns it: references there are the entity's and move to `root` on its next write.
    pub(crate) legacy_root: Option<String>,
}

impl Located {
    /// The first root, unclaimed and unlooked-up: for writes that store nothing, and for
    /// providers that keep no secrets under roots.
    pub(crate) fn none(ids: &IdBuilder, rule: &Rule, name: &str) -> Located {
        Located {
            root: lock_key(ids, rule, name),
            owner: Owner::new(format!("{}:{name}", rule.kind)),
            owned: false,
            legacy_root: None,
        }
    }
}

/// The key of the entity lock writes of this entity take: its first candidate root, so
/// same-named entities of one kind serialise within a gateway while they pick their roots.
pub(crate) fn lock_key(ids: &IdBuilder, rule: &Rule, name: &str) -> String {
    ids.root(&rule.root_template, name)
}

/// OpenMetadata's `FullyQualifiedName.add`: a name holding `.` is quoted.
pub(crate) fn fqn_add(parent: &str, name: &str) -> String {
    let quoted = name.len() >= 2 && name.starts_with('"') && name.ends_with('"');
    if name.contains('.') && !quoted {
        format!("{parent}.\"{name}\"")
    } else {
        format!("{parent}.{name}")
    }
}

impl Entity<'_> {
    /// The entity's owner and its candidate roots, most preferred first.
    fn candidates(&self, ids: &IdBuilder) -> Result<(Owner, Vec<String>), GatewayError> {
        let kind = &self.rule.kind;
        let primary = ids.root(&self.rule.root_template, self.name);
        let Some(scope) = &self.rule.scope else {
            return Ok((Owner::new(format!("{kind}:{}", self.name)), vec![primary]));
        };
        let parent = self.scope.ok_or_else(|| {
            GatewayError::BadRequest(format!(
                "a {kind} with secret fields needs \"{}\" (the entity it belongs to)",
                scope.reference
            ))
        })?;
        let owner = Owner {
            value: format!("{kind}:{}", fqn_add(parent, self.name)),
            legacy: None,
        };
        let scoped = ids.scoped_root(&scope.root_template, parent, self.name);
        Ok((owner, vec![primary, scoped]))
    }
}

/// Where `entity`'s secrets live. Only managed providers keep secrets under roots; the
/// others get the first candidate without a store call.
pub(crate) async fn locate(
    store: &dyn SecretStore,
    ids: &IdBuilder,
    fernet: &FernetKeys,
    entity: &Entity<'_>,
    managed: bool,
) -> Result<Located, GatewayError> {
    if !managed {
        return Ok(Located::none(ids, entity.rule, entity.name));
    }
    let (mut owner, roots) = entity.candidates(ids)?;
    // Markers written before owners were entities named scoped entities by their bare name;
    // such a marker is this entity's only when the entity refers to secrets under that root.
    if entity.rule.scope.is_some() {
        if let Some(current) = entity.current {
            if !references_within(current, &roots[0], fernet).is_empty() {
                owner.legacy = Some(format!("{}:{}", entity.rule.kind, entity.name));
            }
        }
    }
    let l = match ownership::locate(store, &owner, &roots).await {
        Ok(l) => l,
        Err(OwnershipError::Taken(t)) => return Err(GatewayError::Conflict(t.to_string())),
        Err(OwnershipError::Store(e)) => return Err(e.into()),
    };
    let legacy_root = legacy_root(store, ids, entity).await?;
    Ok(Located {
        root: l.root,
        owner,
        owned: l.owned,
        legacy_root,
    })
}

/// The entity's root from before names were kept to one segment, when its marker (written
/// as `<kind>:<name>` then) names the entity.
async fn legacy_root(
    store: &dyn SecretStore,
    ids: &IdBuilder,
    entity: &Entity<'_>,
) -> Result<Option<String>, GatewayError> {
    let Some(old) = ids.legacy_root(&entity.rule.root_template, entity.name) else {
        return Ok(None);
    };
    let then = format!("{}:{}", entity.rule.kind, entity.name);
    let marker = store.get(&ownership::owner_marker(&old)).await?;
    Ok((marker.as_deref() == Some(then.as_str())).then_some(old))
}

/// The parent's fully qualified name an entity as the upstream holds it names
/// (`service.fullyQualifiedName`); `None` for kinds without a scope.
pub(crate) fn scope_of(rule: &Rule, entity: &Value) -> Result<Option<String>, GatewayError> {
    let Some(scope) = &rule.scope else {
        return Ok(None);
    };
    entity
        .get(&scope.reference)
        .and_then(|r| r.get("fullyQualifiedName"))
        .and_then(Value::as_str)
        .map(|s| Some(s.to_string()))
        .ok_or_else(|| {
            GatewayError::Unprocessable(format!(
                "OpenMetadata's {} names no {}.fullyQualifiedName",
                rule.kind, scope.reference
            ))
        })
}

/// [`locate`] for an entity as the upstream holds it (patch, hard delete, migrate).
pub(crate) async fn locate_existing(
    store: &dyn SecretStore,
    ids: &IdBuilder,
    fernet: &FernetKeys,
    rule: &Rule,
    entity: &Value,
    managed: bool,
) -> Result<Located, GatewayError> {
    let name = entity
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Only managed providers keep secrets under roots (and need the parent).
    let scope = if managed {
        scope_of(rule, entity)?
    } else {
        None
    };
    let e = Entity {
        rule,
        name,
        scope: scope.as_deref(),
        current: Some(entity),
    };
    locate(store, ids, fernet, &e, managed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dotted_pipeline_name_is_quoted_in_its_fqn() {
        assert_eq!(fqn_add("svc", "p"), "svc.p");
        assert_eq!(fqn_add("svc", "a.b"), "svc.\"a.b\"");
        assert_eq!(fqn_add("\"s.x\"", "\"a.b\""), "\"s.x\".\"a.b\"");
    }
}
