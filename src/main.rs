//! The `om-secrets-proxy` command line.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use om_secrets_proxy::config::{Config, LogFormat};

/// mimalloc: per-thread free lists make a request's many small allocations cheaper than
/// glibc's malloc (measured in instructions per request, README "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "om-secrets-proxy",
    version,
    about = "Keeps credentials out of OpenMetadata"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM/SIGINT, then drain in-flight requests.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load the config and every rule file; print every problem; exit 1 if any.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Say which rule a request matches and what would happen to each secret in its body.
    Explain {
        #[arg(long)]
        config: Option<PathBuf>,
        method: String,
        path: String,
        body_file: Option<PathBuf>,
    },
    /// Move secrets already stored in OpenMetadata into the configured store (or, with
    /// --reverse, back into OpenMetadata as Fernet tokens). Resumes an interrupted run.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Report what would change; write nothing anywhere.
        #[arg(long)]
        dry_run: bool,
        /// Move secrets from the store back into OpenMetadata as fernet: tokens.
        #[arg(long)]
        reverse: bool,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Re-encrypt every fernet: value OpenMetadata holds, and the embedded store, with the
    /// first key of FERNET_KEY (the new one; the old ones after it).
    RotateFernet {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Report what would change; write nothing anywhere.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Report every secret field that holds anything but its reference, and every stored
    /// secret nothing refers to; exit 1 if any, 2 if the audit could not finish.
    Audit {
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON document on stdout instead of lines.
        #[arg(long)]
        json: bool,
        /// Only these entity kinds (rule `kind`, repeatable); orphans are then not judged.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// At most N entities a second (spares OpenMetadata).
        #[arg(long, value_name = "N", value_parser = parse_rate)]
        rate: Option<f64>,
        /// Delete the orphans found (stored secrets nothing refers to).
        #[arg(long)]
        delete_orphans: bool,
    },
    /// Ask a running gateway's admin port for /healthz: exit 0 when it answers 200, 1 otherwise
    /// (a container HEALTHCHECK).
    Healthcheck {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The admin listener, host:port [default: the config's server.admin_listen]
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Fernet helpers (OpenMetadata's token format).
    Fernet {
        #[command(subcommand)]
        op: FernetOp,
    },
}

/// The flags of the commands that walk and change entities.
#[derive(clap::Args)]
struct RunFlags {
    /// Only these entity kinds (rule `kind`, repeatable).
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Write each entity's outcome to FILE as JSON (never a value).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The resume file (default: <data dir>/<command>.checkpoint).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// At most N entities a second (spares OpenMetadata).
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,
}

impl RunFlags {
    fn options(self, dry_run: bool) -> om_secrets_proxy::toolkit::RunOptions {
        om_secrets_proxy::toolkit::RunOptions {
            dry_run,
            kinds: self.kinds,
            report: self.report,
            checkpoint: self.checkpoint,
            rate: self.rate,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err("a number of entities per second above 0".into()),
    }
}

#[derive(Subcommand)]
enum FernetOp {
    /// Print a new random key.
    GenerateKey,
    /// Encrypt stdin with the first configured key; prints `fernet:<token>`.
    Encrypt {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Decrypt a `fernet:<token>` (or bare token) from stdin with any configured key.
    Decrypt {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(config.as_deref()).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

/// Libraries that may log request or response details at debug/trace (HTTP/2 frames, AWS
/// SDK bodies). A bare level such as `debug` or `trace` applies to the gateway's own modules;
/// these stay at `info` unless a directive names them explicitly.
const LIBRARY_CAPS: &str = "hyper=info,hyper_util=info,h2=info,rustls=info,tokio_rustls=info,\
hyper_rustls=info,aws_config=info,aws_smithy_runtime=info,aws_smithy_runtime_api=info,\
aws_smithy_http_client=info,aws_smithy_types=info,aws_sdk_secretsmanager=info,aws_sdk_ssm=info,\
aws_sigv4=info,aws_credential_types=info,redb=info";

fn filter_directives(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("{level},{LIBRARY_CAPS}")
    }
}

/// The log filter in force: `OMSP_LOG_LEVEL` (already merged into the config) wins; without
/// it a valid `RUST_LOG`, the tracing ecosystem's own variable that operators and scripts set
/// by habit (`RUST_LOG=warn` turns the access log off); else the config file's `logging.level`.
fn log_level(configured: &str, omsp_log_level: Option<&str>, rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(r)
            if omsp_log_level.is_none()
                && !r.is_empty()
                && tracing_subscriber::EnvFilter::try_new(r).is_ok() =>
        {
            r.to_string()
        }
        _ => configured.to_string(),
    }
}

fn init_logging(cfg: &Config) {
    let level = log_level(
        &cfg.logging.level,
        std::env::var("OMSP_LOG_LEVEL").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let filter = tracing_subscriber::EnvFilter::try_new(filter_directives(&level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in a log file they are noise, and
    // writing them costs about as much as the rest of an access line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve_command(config),
        Command::Check { config } => check_command(config.as_deref()),
        Command::Explain {
            config,
            method,
            path,
            body_file,
        } => explain_command(config, &method, &path, body_file),
        Command::Migrate {
            config,
            dry_run,
            reverse,
            run,
        } => {
            let opts = run.options(dry_run);
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let stand_in = dry_run_stand_in(&cfg, dry_run);
            with_config_and_store(cfg, stand_in, move |app| async move {
                let code = om_secrets_proxy::toolkit::commands::migrate(&app, opts, reverse).await;
                ExitCode::from(code)
            })
        }
        Command::RotateFernet {
            config,
            dry_run,
            run,
        } => rotate_command(config, run.options(dry_run)),
        Command::Audit {
            config,
            json,
            kinds,
            rate,
            delete_orphans,
        } => {
            let opts = om_secrets_proxy::toolkit::audit::AuditOptions {
                kinds,
                rate,
                delete_orphans,
                read_values: false,
            };
            with_app(config, move |app| async move {
                ExitCode::from(om_secrets_proxy::toolkit::commands::audit(&app, opts, json).await)
            })
        }
        Command::Healthcheck {
            config,
            addr,
            timeout_ms,
        } => healthcheck_command(config, addr, timeout_ms),
        Command::Fernet { op } => fernet_command(op),
    }
}

/// `serve`: binds both ports, then serves until SIGTERM/SIGINT.
fn serve_command(config: Option<PathBuf>) -> ExitCode {
    with_app(config, |app| async move {
        let (api, admin) = match app.bind().await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            api = %api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "om-secrets-proxy listening"
        );
        app.serve(api, admin, om_secrets_proxy::shutdown_signal())
            .await;
        ExitCode::SUCCESS
    })
}

/// `check`: the summary on stdout, or one line per problem and exit 1.
fn check_command(config: Option<&std::path::Path>) -> ExitCode {
    match om_secrets_proxy::check(config) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                println!("{p}");
            }
            ExitCode::from(1)
        }
    }
}

/// `explain`: what the gateway would do with one request, without sending anything.
fn explain_command(
    config: Option<PathBuf>,
    method: &str,
    path: &str,
    body_file: Option<PathBuf>,
) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules =
        match om_secrets_proxy::rules::RuleSet::load(&cfg.rules.dir, &cfg.rules.safety_net_keys) {
            Ok(r) => r,
            Err(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                return ExitCode::from(1);
            }
        };
    let body = match body_file.map(std::fs::read_to_string).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read the body file: {e}");
            return ExitCode::from(1);
        }
    };
    match om_secrets_proxy::explain::explain(&cfg, &rules, method, path, body.as_deref()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `healthcheck`: quiet on success, one line on stderr on failure.
fn healthcheck_command(
    config: Option<PathBuf>,
    addr: Option<std::net::SocketAddr>,
    timeout_ms: u64,
) -> ExitCode {
    let addr = match addr {
        Some(a) => a,
        None => match load(config) {
            Ok(cfg) => cfg.server.admin_listen,
            Err(code) => return code,
        },
    };
    let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
    match om_secrets_proxy::admin::probe_healthz(addr, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config, starts logging and the runtime, builds the app and runs `f` on it:
/// the start-up `serve` and `migrate` share. Any failure is printed and exits 1.
fn with_app<F, Fut>(config: Option<PathBuf>, f: F) -> ExitCode
where
    F: FnOnce(om_secrets_proxy::App) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match load(config) {
        Ok(cfg) => with_config(cfg, f),
        Err(code) => code,
    }
}

/// A dry run ("write nothing anywhere") with an embedded store whose file does not exist yet
/// reads an empty store instead of creating the file.
fn dry_run_stand_in(
    cfg: &Config,
    dry_run: bool,
) -> Option<std::sync::Arc<dyn om_secrets_proxy::secrets::SecretStore>> {
    let embedded = cfg.secrets.provider.backend == om_secrets_proxy::config::Backend::Embedded;
    (dry_run && embedded && !cfg.secrets.embedded_path.exists())
        .then(|| std::sync::Arc::new(om_secrets_proxy::secrets::memory::MemoryStore::new()) as _)
}

/// As [`with_app`], with the config already loaded.
fn with_config<F, Fut>(cfg: Config, f: F) -> ExitCode
where
    F: FnOnce(om_secrets_proxy::App) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    with_config_and_store(cfg, None, f)
}

/// As [`with_config`]; `store`, when given, in place of the configured one.
fn with_config_and_store<F, Fut>(
    cfg: Config,
    store: Option<std::sync::Arc<dyn om_secrets_proxy::secrets::SecretStore>>,
    f: F,
) -> ExitCode
where
    F: FnOnce(om_secrets_proxy::App) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    init_logging(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        match om_secrets_proxy::build_app_with_store(cfg, store).await {
            Ok(app) => f(app).await,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// `rotate-fernet`: the embedded store is re-encrypted first (before the app opens it),
/// then every `fernet:` value upstream.
fn rotate_command(
    config: Option<PathBuf>,
    opts: om_secrets_proxy::toolkit::RunOptions,
) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match om_secrets_proxy::toolkit::commands::rotate_store(&cfg, opts.dry_run) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rotate-fernet: {e}");
            return ExitCode::from(1);
        }
    };
    let stand_in = dry_run_stand_in(&cfg, opts.dry_run);
    with_config_and_store(cfg, stand_in, move |app| async move {
        ExitCode::from(om_secrets_proxy::toolkit::commands::rotate_fernet(&app, opts, store).await)
    })
}

/// `fernet generate-key | encrypt | decrypt`: encrypt/decrypt read the value from stdin.
fn fernet_command(op: FernetOp) -> ExitCode {
    use om_secrets_proxy::secrets::fernet::FernetKeys;
    use std::io::Read;
    let config = match op {
        FernetOp::GenerateKey => {
            println!("{}", FernetKeys::generate_key());
            return ExitCode::SUCCESS;
        }
        FernetOp::Encrypt { ref config } | FernetOp::Decrypt { ref config } => config.clone(),
    };
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let keys = match FernetKeys::new(&cfg.fernet.keys) {
        Ok(k) if !k.is_empty() => k,
        Ok(_) => {
            eprintln!("fernet.key: no key configured (set FERNET_KEY)");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("fernet.key: {e}");
            return ExitCode::from(1);
        }
    };
    for w in om_secrets_proxy::config_warnings(&cfg) {
        eprintln!("warning: {w}");
    }
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("cannot read stdin");
        return ExitCode::from(1);
    }
    // One trailing newline (from echo or a heredoc) is not part of the value.
    let input = input.strip_suffix('\n').unwrap_or(&input);
    let input = input.strip_suffix('\r').unwrap_or(input);
    let out = match op {
        FernetOp::Encrypt { .. } => keys.encrypt(input).map_err(|e| e.to_string()),
        _ => keys.decrypt(input.trim()).map_err(|e| e.to_string()),
    };
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_keeps_libraries_at_info_and_explicit_directives_are_kept() {
        let f = filter_directives("trace");
        assert!(f.starts_with("trace,"));
        assert!(f.contains("h2=info") && f.contains("aws_smithy_runtime=info"));
        assert!(tracing_subscriber::EnvFilter::try_new(&f).is_ok());
        assert_eq!(filter_directives("h2=trace"), "h2=trace");
        assert_eq!(filter_directives("debug,hyper=trace"), "debug,hyper=trace");
    }

    #[test]
    fn omsp_log_level_beats_rust_log_which_beats_the_config_file() {
        assert_eq!(log_level("info", Some("debug"), Some("warn")), "info");
        assert_eq!(log_level("info", None, Some("warn")), "warn");
        assert_eq!(log_level("debug", None, None), "debug");
        // An empty or unreadable RUST_LOG is ignored, not an error.
        assert_eq!(log_level("info", None, Some(" ")), "info");
        assert_eq!(log_level("info", None, Some("=[")), "info");
    }
}
