//! Stage two of configuration: the raw sections checked one by one into typed values. Every
//! problem is reported (file, key, what is wrong), not only the first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::env::opt;
use super::raw::*;
use super::*;

/// Reports a problem with a key.
type Err<'a> = &'a mut dyn FnMut(&str, String);

pub(super) fn validate(
    raw: RawConfig,
    source: Option<PathBuf>,
    label: &str,
) -> Result<Config, ConfigErrors> {
    let mut errs: Vec<String> = Vec::new();
    let mut err = |key: &str, msg: String| errs.push(format!("config {label}: {key}: {msg}"));
    let server = validate_server(raw.server, &mut err);
    let upstream = validate_upstream(raw.upstream, &mut err);
    let rules = validate_rules(raw.rules, &mut err);
    let secrets = validate_secrets(raw.secrets_manager, &mut err);
    let fernet = validate_fernet(raw.fernet, secrets.provider, &mut err);
    let auth = validate_auth(raw.auth, &upstream, &mut err);
    let policy = validate_policy(raw.policy, &mut err);
    let logging = validate_logging(raw.logging, &mut err);
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    Ok(Config {
        server,
        upstream,
        rules,
        secrets,
        fernet,
        auth,
        policy,
        logging,
        source,
    })
}

/// A socket address, or an error naming `key`.
fn addr(key: &str, v: &str, err: &mut dyn FnMut(&str, String)) -> SocketAddr {
    match v.trim().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            err(
                key,
                format!("{v:?} is not a socket address (expected host:port, e.g. 127.0.0.1:8586)"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

/// A positive number of milliseconds, or an error naming `key`.
fn positive_ms(key: &str, v: i64, err: &mut dyn FnMut(&str, String)) -> Duration {
    if v <= 0 {
        err(
            key,
            format!("{v} must be a positive number of milliseconds"),
        );
        Duration::from_millis(1)
    } else {
        Duration::from_millis(v as u64)
    }
}

/// `[server]`
fn validate_server(raw: RawServer, err: Err<'_>) -> ServerConfig {
    let listen = addr("server.listen", &raw.listen, err);
    let admin_listen = addr("server.admin_listen", &raw.admin_listen, err);
    let tls = match (opt(raw.tls_cert), opt(raw.tls_key)) {
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
    if raw.max_body_bytes <= 0 {
        err(
            "server.max_body_bytes",
            format!("{} must be a positive number of bytes", raw.max_body_bytes),
        );
    }
    let header_read_timeout = positive_ms(
        "server.header_read_timeout_ms",
        raw.header_read_timeout_ms,
        err,
    );
    let shutdown_grace = positive_ms("server.shutdown_grace_ms", raw.shutdown_grace_ms, err);

    ServerConfig {
        listen,
        admin_listen,
        tls,
        max_body_bytes: raw.max_body_bytes as usize,
        header_read_timeout,
        shutdown_grace,
        body_timeout: positive_ms("server.body_timeout_ms", raw.body_timeout_ms, err),
    }
}

/// `[upstream]`
fn validate_upstream(raw: RawUpstream, err: Err<'_>) -> UpstreamConfig {
    let (url, base_path) = match raw.url.trim().parse::<Uri>() {
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
                    raw.url
                ),
            );
            (Uri::from_static("http://127.0.0.1:8585"), String::new())
        }
    };
    let ca_file = opt(raw.ca_file).map(PathBuf::from);
    if let Some(p) = &ca_file {
        if !p.is_file() {
            err(
                "upstream.ca_file",
                format!("file {:?} does not exist", p.display().to_string()),
            );
        }
    }
    let timeout = positive_ms("upstream.timeout_ms", raw.timeout_ms, err);
    if raw.pool_idle_per_host < 0 {
        err("upstream.pool_idle_per_host", "must not be negative".into());
    }

    UpstreamConfig {
        url,
        base_path,
        ca_file,
        timeout,
        service_token: opt(raw.service_token),
        pool_idle_per_host: raw.pool_idle_per_host as usize,
        body_timeout: positive_ms("upstream.body_timeout_ms", raw.body_timeout_ms, err),
    }
}

/// `[rules]`
fn validate_rules(raw: RawRules, err: Err<'_>) -> RulesConfig {
    let rules_dir = PathBuf::from(raw.dir.trim());
    if raw.dir.trim().is_empty() {
        err("rules.dir", "must not be empty".into());
    }

    RulesConfig {
        dir: rules_dir,
        safety_net_keys: raw.safety_net_keys,
    }
}

/// `[secrets_manager]` and its parameters.
fn validate_secrets(sm: RawSecretsManager, err: Err<'_>) -> SecretsConfig {
    let provider = match Provider::parse(&sm.provider) {
        Some(p) => p,
        None => {
            err(
                "secrets_manager.provider",
                format!("{:?} is not one of {}", sm.provider, Provider::names()),
            );
            Provider::EMBEDDED
        }
    };
    let cluster_name = sm.cluster_name.trim().to_string();
    if cluster_name.is_empty() {
        err("secrets_manager.cluster_name", "must not be empty".into());
    }
    let tags = validate_tags(&sm.tags, err);
    validate_cache_and_limits(&sm, err);
    let p = sm.parameters;
    // A vendor's parameters are judged only when its provider is the one configured: an
    // environment shared by several deployments may set another vendor's variables.
    let for_backend = |b: Backend| provider.backend == b;
    let azure = validate_azure(&p, provider, &mut |k, m| {
        if for_backend(Backend::AzureKeyVault) {
            err(k, m)
        }
    });
    let gcp = validate_gcp(&p, provider, &mut |k, m| {
        if for_backend(Backend::Gcp) {
            err(k, m)
        }
    });
    let kubernetes = validate_kubernetes(&p, provider, &mut |k, m| {
        if for_backend(Backend::Kubernetes) {
            err(k, m)
        }
    });
    let (bao_address, bao_token) = validate_openbao(p.address, p.token, provider, err);
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

    SecretsConfig {
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
        azure,
        gcp,
        kubernetes,
        cache_ttl: Duration::from_secs(sm.cache_ttl_secs.max(0) as u64),
        cache_max_entries: sm.cache_max_entries.max(0) as usize,
        cache_stale: Duration::from_secs(sm.cache_stale_secs.max(0) as u64),
        cache_refresh: Duration::from_secs(sm.cache_refresh_secs.max(0) as u64),
        write_rate_per_sec: sm.write_rate_per_sec,
        retry_max: sm.retry_max.clamp(0, 10) as u32,
    }
}

/// `key:value` tags.
fn validate_tags(raw: &[String], err: Err<'_>) -> Vec<(String, String)> {
    let mut tags = Vec::new();
    for t in raw {
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
    tags
}

/// OpenBao's address and token: required by its two providers.
fn validate_openbao(
    address: String,
    token: String,
    provider: Provider,
    err: Err<'_>,
) -> (Option<Uri>, Option<String>) {
    let bao_address = match opt(address) {
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
    let bao_token = opt(token);
    if provider.backend == Backend::OpenBao {
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
    (bao_address, bao_token)
}

/// The read cache, the write rate limit and retries.
fn validate_cache_and_limits(sm: &RawSecretsManager, err: Err<'_>) {
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
    if sm.cache_refresh_secs < 0 {
        err(
            "secrets_manager.cache_refresh_secs",
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
}

/// `[fernet]`: keys are required by every provider but `embedded`.
fn validate_fernet(raw: RawFernet, provider: Provider, err: Err<'_>) -> FernetConfig {
    let keys: Vec<String> = raw
        .key
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        if fernet::Fernet::new(&normalise_fernet_key(k)).is_none() {
            err(
                "fernet.key",
                format!(
                    "key #{} is not a Fernet key (32 bytes, url-safe base64)",
                    i + 1
                ),
            );
        }
    }
    if keys.is_empty() && provider.backend != Backend::Embedded {
        err(
            "fernet.key",
            format!(
                "a Fernet key (FERNET_KEY) is required for provider {}",
                provider.name()
            ),
        );
    }
    if raw.wrap_references && keys.is_empty() {
        err("fernet.wrap_references", "needs fernet.key".into());
    }

    FernetConfig {
        keys,
        wrap_references: raw.wrap_references,
    }
}

/// `[auth]`: JWKS defaults to the upstream's.
fn validate_auth(raw: RawAuth, upstream: &UpstreamConfig, err: Err<'_>) -> AuthConfig {
    let (url, base_path) = (&upstream.url, &upstream.base_path);
    let jwks_url = match opt(raw.jwks_url) {
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
    let public_key_files: Vec<PathBuf> = raw.public_key_files.iter().map(PathBuf::from).collect();
    for f in &public_key_files {
        if !f.is_file() {
            err(
                "auth.public_key_files",
                format!("file {:?} does not exist", f.display().to_string()),
            );
        }
    }
    if raw.issuer.trim().is_empty() {
        err("auth.issuer", "must not be empty".into());
    }

    AuthConfig {
        jwks_url,
        public_key_files,
        issuer: raw.issuer.trim().to_string(),
    }
}

/// `[policy]`
fn validate_policy(raw: RawPolicy, err: Err<'_>) -> PolicyConfig {
    let action = |key: &str, v: &str, err: &mut dyn FnMut(&str, String)| -> ReadAction {
        ReadAction::parse(v).unwrap_or_else(|| {
            err(key, format!("{v:?} is not one of resolve, reference, mask"));
            ReadAction::Mask
        })
    };
    let reveal = |key: &str, v: &str, err: &mut dyn FnMut(&str, String)| -> ReadAction {
        match v {
            "reveal" => ReadAction::Resolve,
            "mask" => ReadAction::Mask,
            _ => {
                err(key, format!("{v:?} is not one of reveal, mask"));
                ReadAction::Mask
            }
        }
    };
    let m = &raw.mask_only;
    PolicyConfig {
        bot: action("policy.bot", &raw.bot, err),
        user: action("policy.user", &raw.user, err),
        anonymous: action("policy.anonymous", &raw.anonymous, err),
        bot_requires_view_all: raw.bot_requires_view_all,
        mask_only: crate::config::MaskOnlyPolicy {
            bot: reveal("policy.mask_only.bot", &m.bot, err),
            user: reveal("policy.mask_only.user", &m.user, err),
            reveal_to: m.reveal_to.iter().map(|s| s.trim().to_string()).collect(),
        },
    }
}

/// `[logging]`
fn validate_logging(raw: RawLogging, err: Err<'_>) -> LoggingConfig {
    let format = match raw.format.trim().to_ascii_lowercase().as_str() {
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
    if tracing_subscriber::EnvFilter::try_new(raw.level.trim()).is_err() {
        err(
            "logging.level",
            format!("{:?} is not a log level or filter", raw.level),
        );
    }

    LoggingConfig {
        format,
        level: raw.level.trim().to_string(),
    }
}

/// An http(s) URL with a host, or an error naming `key`.
pub(super) fn http_url(key: &str, v: &str, err: &mut dyn FnMut(&str, String)) -> Option<Uri> {
    match v.trim().parse::<Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some() =>
        {
            Some(u)
        }
        _ => {
            err(key, format!("{v:?} is not an http:// or https:// URL"));
            None
        }
    }
}

fn existing_file(key: &str, v: &str, err: &mut dyn FnMut(&str, String)) -> Option<PathBuf> {
    let t = v.trim();
    if t.is_empty() {
        return None;
    }
    if !Path::new(t).is_file() {
        err(key, format!("file {t:?} does not exist"));
    }
    Some(PathBuf::from(t))
}

fn validate_azure(
    p: &RawSmParameters,
    provider: Provider,
    err: &mut dyn FnMut(&str, String),
) -> AzureParams {
    let on = provider.backend == Backend::AzureKeyVault;
    let name = p.vault_name.trim();
    let mut vault_url = None;
    if !p.vault_url.trim().is_empty() {
        vault_url = http_url("secrets_manager.parameters.vault_url", &p.vault_url, err);
    } else if !name.is_empty() {
        // Azure: 3-24 characters, letters, digits and dashes, starting with a letter.
        let ok = (3..=24).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if ok {
            vault_url = format!("https://{name}.vault.azure.net")
                .parse::<Uri>()
                .ok();
        } else {
            err(
                "secrets_manager.parameters.vault_name",
                format!("{name:?} is not a Key Vault name (3-24 letters, digits and dashes)"),
            );
        }
    } else if on {
        err(
            "secrets_manager.parameters.vault_name",
            format!(
                "vault_name (or OM_SM_VAULT_NAME) or vault_url must be set for provider {}",
                provider.name()
            ),
        );
    }
    if on && !name.is_empty() && !p.vault_url.trim().is_empty() {
        err(
            "secrets_manager.parameters.vault_url",
            "set vault_name or vault_url, not both".into(),
        );
    }
    let (client_id, client_secret, tenant_id) = (
        opt(p.client_id.clone()),
        opt(p.client_secret.clone()),
        opt(p.tenant_id.clone()),
    );
    if on && client_secret.is_some() && (client_id.is_none() || tenant_id.is_none()) {
        err(
            "secrets_manager.parameters.client_secret",
            "needs client_id and tenant_id too".into(),
        );
    }
    let authority_host = match opt(p.authority_host.clone()) {
        Some(a) => http_url("secrets_manager.parameters.authority_host", &a, err),
        None => None,
    }
    .unwrap_or_else(|| Uri::from_static("https://login.microsoftonline.com"));
    AzureParams {
        vault_url,
        client_id,
        client_secret,
        tenant_id,
        authority_host,
    }
}

fn validate_gcp(
    p: &RawSmParameters,
    provider: Provider,
    err: &mut dyn FnMut(&str, String),
) -> GcpParams {
    let on = provider.backend == Backend::Gcp;
    let project_id = opt(p.project_id.clone());
    if let Some(id) = &project_id {
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
        {
            err(
                "secrets_manager.parameters.project_id",
                format!("{id:?} is not a Google Cloud project id or number"),
            );
        }
    } else if on {
        err(
            "secrets_manager.parameters.project_id",
            "must be set (or OM_SM_PROJECT_ID / GOOGLE_CLOUD_PROJECT) for provider gcp".into(),
        );
    }
    let credentials_file = if on {
        existing_file(
            "secrets_manager.parameters.credentials_file",
            &p.credentials_file,
            err,
        )
    } else {
        opt(p.credentials_file.clone()).map(PathBuf::from)
    };
    let endpoint = match (on, opt(p.endpoint_url.clone())) {
        (true, Some(e)) => http_url("secrets_manager.parameters.endpoint_url", &e, err),
        _ => None,
    }
    .unwrap_or_else(|| Uri::from_static("https://secretmanager.googleapis.com"));
    GcpParams {
        project_id,
        credentials_file,
        endpoint,
    }
}

fn validate_kubernetes(
    p: &RawSmParameters,
    provider: Provider,
    err: &mut dyn FnMut(&str, String),
) -> KubernetesParams {
    let on = provider.backend == Backend::Kubernetes;
    let namespace = p.namespace.trim().to_string();
    let label_ok = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if on && !label_ok {
        err(
            "secrets_manager.parameters.namespace",
            format!("{namespace:?} is not a Kubernetes namespace name"),
        );
    }
    let kubeconfig_path = if on && !p.in_cluster {
        existing_file(
            "secrets_manager.parameters.kubeconfig_path",
            &p.kubeconfig_path,
            err,
        )
    } else {
        opt(p.kubeconfig_path.clone()).map(PathBuf::from)
    };
    KubernetesParams {
        namespace,
        kubeconfig_path,
        in_cluster: p.in_cluster,
    }
}
