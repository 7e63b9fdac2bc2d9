//! Shared test harness: the emulator upstream, a gateway on port 0, and clients.
#![allow(dead_code)]

pub mod emulator;
pub mod fleet;
pub mod jwt;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use om_secrets_proxy::config::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use emulator::Emulator;

/// A gateway running inside the test process.
pub struct Gw {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Gw {
    /// A gateway running elsewhere (a child process) whose API port is `port`.
    pub fn at(port: u16) -> Gw {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Gw {
            api: addr,
            admin: addr,
            shutdown: None,
            done: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Starts draining; `done` resolves when the gateway has stopped.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A config pointing at `upstream`, on port 0, rules from the repo's `rules/`.
pub fn config_for(upstream: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n[rules]\ndir = \"{}/rules\"\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut cfg = Config::from_toml_str(&text, None, &|_| None).expect("test config");
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("omsp-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    cfg.secrets.embedded_path = dir.join(format!("secrets-{n}.db"));
    cfg
}

/// Starts a gateway with `config`.
pub async fn start_gateway(config: Config) -> Gw {
    start_gateway_with_store(config, None).await
}

/// Starts a gateway whose store backend is given (e.g. a switchable in-memory store).
pub async fn start_gateway_with_store(
    config: Config,
    store: Option<Arc<dyn om_secrets_proxy::secrets::SecretStore>>,
) -> Gw {
    let app = om_secrets_proxy::build_app_with_store(config, store)
        .await
        .expect("build_app");
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let (api_addr, admin_addr) = (
        api.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(app.serve(api, admin, async move {
        let _ = rx.await;
    }));
    Gw {
        api: api_addr,
        admin: admin_addr,
        shutdown: Some(tx),
        done: Some(done),
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A whole response: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

pub async fn collect(resp: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// Sends one request with optional headers and body.
pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).expect("request");
    collect(client.request(req).await.expect("request sent")).await
}

pub async fn get(url: &str) -> Answer {
    send(&client(), Method::GET, url, &[], Bytes::new()).await
}

/// An emulator plus a gateway in front of it with default config.
pub async fn stack() -> (Emulator, Gw) {
    let emu = Emulator::start().await;
    let gw = start_gateway(config_for(&emu.url())).await;
    (emu, gw)
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// A loopback port free right now (for a child process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits (up to 5 s) until something accepts connections on a loopback port.
pub async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A real server's address from the environment `./scripts/test.sh` sets; `None` (the test
/// skips) when it is unset, unless `OMSP_REQUIRE_EXTERNAL` says every server must be there.
pub fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("OMSP_REQUIRE_EXTERNAL").is_none(),
                "{var} is not set: run ./scripts/test.sh"
            );
            eprintln!("skipping: {var} is not set (run ./scripts/test.sh)");
            None
        }
    }
}

/// A MySQL database service's create body with one password.
pub fn mysql(name: &str, password: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "serviceType": "Mysql",
           "connection": {"config": {"type": "Mysql", "username": "om", "hostPort": "db:3306",
                                     "authType": {"password": password}}}})
}

/// The emulator and a gateway whose store is an in-memory one the test can inspect (no read
/// cache, no retries).
pub async fn mem_stack() -> (
    Emulator,
    Gw,
    Arc<om_secrets_proxy::secrets::memory::MemoryStore>,
) {
    let emu = Emulator::start().await;
    emu.set_jwks(jwt::jwks());
    let mem = Arc::new(om_secrets_proxy::secrets::memory::MemoryStore::new());
    let mut cfg = config_for(&emu.url());
    cfg.secrets.cache_ttl = std::time::Duration::ZERO;
    cfg.secrets.retry_max = 0;
    let gw = start_gateway_with_store(cfg, Some(mem.clone())).await;
    (emu, gw, mem)
}

/// One request to the gateway with a Content-Type.
pub async fn call(gw: &Gw, m: Method, path: &str, ct: &str, body: impl Into<Bytes>) -> Answer {
    send(&client(), m, &gw.url(path), &[("content-type", ct)], body).await
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every form in which a value could leak: raw, JSON-escaped, base64 (standard and URL-safe).
pub fn leak_forms(v: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let escaped = serde_json::to_string(v).expect("json");
    vec![
        v.as_bytes().to_vec(),
        escaped.as_bytes()[1..escaped.len() - 1].to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(v)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(v)
            .into_bytes(),
    ]
}
