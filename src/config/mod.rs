//! Configuration in two stages: `raw` (the TOML as written, with defaults), environment
//! overrides (`env`), then `validate` (one function per section) into the typed [`Config`] the
//! rest of the gateway reads.

mod env;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

pub const DEFAULT_CONFIG_FILE: &str = "om-secrets-proxy.toml";
/// OpenMetadata's public default Fernet key: accepted, with a loud warning.
pub const OPENMETADATA_DEFAULT_FERNET_KEY: &str = "jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=";

use env::apply_env;
use raw::RawConfig;
pub use raw::DEFAULT_SAFETY_NET_KEYS;
use validate::validate;

/// A Fernet key in url-safe base64 with padding: keys in the standard alphabet and without
/// padding (as OpenMetadata's default key is written) are accepted too.
pub fn normalise_fernet_key(key: &str) -> String {
    let mut k: String = key
        .trim()
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    while k.len() % 4 != 0 {
        k.push('=');
    }
    k
}

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

/// Where secret values live (one store implementation each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    /// OpenMetadata's own database: nothing is stored by the gateway.
    Db,
    AwsSecretsManager,
    AwsSsm,
    OpenBao,
    AzureKeyVault,
    Gcp,
    Kubernetes,
}

/// `secrets_manager.provider`, by OpenMetadata's names: a backend, and whether the gateway
/// manages the values (moves plain values into the store and forwards references) or, as
/// OpenMetadata's non-managed providers do, forwards Fernet tokens and keeps references the
/// user typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    pub backend: Backend,
    pub managed: bool,
}

/// Every provider name with its backend and mode.
const PROVIDERS: &[(&str, Backend, bool)] = &[
    ("embedded", Backend::Embedded, true),
    ("db", Backend::Db, false),
    ("managed-aws", Backend::AwsSecretsManager, true),
    ("aws", Backend::AwsSecretsManager, false),
    ("managed-aws-ssm", Backend::AwsSsm, true),
    ("aws-ssm", Backend::AwsSsm, false),
    ("managed-openbao", Backend::OpenBao, true),
    ("openbao", Backend::OpenBao, false),
    ("managed-azure-kv", Backend::AzureKeyVault, true),
    ("azure-kv", Backend::AzureKeyVault, false),
    ("gcp", Backend::Gcp, true),
    ("kubernetes", Backend::Kubernetes, true),
];

impl Provider {
    pub const EMBEDDED: Provider = Provider {
        backend: Backend::Embedded,
        managed: true,
    };

    pub fn parse(s: &str) -> Option<Provider> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        PROVIDERS
            .iter()
            .find(|(n, _, _)| *n == s)
            .map(|&(_, backend, managed)| Provider { backend, managed })
    }

    /// OpenMetadata's name of this provider.
    pub fn name(self) -> &'static str {
        PROVIDERS
            .iter()
            .find(|(_, b, m)| *b == self.backend && *m == self.managed)
            .map(|(n, _, _)| *n)
            .unwrap_or("embedded")
    }

    /// Every name `parse` takes, for messages.
    pub fn names() -> String {
        PROVIDERS
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
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
    pub azure: AzureParams,
    pub gcp: GcpParams,
    pub kubernetes: KubernetesParams,
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    pub cache_stale: Duration,
    /// Cached values are re-read in the background once this old (zero: never).
    pub cache_refresh: Duration,
    pub write_rate_per_sec: f64,
    pub retry_max: u32,
}

/// Azure Key Vault: where the vault is and how the gateway gets a token for it.
#[derive(Debug, Clone)]
pub struct AzureParams {
    /// `https://<vault_name>.vault.azure.net` unless `vault_url` is given.
    pub vault_url: Option<Uri>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub tenant_id: Option<String>,
    /// Microsoft Entra ID's token endpoint host (sovereign clouds, tests).
    pub authority_host: Uri,
}

/// Google Secret Manager: project, credentials and the API endpoint.
#[derive(Debug, Clone)]
pub struct GcpParams {
    pub project_id: Option<String>,
    /// A service-account key (or authorized-user) JSON file; else application default credentials.
    pub credentials_file: Option<PathBuf>,
    /// Secret Manager's REST root (`endpoint_url`, default `https://secretmanager.googleapis.com`).
    pub endpoint: Uri,
}

/// Kubernetes Secrets: namespace and how to reach the API server.
#[derive(Debug, Clone)]
pub struct KubernetesParams {
    pub namespace: String,
    pub kubeconfig_path: Option<PathBuf>,
    pub in_cluster: bool,
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

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub bot: ReadAction,
    pub user: ReadAction,
    pub anonymous: ReadAction,
    pub bot_requires_view_all: bool,
    pub mask_only: MaskOnlyPolicy,
}

