//! One write's store changes as a transaction around the upstream call: the id root is claimed,
//! every value is written (one durable write where the store has transactions), the previous
//! values are kept so a refused upstream write can be undone, and deletes wait until the
//! upstream has accepted the write. Entity locks keep store and upstream agreeing on the last
//! writer of an entity within one gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{SecretStore, StoreError};

/// The store changes one write needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// (id, value): written before forwarding.
    pub puts: Vec<(String, String)>,
    /// Ids deleted once the upstream has accepted the write.
    pub deletes: Vec<String>,
    /// The id root the values go under and who owns it.
    pub claim: Option<Claim>,
}

/// Who the secrets under an id root belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// e.g. `/openmetadata/database/mysql-test`.
    pub root: String,
    /// `<kind>:<entity name>`.
    pub owner: String,
}

/// Why a transaction could not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("secret ids under {0} already belong to another entity whose name maps to the same id; rename this entity")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The marker that records which entity owns an id root. `.` never occurs in a field part,
/// so it cannot meet a real secret id.
pub fn owner_marker(root: &str) -> String {
    format!("{root}/.owner")
}

/// A write in progress: what to undo if the upstream refuses it, what to delete if it accepts.
pub struct StoreTxn<'a> {
    store: &'a dyn SecretStore,
    undo: Vec<(String, Option<String>)>,
    deletes: Vec<String>,
}

impl<'a> StoreTxn<'a> {
    /// Claims the plan's root and writes its values. Nothing is left behind on an error.
    pub async fn begin(store: &'a dyn SecretStore, plan: &Plan) -> Result<StoreTxn<'a>, TxnError> {
        let mut txn = StoreTxn {
            store,
            undo: Vec::new(),
            deletes: plan.deletes.clone(),
        };
        if plan.puts.is_empty() {
            return Ok(txn);
        }
        let mut puts = Vec::with_capacity(plan.puts.len() + 1);
        if let Some(claim) = &plan.claim {
            let marker = owner_marker(&claim.root);
            match store.get(&marker).await? {
                Some(o) if o == claim.owner => {}
                Some(_) => return Err(TxnError::Conflict(claim.root.clone())),
                None => puts.push((marker, claim.owner.clone())),
            }
        }
        puts.extend(plan.puts.iter().cloned());
        for (id, _) in &puts {
            let previous = store.get(id).await?;
            txn.undo.push((id.clone(), previous));
        }
        if let Err(e) = store.put_many(&puts).await {
            txn.rollback().await;
            return Err(e.into());
        }
        Ok(txn)
    }

    /// How many values this transaction wrote.
    pub fn written(&self) -> usize {
        self.undo.len()
    }

    /// The upstream refused (or never answered): every value written goes back to what it was.
    pub async fn rollback(self) {
        for (id, previous) in self.undo.iter().rev() {
            let r = match previous {
                Some(v) => self.store.put(id, v).await,
                None => self.store.delete(id).await,
            };
            if let Err(e) = r {
                tracing::error!(secret_id = %id, error = %e, "could not undo a store write");
            }
        }
    }

    /// The upstream accepted: the deferred deletes go ahead. A delete that fails leaves an
    /// orphan (logged), never a broken entity.
    pub async fn commit(self) {
        for id in &self.deletes {
            if let Err(e) = self.store.delete(id).await {
                tracing::warn!(secret_id = %id, error = %e, "could not delete a secret nothing refers to");
            }
        }
    }
}

/// One async lock per entity id root.
#[derive(Default)]
pub struct EntityLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl EntityLocks {
    /// Waits for the lock of `root`; held until the guard drops.
    pub async fn lock(&self, root: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = match self.locks.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            if locks.len() > 10_000 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(root.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::memory::MemoryStore;

    fn plan(puts: &[(&str, &str)], deletes: &[&str]) -> Plan {
        Plan {
            puts: puts
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            deletes: deletes.iter().map(|d| d.to_string()).collect(),
            claim: Some(Claim {
                root: "/om/database/a".into(),
                owner: "databaseService:a".into(),
            }),
        }
    }

    #[tokio::test]
    async fn a_rollback_restores_previous_values_and_removes_new_ones() {
        let store = MemoryStore::new();
        store.put("/om/database/a/p", "old").await.unwrap();
        let txn = StoreTxn::begin(
            &store,
            &plan(
                &[("/om/database/a/p", "new"), ("/om/database/a/q", "n")],
                &[],
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            store.get("/om/database/a/p").await.unwrap().as_deref(),
            Some("new")
        );
        txn.rollback().await;
        assert_eq!(
            store.get("/om/database/a/p").await.unwrap().as_deref(),
            Some("old")
        );
        assert_eq!(store.get("/om/database/a/q").await.unwrap(), None);
        assert_eq!(store.get("/om/database/a/.owner").await.unwrap(), None);
    }

    #[tokio::test]
    async fn deletes_wait_for_the_commit() {
        let store = MemoryStore::new();
        store.put("/om/database/a/gone", "v").await.unwrap();
        let txn = StoreTxn::begin(
            &store,
            &plan(&[("/om/database/a/p", "x")], &["/om/database/a/gone"]),
        )
        .await
        .unwrap();
        assert!(store.get("/om/database/a/gone").await.unwrap().is_some());
        txn.commit().await;
        assert_eq!(store.get("/om/database/a/gone").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_root_owned_by_another_entity_is_a_conflict_and_nothing_is_written() {
        let store = MemoryStore::new();
        store
            .put("/om/database/a/.owner", "databaseService:a b")
            .await
            .unwrap();
        let r = StoreTxn::begin(&store, &plan(&[("/om/database/a/p", "x")], &[])).await;
        assert!(matches!(r, Err(TxnError::Conflict(_))));
        assert_eq!(store.get("/om/database/a/p").await.unwrap(), None);
    }
}
