//! An in-memory store for unit tests and for the `db` provider (which keeps nothing),
//! with a switch that makes it fail like an unreachable store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{SecretStore, StoreError, StoreFuture};

#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, String>>,
    down: AtomicBool,
    /// Backend calls made (tests count them).
    pub(crate) calls: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes every call fail with `Unavailable` until set back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, String>>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        self.map
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }
}

impl SecretStore for MemoryStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move { Ok(self.check()?.get(id).cloned()) })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check()?.insert(id.to_string(), value.to_string());
            Ok(())
        })
    }

    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut map = self.check()?;
            if map.contains_key(id) {
                return Ok(false);
            }
            map.insert(id.to_string(), value.to_string());
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check()?.remove(id);
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .check()?
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            drop(self.check()?);
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
