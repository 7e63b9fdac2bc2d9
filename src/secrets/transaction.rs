//! One write's store changes as a transaction around the upstream call: the id root is claimed
//! (atomically, with the store's create-only write: `ownership::claim`), every value is
//! written (one durable write where the store has transactions), the previous values are
//! kept so a refused upstream write can be undone, and deletes wait until the upstream has
//! accepted the write. Entity locks keep store and upstream agreeing on the last writer of an
//! entity within one gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::ownership::{self, Claimed, Owner, OwnershipError, Taken};
use super::{SecretStore, StoreError};

pub(crate) use super::ownership::owner_marker;

/// The store changes one write needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// (id, value): written before forwarding.
    pub(crate) puts: Vec<(String, String)>,
    /// Ids deleted once the upstream has accepted the write, in this order.
    pub(crate) deletes: Vec<String>,
    /// The id root the values go under and who owns it.
    pub(crate) claim: Option<Claim>,
}

/// Who the secrets under an id root belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// e.g. `/openmetadata/database/mysql-test`.
    pub(crate) root: String,
    pub(crate) owner: Owner,
}

/// Why a transaction could not go ahead.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TxnError {
    /// The root belongs to another entity; nothing was written.
    #[error(transparent)]
    Conflict(Taken),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<OwnershipError> for TxnError {
    fn from(e: OwnershipError) -> TxnError {
        match e {
            OwnershipError::Taken(t) => TxnError::Conflict(t),
            OwnershipError::Store(s) => TxnError::Store(s),
        }
    }
}

/// A write in progress: what to undo if the upstream refuses it, what to delete if it accepts.
pub(crate) struct StoreTxn<'a> {
    store: &'a dyn SecretStore,
    undo: Vec<(String, Option<String>)>,
    deletes: Vec<String>,
}

impl<'a> StoreTxn<'a> {
    /// Claims the plan's root and writes its values. Nothing is left behind on an error.
    pub(crate) async fn begin(
        store: &'a dyn SecretStore,
        plan: &Plan,
    ) -> Result<StoreTxn<'a>, TxnError> {
        let mut txn = StoreTxn {
            store,
            undo: Vec::new(),
            deletes: plan.deletes.clone(),
        };
        if plan.puts.is_empty() {
            return Ok(txn);
        }
        // The claim comes first: a writer that loses it has written nothing.
        if let Some(claim) = &plan.claim {
            let marker = owner_marker(&claim.root);
            match ownership::claim(store, &claim.root, &claim.owner).await? {
                Claimed::Already => {}
                Claimed::Created => txn.undo.push((marker, None)),
                Claimed::Upgraded(legacy) => txn.undo.push((marker, Some(legacy))),
            }
        }
        let recorded = async {
            for (id, _) in &plan.puts {
                let previous = store.get(id).await?;
                txn.undo.push((id.clone(), previous));
            }
            store.put_many(&plan.puts).await
        };
        if let Err(e) = recorded.await {
            txn.rollback().await;
            return Err(e.into());
        }
        Ok(txn)
    }

    /// How many values this transaction wrote (its owner marker not counted).
    pub(crate) fn written(&self) -> usize {
        self.undo
            .iter()
            .filter(|(id, _)| !id.ends_with(ownership::MARKER))
            .count()
    }

    /// The upstream refused (or never answered): every value written goes back to what it was.
    pub(crate) async fn rollback(self) {
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

    /// The upstream may or may not have applied the write (it timed out or broke off after
    /// the request was sent): every value written stays, so no reference the upstream may
    /// now hold dangles, and the deferred deletes are skipped. If the upstream did not apply
    /// it, what is left is at worst an orphan, which `audit` names.
    pub fn keep(self) {
        if !self.deletes.is_empty() || !self.undo.is_empty() {
            tracing::warn!(
                written = self.written(),
                deletes_skipped = self.deletes.len(),
                "upstream outcome unknown: the secrets written stay"
            );
        }
    }

    /// The upstream accepted: the deferred deletes go ahead. A delete that fails leaves an
    /// orphan (logged), never a broken entity.
    pub(crate) async fn commit(self) {
        for id in &self.deletes {
            if let Err(e) = self.store.delete(id).await {
                tracing::warn!(secret_id = %id, error = %e, "could not delete a secret nothing refers to");
            }
        }
    }
}

/// One async lock per entity id root.
#[derive(Default)]
pub(crate) struct EntityLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl EntityLocks {
    /// Waits for the lock of `root`; held until the guard drops.
    pub(crate) async fn lock(&self, root: &str) -> tokio::sync::OwnedMutexGuard<()> {
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

impl From<TxnError> for crate::error::GatewayError {
    fn from(e: TxnError) -> crate::error::GatewayError {
        match e {
            TxnError::Conflict(_) => crate::error::GatewayError::Conflict(e.to_string()),
            TxnError::Store(s) => s.into(),
        }
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
                owner: Owner::new("databaseService:a"),
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
    async fn an_unknown_outcome_keeps_every_value_and_skips_the_deletes() {
        let store = MemoryStore::new();
        store.put("/om/database/a/gone", "v").await.unwrap();
        let txn = StoreTxn::begin(
            &store,
            &plan(&[("/om/database/a/p", "x")], &["/om/database/a/gone"]),
        )
        .await
        .unwrap();
        txn.keep();
        assert_eq!(
            store.get("/om/database/a/p").await.unwrap().as_deref(),
            Some("x")
        );
        assert!(store.get("/om/database/a/.owner").await.unwrap().is_some());
        assert!(store.get("/om/database/a/gone").await.unwrap().is_some());
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
