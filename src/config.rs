//! Configuration: a raw serde layer that mirrors the TOML file (unknown keys are errors),
//! environment overrides, then one validation step into a typed [`Config`].
//!
//! Every problem is collected, so `check` can print all of them at once, each naming
//! the key and what is wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

pub const DEFAULT_CONFIG_FILE: &str = "om-secrets-proxy.toml";
/// OpenMetadata's public default Fernet key: accepted, with a loud warning.
pub const OPENMETADATA_DEFAULT_FERNET_KEY: &str = "jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=";

// === raw layer ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    rules: RawRules,
    secrets_manager: RawSecretsManager,
    fernet: RawFernet,
    auth: RawAuth,
    policy: RawPolicy,
    logging: RawLogging,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    admin_listen: String,
    tls_cert: String,
    tls_key: String,
    max_body_bytes: i64,
    header_read_timeout_ms: i64,
    shutdown_grace_ms: i64,
    body_timeout_ms: i64,
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
struct RawUpstream {
    url: String,
    ca_file: String,
    timeout_ms: i64,
    service_token: String,
    pool_idle_per_host: i64,
    body_timeout_ms: i64,
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
struct RawRules {
    dir: String,
    safety_net_keys: Vec<String>,
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
struct RawSecretsManager {
    provider: String,
    cluster_name: String,
    prefix: String,
    tags: Vec<String>,
    parameters: RawSmParameters,
    cache_ttl_secs: i64,
    cache_max_entries: i64,
    cache_stale_secs: i64,
    write_rate_per_sec: f64,
    retry_max: i64,
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
            write_rate_per_sec: 10.0,
            retry_max: 3,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmParameters {
    region: String,
    access_key_id: String,
    secret_access_key: String,
    endpoint_url: String,
    path: String,
    address: String,
    token: String,
    mount: String,
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
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFernet {
    key: String,
    wrap_references: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    jwks_url: String,
    public_key_files: Vec<String>,
    issuer: String,
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
struct RawPolicy {
    bot: String,
    user: String,
    anonymous: String,
    bot_requires_view_all: bool,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            bot: "resolve".into(),
            user: "mask".into(),
            anonymous: "mask".into(),
            bot_requires_view_all: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    format: String,
    level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

// === typed layer ===

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub rules: RulesConfig,
    pub secrets: SecretsConfig,
    pub fernet: FernetConfig,
    pub auth: AuthConfig,
    pub policy: PolicyConfig,
    pub logging: LoggingConfig,
    /// The file the config came from, if any (for messages and reloads).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// A client's whole request body must arrive within this (408 otherwise).
    pub body_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme and authority of the OpenMetadata server; `base_path` is any path prefix.
    pub url: Uri,
    pub base_path: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub service_token: Option<String>,
    pub pool_idle_per_host: usize,
    /// An answer the gateway reads must arrive whole within this, a streamed one may not
    /// stall longer (504 / cut off).
    pub body_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dir: PathBuf,
    pub safety_net_keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Embedded,
    Db,
    ManagedAws,
    Aws,
    ManagedAwsSsm,
    AwsSsm,
    ManagedOpenbao,
    Openbao,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        Some(
            match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "embedded" => Provider::Embedded,
                "db" => Provider::Db,
                "managed-aws" => Provider::ManagedAws,
                "aws" => Provider::Aws,
                "managed-aws-ssm" => Provider::ManagedAwsSsm,
                "aws-ssm" => Provider::AwsSsm,
                "managed-openbao" => Provider::ManagedOpenbao,
                "openbao" => Provider::Openbao,
                _ => return None,
            },
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Embedded => "embedded",
            Provider::Db => "db",
            Provider::ManagedAws => "managed-aws",
            Provider::Aws => "aws",
            Provider::ManagedAwsSsm => "managed-aws-ssm",
            Provider::AwsSsm => "aws-ssm",
            Provider::ManagedOpenbao => "managed-openbao",
            Provider::Openbao => "openbao",
        }
    }

    /// Managed providers move plain values into the store; the others forward Fernet tokens.
    pub fn is_managed(self) -> bool {
        matches!(
            self,
            Provider::Embedded
                | Provider::ManagedAws
                | Provider::ManagedAwsSsm
                | Provider::ManagedOpenbao
        )
    }
}

#[derive(Debug, Clone)]
pub struct SecretsConfig {
    pub provider: Provider,
    pub cluster_name: String,
    pub prefix: String,
    pub tags: Vec<(String, String)>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub endpoint_url: Option<String>,
    pub embedded_path: PathBuf,
    pub bao_address: Option<Uri>,
    pub bao_token: Option<String>,
    pub bao_mount: String,
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    pub cache_stale: Duration,
    pub write_rate_per_sec: f64,
    pub retry_max: u32,
}

#[derive(Debug, Clone)]
pub struct FernetConfig {
    /// Comma-separated keys, split: the first encrypts, all decrypt. Validated as Fernet keys.
    pub keys: Vec<String>,
    pub wrap_references: bool,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwks_url: Uri,
    pub public_key_files: Vec<PathBuf>,
    pub issuer: String,
}

/// What a caller class sees in a secret field on reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAction {
    Resolve,
    Reference,
    Mask,
}

impl ReadAction {
    pub fn parse(s: &str) -> Option<ReadAction> {
        match s.trim().to_ascii_lowercase().as_str() {
            "resolve" => Some(ReadAction::Resolve),
            "reference" => Some(ReadAction::Reference),
            "mask" => Some(ReadAction::Mask),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReadAction::Resolve => "resolve",
            ReadAction::Reference => "reference",
            ReadAction::Mask => "mask",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PolicyConfig {
    pub bot: ReadAction,
    pub user: ReadAction,
    pub anonymous: ReadAction,
    pub bot_requires_view_all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

/// All problems found in a configuration, each naming the file/key and what is wrong.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === loading ===

impl Config {
    /// Loads the config the way the CLI does: `path`, else `./om-secrets-proxy.toml` when
    /// present, else defaults; then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// Loads with an explicit environment (tests pass their own).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let (text, source) = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => (t, Some(p.to_path_buf())),
                Err(e) => {
                    return Err(ConfigErrors(vec![format!(
                        "config file {}: cannot read: {e}",
                        p.display()
                    )]))
                }
            },
            None => {
                let p = Path::new(DEFAULT_CONFIG_FILE);
                match std::fs::read_to_string(p) {
                    Ok(t) => (t, Some(p.to_path_buf())),
                    Err(_) => (String::new(), None),
                }
            }
        };
        Self::from_toml_str(&text, source, env)
    }

    /// Parses TOML text, applies env overrides and validates.
    pub fn from_toml_str(
        text: &str,
        source: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let label = source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".to_string());
        let mut raw: RawConfig = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                let msg = e.message().trim().to_string();
                return Err(ConfigErrors(vec![match line {
                    Some(l) => format!("config file {label}:{l}: {msg}"),
                    None => format!("config file {label}: {msg}"),
                }]));
            }
        };
        apply_env(&mut raw, env);
        validate(raw, source, &label)
    }
}

fn env_nonempty(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env(key).filter(|v| !v.is_empty())
}

fn apply_env(raw: &mut RawConfig, env: &dyn Fn(&str) -> Option<String>) {
    let set = |slot: &mut String, key: &str| {
        if let Some(v) = env_nonempty(env, key) {
            *slot = v;
        }
    };
    set(&mut raw.server.listen, "OMSP_LISTEN");
    set(&mut raw.server.admin_listen, "OMSP_ADMIN_LISTEN");
    set(&mut raw.server.tls_cert, "OMSP_TLS_CERT");
    set(&mut raw.server.tls_key, "OMSP_TLS_KEY");
    set(&mut raw.upstream.url, "OMSP_UPSTREAM");
    set(&mut raw.upstream.service_token, "OMSP_SERVICE_TOKEN");
    set(&mut raw.rules.dir, "OMSP_RULES_DIR");
    set(&mut raw.secrets_manager.provider, "SECRET_MANAGER");
    set(
        &mut raw.secrets_manager.cluster_name,
        "OPENMETADATA_CLUSTER_NAME",
    );
    set(&mut raw.secrets_manager.prefix, "SECRET_MANAGER_PREFIX");
    if let Some(tags) = env_nonempty(env, "SECRET_MANAGER_TAGS") {
        raw.secrets_manager.tags = tags
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
    }
    let p = &mut raw.secrets_manager.parameters;
    set(&mut p.region, "OM_SM_REGION");
    set(&mut p.access_key_id, "OM_SM_ACCESS_KEY_ID");
    set(&mut p.secret_access_key, "OM_SM_ACCESS_KEY");
    set(&mut p.endpoint_url, "AWS_ENDPOINT_URL");
    set(&mut p.path, "OMSP_EMBEDDED_PATH");
    // BAO_* wins over VAULT_* when both are set.
    set(&mut p.address, "VAULT_ADDR");
    set(&mut p.address, "BAO_ADDR");
    set(&mut p.token, "VAULT_TOKEN");
    set(&mut p.token, "BAO_TOKEN");
    set(&mut raw.fernet.key, "FERNET_KEY");
    set(&mut raw.auth.jwks_url, "OMSP_JWKS_URL");
    set(&mut raw.logging.format, "OMSP_LOG_FORMAT");
    set(&mut raw.logging.level, "OMSP_LOG_LEVEL");
}

fn opt(s: String) -> Option<String> {
    let t = s.trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    }
}

