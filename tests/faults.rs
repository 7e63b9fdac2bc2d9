//! Faults, on real processes (issue 16): the gateway binary, the OpenMetadata emulator (in this
//! process, or the `om-emulator` example as a process of its own that can be killed, stopped
//! and continued), `bao server -dev` (one of the test's own, to stop and restart; the shared
//! one of `./scripts/test.sh` where nothing is stopped).
//!
//! - The store stops under load: writes get 503 in OpenMetadata's shape and nothing of them
//!   reaches the upstream; once the store is back, writes succeed again, without a restart.
//! - The upstream stops, comes back, stalls: 502 while it is gone, 504 once the configured
//!   limit has passed while it stalls, never a longer wait; answers again once it is back.
//!   A write the stalled upstream applied after the gateway gave up still resolves.
//! - The gateway is SIGKILLed during concurrent writes: afterwards no entity upstream refers to
//!   a secret the store lacks, and every secret nothing refers to is named by `audit` (and
//!   removed by `audit --delete-orphans`).
//! - SIGTERM under load: every request in flight gets its whole answer, new connections are
//!   refused, the process exits 0, and every write it acknowledged is in the store.
//!
//! No answer and no log line ever carries a password.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use om_secrets_proxy::config::Config;
use om_secrets_proxy::secrets::fernet::FernetKeys;
use om_secrets_proxy::secrets::SecretStore;
use serde_json::{json, Value};
use support::process::{example_binary, GatewayProcess, ServeCommand, BIN};
use support::*;

const KEY: &str = "ihmCdSAtO4P3yYxDDAx8bIFjRvUyQIdrR2Dxhbpw4dI=";
const DB: &str = "services/databaseServices";
const COLLECTION: &str = "/api/v1/services/databaseServices";
/// No request may take longer than this, whatever fails (the limits here are 1-2 s).
const HANG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Processes, configs, requests

/// Sends a signal with kill(1).
fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}

/// Polls `check` every 50 ms until it holds or `limit` passes; returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A config file for the gateway and the toolkit: the test key, a bot service token, the
/// upstream (`upstream` lines added), and the store (`secrets` is whole sections).
fn write_config(dir: &Path, upstream: &str, upstream_lines: &str, secrets: &str) -> PathBuf {
    let path = dir.join(format!("omsp-{:x}.toml", fastrand::u32(..)));
    let text = format!(
        "[auth]\npublic_key_files = [\"{}\"]\n[fernet]\nkey = \"{KEY}\"\n\
         [upstream]\nurl = \"{upstream}\"\nservice_token = \"{}\"\n{upstream_lines}\n{secrets}\n",
        jwt::fixture("key1.pkcs1.pub.pem").display(),
        jwt::bot(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn embedded(dir: &Path, prefix: &str) -> String {
    format!(
        "[secrets_manager]\nprefix = \"{prefix}\"\n[secrets_manager.parameters]\npath = \"{}\"\n",
        dir.join("secrets.db").display()
    )
}

fn openbao(addr: &str, token: &str, prefix: &str) -> String {
    format!(
        "[secrets_manager]\nprovider = \"managed-openbao\"\nprefix = \"{prefix}\"\nretry_max = 1\n\
         [secrets_manager.parameters]\naddress = \"{addr}\"\ntoken = \"{token}\"\n"
    )
}

/// The store a config names, opened by the test (the embedded one only once no gateway holds it).
async fn open_store(config: &Path) -> Arc<dyn SecretStore> {
    let text = std::fs::read_to_string(config).expect("config");
    let cfg = Config::from_toml_str(&text, None, &|_| None).expect("config");
    om_secrets_proxy::secrets::open_store(
        &cfg,
        &FernetKeys::new(&[KEY.to_string()]).expect("key"),
        Arc::new(om_secrets_proxy::metrics::Metrics::default()),
    )
    .await
    .expect("store")
}

/// The gateway as a process at `info`, its log in `dir`.
async fn gateway(dir: &Path, config: &Path, upstream: &str) -> (GatewayProcess, PathBuf) {
    let log = dir.join(format!("gateway-{:x}.log", fastrand::u32(..)));
    let mut cmd = ServeCommand::new(config, upstream, &[("OMSP_LOG_LEVEL", "info")]);
    cmd.command
        .stderr(std::fs::File::create(&log).expect("log file"));
    let gw = cmd.start().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            try_send(Method::GET, &gw.admin_url("/healthz"), None, None)
                .await
                .status()
                == Some(200)
        })
        .await,
        "the gateway did not start"
    );
    (gw, log)
}

