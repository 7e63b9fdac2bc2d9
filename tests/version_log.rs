//! The real binary logs the upstream OpenMetadata version once the upstream answers (start-up
//! does not wait for it), and warns when the version is outside the supported range.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::net::TcpListener;

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    api: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` against `upstream`, logging JSON lines at info; its stderr arrives line by line.
fn serve(upstream: &str) -> Running {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("omsp.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npublic_key_files = [\"{}\"]\n",
            jwt::fixture("key1.pkcs1.pub.pem").display()
        ),
    )
    .expect("config");
    let api = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_om-secrets-proxy"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("OMSP_LISTEN", format!("127.0.0.1:{api}"))
        .env("OMSP_ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("OMSP_UPSTREAM", upstream)
        .env(
            "OMSP_RULES_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        )
        .env("OMSP_EMBEDDED_PATH", dir.path().join("s.db"))
        .env("OMSP_LOG_LEVEL", "info")
        .env("OMSP_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        api,
        _dir: dir,
    }
}

/// The first log line (parsed) whose message contains `needle`, within `within`.
fn wait_for_log(run: &Running, needle: &str, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(line) = run.lines.recv_timeout(left) else {
            break;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(needle))
        {
            return v;
        }
        seen.push(line);
    }
    panic!("no log line with {needle:?}; got:\n{}", seen.join("\n"));
}

async fn accepts(port: u16) -> bool {
    wait_for_port(port).await;
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_is_logged_once_an_upstream_that_was_down_answers() {
    let upstream_port = free_port();
    let run = serve(&format!("http://127.0.0.1:{upstream_port}"));
    // Start-up does not wait for the upstream.
    assert!(accepts(run.api).await, "the gateway did not start");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let listener = TcpListener::bind(("127.0.0.1", upstream_port))
        .await
        .expect("bind the upstream port");
    let emu = Emulator::start_on(listener).await;
    emu.set_version("1.9.3");
    let line = wait_for_log(
        &run,
        "upstream OpenMetadata version",
        Duration::from_secs(20),
    );
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["openmetadata_version"], "1.9.3", "{line}");
    assert_eq!(line["fields"]["supported"], "1.9 to 2.0", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_newer_than_the_rules_is_a_warning() {
    let emu = Emulator::start().await;
    emu.set_version("2.1.0");
    let run = serve(&emu.url());
    let line = wait_for_log(&run, "newer than the versions", Duration::from_secs(20));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["openmetadata_version"], "2.1.0", "{line}");
}
