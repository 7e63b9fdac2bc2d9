//! Secret stores: one trait, one file per provider, a read cache in front of any of them.
//!
//! Only an explicit not-found is "absent" (`Ok(None)` from `get`); every other failure is
//! a [`StoreError`], so a store outage is never mistaken for a missing secret.

pub mod embedded;
pub mod fernet;
pub mod memory;

use std::future::Future;
use std::pin::Pin;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One taxonomy of store failures across providers.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("access to the secret store was denied")]
    AccessDenied(String),
    #[error("the secret store is throttling requests")]
    Throttled(String),
    #[error("the secret store is unavailable")]
    Unavailable(String),
    #[error("the secret store refused the request as invalid")]
    Invalid(String),
}

impl StoreError {
    /// Worth trying again after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Unavailable(_))
    }

    /// Internal detail for logs (never contains a value: providers build it from error codes).
    pub fn detail(&self) -> &str {
        match self {
            StoreError::AccessDenied(d)
            | StoreError::Throttled(d)
            | StoreError::Unavailable(d)
            | StoreError::Invalid(d) => d,
        }
    }
}

/// Where secret values live.
pub trait SecretStore: Send + Sync {
    /// The value stored under `id`; `Ok(None)` only when the store says it does not exist.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Creates or updates `id`.
    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()>;
    /// Deletes `id`; deleting an absent id succeeds.
    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
    /// Every id that starts with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;
    /// Ok when the store answers.
    fn health(&self) -> StoreFuture<'_, ()>;
    fn name(&self) -> &'static str;
}

/// Opens the configured provider's store.
pub async fn open_store(
    config: &crate::config::Config,
    keys: &fernet::FernetKeys,
) -> Result<std::sync::Arc<dyn SecretStore>, String> {
    use crate::config::Provider;
    match config.secrets.provider {
        Provider::Embedded => Ok(std::sync::Arc::new(embedded::EmbeddedStore::open(
            &config.secrets.embedded_path,
            keys,
        )?)),
        // `db` keeps nothing outside OpenMetadata: values travel as Fernet tokens.
        Provider::Db => Ok(std::sync::Arc::new(memory::MemoryStore::new())),
        other => Err(format!(
            "secrets_manager.provider: {} is not available in this build yet (use embedded or db)",
            other.name()
        )),
    }
}