/// What a request got.
enum Got {
    /// A whole answer.
    Answer(Answer, Duration),
    /// No answer at all (refused, reset or closed before a status line).
    Nothing(String),
    /// A status line, then the body broke off.
    Broken(u16, String),
    /// Nothing within [`HANG`].
    Hung,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Answer(a, took) => write!(f, "{} after {took:?}: {}", a.status, a.text()),
            Got::Nothing(e) => write!(f, "no answer: {e}"),
            Got::Broken(s, e) => write!(f, "{s}, then the body broke off: {e}"),
            Got::Hung => write!(f, "no answer within {HANG:?}"),
        }
    }
}

impl Got {
    fn status(&self) -> Option<u16> {
        match self {
            Got::Answer(a, _) => Some(a.status),
            _ => None,
        }
    }

    /// The answer; panics with what happened instead.
    fn answer(&self, what: &str) -> &Answer {
        match self {
            Got::Answer(a, _) => a,
            other => panic!("{what}: {other:?}"),
        }
    }
}

async fn try_send(m: Method, url: &str, auth: Option<&str>, body: Option<String>) -> Got {
    let started = Instant::now();
    let mut b = Request::builder().method(m).uri(url);
    if let Some(token) = auth {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("request");
    let go = async {
        let resp = match client().request(req).await {
            Ok(r) => r,
            Err(e) => return Got::Nothing(format!("{e:?}")),
        };
        let (parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(b) => Got::Answer(
                Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: b.to_bytes(),
                    version: parts.version,
                },
                started.elapsed(),
            ),
            Err(e) => Got::Broken(parts.status.as_u16(), e.to_string()),
        }
    };
    tokio::time::timeout(HANG, go).await.unwrap_or(Got::Hung)
}

fn service(name: &str, password: Option<&str>, tag: &str) -> String {
    json!({"name": name, "serviceType": "Mysql", "description": tag,
           "connection": {"config": {"type": "Mysql", "username": "om", "hostPort": "db:3306",
                                     "authType": {"password": password}}}})
    .to_string()
}

/// PUT (create or update) of a MySQL service with a password, as a bot.
async fn put(api: &str, name: &str, password: Option<&str>, tag: &str) -> Got {
    try_send(
        Method::PUT,
        &format!("{api}{COLLECTION}"),
        Some(&jwt::bot()),
        Some(service(name, password, tag)),
    )
    .await
}

/// A service read by name, as `token`'s caller.
async fn read(api: &str, name: &str, token: &str) -> Got {
    try_send(
        Method::GET,
        &format!("{api}{COLLECTION}/name/{name}"),
        Some(token),
        None,
    )
    .await
}

fn password_of(entity: &Value) -> Option<String> {
    entity["connection"]["config"]["authType"]["password"]
        .as_str()
        .map(str::to_string)
}

/// The answer is the gateway's own error in OpenMetadata's shape with this status.
fn assert_om_error(got: &Got, status: u16, what: &str) {
    let a = got.answer(what);
    assert_eq!(a.status, status, "{what}: {}", a.text());
    let v = a.json();
    assert_eq!(v["code"], status, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(
        a.headers
            .get("content-type")
            .is_some_and(|c| c.as_bytes().starts_with(b"application/json")),
        "{what}"
    );
}

/// No value in `values` occurs, in any form, in `hay`.
fn assert_no_leak(hay: &[u8], values: &[String], what: &str) {
    for v in values {
        for form in leak_forms(v) {
            assert!(!contains(hay, &form), "{what} holds the password {v:?}");
        }
    }
}

fn api(gw: &GatewayProcess) -> String {
    gw.url("")
}

// ---------------------------------------------------------------------------------------------
// External processes the tests stop: `bao server -dev`, the emulator example

/// The `bao` binary: `OMSP_TEST_BAO_BIN`, else the venv's `./scripts/test.sh` installs.
fn bao_bin() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/venv/bin/bao");
    match std::env::var("OMSP_TEST_BAO_BIN") {
        Ok(b) if !b.is_empty() => Some(b.into()),
        _ if local.is_file() => Some(local),
        _ => external("OMSP_TEST_BAO_BIN").map(PathBuf::from),
    }
}

/// A `bao server -dev` of the test's own (in memory: a restart starts empty).
struct Bao {
    child: Child,
    bin: PathBuf,
    port: u16,
}

const BAO_TOKEN: &str = "faults-root";

