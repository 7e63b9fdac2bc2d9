//! Secret stores: one trait, one file per provider, a read cache in front of any of them.
//!
//! Only an explicit not-found is "absent" (`Ok(None)` from `get`); every other failure is
//! a [`StoreError`], so a store outage is never mistaken for a missing secret.

pub mod aws;
pub mod azure;
pub mod cache;
pub mod embedded;
pub mod fernet;
pub mod gcp;
pub mod kubernetes;
pub(crate) mod listing;
pub mod memory;
pub(crate) mod names;
pub mod openbao;
pub mod ownership;
pub(crate) mod rest;
pub mod transaction;

use std::future::Future;
use std::pin::Pin;

pub(crate) type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

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
    pub(crate) fn is_transient(&self) -> bool {
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

impl From<StoreError> for crate::error::GatewayError {
    /// A store failure is never taken for "absent": nothing is forwarded (503). The detail is
    /// logged (it never holds a value); the caller gets a fixed message.
    fn from(e: StoreError) -> crate::error::GatewayError {
        tracing::warn!(error = %e, detail = e.detail(), "secret store call failed");
        // The contract's wording for a store that cannot serve the request, and what kind of
        // failure it was (never the provider's detail, which the log has).
        let why = match e {
            StoreError::AccessDenied(_) => "denied the gateway access",
            StoreError::Throttled(_) => "is throttling requests",
            StoreError::Unavailable(_) => "is unreachable",
            StoreError::Invalid(_) => "refused the request as invalid (see the gateway's log)",
        };
        crate::error::GatewayError::StoreUnavailable(format!(
            "the secrets store {why}; nothing was forwarded"
        ))
    }
}

/// Where secret values live.
pub trait SecretStore: Send + Sync {
    /// The value stored under `id`; `Ok(None)` only when the store says it does not exist.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Creates or updates `id`.
    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()>;
    /// Creates or updates several ids. On an error some may have been written: callers
    /// restore every item. Stores that can write them in one transaction do.
    fn put_many<'a>(&'a self, items: &'a [(String, String)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            for (id, value) in items {
                self.put(id, value).await?;
            }
            Ok(())
        })
    }
    /// Creates `id` only if it does not exist: `Ok(true)` when this call created it,
    /// `Ok(false)` when it already existed (its value is left alone). Owner markers are
    /// claimed with it (`ownership::claim`), so of two writers racing, on one gateway or on
    /// several sharing the store, exactly one gets `true`: every store the gateway ships
    /// implements it with its create-only primitive (a redb write transaction, Secrets
    /// Manager `CreateSecret`, SSM `PutParameter` without overwrite, OpenBao KV v2 `cas=0`).
    ///
    /// The default is a read followed by a write and is **not atomic**: two writers can both
    /// get `true`. A provider whose service has a create-only call must override it.
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if self.get(id).await?.is_some() {
                return Ok(false);
            }
            self.put(id, value).await?;
            Ok(true)
        })
    }
    /// Deletes `id`; deleting an absent id succeeds.
    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
    /// Every id that starts with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;
    /// Ok when the store answers.
    fn health(&self) -> StoreFuture<'_, ()>;
    fn name(&self) -> &'static str;
}

