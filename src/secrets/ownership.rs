//! Which entity owns an id root: the marker `<root>/.owner` holds the owner's identity
//! (`<kind>:<fully qualified name>`). A root is claimed with the store's create-only write
//! ([`SecretStore::create`]), so of two writers racing for one root, on one gateway or on
//! several sharing a store, exactly one wins; the other is refused before anything of its
//! request is stored or forwarded.
//!
//! `.` never occurs in an id the gateway builds, so a marker cannot meet a secret's id, and
//! a reference to one is refused like any id the gateway could not have built.

use super::{SecretStore, StoreError};

/// The last segment of an owner marker.
pub(crate) const MARKER: &str = ".owner";

/// The marker that records which entity owns an id root.
pub(crate) fn owner_marker(root: &str) -> String {
    format!("{root}/{MARKER}")
}

/// Who an entity is, as its owner marker says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// `<kind>:<name>` for top-level entities (their name is their fully qualified name),
    /// `<kind>:<parent FQN>.<name>` for scoped ones (ingestion pipelines).
    pub(crate) value: String,
    /// What markers written before owners were entities said (`<kind>:<name>` for scoped
    /// kinds): still taken as this entity's, and rewritten to `value` on its next write.
    pub(crate) legacy: Option<String>,
}

impl Owner {
    /// An owner whose marker value has always been the same.
    pub(crate) fn new(value: impl Into<String>) -> Owner {
        Owner {
            value: value.into(),
            legacy: None,
        }
    }

    /// Whether a marker holding `marker` names this entity.
    pub(crate) fn named_by(&self, marker: &str) -> bool {
        marker == self.value || self.legacy.as_deref() == Some(marker)
    }
}

/// A root another entity owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) root: String,
    /// The marker's value: the owning entity's kind and fully qualified name.
    pub(crate) holder: String,
    /// Found by the create-only write itself: another writer claimed the root between this
    /// write's look-up and its claim.
    pub(crate) at_claim: bool,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "secret ids under {} already belong to {}",
            self.root, self.holder
        )?;
        if self.at_claim {
            f.write_str(" (claimed by another write at the same moment)")?;
        }
        f.write_str("; this entity's name maps to the same id root, so it cannot keep secrets there (rename it)")
    }
}

impl std::error::Error for Taken {}

/// Why a root could not be located or claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnershipError {
    #[error(transparent)]
    Taken(#[from] Taken),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where an entity's secrets live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) root: String,
    /// The root's marker names the entity already (else no entity owns it yet).
    pub(crate) owned: bool,
}

/// Where an entity's secrets live: the first of `roots` whose marker holds the owner's
/// value; else the first whose marker holds its legacy value; else the first no entity
/// owns; else a conflict naming the first root's owner. Reads only.
pub(crate) async fn locate(
    store: &dyn SecretStore,
    owner: &Owner,
    roots: &[String],
) -> Result<Located, OwnershipError> {
    let mut markers = Vec::with_capacity(roots.len());
    for root in roots {
        markers.push(store.get(&owner_marker(root)).await?);
    }
    let found = |want: &dyn Fn(Option<&str>) -> bool| {
        roots
            .iter()
            .zip(&markers)
            .find(|(_, m)| want(m.as_deref()))
            .map(|(r, _)| r.clone())
    };
    if let Some(root) = found(&|m| m == Some(owner.value.as_str())) {
        return Ok(Located { root, owned: true });
    }
    if let Some(root) = found(&|m| m.is_some_and(|m| owner.named_by(m))) {
        return Ok(Located { root, owned: true });
    }
    if let Some(root) = found(&|m| m.is_none()) {
        return Ok(Located { root, owned: false });
    }
    match roots.iter().zip(markers).next() {
        Some((root, Some(holder))) => Err(Taken {
            root: root.clone(),
            holder,
            at_claim: false,
        }
        .into()),
        _ => Err(StoreError::Invalid("an entity with no id root".into()).into()),
    }
}

/// What claiming a root changed, for the undo of a refused write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The marker already named this entity: nothing changed.
    Already,
    /// The marker was created: undone by deleting it.
    Created,
    /// A legacy marker was rewritten: undone by writing the legacy value back.
    Upgraded(String),
}

/// Claims `root` for `owner` with the store's create-only write; a root another entity owns
/// is [`Taken`] and nothing is written.
pub(crate) async fn claim(
    store: &dyn SecretStore,
    root: &str,
    owner: &Owner,
) -> Result<Claimed, OwnershipError> {
    let marker = owner_marker(root);
    if store.create(&marker, &owner.value).await? {
        return Ok(Claimed::Created);
    }
    match store.get(&marker).await? {
        Some(m) if m == owner.value => Ok(Claimed::Already),
        Some(m) if owner.named_by(&m) => {
            store.put(&marker, &owner.value).await?;
            Ok(Claimed::Upgraded(m))
        }
        Some(m) => Err(Taken {
            root: root.to_string(),
            holder: m,
            at_claim: true,
        }
        .into()),
        // Deleted between the two calls (its owner was hard-deleted): claim it again.
        None if store.create(&marker, &owner.value).await? => Ok(Claimed::Created),
        None => Err(Taken {
            root: root.to_string(),
            holder: "another entity".into(),
            at_claim: true,
        }
        .into()),
    }
}