impl Bao {
    async fn start(bin: &Path, port: u16) -> Bao {
        let child = Command::new(bin)
            .args(["server", "-dev", &format!("-dev-root-token-id={BAO_TOKEN}")])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bao");
        let bao = Bao {
            child,
            bin: bin.to_path_buf(),
            port,
        };
        let health = format!("{}/v1/sys/health", bao.addr());
        assert!(
            eventually(Duration::from_secs(30), || async {
                try_send(Method::GET, &health, None, None).await.status() == Some(200)
            })
            .await,
            "bao server -dev did not start"
        );
        bao
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn restart(&mut self) {
        self.stop();
        *self = Bao::start(&self.bin.clone(), self.port).await;
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `om-emulator` example as a process on a fixed port (in memory: a restart starts empty).
struct EmuProcess {
    child: Child,
    port: u16,
}

impl EmuProcess {
    async fn start(port: u16) -> EmuProcess {
        let child = Command::new(example_binary("om-emulator"))
            .arg(format!("127.0.0.1:{port}"))
            .env("OM_EMULATOR_NO_BENCH_SEED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn om-emulator");
        let url = format!("http://127.0.0.1:{port}/api/v1/system/health");
        assert!(
            eventually(Duration::from_secs(30), || async {
                try_send(Method::GET, &url, None, None).await.status() == Some(200)
            })
            .await,
            "the emulator did not start"
        );
        EmuProcess { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EmuProcess {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL promptly everywhere.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Background load: bot writes (each with a unique tag and password) and reads

#[derive(Default)]
struct Load {
    /// (tag, password, what the write got: status or None).
    writes: Vec<(String, String, Option<u16>)>,
    reads: Vec<Option<u16>>,
    /// Every answer body, for the leak check.
    bodies: Vec<u8>,
    /// Anything but a whole answer within the limit.
    failures: Vec<String>,
}

/// `workers` loops of a write and a user read each until `stop`.
fn start_load(
    api: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Load>>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Mutex::new(Load::default()));
    let tasks = (0..workers)
        .map(|w| {
            let (api, stop, load) = (api.clone(), stop.clone(), load.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (tag, password) = (format!("op-{w}-{i}-tag"), format!("pw-{w}-{i}-9f2c"));
                    let got =
                        put(&api, &format!("load-{w}-{}", i % 3), Some(&password), &tag).await;
                    let r = read(&api, &format!("load-{w}-{}", i % 3), &jwt::user()).await;
                    {
                        let mut l = load.lock().expect("load");
                        // A bot's own write answers with its value; everything else must not.
                        for (g, own) in [(&got, true), (&r, false)] {
                            match g {
                                Got::Answer(a, _) if own && a.status < 300 => {}
                                Got::Answer(a, _) => l.bodies.extend_from_slice(&a.body),
                                other => l.failures.push(format!("{other:?}")),
                            }
                        }
                        l.writes.push((tag, password, got.status()));
                        l.reads.push(r.status());
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    (load, tasks)
}

async fn stop_load(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
}

// ---------------------------------------------------------------------------------------------
// The store stopped and restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_gets_writes_503_with_nothing_forwarded_and_recovers_without_a_restart() {
    let Some(bin) = bao_bin() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let mut bao = Bao::start(&bin, free_port()).await;
    let emu = Emulator::start().await;
    let config = write_config(
        dir.path(),
        &emu.url(),
        "",
        &openbao(&bao.addr(), BAO_TOKEN, "faults"),
    );
    let (mut gw, log) = gateway(dir.path(), &config, &emu.url()).await;
    let api = api(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = start_load(api.clone(), 4, stop.clone());
    let mut passwords = Vec::new();

    // Up: writes land, bots read them back.
    let got = put(&api, "before", Some("pw-before-1d7"), "before").await;
    assert_eq!(
        got.answer("write").status,
        201,
        "{}",
        got.answer("write").text()
    );
    let got = read(&api, "before", &jwt::bot()).await;
    assert_eq!(
        password_of(&got.answer("read").json()).as_deref(),
        Some("pw-before-1d7")
    );
    passwords.push("pw-before-1d7".to_string());

    // Down.
    bao.stop();
    let readyz = gw.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(15), || async {
            try_send(Method::GET, &readyz, None, None).await.status() == Some(503)
        })
        .await,
        "/readyz still 200 with the store gone"
    );
    emu.clear_recorded();
    let mut down = Vec::new();
    for i in 0..8 {
        let (name, password) = (format!("down-{i}"), format!("pw-down-{i}-5ab"));
        let api = api.clone();
        let p = password.clone();
        down.push(tokio::spawn(async move {
            put(&api, &name, Some(&p), &format!("down-tag-{i}")).await
        }));
        passwords.push(password);
    }
    for d in down {
        let got = d.await.expect("write");
        assert_om_error(&got, 503, "a write with the store down");
        assert_no_leak(&got.answer("write").body, &passwords, "a 503");
    }
    // Users still read (masks need no store); bots get what they read before from the cache.
    let got = read(&api, "before", &jwt::user()).await;
    assert_eq!(got.answer("user read").status, 200);
    let got = read(&api, "before", &jwt::bot()).await;
    assert_eq!(
        password_of(&got.answer("a cached bot read").json()).as_deref(),
        Some("pw-before-1d7")
    );
    let forwarded = emu.everything_received();
    assert!(
        !contains(&forwarded, b"down-tag-"),
        "a write refused for the store reached the upstream"
    );

    // Back, without touching the gateway.
    bao.restart().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            try_send(Method::GET, &readyz, None, None).await.status() == Some(200)
        })
        .await,
        "/readyz not 200 again after the store came back"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            put(&api, "after", Some("pw-after-7e3"), "after")
                .await
                .status()
                == Some(201)
        })
        .await,
        "writes did not recover"
    );
    passwords.push("pw-after-7e3".to_string());
    for i in 0..5 {
        let pw = format!("pw-after-{i}-c40");
        let got = put(&api, "after", Some(&pw), "after").await;
        assert_eq!(got.status(), Some(200), "{got:?}");
        let got = read(&api, "after", &jwt::bot()).await;
        assert_eq!(password_of(&got.answer("read").json()), Some(pw.clone()));
        passwords.push(pw);
    }
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "the gateway restarted"
    );
    stop_load(&stop, tasks).await;

    // The load saw 2xx or a 503 for each write, and none of its 503s reached the upstream.
    let l = load.lock().expect("load");
    assert!(l.failures.is_empty(), "{:?}", l.failures);
    let forwarded = emu.everything_received();
    for (tag, _, status) in &l.writes {
        match status {
            Some(200 | 201) => {}
            Some(503) => assert!(
                !contains(&forwarded, tag.as_bytes()),
                "{tag}: answered 503 but forwarded"
            ),
            other => panic!("a write under load got {other:?}"),
        }
    }
    let refused = l.writes.iter().filter(|w| w.2 == Some(503)).count();
    let last = l
        .writes
        .iter()
        .rev()
        .take(4)
        .filter(|w| w.2.is_some_and(|s| s < 300));
    assert!(refused > 0, "the load never met the outage");
    assert!(last.count() > 0, "the load's writes did not recover");
    // Users read on (masks need no store); an entity whose write was refused is not there.
    assert!(
        l.reads.iter().all(|s| matches!(s, Some(200 | 404))),
        "{:?}",
        l.reads
    );
    passwords.extend(l.writes.iter().map(|w| w.1.clone()));
    assert_no_leak(&l.bodies, &passwords, "an answer under load");
    drop(l);
    drop(gw);
    assert_no_leak(&std::fs::read(&log).expect("log"), &passwords, "the log");
    eprintln!("store outage: {refused} writes under load refused with 503, none forwarded");
}

// ---------------------------------------------------------------------------------------------
// The upstream stopped, restarted and stalled

/// The upstream limit here (`upstream.timeout_ms` and `body_timeout_ms`).
const LIMIT: Duration = Duration::from_millis(1000);

/// One of each: a bot write with a secret, a bot read, a user list, a pass-through GET.
async fn round(api: &str, name: &str, password: &str) -> Vec<(&'static str, Got)> {
    let (bot, user) = (jwt::bot(), jwt::user());
    let (list, pass) = (
        format!("{api}{COLLECTION}?limit=5"),
        format!("{api}/__test/json2k"),
    );
    let (w, r, l, p) = tokio::join!(
        put(api, name, Some(password), name),
        read(api, "sample-database", &bot),
        try_send(Method::GET, &list, Some(&user), None),
        try_send(Method::GET, &pass, None, None),
    );
    vec![
        ("write", w),
        ("bot read", r),
        ("user list", l),
        ("pass-through", p),
    ]
}

fn all_ok(round: &[(&str, Got)]) -> bool {
    round
        .iter()
        .all(|(_, g)| g.status().is_some_and(|s| (200..300).contains(&s)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_stalled_upstream_gets_502_or_504_within_the_limit_and_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut emu = EmuProcess::start(free_port()).await;
    let limits = format!(
        "timeout_ms = {0}\nbody_timeout_ms = {0}\n",
        LIMIT.as_millis()
    );
    let prefix = "faults";
    let config = write_config(
        dir.path(),
        &emu.url(),
        &limits,
        &embedded(dir.path(), prefix),
    );
    let (gw, log) = gateway(dir.path(), &config, &emu.url()).await;
    let api = api(&gw);
    let mut passwords = Vec::new();
    let mut bodies = Vec::new();

    let up = round(&api, "up-0", "pw-up-0-e1").await;
    passwords.push("pw-up-0-e1".to_string());
    assert!(all_ok(&up), "{up:?}");

    // Gone: every request is a 502 at once.
    emu.kill();
    for i in 0..3 {
        let pw = format!("pw-down-{i}-e2");
        for (what, got) in round(&api, &format!("down-{i}"), &pw).await {
            assert_om_error(&got, 502, what);
            let Got::Answer(a, took) = &got else {
                unreachable!()
            };
            assert!(*took < LIMIT + Duration::from_secs(5), "{what}: {took:?}");
            bodies.extend_from_slice(&a.body);
        }
        passwords.push(pw);
    }

    // Back on the same port: answers again, no gateway restart.
    let port = emu.port;
    drop(emu);
    let emu = EmuProcess::start(port).await;
    let mut n = 0;
    assert!(
        eventually(Duration::from_secs(20), || {
            n += 1;
            let (api, name, pw) = (api.clone(), format!("back-{n}"), format!("pw-back-{n}-e3"));
            passwords.push(pw.clone());
            async move { all_ok(&round(&api, &name, &pw).await) }
        })
        .await,
        "no recovery after the upstream came back"
    );

    // Stalled (SIGSTOP: connections are accepted, nothing is answered): 504 once the limit
    // has passed, not later.
    signal(&emu.child, "STOP");
    let status = format!("/proc/{}/status", emu.child.id());
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&status).is_ok_and(|s| s.contains("State:\tT"))
        })
        .await,
        "the emulator did not stop"
    );
    for i in 0..2 {
        let pw = format!("pw-stall-{i}-e4");
        for (what, got) in round(&api, &format!("stall-{i}"), &pw).await {
            assert_om_error(&got, 504, what);
            let Got::Answer(a, took) = &got else {
                unreachable!()
            };
            assert!(
                *took >= LIMIT - Duration::from_millis(50),
                "{what}: {took:?}"
            );
            assert!(*took < LIMIT + Duration::from_secs(5), "{what}: {took:?}");
            bodies.extend_from_slice(&a.body);
        }
        passwords.push(pw);
    }
    signal(&emu.child, "CONT");
    assert!(
        eventually(Duration::from_secs(20), || {
            let api = api.clone();
            async move { all_ok(&round(&api, "cont", "pw-cont-e5").await) }
        })
        .await,
        "no recovery after the upstream continued"
    );
    passwords.push("pw-cont-e5".to_string());
    // A write the stalled upstream applied once it continued reads back (not a reference to
    // a secret the gateway took back when it gave up).
    for i in 0..2 {
        let got = read(&api, &format!("stall-{i}"), &jwt::bot()).await;
        let a = got.answer("a stalled write read back");
        if a.status != 404 {
            assert_eq!(a.status, 200, "{}", a.text());
            assert_eq!(password_of(&a.json()), Some(format!("pw-stall-{i}-e4")));
        }
    }
    assert_no_leak(&bodies, &passwords, "an error answer");