/// Opens the configured provider's store, behind retries, a write rate limit and the read
/// cache. Makes no call to a cloud service.
pub async fn open_store(
    config: &crate::config::Config,
    keys: &fernet::FernetKeys,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<std::sync::Arc<dyn SecretStore>, String> {
    use crate::config::Backend;
    use std::sync::Arc;
    let sm = &config.secrets;
    let backend: Arc<dyn SecretStore> = match sm.provider.backend {
        Backend::Embedded => Arc::new(embedded::EmbeddedStore::open(&sm.embedded_path, keys)?),
        // `db` keeps nothing outside OpenMetadata: values travel as Fernet tokens.
        Backend::Db => Arc::new(memory::MemoryStore::new()),
        Backend::AwsSecretsManager => Arc::new(aws::SecretsManagerStore::new(
            &aws::sdk_config(sm).await,
            sm.tags.clone(),
        )),
        Backend::AwsSsm => Arc::new(aws::SsmStore::new(
            &aws::sdk_config(sm).await,
            sm.tags.clone(),
        )),
        Backend::OpenBao => {
            let address = sm
                .bao_address
                .clone()
                .ok_or("secrets_manager.parameters.address: must be set for OpenBao")?;
            let token = sm
                .bao_token
                .clone()
                .ok_or("secrets_manager.parameters.token: must be set for OpenBao")?;
            let client = crate::http::upstream::Upstream::new(&crate::config::UpstreamConfig {
                url: address,
                base_path: String::new(),
                ca_file: config.upstream.ca_file.clone(),
                timeout: std::time::Duration::from_secs(10),
                service_token: None,
                pool_idle_per_host: 16,
                body_timeout: std::time::Duration::from_secs(10),
            })
            .map_err(|e| format!("openbao client: {e}"))?;
            Arc::new(openbao::OpenBaoStore::new(client, &token, &sm.bao_mount)?)
        }
        Backend::AzureKeyVault => Arc::new(azure::AzureKeyVaultStore::new(
            &sm.azure,
            sm.tags.clone(),
            config.upstream.ca_file.as_deref(),
            &process_env,
        )?),
        Backend::Gcp => Arc::new(gcp::SecretManagerStore::new(
            &sm.gcp,
            &sm.tags,
            config.upstream.ca_file.as_deref(),
            &process_env,
        )?),
        Backend::Kubernetes => Arc::new(kubernetes::KubernetesStore::new(
            kubernetes::Connection::from_params(&sm.kubernetes, &process_env)?,
            &sm.kubernetes.namespace,
            &sm.tags,
        )),
    };
    Ok(wrap_store(backend, config, metrics))
}

/// The process environment, for credential chains (`AZURE_*`, `GOOGLE_APPLICATION_CREDENTIALS`,
/// `KUBERNETES_SERVICE_HOST`, ...); stores take it as a function so tests can pass their own.
fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Puts retries, the write rate limit (AWS providers, Google) and the read cache in front of a backend.
pub(crate) fn wrap_store(
    backend: std::sync::Arc<dyn SecretStore>,
    config: &crate::config::Config,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> std::sync::Arc<dyn SecretStore> {
    use std::sync::Arc;
    let sm = &config.secrets;
    // Write quotas: AWS's 50 writes/s per region and Google Secret Manager's 600 writes/min
    // per project, each shared by every client. Local, OpenBao, Azure (4,000 calls per 10 s
    // per vault, reads included) and Kubernetes stores are not rate-limited.
    use crate::config::Backend;
    let rate = match sm.provider.backend {
        Backend::AwsSecretsManager | Backend::AwsSsm | Backend::Gcp => Some(sm.write_rate_per_sec),
        _ => None,
    };
    let resilient: Arc<dyn SecretStore> =
        Arc::new(cache::Resilient::new(backend, sm.retry_max, rate));
    let settings = cache::CacheSettings {
        ttl: sm.cache_ttl,
        stale: sm.cache_stale,
        max_entries: sm.cache_max_entries,
        refresh: sm.cache_refresh,
    };
    Arc::new(cache::CachedStore::new(resilient, settings, metrics))
}

#[cfg(test)]
mod tests {
    use super::StoreError;
    use crate::error::GatewayError;

    #[test]
    fn a_store_failure_is_a_503_naming_its_kind_never_the_providers_detail() {
        for (e, says) in [
            (
                StoreError::Unavailable("openbao: x".into()),
                "is unreachable",
            ),
            (
                StoreError::Invalid("aws: ValidationException".into()),
                "refused the request as invalid",
            ),
            (
                StoreError::Throttled("aws: ThrottlingException".into()),
                "is throttling requests",
            ),
            (
                StoreError::AccessDenied("aws: AccessDenied".into()),
                "denied the gateway access",
            ),
        ] {
            let g = GatewayError::from(e);
            assert_eq!(g.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            let GatewayError::StoreUnavailable(m) = g else {
                panic!("not a store error");
            };
            assert!(
                m.contains(says) && m.ends_with("nothing was forwarded"),
                "{m}"
            );
            assert!(!m.contains("aws:") && !m.contains("openbao:"), "{m}");
        }
    }
}
