//! The real binary at the most verbose level (`OMSP_LOG_LEVEL=trace`, JSON lines) writes
//! requests, secret operations and refusals to its log, but never a secret value, a Fernet
//! token of one, or a caller's token.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use http::Method;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secret_and_no_token() {
    let emu = Emulator::start().await;
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
    let (api, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_om-secrets-proxy"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("OMSP_LISTEN", format!("127.0.0.1:{api}"))
        .env("OMSP_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("OMSP_UPSTREAM", emu.url())
        .env(
            "OMSP_RULES_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        )
        .env("OMSP_EMBEDDED_PATH", dir.path().join("s.db"))
        .env("OMSP_LOG_LEVEL", "trace")
        .env("OMSP_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_port(api).await;
    let base = format!("http://127.0.0.1:{api}/api/v1/services/databaseServices");
    let bot = format!("Bearer {}", jwt::bot());
    let user = format!("Bearer {}", jwt::user());
    let values = ["log-first-7a1", "log-second-7a2", "log-refused-7a3"];
    let c = client();
    let mysql = |pw: &str| {
        json!({"name": "logged", "serviceType": "Mysql", "connection": {"config": {
            "type": "Mysql", "username": "om", "authType": {"password": pw}}}})
        .to_string()
    };
    let ct = ("content-type", "application/json");
    let a = send(
        &c,
        Method::POST,
        &base,
        &[ct, ("authorization", &bot)],
        mysql(values[0]),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["id"].as_str().expect("id").to_string();
    let a = send(
        &c,
        Method::GET,
        &format!("{base}/{id}"),
        &[("authorization", &bot)],
        "",
    )
    .await;
    assert!(
        a.text().contains(values[0]),
        "the bot resolves: {}",
        a.text()
    );
    let a = send(
        &c,
        Method::GET,
        &format!("{base}/{id}"),
        &[("authorization", &user)],
        "",
    )
    .await;
    assert!(!a.text().contains(values[0]));
    let patch = json!([{"op": "replace", "path": "/connection/config/authType/password", "value": values[1]}]);
    let a = send(
        &c,
        Method::PATCH,
        &format!("{base}/{id}"),
        &[
            ("content-type", "application/json-patch+json"),
            ("authorization", &bot),
        ],
        patch.to_string(),
    )
    .await;
    assert!(a.status < 300, "{}", a.text());
    let bad = json!({"name": "bad", "serviceType": "Mysql", "connection": {"config": {
        "type": "Mysql", "authType": values[2]}}});
    let a = send(&c, Method::PUT, &base, &[ct], bad.to_string()).await;
    assert_eq!(a.status, 400);

    // SIGTERM, then read everything the process logged.
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read log");
    let _ = child.wait();

    // The log is verbose enough to have something to leak.
    assert!(log.lines().count() >= 10, "{log}");
    assert!(log.matches("omsp::access").count() >= 5, "{log}");
    assert!(log.contains("omsp::audit"), "{log}");
    for v in values {
        assert!(!log.contains(v), "a secret value was logged");
    }
    let signature = bot.rsplit('.').next().expect("signature");
    assert!(
        !log.contains(signature) && !log.contains("Bearer "),
        "a token was logged"
    );
    assert!(!log.contains("fernet:"), "a Fernet token was logged");
}