    // Nothing dangles, and writes refused while the upstream was gone left nothing behind.
    // The only orphans: `up-0` (the restarted upstream lost it) and a stalled write the
    // upstream did not apply (kept: the gateway cannot know whether it did).
    let mut gw = gw;
    signal(&gw.child, "TERM");
    assert!(gw.child.wait().expect("wait").success());
    let audit = run_toolkit(&config, &["audit", "--json"]).await;
    let report: Value = serde_json::from_str(&audit.0).unwrap_or_else(|e| panic!("{e}: {audit:?}"));
    assert_eq!(report["findings"], json!([]), "{report}");
    let orphans: Vec<String> = serde_json::from_value(report["orphans"].clone()).expect("orphans");
    assert!(
        orphans
            .iter()
            .all(|o| o.contains("/database/up-0/") || o.contains("/database/stall-")),
        "{orphans:?}"
    );
    assert_no_leak(&std::fs::read(&log).expect("log"), &passwords, "the log");
    assert_no_leak(format!("{audit:?}").as_bytes(), &passwords, "the audit");
    drop(emu);
}

/// Runs a toolkit command: (stdout, stderr, exit code).
async fn run_toolkit(config: &Path, args: &[&str]) -> (String, String, Option<i32>) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run the binary");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.code(),
    )
}