/// Whether `id` lies inside the root of another entity nested below `root` (possible only
/// for ids written before names were kept to one segment): some id between `root` and `id`
/// carries an owner marker.
pub(crate) async fn inside_a_nested_root(
    store: &dyn SecretStore,
    root: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let Some(rest) = id.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return Ok(false);
    };
    let mut at = root.to_string();
    let segs: Vec<&str> = rest.split('/').collect();
    for seg in &segs[..segs.len().saturating_sub(1)] {
        at.push('/');
        at.push_str(seg);
        if store.get(&owner_marker(&at)).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::memory::MemoryStore;

    fn roots(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_root_the_entity_owns_is_found_before_a_free_one() {
        let s = MemoryStore::new();
        let me = Owner::new("ingestionPipeline:svc.p");
        s.put("/o/ingestion/svc/p/.owner", &me.value).await.unwrap();
        let got = locate(&s, &me, &roots(&["/o/pipeline/p", "/o/ingestion/svc/p"]))
            .await
            .unwrap();
        assert_eq!(
            got,
            Located {
                root: "/o/ingestion/svc/p".into(),
                owned: true
            }
        );
    }

    #[tokio::test]
    async fn a_root_another_entity_owns_is_skipped_and_all_taken_is_a_conflict() {
        let s = MemoryStore::new();
        let me = Owner::new("ingestionPipeline:b.p");
        s.put("/o/pipeline/p/.owner", "ingestionPipeline:a.p")
            .await
            .unwrap();
        let both = roots(&["/o/pipeline/p", "/o/ingestion/b/p"]);
        assert_eq!(
            locate(&s, &me, &both).await.unwrap(),
            Located {
                root: "/o/ingestion/b/p".into(),
                owned: false
            }
        );
        s.put("/o/ingestion/b/p/.owner", "ingestionPipeline:x.y")
            .await
            .unwrap();
        match locate(&s, &me, &both).await {
            Err(OwnershipError::Taken(t)) => {
                assert_eq!(t.root, "/o/pipeline/p");
                assert_eq!(t.holder, "ingestionPipeline:a.p");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_entity_s_own_marker_wins_over_a_legacy_one() {
        let s = MemoryStore::new();
        s.put("/o/pipeline/p/.owner", "ingestionPipeline:p")
            .await
            .unwrap();
        s.put("/o/ingestion/b/p/.owner", "ingestionPipeline:b.p")
            .await
            .unwrap();
        let me = Owner {
            value: "ingestionPipeline:b.p".into(),
            legacy: Some("ingestionPipeline:p".into()),
        };
        let both = roots(&["/o/pipeline/p", "/o/ingestion/b/p"]);
        assert_eq!(
            locate(&s, &me, &both).await.unwrap().root,
            "/o/ingestion/b/p"
        );
    }

    #[tokio::test]
    async fn a_claim_creates_the_marker_once_and_refuses_another_owner() {
        let s = MemoryStore::new();
        let a = Owner::new("databaseService:a b");
        let b = Owner::new("databaseService:a.b");
        assert_eq!(
            claim(&s, "/o/database/a_b", &a).await.unwrap(),
            Claimed::Created
        );
        assert_eq!(
            claim(&s, "/o/database/a_b", &a).await.unwrap(),
            Claimed::Already
        );
        let e = claim(&s, "/o/database/a_b", &b).await.unwrap_err();
        assert!(e.to_string().contains("databaseService:a b"), "{e}");
        assert_eq!(
            s.get("/o/database/a_b/.owner").await.unwrap().as_deref(),
            Some("databaseService:a b")
        );
    }

    #[tokio::test]
    async fn a_legacy_marker_is_taken_as_the_entity_s_and_rewritten() {
        let s = MemoryStore::new();
        s.put("/o/pipeline/p/.owner", "ingestionPipeline:p")
            .await
            .unwrap();
        let me = Owner {
            value: "ingestionPipeline:svc.p".into(),
            legacy: Some("ingestionPipeline:p".into()),
        };
        assert_eq!(
            claim(&s, "/o/pipeline/p", &me).await.unwrap(),
            Claimed::Upgraded("ingestionPipeline:p".into())
        );
        assert_eq!(
            s.get("/o/pipeline/p/.owner").await.unwrap().as_deref(),
            Some("ingestionPipeline:svc.p")
        );
    }

    #[tokio::test]
    async fn an_id_under_a_nested_marked_root_is_recognised() {
        let s = MemoryStore::new();
        s.put("/o/database/team/prod/.owner", "databaseService:team/prod")
            .await
            .unwrap();
        assert!(inside_a_nested_root(
            &s,
            "/o/database/team",
            "/o/database/team/prod/authtype/password"
        )
        .await
        .unwrap());
        assert!(!inside_a_nested_root(
            &s,
            "/o/database/team",
            "/o/database/team/authtype/password"
        )
        .await
        .unwrap());
    }
}
