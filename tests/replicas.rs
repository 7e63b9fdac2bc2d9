//! Replicas: two real gateway processes share one OpenMetadata (the emulator) and one key store
//! (`bao server -dev`, Secrets Manager on moto). A password changed through replica A reaches
//! bots reading through replica B within `cache_refresh_secs`, though B had it cached with a
//! TTL of 300 s. The embedded store serves one process only: a second process on the same file
//! refuses to start and says why. `healthcheck` answers for a running gateway.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use serde_json::{json, Value};
use support::process::{GatewayProcess, ServeCommand, BIN};
use support::*;

/// The bound the replicas run with here (the default is 10 s).
const BOUND: Duration = Duration::from_secs(1);

/// One config file both replicas read: the same store, the same Fernet key, the bound.
/// `provider` and `parameters` are the lines of `[secrets_manager]` and its `parameters`.
fn write_config(dir: &Path, provider: &str, parameters: &str) -> std::path::PathBuf {
    let path = dir.join("omsp.toml");
    let text = format!(
        "[auth]\npublic_key_files = [\"{}\"]\n[fernet]\nkey = \"{}\"\n\
         [secrets_manager]\n{provider}\nprefix = \"r{:x}\"\ncache_ttl_secs = 300\ncache_refresh_secs = {}\n\
         [secrets_manager.parameters]\n{parameters}\n",
        jwt::fixture("key1.pkcs1.pub.pem").display(),
        FernetKeys::generate_key(),
        fastrand::u32(..),
        BOUND.as_secs()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn mysql(name: &str, password: &str) -> String {
    json!({"name": name, "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "username": "om", "authType": {"password": password}}}})
    .to_string()
}

async fn write_password(gw: &GatewayProcess, method: Method, name: &str, password: &str) {
    let bot = format!("Bearer {}", jwt::bot());
    let a = send(
        &client(),
        method,
        &gw.url("/api/v1/services/databaseServices"),
        &[
            ("content-type", "application/json"),
            ("authorization", &bot),
        ],
        mysql(name, password),
    )
    .await;
    assert!(a.status < 300, "write: {} {}", a.status, a.text());
}

/// The password a bot reads through `gw`.
async fn bot_reads(gw: &GatewayProcess, name: &str) -> String {
    let bot = format!("Bearer {}", jwt::bot());
    let a = send(
        &client(),
        Method::GET,
        &gw.url(&format!("/api/v1/services/databaseServices/name/{name}")),
        &[("authorization", &bot)],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v: Value = a.json();
    v["connection"]["config"]["authType"]["password"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn metric(gw: &GatewayProcess, name: &str) -> u64 {
    let text = get(&gw.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics: {text}"))
}

/// A writes, B (which has the old value cached) serves the new one within the bound.
async fn a_write_through_one_replica_reaches_the_other_within_the_bound(
    provider: &str,
    parameters: &str,
) {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), provider, parameters);
    let a = GatewayProcess::start(&config, &emu.url(), &[]).await;
    let b = GatewayProcess::start(&config, &emu.url(), &[]).await;
    let name = format!("replicated-{:x}", fastrand::u32(..));

    write_password(&a, Method::POST, &name, "first-3f9").await;
    assert_eq!(bot_reads(&b, &name).await, "first-3f9");
    assert_eq!(bot_reads(&b, &name).await, "first-3f9", "now cached in B");

    write_password(&a, Method::PUT, &name, "second-8c1").await;
    let written = Instant::now();
    assert_eq!(
        bot_reads(&a, &name).await,
        "second-8c1",
        "the writer sees its own write at once"
    );
    // B is not asked until the bound (plus a store round trip and a margin) has passed: the
    // first read after it must already see the new value.
    tokio::time::sleep(BOUND + Duration::from_millis(700)).await;
    assert_eq!(
        bot_reads(&b, &name).await,
        "second-8c1",
        "B served the old password {:?} after the write (bound {BOUND:?})",
        written.elapsed()
    );
    // Read continuously through B: the change shows within the bound (printed for the README).
    write_password(&a, Method::PUT, &name, "third-5d2").await;
    let written = Instant::now();
    while bot_reads(&b, &name).await != "third-5d2" {
        assert!(written.elapsed() < BOUND + Duration::from_millis(700));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "B served the new value {:?} after the write",
        written.elapsed()
    );
    assert!(metric(&b, "omsp_secret_cache_hits_total").await >= 1);
    assert!(
        metric(&b, "omsp_secret_cache_refreshes_total").await >= 1,
        "B re-read the secret in the background"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_replicas_serve_a_password_changed_elsewhere_within_the_bound() {
    let Some(addr) = external("OMSP_TEST_BAO_ADDR") else {
        return;
    };
    let token = std::env::var("OMSP_TEST_BAO_TOKEN").unwrap_or_default();
    a_write_through_one_replica_reaches_the_other_within_the_bound(
        "provider = \"managed-openbao\"",
        &format!("address = \"{addr}\"\ntoken = \"{token}\""),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_replicas_serve_a_password_changed_elsewhere_within_the_bound() {
    let Some(url) = external("OMSP_TEST_MOTO_URL") else {
        return;
    };
    a_write_through_one_replica_reaches_the_other_within_the_bound(
        "provider = \"managed-aws\"",
        &format!("region = \"us-east-1\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\nendpoint_url = \"{url}\""),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_embedded_store_refuses_to_start_naming_the_file() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("omsp.toml");
    let db = dir.path().join("shared-secrets.db");
    std::fs::write(
        &config,
        format!(
            "[secrets_manager.parameters]\npath = \"{}\"\n",
            db.display()
        ),
    )
    .expect("config");
    let first = GatewayProcess::start(&config, &emu.url(), &[]).await;
    assert_eq!(get(&first.admin_url("/healthz")).await.status, 200);

    let mut second = ServeCommand::new(&config, &emu.url(), &[]).command;
    let child = second
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&db.display().to_string()),
        "names the file: {err}"
    );
    assert!(
        err.contains("already open in another process"),
        "says why: {err}"
    );
    assert!(
        err.contains("managed-openbao"),
        "says what to use instead: {err}"
    );
    // The first one is unaffected.
    assert_eq!(get(&first.admin_url("/healthz")).await.status, 200);
}

fn healthcheck(addr: &str) -> Option<i32> {
    Command::new(BIN)
        .args(["healthcheck", "--addr", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run healthcheck")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_for_a_running_gateway_and_1_without_one() {
    let (_emu, gw) = stack().await;
    let addr = gw.admin.to_string();
    let code = tokio::task::spawn_blocking(move || healthcheck(&addr))
        .await
        .expect("join");
    assert_eq!(code, Some(0));
    let closed = format!("127.0.0.1:{}", free_port());
    let code = tokio::task::spawn_blocking(move || healthcheck(&closed))
        .await
        .expect("join");
    assert_eq!(code, Some(1));
}