/// An in-process gateway with an in-memory store in front of `upstream`, limit `timeout`.
async fn mem_gateway(
    upstream: &str,
    timeout: Duration,
) -> (Gw, Arc<om_secrets_proxy::secrets::memory::MemoryStore>) {
    let mem = Arc::new(om_secrets_proxy::secrets::memory::MemoryStore::new());
    let mut cfg = config_for(upstream);
    cfg.secrets.cache_ttl = Duration::ZERO;
    cfg.secrets.retry_max = 0;
    cfg.upstream.timeout = timeout;
    cfg.auth.public_key_files = vec![jwt::fixture("key1.pkcs1.pub.pem")];
    let gw = start_gateway_with_store(cfg, Some(mem.clone())).await;
    (gw, mem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_upstream_applies_after_the_gateway_timed_out_still_resolves() {
    let emu = Emulator::start().await;
    let (gw, mem) = mem_gateway(&emu.url(), Duration::from_millis(300)).await;
    let api = gw.url("");
    emu.set_delay(Some(Duration::from_millis(1500)));
    let got = put(&api, "late", Some("pw-late-a1"), "late").await;
    assert_om_error(&got, 504, "a write the upstream answers late");
    assert!(
        eventually(Duration::from_secs(10), || async {
            emu.entity(DB, "late").is_some()
        })
        .await,
        "the upstream never applied the write"
    );
    emu.set_delay(None);
    let upstream = password_of(&emu.entity(DB, "late").expect("entity")).expect("reference");
    let id = upstream
        .strip_prefix("secret:")
        .expect("a reference upstream");
    assert_eq!(
        mem.get(id).await.expect("store").as_deref(),
        Some("pw-late-a1"),
        "the reference upstream dangles"
    );
    let got = read(&api, "late", &jwt::bot()).await;
    assert_eq!(
        password_of(&got.answer("read").json()).as_deref(),
        Some("pw-late-a1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_an_unreachable_upstream_leaves_nothing_in_the_store() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (gw, mem) = mem_gateway(&closed, Duration::from_secs(2)).await;
    let got = put(&gw.url(""), "nowhere", Some("pw-nowhere-b2"), "nowhere").await;
    assert_om_error(&got, 502, "a write to an unreachable upstream");
    assert_eq!(mem.list("").await.expect("list"), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The gateway SIGKILLed during concurrent writes

/// What an entity is (or may be, while a write was in flight) upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Upstream {
    Absent,
    /// Present, with this password (`None`: the field is empty).
    Present(Option<String>),
}

#[derive(Debug)]
struct Track {
    acked: Upstream,
    in_flight: Option<Upstream>,
}

/// 12 writers, 3 services each, one request at a time per writer: PUT with a new password
/// mostly, PUT with `null` (a secret delete) every 5th, a hard delete every 7th.
fn start_writers(
    api: String,
    tracks: Arc<Mutex<BTreeMap<String, Track>>>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..12)
        .map(|w| {
            let (api, tracks, acked) = (api.clone(), tracks.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0usize.. {
                    let name = format!("kill-{w}-{}", i % 3);
                    let next = if i % 7 == 6 {
                        Upstream::Absent
                    } else if i % 5 == 4 {
                        Upstream::Present(None)
                    } else {
                        Upstream::Present(Some(format!("pw-{name}-{i}-k9")))
                    };
                    tracks
                        .lock()
                        .expect("tracks")
                        .entry(name.clone())
                        .or_insert(Track {
                            acked: Upstream::Absent,
                            in_flight: None,
                        })
                        .in_flight = Some(next.clone());
                    let answer = match &next {
                        Upstream::Absent => {
                            try_send(
                                Method::DELETE,
                                &format!("{api}{COLLECTION}/name/{name}?hardDelete=true"),
                                Some(&jwt::bot()),
                                None,
                            )
                            .await
                        }
                        Upstream::Present(p) => put(&api, &name, p.as_deref(), "kill").await,
                    };
                    match answer.status() {
                        // A delete of an entity not there (yet, or again) changes nothing.
                        Some(s) if s < 300 || (s == 404 && next == Upstream::Absent) => {
                            let mut t = tracks.lock().expect("tracks");
                            let t = t.get_mut(&name).expect("track");
                            t.acked = next;
                            t.in_flight = None;
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(s) => panic!("{name}: a write got {s} before the kill: {answer:?}"),
                        // The gateway is gone: this one stays in flight.
                        None => return,
                    }
                }
            })
        })
        .collect()
}

/// Every id under `/<prefix>/` the store holds, with its value (owner markers included).
async fn stored(
    config: &Path,
    prefix: &str,
    embedded_at: Option<&Path>,
) -> BTreeMap<String, String> {
    let store: Arc<dyn SecretStore> = match embedded_at {
        // Opened bare: dropped, it lets go of the file at once.
        Some(path) => Arc::new(
            om_secrets_proxy::secrets::embedded::EmbeddedStore::open(
                path,
                &FernetKeys::new(&[KEY.to_string()]).expect("key"),
            )
            .expect("the store reopens after the kill"),
        ),
        None => open_store(config).await,
    };
    let mut out = BTreeMap::new();
    for id in store.list(&format!("/{prefix}/")).await.expect("list") {
        let v = store.get(&id).await.expect("get").unwrap_or_default();
        out.insert(id, v);
    }
    out
}

async fn killed_during_concurrent_writes(secrets: &str, prefix: &str, embedded_at: Option<&Path>) {
    let dir = tempfile::tempdir().expect("tmp");
    let emu = Emulator::start().await;
    let config = write_config(dir.path(), &emu.url(), "", secrets);
    let (mut gw, log) = gateway(dir.path(), &config, &emu.url()).await;
    let tracks = Arc::new(Mutex::new(BTreeMap::new()));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers = start_writers(api(&gw), tracks.clone(), acked.clone());
    // Enough acknowledged writes to mean something (however slow the machine), then SIGKILL
    // mid-flight.
    let enough = eventually(Duration::from_secs(60), || async {
        acked.load(Ordering::SeqCst) >= 150
    })
    .await;
    gw.child.kill().expect("SIGKILL");
    gw.child.wait().expect("wait");
    for w in writers {
        w.await.expect("a writer failed before the kill");
    }
    let acked = acked.load(Ordering::SeqCst);
    assert!(enough || acked >= 30, "only {acked} writes acknowledged");
    let tracks = std::mem::take(&mut *tracks.lock().expect("tracks"));
    let in_flight = tracks.values().filter(|t| t.in_flight.is_some()).count();

    // Upstream against the store: no reference to a secret the store lacks; what the store
    // holds that nothing refers to is an orphan.
    let store = stored(&config, prefix, embedded_at).await;
    let mut referenced = BTreeSet::new();
    for e in emu.entities(DB) {
        if let Some(id) = password_of(&e)
            .as_deref()
            .and_then(|p| p.strip_prefix("secret:"))
        {
            assert!(
                store.contains_key(id),
                "{} refers to {id}, which is not stored",
                e["name"]
            );
            referenced.insert(id.to_string());
        }
    }
    let orphans: BTreeSet<String> = store
        .keys()
        .filter(|id| !id.ends_with("/.owner") && !referenced.contains(*id))
        .cloned()
        .collect();

    // The toolkit names exactly those orphans, finds nothing else, and removes them.
    let (out, err, code) = run_toolkit(&config, &["audit", "--json"]).await;
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(report["findings"], json!([]), "{report}");
    let named: BTreeSet<String> =
        serde_json::from_value(report["orphans"].clone()).expect("orphans");
    assert_eq!(named, orphans, "audit names every orphan, and only those");
    assert_eq!(code, Some(if orphans.is_empty() { 0 } else { 1 }), "{err}");
    if !orphans.is_empty() {
        let (_, err, code) = run_toolkit(&config, &["audit", "--delete-orphans"]).await;
        assert_eq!(code, Some(0), "{err}");
        let (out, err, code) = run_toolkit(&config, &["audit"]).await;
        assert_eq!(code, Some(0), "{out}{err}");
    }

    // Restarted on the same store: every entity reads back as its last acknowledged write
    // or the one in flight at the kill, and writes go on.
    let (gw, log2) = gateway(dir.path(), &config, &emu.url()).await;
    let mut passwords = Vec::new();
    for (name, t) in tracks.iter() {
        let now = match emu.entity(DB, name) {
            None => Upstream::Absent,
            Some(_) => {
                let got = read(&api(&gw), name, &jwt::bot()).await;
                let a = got.answer("a bot read after the restart");
                assert_eq!(a.status, 200, "{name}: {}", a.text());
                Upstream::Present(password_of(&a.json()))
            }
        };
        assert!(
            now == t.acked || Some(&now) == t.in_flight.as_ref(),
            "{name}: {now:?}, acknowledged {:?}, in flight {:?}",
            t.acked,
            t.in_flight
        );
        for u in [Some(&t.acked), t.in_flight.as_ref()].into_iter().flatten() {
            if let Upstream::Present(Some(p)) = u {
                passwords.push(p.clone());
            }
        }
    }
    let got = put(&api(&gw), "kill-0-0", Some("pw-after-kill-k8"), "after").await;
    assert!(got.status().is_some_and(|s| s < 300), "{got:?}");
    drop(gw);
    passwords.push("pw-after-kill-k8".into());
    for l in [&log, &log2] {
        assert_no_leak(&std::fs::read(l).expect("log"), &passwords, "the log");
    }
    assert_no_leak(out.as_bytes(), &passwords, "the audit");
    eprintln!(
        "SIGKILL: {acked} writes acknowledged, {in_flight} in flight, {} orphans named by audit",
        orphans.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_on_the_embedded_store_leaves_no_dangling_reference_and_audit_names_every_orphan(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = format!("k{:x}", fastrand::u32(..));
    killed_during_concurrent_writes(
        &embedded(dir.path(), &prefix),
        &prefix,
        Some(&dir.path().join("secrets.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_on_openbao_leaves_no_dangling_reference_and_audit_names_every_orphan(
) {
    let Some(addr) = external("OMSP_TEST_BAO_ADDR") else {
        return;
    };
    let token = std::env::var("OMSP_TEST_BAO_TOKEN").unwrap_or_default();
    let prefix = format!("k{:x}", fastrand::u32(..));
    killed_during_concurrent_writes(&openbao(&addr, &token, &prefix), &prefix, None).await;
}

// ---------------------------------------------------------------------------------------------
// SIGTERM under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_request_in_flight_refuses_new_connections_and_loses_no_write() {
    let dir = tempfile::tempdir().expect("tmp");
    let emu = Emulator::start().await;
    let prefix = "drain";
    let config = write_config(
        dir.path(),
        &emu.url(),
        "",
        &format!(
            "{}[server]\nshutdown_grace_ms = 30000\n",
            embedded(dir.path(), prefix)
        ),
    );
    let (mut gw, log) = gateway(dir.path(), &config, &emu.url()).await;
    let api = api(&gw);
    let got = put(&api, "drain-read", Some("pw-drain-read-d0"), "seed").await;
    assert_eq!(got.status(), Some(201), "{got:?}");

    // 48 requests held by a slow upstream: writes with secrets, bot reads, pass-through GETs.
    emu.clear_recorded();
    emu.set_delay(Some(Duration::from_secs(3)));
    let mut in_flight = Vec::new();
    for i in 0..48 {
        let api = api.clone();
        in_flight.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    put(
                        &api,
                        &format!("drain-{i}"),
                        Some(&format!("pw-drain-{i}-d1")),
                        "drain",
                    )
                    .await
                }
                1 => read(&api, "drain-read", &jwt::bot()).await,
                _ => try_send(Method::GET, &format!("{api}/__test/json2k"), None, None).await,
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            emu.recorded().len() >= 48
        })
        .await,
        "only {} requests reached the upstream",
        emu.recorded().len()
    );
    let sent = Instant::now();
    signal(&gw.child, "TERM");

    // New connections are refused while those drain.
    let refused = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", gw.api))
            .await
            .is_err()
    })
    .await;
    assert!(
        refused,
        "the API port still accepts connections after SIGTERM"
    );
    let refused_after = sent.elapsed();
    let finished_early = in_flight.iter().filter(|t| t.is_finished()).count();

    // Every request in flight gets its whole answer.
    let mut passwords = vec!["pw-drain-read-d0".to_string()];
    for (i, t) in in_flight.into_iter().enumerate() {
        let got = t.await.expect("request");
        let a = got.answer("a request in flight at SIGTERM");
        match i % 3 {
            0 => {
                assert_eq!(a.status, 201, "{}", a.text());
                passwords.push(format!("pw-drain-{i}-d1"));
            }
            1 => assert_eq!(password_of(&a.json()).as_deref(), Some("pw-drain-read-d0")),
            _ => assert_eq!(a.json()["paging"]["total"], 12, "{}", a.text()),
        }
        assert_eq!(a.status / 100, 2);
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.child.wait();
        (s, gw)
    })
    .await
    .expect("join");
    assert!(
        status.0.expect("wait").success(),
        "exit status after SIGTERM"
    );
    drop(status.1);
    assert!(
        sent.elapsed() < Duration::from_secs(25),
        "the drain took {:?}",
        sent.elapsed()
    );

    // Every write acknowledged during the drain is upstream and in the store.
    let store = stored(&config, prefix, Some(&dir.path().join("secrets.db"))).await;
    for i in (0..48).step_by(3) {
        let e = emu.entity(DB, &format!("drain-{i}")).expect("upstream");
        let id = password_of(&e).and_then(|p| p.strip_prefix("secret:").map(str::to_string));
        let id = id.expect("a reference upstream");
        assert_eq!(store.get(&id), Some(&format!("pw-drain-{i}-d1")), "{id}");
    }
    assert_no_leak(&std::fs::read(&log).expect("log"), &passwords, "the log");
    eprintln!(
        "SIGTERM: 48 requests in flight all answered; new connections refused {refused_after:?} \
         after the signal ({finished_early} had finished by then)"
    );
}