/// Who sees the values of `mask_only` fields (secrets the upstream keeps in clear):
/// `Resolve` here means "shown as the upstream holds it" (`reveal`), never read from the store.
#[derive(Debug, Clone)]
pub struct MaskOnlyPolicy {
    pub bot: ReadAction,
    pub user: ReadAction,
    /// Token subjects (`sub`) that see the values whatever their class (e.g. admins).
    pub reveal_to: Vec<String>,
}

impl Default for MaskOnlyPolicy {
    fn default() -> Self {
        MaskOnlyPolicy {
            bot: ReadAction::Mask,
            user: ReadAction::Mask,
            reveal_to: Vec::new(),
        }
    }
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
        // Every problem is reported: an unknown key's line is set aside and the file read
        // again, so later unknown keys and the values' problems are found too.
        let mut text = text.to_string();
        let mut problems = Vec::new();
        let mut raw: RawConfig = loop {
            match toml::from_str(&text) {
                Ok(r) => break r,
                Err(e) => {
                    let line = e
                        .span()
                        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                    let msg = e.message().trim().to_string();
                    problems.push(match line {
                        Some(l) => format!("config file {label}:{l}: {msg}"),
                        None => format!("config file {label}: {msg}"),
                    });
                    // A table's header set aside would hand its keys to the table before.
                    let header = |l: usize| {
                        text.split('\n')
                            .nth(l - 1)
                            .is_some_and(|t| t.trim_start().starts_with('['))
                    };
                    let (Some(l), true) = (line, msg.starts_with("unknown field")) else {
                        return Err(ConfigErrors(problems));
                    };
                    if header(l) {
                        return Err(ConfigErrors(problems));
                    }
                    if problems.len() >= 100 {
                        return Err(ConfigErrors(problems));
                    }
                    text = text
                        .split('\n')
                        .enumerate()
                        .map(|(i, t)| if i + 1 == l { "" } else { t })
                        .collect::<Vec<_>>()
                        .join("\n");
                }
            }
        };
        let from_env = apply_env(&mut raw, env);
        match validate(raw, source, &label) {
            Ok(c) if problems.is_empty() => Ok(c),
            Ok(_) => Err(ConfigErrors(problems)),
            Err(ConfigErrors(more)) => {
                let head = format!("config {label}: ");
                problems.extend(more.into_iter().map(|m| {
                    let Some((key, what)) = m.strip_prefix(&head).and_then(|r| r.split_once(": "))
                    else {
                        return m;
                    };
                    // The variable that set the key, else the file's line that does.
                    if let Some((_, var)) = from_env.iter().rev().find(|(k, _)| *k == key) {
                        return format!(
                            "config {label}: {key} (from the environment variable {var}): {what}"
                        );
                    }
                    match line_of_key(&text, key) {
                        Some(l) => format!("config {label}:{l}: {key}: {what}"),
                        None => m,
                    }
                }));
                Err(ConfigErrors(problems))
            }
        }
    }
}

