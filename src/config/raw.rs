//! Stage one of configuration: the file as written, every key optional, unknown keys refused
//! (`deny_unknown_fields`), with the contract's defaults.

use serde::Deserialize;

// === raw layer ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub(crate) server: RawServer,
    pub(crate) upstream: RawUpstream,
    pub(crate) rules: RawRules,
    pub(crate) secrets_manager: RawSecretsManager,
    pub(crate) fernet: RawFernet,
    pub(crate) auth: RawAuth,
    pub(crate) policy: RawPolicy,
    pub(crate) logging: RawLogging,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    pub(crate) listen: String,
    pub(crate) admin_listen: String,
    pub(crate) tls_cert: String,
    pub(crate) tls_key: String,
    pub(crate) max_body_bytes: i64,
    pub(crate) header_read_timeout_ms: i64,
    pub(crate) shutdown_grace_ms: i64,
    pub(crate) body_timeout_ms: i64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8586".into(),
            admin_listen: "127.0.0.1:9586".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
            body_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstream {
    pub(crate) url: String,
    pub(crate) ca_file: String,
    pub(crate) timeout_ms: i64,
    pub(crate) service_token: String,
    pub(crate) pool_idle_per_host: i64,
    pub(crate) body_timeout_ms: i64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: "http://127.0.0.1:8585".into(),
            ca_file: String::new(),
            timeout_ms: 30_000,
            service_token: String::new(),
            pool_idle_per_host: 256,
            body_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRules {
    pub(crate) dir: String,
    pub(crate) safety_net_keys: Vec<String>,
}

impl Default for RawRules {
    fn default() -> Self {
        RawRules {
            dir: "rules".into(),
            safety_net_keys: DEFAULT_SAFETY_NET_KEYS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// Exact key names the safety net treats as secrets on top of its built-in name policy
/// (`rules::names`: names containing `password`, `secret`, `credential`, ... or ending in
/// `token`, `apiKey`, ...; checked against every field of OpenMetadata 2.0.7). None by default:
/// the built-in policy already covers every secret field name OpenMetadata declares.
pub const DEFAULT_SAFETY_NET_KEYS: &[&str] = &[];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSecretsManager {
    pub(crate) provider: String,
    pub(crate) cluster_name: String,
    pub(crate) prefix: String,
    pub(crate) tags: Vec<String>,
    pub(crate) parameters: RawSmParameters,
    pub(crate) cache_ttl_secs: i64,
    pub(crate) cache_max_entries: i64,
    pub(crate) cache_stale_secs: i64,
    pub(crate) cache_refresh_secs: i64,
    pub(crate) write_rate_per_sec: f64,
    pub(crate) retry_max: i64,
}

impl Default for RawSecretsManager {
    fn default() -> Self {
        RawSecretsManager {
            provider: "embedded".into(),
            cluster_name: "openmetadata".into(),
            prefix: String::new(),
            tags: Vec::new(),
            parameters: RawSmParameters::default(),
            cache_ttl_secs: 300,
            cache_max_entries: 10_000,
            cache_stale_secs: 3_600,
            cache_refresh_secs: 10,
            write_rate_per_sec: 10.0,
            retry_max: 3,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSmParameters {
    pub(crate) region: String,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) endpoint_url: String,
    pub(crate) path: String,
    pub(crate) address: String,
    pub(crate) token: String,
    pub(crate) mount: String,
    pub(crate) vault_name: String,
    pub(crate) vault_url: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) tenant_id: String,
    pub(crate) authority_host: String,
    pub(crate) project_id: String,
    pub(crate) credentials_file: String,
    pub(crate) namespace: String,
    pub(crate) kubeconfig_path: String,
    pub(crate) in_cluster: bool,
}

impl Default for RawSmParameters {
    fn default() -> Self {
        RawSmParameters {
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            endpoint_url: String::new(),
            path: "data/secrets.db".into(),
            address: String::new(),
            token: String::new(),
            mount: "secret".into(),
            vault_name: String::new(),
            vault_url: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            tenant_id: String::new(),
            authority_host: String::new(),
            project_id: String::new(),
            credentials_file: String::new(),
            namespace: "default".into(),
            kubeconfig_path: String::new(),
            in_cluster: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFernet {
    pub(crate) key: String,
    pub(crate) wrap_references: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub(crate) jwks_url: String,
    pub(crate) public_key_files: Vec<String>,
    pub(crate) issuer: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            jwks_url: String::new(),
            public_key_files: Vec::new(),
            issuer: "open-metadata.org".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPolicy {
    pub(crate) bot: String,
    pub(crate) user: String,
    pub(crate) anonymous: String,
    pub(crate) bot_requires_view_all: bool,
    pub(crate) mask_only: RawMaskOnlyPolicy,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            bot: "resolve".into(),
            user: "mask".into(),
            anonymous: "mask".into(),
            bot_requires_view_all: false,
            mask_only: RawMaskOnlyPolicy::default(),
        }
    }
}

/// `[policy.mask_only]`: who sees the values of `mask_only` rules' fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMaskOnlyPolicy {
    pub(crate) bot: String,
    pub(crate) user: String,
    pub(crate) reveal_to: Vec<String>,
}

impl Default for RawMaskOnlyPolicy {
    fn default() -> Self {
        RawMaskOnlyPolicy {
            bot: "mask".into(),
            user: "mask".into(),
            reveal_to: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLogging {
    pub(crate) format: String,
    pub(crate) level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: "human".into(),
            level: "info".into(),
        }
    }
}
