//! The real `om-secrets-proxy` binary as a child process on free loopback ports, killed when
//! dropped (tests that need separate processes: replicas, store locks, signals).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_om-secrets-proxy");

/// `serve --config <config>` in front of `upstream` on two free ports, rules from the repo,
/// logging at `warn`; `env` is added last (it may override any of these).
pub struct ServeCommand {
    pub command: Command,
    pub api: u16,
    pub admin: u16,
}

impl ServeCommand {
    pub fn new(config: &Path, upstream: &str, env: &[(&str, &str)]) -> ServeCommand {
        let (api, admin) = (super::free_port(), super::free_port());
        let mut c = Command::new(BIN);
        c.args(["serve", "--config"])
            .arg(config)
            .env("OMSP_LISTEN", format!("127.0.0.1:{api}"))
            .env("OMSP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("OMSP_UPSTREAM", upstream)
            .env(
                "OMSP_RULES_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
            )
            .env("OMSP_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        ServeCommand {
            command: c,
            api,
            admin,
        }
    }

    /// Spawns it and returns once the API port accepts connections (or after 5 s).
    pub async fn start(mut self) -> GatewayProcess {
        let child = self.command.spawn().expect("spawn om-secrets-proxy");
        super::wait_for_port(self.api).await;
        GatewayProcess {
            child,
            api: self.api,
            admin: self.admin,
        }
    }
}

/// A running gateway process; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub api: u16,
    pub admin: u16,
}

impl GatewayProcess {
    pub async fn start(config: &Path, upstream: &str, env: &[(&str, &str)]) -> GatewayProcess {
        ServeCommand::new(config, upstream, env).start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.api, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An example binary built by cargo: `examples/NAME`, or the hashed name `cargo test
/// --all-targets` gives it (`examples/NAME_WITH_UNDERSCORES-<hash>`).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("examples");
    let plain = dir.join(name);
    if plain.is_file() {
        return plain;
    }
    let prefix = format!("{}-", name.replace('-', "_"));
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let f = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            f.starts_with(&prefix) && p.extension().is_none() && p.is_file()
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not built in {}: run cargo build --examples",
                dir.display()
            )
        })
}