/// The line that sets `key` (`table.sub.name`) in a TOML text, if one does.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.')?;
    let mut current = "";
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim();
        } else if current == table
            && t.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == name)
        {
            return Some(i + 1);
        }
    }
    None
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
    fn every_problem_is_reported_unknown_keys_and_values_alike() {
        let e = parse("[server]\nlistne = \"x\"\n[policy]\nbot = \"zz\"\nusr = \"mask\"\n")
            .unwrap_err()
            .0;
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("config file t.toml:2:") && e[0].contains("listne"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("config file t.toml:5:") && e[1].contains("usr"),
            "{e:?}"
        );
        assert!(e[2].starts_with("config t.toml:4: policy.bot:"), "{e:?}");
    }

    #[test]
    fn a_bad_value_from_the_environment_names_its_variable() {
        let env = |k: &str| (k == "OMSP_LISTEN").then(|| "garbage".to_string());
        let e = Config::from_toml_str("[server]\nlisten = \"127.0.0.1:1\"\n", None, &env)
            .unwrap_err()
            .0;
        assert!(
            e[0].contains("server.listen (from the environment variable OMSP_LISTEN)"),
            "{e:?}"
        );
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8586");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9586");
        assert_eq!(c.server.max_body_bytes, 16_777_216);
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:8585/");
        assert_eq!(c.secrets.provider, Provider::EMBEDDED);
        assert_eq!(c.secrets.cluster_name, "openmetadata");
        assert_eq!(c.policy.bot, ReadAction::Resolve);
        assert_eq!(c.policy.user, ReadAction::Mask);
        assert_eq!(
            c.auth.jwks_url.to_string(),
            "http://127.0.0.1:8585/api/v1/system/config/jwks"
        );
    }

    #[test]
    fn mask_only_values_are_masked_for_everyone_unless_the_config_reveals_them() {
        let c = Config::defaults();
        assert_eq!(c.policy.mask_only.bot, ReadAction::Mask);
        assert_eq!(c.policy.mask_only.user, ReadAction::Mask);
        assert!(c.policy.mask_only.reveal_to.is_empty());
        let c = parse("[policy.mask_only]\nbot = \"reveal\"\nreveal_to = [\"admin\"]\n").unwrap();
        assert_eq!(c.policy.mask_only.bot, ReadAction::Resolve);
        assert_eq!(c.policy.mask_only.reveal_to, vec!["admin".to_string()]);
        let e = parse("[policy.mask_only]\nuser = \"resolve\"\n").unwrap_err();
        assert!(e.to_string().contains("policy.mask_only.user"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        assert!(e.to_string().contains("t.toml:3"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse("[server]\nlisten = \"nope\"\n[policy]\nbot = \"show\"\n[secrets_manager]\nprovider = \"hashicorp\"\n")
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

    const KEY: &str = "[fernet]\nkey = \"jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=\"\n";

    #[test]
    fn azure_gcp_and_kubernetes_take_openmetadatas_environment_variables() {
        let env = |k: &str| {
            Some(
                match k {
                    "OM_SM_VAULT_NAME" => "acme-vault",
                    "OM_SM_CLIENT_ID" => "cid",
                    "OM_SM_CLIENT_SECRET" => "csecret",
                    "OM_SM_TENANT_ID" => "tid",
                    "OM_SM_PROJECT_ID" => "acme-project",
                    "GOOGLE_CLOUD_PROJECT" => "loses-to-om-sm-project-id",
                    "OM_SM_NAMESPACE" => "om-secrets",
                    "OM_SM_IN_CLUSTER" => "true",
                    "SECRET_MANAGER" => "kubernetes",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let c = Config::from_toml_str(KEY, None, &env).unwrap();
        assert_eq!(c.secrets.provider.backend, Backend::Kubernetes);
        assert!(c.secrets.provider.managed);
        let az = &c.secrets.azure;
        assert_eq!(
            az.vault_url.as_ref().unwrap().to_string(),
            "https://acme-vault.vault.azure.net/"
        );
        assert_eq!(
            (
                az.client_id.as_deref(),
                az.client_secret.as_deref(),
                az.tenant_id.as_deref()
            ),
            (Some("cid"), Some("csecret"), Some("tid"))
        );
        assert_eq!(c.secrets.gcp.project_id.as_deref(), Some("acme-project"));
        assert_eq!(c.secrets.kubernetes.namespace, "om-secrets");
        assert!(c.secrets.kubernetes.in_cluster);
    }

    #[test]
    fn azure_kv_is_not_managed_and_needs_a_vault() {
        assert!(!Provider::parse("azure-kv").unwrap().managed);
        assert!(Provider::parse("managed-azure-kv").unwrap().managed);
        let e = parse(&format!(
            "{KEY}[secrets_manager]\nprovider = \"azure-kv\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("vault_name"), "{e}");
        let e = parse(&format!(
            "{KEY}[secrets_manager]\nprovider = \"azure-kv\"\n[secrets_manager.parameters]\nvault_name = \"x\"\nclient_secret = \"s\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("vault_name"), "{e}");
        assert!(e.to_string().contains("client_secret"), "{e}");
    }

    #[test]
    fn another_vendors_parameters_do_not_stop_the_configured_provider() {
        let other = "[secrets_manager.parameters]\nvault_name = \"v\"\nkubeconfig_path = \"/nonexistent\"\nproject_id = \"\"\n";
        parse(&format!("{KEY}{other}")).expect("the embedded store ignores them");
        let e = parse(&format!(
            "{KEY}[secrets_manager]\nprovider = \"azure-kv\"\n{other}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("vault_name"), "{e}");
    }

    #[test]
    fn kubernetes_without_in_cluster_needs_an_existing_kubeconfig() {
        let e = parse(&format!(
            "{KEY}[secrets_manager]\nprovider = \"kubernetes\"\n[secrets_manager.parameters]\nkubeconfig_path = \"/nonexistent/kubeconfig\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("kubeconfig_path"), "{e}");
    }
}
