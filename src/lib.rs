//! om-secrets-proxy: a gateway in front of the OpenMetadata REST API that keeps credentials
//! out of it. See README.md for what it does and `../shared/spec/interface.md` for the contract.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod policy;
pub mod proxy;
pub mod refusal;
pub mod rewrite;
pub mod rules;
pub mod secrets;
pub mod server;
pub mod tls;
pub mod toolkit;
mod version;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;
use crate::proxy::Gateway;

/// A start-up failure, with a message naming the file or key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// The assembled gateway, ready to serve on listeners the caller binds.
pub struct App {
    pub config: Arc<Config>,
    pub gateway: Arc<Gateway>,
    pub(crate) admin: Arc<admin::Admin>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The client the JWKS is fetched with: its own, for `auth.jwks_url` as written (its host,
/// its whole path), trusting what the upstream client trusts.
fn jwks_client(config: &Config) -> Result<Upstream, StartError> {
    let url = &config.auth.jwks_url;
    let origin = format!(
        "{}://{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let origin = origin
        .parse()
        .map_err(|_| StartError(format!("auth.jwks_url: {url} has no host")))?;
    Upstream::new(&config::UpstreamConfig {
        url: origin,
        base_path: String::new(),
        ca_file: config.upstream.ca_file.clone(),
        timeout: config.upstream.timeout,
        service_token: None,
        pool_idle_per_host: 2,
        body_timeout: config.upstream.body_timeout,
    })
    .map_err(|e| StartError(format!("auth.jwks_url: {e}")))
}

/// Builds everything a running gateway needs from a validated config.
pub async fn build_app(config: Config) -> Result<App, StartError> {
    build_app_with_store(config, None).await
}

/// As [`build_app`], with the store backend given instead of opened from the config (tests
/// use an in-memory store that can be switched off). The cache and retries still wrap it.
pub async fn build_app_with_store(
    config: Config,
    backend: Option<Arc<dyn secrets::SecretStore>>,
) -> Result<App, StartError> {
    let metrics = Arc::new(Metrics::default());
    let upstream =
        Upstream::new(&config.upstream).map_err(|e| StartError(format!("upstream: {e}")))?;
    let tls = match &config.server.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(
            tls::server_config(&files.cert, &files.key)
                .map_err(|e| StartError(format!("server TLS: {e}")))?,
        )),
        None => None,
    };
    let rules =
        rules::RuleSet::load(&config.rules.dir, &config.rules.safety_net_keys).map_err(|p| {
            StartError(
                p.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
    let fernet = secrets::fernet::FernetKeys::new(&config.fernet.keys)
        .map_err(|e| StartError(format!("fernet.key: {e}")))?;
    for w in config_warnings(&config) {
        tracing::warn!("{w}");
    }
    let store = match backend {
        Some(b) => secrets::wrap_store(b, &config, metrics.clone()),
        None => secrets::open_store(&config, &fernet, metrics.clone())
            .await
            .map_err(StartError)?,
    };
    let auth = auth::Auth::new(&config.auth, jwks_client(&config)?, true)
        .map_err(|e| StartError(format!("auth: {e}")))?;
    let gateway = Arc::new(Gateway::new(proxy::GatewayParts {
        upstream: upstream.clone(),
        metrics: metrics.clone(),
        max_body_bytes: config.server.max_body_bytes,
        client_body_timeout: config.server.body_timeout,
        upstream_body_timeout: config.upstream.body_timeout,
        live: proxy::Live {
            rules,
            policy: config.policy.clone(),
        },
        ids: rules::ids::IdBuilder::new(&config.secrets.prefix, &config.secrets.cluster_name),
        store: store.clone(),
        fernet,
        managed: config.secrets.provider.managed,
        wrap_references: config.fernet.wrap_references,
        service_token: config.upstream.service_token.clone(),
        auth: Some(auth),
    }));
    let admin = Arc::new(admin::Admin {
        upstream,
        metrics,
        store,
    });
    Ok(App {
        config: Arc::new(config),
        gateway,
        admin,
        tls,
    })
}

/// The addresses a running app listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: SocketAddr,
    pub admin: SocketAddr,
}

impl App {
    /// Binds the configured addresses.
    pub async fn bind(&self) -> Result<(TcpListener, TcpListener), StartError> {
        let api = TcpListener::bind(self.config.server.listen)
            .await
            .map_err(|e| StartError(format!("server.listen {}: {e}", self.config.server.listen)))?;
        let admin = TcpListener::bind(self.config.server.admin_listen)
            .await
            .map_err(|e| {
                StartError(format!(
                    "server.admin_listen {}: {e}",
                    self.config.server.admin_listen
                ))
            })?;
        Ok((api, admin))
    }

    /// Serves on the given listeners until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        api: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut rx_admin = rx.clone();
        let mut rx_api = rx;
        let admin_task = tokio::spawn(server::serve_admin(admin, self.admin.clone(), async move {
            let _ = rx_admin.wait_for(|v| *v).await;
        }));
        let api_task = server::serve_api(
            api,
            self.tls.clone(),
            self.gateway.clone(),
            self.config.server.header_read_timeout,
            self.config.server.shutdown_grace,
            async move {
                let _ = rx_api.wait_for(|v| *v).await;
            },
        );
        let trigger = async move {
            shutdown.await;
            let _ = tx.send(true);
        };
        let reload_task = tokio::spawn(reload_on_sighup(
            self.gateway.clone(),
            self.config.source.clone(),
        ));
        let version_task = tokio::spawn(version::log_upstream_version(self.admin.upstream.clone()));
        tokio::join!(api_task, trigger);
        admin_task.abort();
        version_task.abort();
        reload_task.abort();
    }
}

/// Re-reads the config file and the rule files; on success swaps in the new rules and read
/// policy at once. Keys that need a restart (listeners, provider, upstream) keep their
/// running values. On any problem the running rules stay and the problems are returned.
pub fn reload(gateway: &Gateway, source: Option<&std::path::Path>) -> Result<usize, Vec<String>> {
    let cfg = Config::load(source).map_err(|e| e.0)?;
    let rules = rules::RuleSet::load(&cfg.rules.dir, &cfg.rules.safety_net_keys)
        .map_err(|p| p.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    let n = rules.rules.len();
    gateway.replace_live(proxy::Live {
        rules,
        policy: cfg.policy,
    });
    Ok(n)
}

async fn reload_on_sighup(gateway: Arc<Gateway>, source: Option<std::path::PathBuf>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match reload(&gateway, source.as_deref()) {
                Ok(n) => tracing::info!(rule_files = n, "SIGHUP: rules and policy reloaded"),
                Err(problems) => {
                    for p in problems {
                        tracing::error!(problem = %p, "SIGHUP: reload refused; the running rules stay");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (gateway, source);
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `om-secrets-proxy check`: every problem in the config and the rule files, or a summary.
pub fn check(config: Option<&std::path::Path>) -> Result<String, Vec<String>> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            // The rule files' problems too: their directory as the file or the environment
            // names it, else the default.
            let mut problems = e.0;
            let path = config.unwrap_or(std::path::Path::new(config::DEFAULT_CONFIG_FILE));
            let from_file = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| t.get("rules")?.get("dir")?.as_str().map(str::to_string));
            let defaults = Config::defaults().rules;
            let dir = std::env::var("OMSP_RULES_DIR")
                .ok()
                .filter(|d| !d.is_empty())
                .or(from_file)
                .unwrap_or_else(|| defaults.dir.display().to_string());
            let keys = defaults.safety_net_keys;
            if let Err(p) = rules::RuleSet::load(std::path::Path::new(&dir), &keys) {
                problems.extend(p.iter().map(|p| p.to_string()));
            }
            return Err(problems);
        }
    };
    let rules = rules::RuleSet::load(&cfg.rules.dir, &cfg.rules.safety_net_keys)
        .map_err(|p| p.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    let paths: usize = rules.rules.iter().map(|r| r.secret_paths.len()).sum();
    let mut out = format!(
        "ok: config {}; provider {}; {} rule files, {} secret paths",
        cfg.source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into()),
        cfg.secrets.provider.name(),
        rules.rules.len(),
        paths
    );
    for w in config_warnings(&cfg) {
        out.push_str("\nwarning: ");
        out.push_str(w);
    }
    Ok(out)
}

/// What a valid config does that its author may not expect (`check` prints these; `serve`
/// logs them).
pub fn config_warnings(cfg: &Config) -> Vec<&'static str> {
    let mut w = Vec::new();
    // Any spelling of it (URL-safe or standard base64, padded or not) is the same key.
    let norm = |k: &str| {
        k.trim()
            .trim_end_matches('=')
            .replace('-', "+")
            .replace('_', "/")
    };
    let default = norm(config::OPENMETADATA_DEFAULT_FERNET_KEY);
    if cfg.fernet.keys.iter().any(|k| norm(k) == default) {
        w.push("fernet.key is OpenMetadata's PUBLIC default key: anyone can decrypt these tokens; set your own FERNET_KEY");
    }
    if cfg.policy.anonymous == config::ReadAction::Resolve {
        w.push("policy.anonymous = \"resolve\" is served as \"mask\": a caller without a verified token never gets values");
    }
    w
}