fn validate(raw: RawConfig, source: Option<PathBuf>, label: &str) -> Result<Config, ConfigErrors> {
    let mut errs: Vec<String> = Vec::new();
    let mut err = |key: &str, msg: String| errs.push(format!("config {label}: {key}: {msg}"));

    let addr = |key: &str, v: &str, err: &mut dyn FnMut(&str, String)| -> SocketAddr {
        match v.trim().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                err(
                    key,
                    format!(
                        "{v:?} is not a socket address (expected host:port, e.g. 127.0.0.1:8586)"
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    };
    let positive_ms = |key: &str, v: i64, err: &mut dyn FnMut(&str, String)| -> Duration {
        if v <= 0 {
            err(
                key,
                format!("{v} must be a positive number of milliseconds"),
            );
            Duration::from_millis(1)
        } else {
            Duration::from_millis(v as u64)
        }
    };

    // [server]
    let listen = addr("server.listen", &raw.server.listen, &mut err);
    let admin_listen = addr("server.admin_listen", &raw.server.admin_listen, &mut err);
    let tls = match (opt(raw.server.tls_cert), opt(raw.server.tls_key)) {
        (Some(c), Some(k)) => {
            for (key, p) in [("server.tls_cert", &c), ("server.tls_key", &k)] {
                if !Path::new(p).is_file() {
                    err(key, format!("file {p:?} does not exist"));
                }
            }
            Some(TlsFiles {
                cert: PathBuf::from(c),
                key: PathBuf::from(k),
            })
        }
        (Some(_), None) => {
            err(
                "server.tls_key",
                "must be set when server.tls_cert is set".into(),
            );
            None
        }
        (None, Some(_)) => {
            err(
                "server.tls_cert",
                "must be set when server.tls_key is set".into(),
            );
            None
        }
        (None, None) => None,
    };
    if raw.server.max_body_bytes <= 0 {
        err(
            "server.max_body_bytes",
            format!(
                "{} must be a positive number of bytes",
                raw.server.max_body_bytes
            ),
        );
    }
    let header_read_timeout = positive_ms(
        "server.header_read_timeout_ms",
        raw.server.header_read_timeout_ms,
        &mut err,
    );
    let shutdown_grace = positive_ms(
        "server.shutdown_grace_ms",
        raw.server.shutdown_grace_ms,
        &mut err,
    );
    let client_body_timeout = positive_ms(
        "server.body_timeout_ms",
        raw.server.body_timeout_ms,
        &mut err,
    );

    // [upstream]
    let (url, base_path) = match raw.upstream.url.trim().parse::<Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some()
                && u.query().is_none() =>
        {
            let base = u.path().trim_end_matches('/').to_string();
            (u, base)
        }
        _ => {
            err(
                "upstream.url",
                format!(
                    "{:?} is not an http:// or https:// URL with a host",
                    raw.upstream.url
                ),
            );
            (Uri::from_static("http://127.0.0.1:8585"), String::new())
        }
    };
    let ca_file = opt(raw.upstream.ca_file).map(PathBuf::from);
    if let Some(p) = &ca_file {
        if !p.is_file() {
            err(
                "upstream.ca_file",
                format!("file {:?} does not exist", p.display().to_string()),
            );
        }
    }
    let timeout = positive_ms("upstream.timeout_ms", raw.upstream.timeout_ms, &mut err);
    let upstream_body_timeout = positive_ms(
        "upstream.body_timeout_ms",
        raw.upstream.body_timeout_ms,
        &mut err,
    );
    if raw.upstream.pool_idle_per_host < 0 {
        err("upstream.pool_idle_per_host", "must not be negative".into());
    }

    // [rules]
    let rules_dir = PathBuf::from(raw.rules.dir.trim());
    if raw.rules.dir.trim().is_empty() {
        err("rules.dir", "must not be empty".into());
    }

    // [secrets_manager]
    let sm = raw.secrets_manager;
    let provider = match Provider::parse(&sm.provider) {
        Some(p) => p,
        None => {
            err(
                "secrets_manager.provider",
                format!(
                    "{:?} is not one of embedded, db, managed-aws, aws, managed-aws-ssm, aws-ssm, managed-openbao, openbao",
                    sm.provider
                ),
            );
            Provider::Embedded
        }
    };
    let cluster_name = sm.cluster_name.trim().to_string();
    if cluster_name.is_empty() {
        err("secrets_manager.cluster_name", "must not be empty".into());
    }
    let mut tags = Vec::new();
    for t in &sm.tags {
        match t.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                tags.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => err(
                "secrets_manager.tags",
                format!("{t:?} is not a \"key:value\" string"),
            ),
        }
    }
    let p = sm.parameters;
    let bao_address = match opt(p.address) {
        Some(a) => match a.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http") | Some("https"))
                    && u.authority().is_some() =>
            {
                Some(u)
            }
            _ => {
                err(
                    "secrets_manager.parameters.address",
                    format!("{a:?} is not an http:// or https:// URL"),
                );
                None
            }
        },
        None => None,
    };
    let bao_token = opt(p.token);
    if matches!(provider, Provider::ManagedOpenbao | Provider::Openbao) {
        if bao_address.is_none() {
            err(
                "secrets_manager.parameters.address",
                format!(
                    "must be set (or BAO_ADDR / VAULT_ADDR) for provider {}",
                    provider.name()
                ),
            );
        }
        if bao_token.is_none() {
            err(
                "secrets_manager.parameters.token",
                format!(
                    "must be set (or BAO_TOKEN / VAULT_TOKEN) for provider {}",
                    provider.name()
                ),
            );
        }
    }
    let mount = p.mount.trim().trim_matches('/').to_string();
    if mount.is_empty() {
        err(
            "secrets_manager.parameters.mount",
            "must not be empty".into(),
        );
    }
    let endpoint_url = opt(p.endpoint_url);
    if let Some(e) = &endpoint_url {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            err(
                "secrets_manager.parameters.endpoint_url",
                format!("{e:?} is not an http:// or https:// URL"),
            );
        }
    }
    let access_key_id = opt(p.access_key_id);
    let secret_access_key = opt(p.secret_access_key);
    if access_key_id.is_some() != secret_access_key.is_some() {
        err(
            "secrets_manager.parameters.access_key_id",
            "access_key_id and secret_access_key must be set together".into(),
        );
    }
    if p.path.trim().is_empty() {
        err(
            "secrets_manager.parameters.path",
            "must not be empty".into(),
        );
    }
    if sm.cache_ttl_secs < 0 {
        err(
            "secrets_manager.cache_ttl_secs",
            "must not be negative".into(),
        );
    }
    if sm.cache_max_entries < 0 {
        err(
            "secrets_manager.cache_max_entries",
            "must not be negative".into(),
        );
    }
    if sm.cache_stale_secs < 0 {
        err(
            "secrets_manager.cache_stale_secs",
            "must not be negative".into(),
        );
    }
    if !(sm.write_rate_per_sec > 0.0 && sm.write_rate_per_sec <= 50.0) {
        err(
            "secrets_manager.write_rate_per_sec",
            format!(
                "{} must be above 0 and at most 50 (AWS's per-region write quota)",
                sm.write_rate_per_sec
            ),
        );
    }
    if !(0..=10).contains(&sm.retry_max) {
        err(
            "secrets_manager.retry_max",
            format!("{} must be between 0 and 10", sm.retry_max),
        );
    }

    // [fernet]
    let keys: Vec<String> = raw
        .fernet
        .key
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        if crate::secrets::fernet::parse_key(k).is_none() {
            err(
                "fernet.key",
                format!(
                    "key #{} is not a Fernet key (32 bytes, url-safe base64)",
                    i + 1
                ),
            );
        }
    }
    if keys.is_empty() && !matches!(provider, Provider::Embedded) {
        err(
            "fernet.key",
            format!(
                "a Fernet key (FERNET_KEY) is required for provider {}",
                provider.name()
            ),
        );
    }
    if raw.fernet.wrap_references && keys.is_empty() {
        err("fernet.wrap_references", "needs fernet.key".into());
    }

    // [auth]
    let jwks_url = match opt(raw.auth.jwks_url) {
        Some(u) => match u.parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http") | Some("https"))
                    && uri.authority().is_some() =>
            {
                uri
            }
            _ => {
                err(
                    "auth.jwks_url",
                    format!("{u:?} is not an http:// or https:// URL"),
                );
                Uri::from_static("http://127.0.0.1:8585/api/v1/system/config/jwks")
            }
        },
        None => {
            let s = format!(
                "{}://{}{}/api/v1/system/config/jwks",
                url.scheme_str().unwrap_or("http"),
                url.authority()
                    .map(|a| a.as_str())
                    .unwrap_or("127.0.0.1:8585"),
                base_path
            );
            s.parse::<Uri>().unwrap_or_else(|_| {
                Uri::from_static("http://127.0.0.1:8585/api/v1/system/config/jwks")
            })
        }
    };
    let public_key_files: Vec<PathBuf> = raw
        .auth
        .public_key_files
        .iter()
        .map(PathBuf::from)
        .collect();
    for f in &public_key_files {
        if !f.is_file() {
            err(
                "auth.public_key_files",
                format!("file {:?} does not exist", f.display().to_string()),
            );
        }
    }
    if raw.auth.issuer.trim().is_empty() {
        err("auth.issuer", "must not be empty".into());
    }

    // [policy]
    let action = |key: &str, v: &str, err: &mut dyn FnMut(&str, String)| -> ReadAction {
        ReadAction::parse(v).unwrap_or_else(|| {
            err(key, format!("{v:?} is not one of resolve, reference, mask"));
            ReadAction::Mask
        })
    };
    let policy = PolicyConfig {
        bot: action("policy.bot", &raw.policy.bot, &mut err),
        user: action("policy.user", &raw.policy.user, &mut err),
        anonymous: action("policy.anonymous", &raw.policy.anonymous, &mut err),
        bot_requires_view_all: raw.policy.bot_requires_view_all,
    };

    // [logging]
    let format = match raw.logging.format.trim().to_ascii_lowercase().as_str() {
        "human" | "text" | "" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            err(
                "logging.format",
                format!("{other:?} is not one of human, json"),
            );
            LogFormat::Human
        }
    };
    if tracing_subscriber::EnvFilter::try_new(raw.logging.level.trim()).is_err() {
        err(
            "logging.level",
            format!("{:?} is not a log level or filter", raw.logging.level),
        );
    }

    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    Ok(Config {
        server: ServerConfig {
            listen,
            admin_listen,
            tls,
            max_body_bytes: raw.server.max_body_bytes as usize,
            header_read_timeout,
            shutdown_grace,
            body_timeout: client_body_timeout,
        },
        upstream: UpstreamConfig {
            url,
            base_path,
            ca_file,
            timeout,
            service_token: opt(raw.upstream.service_token),
            pool_idle_per_host: raw.upstream.pool_idle_per_host as usize,
            body_timeout: upstream_body_timeout,
        },
        rules: RulesConfig {
            dir: rules_dir,
            safety_net_keys: raw.rules.safety_net_keys,
        },
        secrets: SecretsConfig {
            provider,
            cluster_name,
            prefix: sm.prefix.trim().trim_matches('/').to_string(),
            tags,
            region: opt(p.region),
            access_key_id,
            secret_access_key,
            endpoint_url,
            embedded_path: PathBuf::from(p.path.trim()),
            bao_address,
            bao_token,
            bao_mount: mount,
            cache_ttl: Duration::from_secs(sm.cache_ttl_secs.max(0) as u64),
            cache_max_entries: sm.cache_max_entries.max(0) as usize,
            cache_stale: Duration::from_secs(sm.cache_stale_secs.max(0) as u64),
            write_rate_per_sec: sm.write_rate_per_sec,
            retry_max: sm.retry_max.clamp(0, 10) as u32,
        },
        fernet: FernetConfig {
            keys,
            wrap_references: raw.fernet.wrap_references,
        },
        auth: AuthConfig {
            jwks_url,
            public_key_files,
            issuer: raw.auth.issuer.trim().to_string(),
        },
        policy,
        logging: LoggingConfig {
            format,
            level: raw.logging.level.trim().to_string(),
        },
        source,
    })
}

impl Config {
    /// Built-in defaults with no file and no environment (tests start from here).
    pub fn defaults() -> Config {
        match Config::from_toml_str("", None, &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("built-in defaults must validate: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str(text, Some(PathBuf::from("t.toml")), &|_| None)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8586");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9586");
        assert_eq!(c.server.max_body_bytes, 16_777_216);
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:8585/");
        assert_eq!(c.secrets.provider, Provider::Embedded);
        assert_eq!(c.secrets.cluster_name, "openmetadata");
        assert_eq!(c.policy.bot, ReadAction::Resolve);
        assert_eq!(c.policy.user, ReadAction::Mask);
        assert_eq!(
            c.auth.jwks_url.to_string(),
            "http://127.0.0.1:8585/api/v1/system/config/jwks"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        assert!(e.to_string().contains("t.toml:3"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse("[server]\nlisten = \"nope\"\n[policy]\nbot = \"show\"\n[secrets_manager]\nprovider = \"gcp\"\n")
            .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.0[0].contains("server.listen"));
    }

    #[test]
    fn env_overrides_the_file() {
        let env = |k: &str| match k {
            "OMSP_LISTEN" => Some("127.0.0.1:9999".to_string()),
            "SECRET_MANAGER_TAGS" => Some("team:data, env:prod".to_string()),
            _ => None,
        };
        let c = Config::from_toml_str("[server]\nlisten = \"127.0.0.1:1\"\n", None, &env).unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(
            c.secrets.tags,
            vec![
                ("team".into(), "data".into()),
                ("env".into(), "prod".into())
            ]
        );
    }

    #[test]
    fn non_embedded_providers_need_a_fernet_key() {
        let e = parse("[secrets_manager]\nprovider = \"db\"\n").unwrap_err();
        assert!(e.to_string().contains("fernet.key"), "{e}");
    }

    #[test]
    fn openbao_needs_address_and_token() {
        let e = parse("[secrets_manager]\nprovider = \"openbao\"\n[fernet]\nkey = \"jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("parameters.address"), "{e}");
        assert!(e.to_string().contains("parameters.token"), "{e}");
    }
}
