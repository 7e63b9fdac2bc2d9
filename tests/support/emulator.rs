//! An OpenMetadata API emulator for tests and benchmarks: the routes and shapes of
//! `shared/spec/openmetadata.md`, storing what it receives verbatim (no masking, which is
//! the worst case for the gateway) and recording every request it gets.
//!
//! Also the routes of the secrets OpenMetadata keeps in clear (`/events/subscriptions`,
//! `/governance/workflowDefinitions`, `/apps` with `trigger/{name}`, `/system/settings`,
//! `/system/security/config`), whose updates carry change descriptions and emit change events
//! (`GET /events`) as OpenMetadata 2.0's do, and a few test-only routes under `/__test/`
//! (echo, slow, large stream).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub type EmuBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A request as the emulator received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

#[derive(Clone, Debug)]
struct Entity {
    json: Value,
    history: Vec<String>,
    deleted: bool,
}

#[derive(Default)]
struct State {
    /// collection path (e.g. "services/databaseServices") -> id -> entity
    collections: BTreeMap<String, BTreeMap<String, Entity>>,
    recorded: Vec<Recorded>,
    jwks: Value,
    fail_writes_with: Option<u16>,
    counter: u64,
    not_recording: bool,
    force_gzip: bool,
    view_all: std::collections::BTreeSet<String>,
    /// What `/system/version` answers (default 2.0.7).
    version: Option<String>,
    /// Answers served as they are for a path, whatever the method (a misbehaving upstream).
    canned: BTreeMap<String, Canned>,
    /// Every request but `/api/v1/system/*` waits this long after it is recorded and before
    /// it is handled (a slow upstream that still applies what it got).
    delay: Option<Duration>,
    /// Change events of the collections in [`TRACKED`] (`GET /api/v1/events`).
    events: Vec<Value>,
    /// `/system/settings`: config type -> config value.
    settings: BTreeMap<String, Value>,
    /// `/system/security/config`.
    security: Option<Value>,
}

/// Collections whose updates carry a change description and emit change events here, as
/// OpenMetadata's do (the entities `mask_only` rules cover).
pub const TRACKED: [&str; 3] = [
    "events/subscriptions",
    "governance/workflowDefinitions",
    "apps",
];

fn entity_type(coll: &str) -> &'static str {
    match coll {
        "events/subscriptions" => "eventsubscription",
        "governance/workflowDefinitions" => "workflowDefinition",
        _ => "app",
    }
}

/// OpenMetadata's change description of an update: each changed field with its old and new
/// value (strings as they are, anything else as JSON text).
fn describe_change(old: &Value, new: &mut Value) {
    const META: [&str; 8] = [
        "id",
        "version",
        "updatedAt",
        "updatedBy",
        "href",
        "changeDescription",
        "fullyQualifiedName",
        "deleted",
    ];
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => json!(s),
        Some(v) => json!(v.to_string()),
        None => Value::Null,
    };
    let mut updated = Vec::new();
    if let Some(m) = new.as_object() {
        for (k, nv) in m.iter().filter(|(k, _)| !META.contains(&k.as_str())) {
            if old.get(k) != Some(nv) {
                updated.push(
                    json!({"name": k, "oldValue": text(old.get(k)), "newValue": text(Some(nv))}),
                );
            }
        }
    }
    new["changeDescription"] = json!({"fieldsAdded": [], "fieldsUpdated": updated,
        "fieldsDeleted": [], "previousVersion": old["version"]});
}

/// A change event as `GET /api/v1/events` lists it: the entity as JSON text.
fn change_event(coll: &str, event_type: &str, entity: &Value) -> Value {
    json!({"eventType": event_type, "entityType": entity_type(coll), "entityId": entity["id"],
        "entityFullyQualifiedName": entity["fullyQualifiedName"], "userName": "admin",
        "timestamp": 1_700_000_000_000u64, "currentVersion": entity["version"],
        "changeDescription": entity.get("changeDescription").cloned().unwrap_or(Value::Null),
        "entity": entity.to_string()})
}

/// An answer served byte for byte, optionally stalling forever after its body.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// After `body`, the answer neither sends more nor ends.
    pub stall: bool,
}

impl Canned {
    pub fn json(body: impl Into<Bytes>) -> Canned {
        Canned {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            stall: false,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Canned {
        self.headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A running emulator.
#[derive(Clone)]
pub struct Emulator {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Stalled answers whose connection the reader has closed.
    stalls_dropped: Arc<std::sync::atomic::AtomicUsize>,
}

pub const SERVICE_COLLECTIONS: [&str; 13] = [
    "databaseServices",
    "dashboardServices",
    "messagingServices",
    "pipelineServices",
    "mlmodelServices",
    "storageServices",
    "metadataServices",
    "searchServices",
    "apiServices",
    "driveServices",
    "securityServices",
    "llmServices",
    "mcpServices",
];

fn json_resp(status: StatusCode, v: &Value) -> Response<EmuBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn om_error(status: StatusCode, msg: &str) -> Response<EmuBody> {
    json_resp(status, &json!({"code": status.as_u16(), "message": msg}))
}

impl Emulator {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> Emulator {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind emulator");
        Self::start_on(listener).await
    }

    pub async fn start_on(listener: TcpListener) -> Emulator {
        let addr = listener.local_addr().expect("emulator addr");
        let emu = Emulator {
            addr,
            state: Arc::new(Mutex::new(State {
                jwks: json!({"keys": []}),
                ..Default::default()
            })),
            stalls_dropped: Default::default(),
        };
        let server = emu.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let emu = server.clone();
                tokio::spawn(async move {
                    // Each request is handled to the end in a task of its own, as Jetty does:
                    // a client that goes away does not undo what it sent.
                    let svc = service_fn(move |req| {
                        let emu = emu.clone();
                        async move {
                            let handled = tokio::spawn(async move { emu.handle(req).await });
                            Ok::<_, Infallible>(handled.await.unwrap_or_else(|_| {
                                om_error(StatusCode::INTERNAL_SERVER_ERROR, "emulator panicked")
                            }))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        emu
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().expect("state").recorded.clone()
    }

    pub fn clear_recorded(&self) {
        self.state.lock().expect("state").recorded.clear();
    }

    /// All bytes of all request bodies received, concatenated with their paths and headers.
    pub fn everything_received(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self.recorded() {
            out.extend_from_slice(r.path_and_query.as_bytes());
            for (k, v) in r.headers.iter() {
                out.extend_from_slice(k.as_str().as_bytes());
                out.extend_from_slice(v.as_bytes());
            }
            out.extend_from_slice(&r.body);
            out.push(b'\n');
        }
        out
    }

    /// Benchmarks switch recording off so memory stays flat.
    pub fn set_recording(&self, on: bool) {
        self.state.lock().expect("state").not_recording = !on;
    }

    /// Seeds `n` MySQL services with a secret each and ~2 KB of ordinary fields (the read
    /// benchmark's list of 50 is ~100 KB).
    pub fn seed_bench_services(&self, n: usize) {
        for i in 0..n {
            let tags: Vec<Value> = (0..8)
                .map(|t| json!({"tagFQN": format!("Tier.Tier{t}"), "source": "Classification", "labelType": "Manual", "state": "Confirmed"}))
                .collect();
            self.seed(
                "services/databaseServices",
                json!({
                    "name": format!("bench-mysql-{i:03}"),
                    "serviceType": "Mysql",
                    "description": "A benchmark service with the size of a real one. ".repeat(6),
                    "tags": tags,
                    "connection": {"config": {
                        "type": "Mysql", "scheme": "mysql+pymysql", "username": "openmetadata_user",
                        "authType": {"password": format!("secret:/openmetadata/database/bench-mysql-{i:03}/authtype/password")},
                        "hostPort": "mysql.internal.example:3306", "databaseSchema": "analytics",
                        "supportsMetadataExtraction": true, "supportsDBTExtraction": true, "supportsProfiler": true,
                        "supportsQueryComment": true, "connectionOptions": {}, "connectionArguments": {}
                    }}
                }),
            );
        }
    }

    /// The OpenMetadata version `/system/version` answers.
    pub fn set_version(&self, version: &str) {
        self.state.lock().expect("state").version = Some(version.into());
    }

    pub fn set_jwks(&self, jwks: Value) {
        self.state.lock().expect("state").jwks = jwks;
    }

    /// Makes every POST/PUT/PATCH/DELETE on an entity route fail with `status`.
    pub fn fail_writes_with(&self, status: Option<u16>) {
        self.state.lock().expect("state").fail_writes_with = status;
    }

    /// The stored entity with this name in a collection (e.g. "services/databaseServices").
    pub fn entity(&self, collection: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().expect("state");
        st.collections
            .get(collection)?
            .values()
            .find(|e| e.json["name"] == name)
            .map(|e| e.json.clone())
    }

    /// The stored entity with this fully qualified name in a collection (same-named
    /// ingestion pipelines of two services differ only there).
    pub fn entity_by_fqn(&self, collection: &str, fqn: &str) -> Option<Value> {
        let st = self.state.lock().expect("state");
        st.collections
            .get(collection)?
            .values()
            .find(|e| e.json["fullyQualifiedName"] == fqn)
            .map(|e| e.json.clone())
    }

    /// Every stored entity of a collection (soft-deleted ones too), in the emulator's order.
    pub fn entities(&self, collection: &str) -> Vec<Value> {
        let st = self.state.lock().expect("state");
        st.collections
            .get(collection)
            .map(|c| c.values().map(|e| e.json.clone()).collect())
            .unwrap_or_default()
    }

    /// Puts an entity straight into the store (as if OpenMetadata already had it).
    pub fn seed(&self, collection: &str, mut body: Value) -> Value {
        let mut st = self.state.lock().expect("state");
        if let Err(e) = scope_under_service(&st, collection, &mut body) {
            panic!("seed: {e}");
        }
        st.counter += 1;
        let id = format!("00000000-0000-4000-8000-{:012x}", st.counter);
        finish_entity(&mut body, &id, collection, 0.1);
        st.collections
            .entry(collection.to_string())
            .or_default()
            .insert(
                id,
                Entity {
                    json: body.clone(),
                    history: vec![],
                    deleted: false,
                },
            );
        body
    }

    /// Answers every JSON request gzip-compressed, whatever the request asked for (a
    /// misbehaving upstream).
    pub fn set_force_gzip(&self, on: bool) {
        self.state.lock().expect("state").force_gzip = on;
    }

    /// Lets the permission API grant ViewAll on the entity with this fully qualified name.
    pub fn grant_view_all(&self, fqn: &str) {
        self.state
            .lock()
            .expect("state")
            .view_all
            .insert(fqn.to_string());
    }

    /// Serves `answer` for `path` (any method, any query) until cleared.
    pub fn set_canned(&self, path: &str, answer: Canned) {
        self.state
            .lock()
            .expect("state")
            .canned
            .insert(path.to_string(), answer);
    }

    /// Delays every request but `/api/v1/system/*` by `delay` between recording and handling.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state.lock().expect("state").delay = delay;
    }

    pub fn clear_canned(&self) {
        self.state.lock().expect("state").canned.clear();
    }

    /// How many stalled answers were dropped by their reader (their connection reclaimed).
    pub fn stalls_dropped(&self) -> usize {
        self.stalls_dropped
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn canned(&self, path: &str) -> Option<Response<EmuBody>> {
        let c = self
            .state
            .lock()
            .expect("state")
            .canned
            .get(path)
            .cloned()?;
        let body = if c.stall {
            Stalling {
                first: Some(c.body),
                dropped: self.stalls_dropped.clone(),
            }
            .boxed()
        } else {
            Full::new(c.body).boxed()
        };
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(c.status).unwrap_or(StatusCode::OK);
        for (k, v) in c.headers {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(&v).expect("header value"),
            );
        }
        Some(r)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<EmuBody> {
        if let Some(r) = self.canned(req.uri().path()) {
            return r;
        }
        let range = req
            .headers()
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let resp = self.handle_inner(req).await;
        let is_json = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        let mut bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        // Range requests are honoured, as Jetty does for static answers.
        if let Some(r) = range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            if let Some((a, b)) = r.split_once('-') {
                let start: usize = a.parse().unwrap_or(0).min(bytes.len());
                let end: usize = b
                    .parse::<usize>()
                    .map(|e| e + 1)
                    .unwrap_or(bytes.len())
                    .min(bytes.len())
                    .max(start);
                let total = bytes.len();
                bytes = bytes.slice(start..end);
                parts.status = StatusCode::PARTIAL_CONTENT;
                parts.headers.insert(
                    http::header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{total}", end.saturating_sub(1))
                        .parse()
                        .expect("range"),
                );
            }
        }
        if self.state.lock().expect("state").force_gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).expect("gzip");
            bytes = Bytes::from(enc.finish().expect("gzip"));
            parts.headers.insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        parts
            .headers
            .insert("etag", http::HeaderValue::from_static("\"emulator-etag\""));
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Response::from_parts(parts, Full::new(bytes).boxed())
    }

    async fn handle_inner(&self, req: Request<Incoming>) -> Response<EmuBody> {
        let (parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        // Test routes that stream are handled before the body is collected.
        if path == "/__test/stream" {
            let n: usize = qp(&query, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20);
            return stream_response(n);
        }
        if path == "/__test/upload" {
            // Counts and hashes a streamed upload without keeping it.
            let mut n: u64 = 0;
            let mut h: u64 = 0xcbf29ce484222325;
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    for b in d.iter() {
                        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
                    }
                }
            }
            return json_resp(
                StatusCode::OK,
                &json!({"bytes": n, "fnv": format!("{h:016x}")}),
            );
        }
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        // The gateway's own start-up version question is not a forwarded request.
        let own_question = path == "/api/v1/system/version"
            && parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ua| ua.starts_with("om-secrets-proxy/"));
        let delay = {
            let mut st = self.state.lock().expect("state");
            if !st.not_recording && !own_question {
                st.recorded.push(Recorded {
                    method: parts.method.clone(),
                    path_and_query: path_and_query.clone(),
                    headers: parts.headers.clone(),
                    body: bytes.clone(),
                    version: parts.version,
                });
            }
            st.delay.filter(|_| !path.starts_with("/api/v1/system/"))
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if let Some(rest) = path.strip_prefix("/__test/") {
            return self
                .test_route(rest, &parts.method, &query, &parts.headers, bytes)
                .await;
        }
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return om_error(StatusCode::NOT_FOUND, "HTTP 404 Not Found");
        };
        // Jersey decodes each path segment before matching.
        let decoded: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(pct_decode)
            .collect();
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
        // Jersey answers HEAD wherever GET is routed.
        let method = if parts.method == Method::HEAD {
            Method::GET
        } else {
            parts.method.clone()
        };
        match (method, segs.as_slice()) {
            (Method::GET, ["system", "version"]) => {
                let v = self.state.lock().expect("state").version.clone();
                let v = v.unwrap_or_else(|| "2.0.7".into());
                json_resp(
                    StatusCode::OK,
                    &json!({"version": v, "revision": "emulator", "timestamp": 1}),
                )
            }
            (Method::GET, ["system", "config", "jwks"]) => {
                let jwks = self.state.lock().expect("state").jwks.clone();
                json_resp(StatusCode::OK, &jwks)
            }
            (Method::GET, ["system", "health"]) => {
                json_resp(StatusCode::OK, &json!({"healthy": true}))
            }
            (Method::GET, ["permissions", resource, "name", fqn]) => {
                let allowed = self.state.lock().expect("state").view_all.contains(*fqn);
                json_resp(
                    StatusCode::OK,
                    &json!({"resource": resource, "permissions": [
                        {"operation": "ViewAll", "access": if allowed { "allow" } else { "deny" }},
                        {"operation": "ViewBasic", "access": "allow"}]}),
                )
            }
            (m, ["services", kind, tail @ ..])
                if SERVICE_COLLECTIONS.contains(kind) || *kind == "ingestionPipelines" =>
            {
                self.collection(&format!("services/{kind}"), m, tail, &query, &bytes)
            }
            (m, ["automations", "workflows", tail @ ..]) => {
                self.collection("automations/workflows", m, tail, &query, &bytes)
            }
            (m, ["events", "subscriptions", tail @ ..]) => {
                self.collection("events/subscriptions", m, tail, &query, &bytes)
            }
            (Method::GET, ["events"]) => {
                let events = self.state.lock().expect("state").events.clone();
                json_resp(
                    StatusCode::OK,
                    &json!({"data": events, "paging": {"total": events.len()}}),
                )
            }
            (m, ["governance", "workflowDefinitions", tail @ ..]) => {
                self.collection("governance/workflowDefinitions", m, tail, &query, &bytes)
            }
            (Method::POST, ["apps", "trigger", name]) => {
                // OpenMetadata answers a trigger with an empty 200.
                match self.find(&self.state.lock().expect("state"), "apps", name, true) {
                    Some(_) => Response::new(Full::new(Bytes::new()).boxed()),
                    None => om_error(StatusCode::NOT_FOUND, "App not found"),
                }
            }
            (m, ["apps", tail @ ..]) => self.collection("apps", m, tail, &query, &bytes),
            (m, ["system", "settings", tail @ ..]) => self.settings(m, tail, &bytes),
            (m, ["system", "security", "config"]) => self.security_config(m, &bytes),
            (m, ["bots", tail @ ..]) => self.collection("bots", m, tail, &query, &bytes),
            (m, ["users", tail @ ..]) => self.users(m, tail, &query, &bytes),
            _ => om_error(StatusCode::NOT_FOUND, "HTTP 404 Not Found"),
        }
    }

    async fn test_route(
        &self,
        rest: &str,
        method: &Method,
        query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response<EmuBody> {
        match rest {
            "echo" => {
                let hdrs: BTreeMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).to_string(),
                        )
                    })
                    .collect();
                let mut r = Response::new(Full::new(body).boxed());
                r.headers_mut()
                    .insert("x-echo-method", method.as_str().parse().expect("method"));
                r.headers_mut().insert(
                    "x-echo-headers",
                    serde_json::to_string(&hdrs)
                        .expect("json")
                        .parse()
                        .unwrap_or(http::HeaderValue::from_static("{}")),
                );
                if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
                    r.headers_mut()
                        .insert(http::header::CONTENT_TYPE, ct.clone());
                }
                r.headers_mut()
                    .insert("x-custom-answer", http::HeaderValue::from_static("kept"));
                r
            }
            "slow" => {
                let ms: u64 = qp(query, "ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_resp(StatusCode::OK, &json!({"slept_ms": ms}))
            }
            "status" => {
                let code: u16 = qp(query, "code")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(200);
                json_resp(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
                    &json!({"code": code}),
                )
            }
            "json2k" => {
                // A ~2 KB JSON document, the benchmark's page.
                let items: Vec<Value> = (0..12)
                    .map(|i| json!({"id": format!("00000000-0000-4000-8000-{i:012}"), "name": format!("table_{i}"), "type": "Regular"}))
                    .collect();
                json_resp(
                    StatusCode::OK,
                    &json!({"data": items, "paging": {"total": 12}}),
                )
            }
            _ => om_error(StatusCode::NOT_FOUND, "no such test route"),
        }
    }

    fn find(&self, st: &State, coll: &str, key: &str, by_name: bool) -> Option<String> {
        let c = st.collections.get(coll)?;
        if by_name {
            let key = key.trim_matches('"');
            c.iter()
                .find(|(_, e)| {
                    e.json["fullyQualifiedName"].as_str() == Some(key)
                        || e.json["name"].as_str() == Some(key)
                })
                .map(|(id, _)| id.clone())
        } else {
            c.contains_key(key).then(|| key.to_string())
        }
    }

    fn collection(
        &self,
        coll: &str,
        method: Method,
        tail: &[&str],
        query: &str,
        body: &Bytes,
    ) -> Response<EmuBody> {
        let mut st = self.state.lock().expect("state");
        if method != Method::GET {
            if let Some(code) = st.fail_writes_with {
                return om_error(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "emulated failure",
                );
            }
        }
        let parse = |b: &Bytes| parse_deep(b);
        match (method, tail) {
            (Method::GET, []) => {
                let include_deleted = qp(query, "include").as_deref() == Some("all");
                let limit: usize = qp(query, "limit")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10);
                let after = qp(query, "after");
                // `?service=<FQN>`: the entities under one service (ingestion pipelines).
                let service = qp(query, "service");
                let under = |e: &Entity| {
                    service
                        .as_deref()
                        .is_none_or(|s| e.json["service"]["fullyQualifiedName"].as_str() == Some(s))
                };
                // Only the page is copied (the soak lists a collection of thousands).
                let all: Vec<(&String, &Entity)> = st
                    .collections
                    .get(coll)
                    .map(|c| {
                        c.iter()
                            .filter(|(_, e)| (include_deleted || !e.deleted) && under(e))
                            .collect()
                    })
                    .unwrap_or_default();
                let start = after
                    .and_then(|a| all.iter().position(|(id, _)| **id == a).map(|p| p + 1))
                    .unwrap_or(0);
                let page: Vec<Value> = all
                    .iter()
                    .skip(start)
                    .take(limit)
                    .map(|(_, e)| e.json.clone())
                    .collect();
                let mut paging = json!({"total": all.len()});
                if start + limit < all.len() {
                    paging["after"] = json!(all[start + limit - 1].0);
                }
                json_resp(StatusCode::OK, &json!({"data": page, "paging": paging}))
            }
            (m @ (Method::POST | Method::PUT), []) => {
                let Ok(mut v) = parse(body) else {
                    return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON");
                };
                let Some(name) = v["name"].as_str().map(str::to_string) else {
                    return om_error(
                        StatusCode::BAD_REQUEST,
                        "[query param name must not be null]",
                    );
                };
                if let Err(e) = scope_under_service(&st, coll, &mut v) {
                    return om_error(StatusCode::NOT_FOUND, &e);
                }
                let existing = match v["fullyQualifiedName"].as_str() {
                    // Scoped entities are unique by fully qualified name only.
                    Some(fqn) => st.collections.get(coll).and_then(|c| {
                        c.iter()
                            .find(|(_, e)| e.json["fullyQualifiedName"] == fqn)
                            .map(|(id, _)| id.clone())
                    }),
                    None => self.find(&st, coll, &name, true),
                };
                match (m, existing) {
                    (Method::POST, Some(_)) => {
                        om_error(StatusCode::CONFLICT, "Entity already exists")
                    }
                    (_, Some(id)) => {
                        let e = st
                            .collections
                            .get_mut(coll)
                            .and_then(|c| c.get_mut(&id))
                            .expect("entity");
                        let old = e.json.clone();
                        let version = old["version"].as_f64().unwrap_or(0.1) + 0.1;
                        e.history.push(old.to_string());
                        finish_entity(&mut v, &id, coll, (version * 10.0).round() / 10.0);
                        if TRACKED.contains(&coll) {
                            describe_change(&old, &mut v);
                        }
                        e.json = v.clone();
                        if TRACKED.contains(&coll) {
                            st.events.push(change_event(coll, "entityUpdated", &v));
                        }
                        json_resp(StatusCode::OK, &v)
                    }
                    (_, None) => {
                        st.counter += 1;
                        let id = format!("00000000-0000-4000-8000-{:012x}", st.counter);
                        finish_entity(&mut v, &id, coll, 0.1);
                        st.collections.entry(coll.to_string()).or_default().insert(
                            id,
                            Entity {
                                json: v.clone(),
                                history: vec![],
                                deleted: false,
                            },
                        );
                        if TRACKED.contains(&coll) {
                            st.events.push(change_event(coll, "entityCreated", &v));
                        }
                        json_resp(StatusCode::CREATED, &v)
                    }
                }
            }
            (Method::PUT, ["restore"]) => {
                let Ok(v) = parse(body) else {
                    return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON");
                };
                let id = v["id"].as_str().unwrap_or("").to_string();
                match st.collections.get_mut(coll).and_then(|c| c.get_mut(&id)) {
                    Some(e) => {
                        e.deleted = false;
                        e.json["deleted"] = json!(false);
                        json_resp(StatusCode::OK, &e.json.clone())
                    }
                    None => om_error(StatusCode::NOT_FOUND, "entity not found"),
                }
            }
            (Method::POST, [action, id])
                if matches!(*action, "deploy" | "trigger" | "toggleIngestion" | "kill") =>
            {
                match st.collections.get(coll).and_then(|c| c.get(*id)) {
                    Some(e) => json_resp(StatusCode::OK, &e.json.clone()),
                    None => om_error(StatusCode::NOT_FOUND, "entity not found"),
                }
            }
            (Method::PUT, ["name", _, "import" | "importAsync"]) => {
                // CSV import (text/plain): answered with a summary, as OpenMetadata does.
                let rows = String::from_utf8_lossy(body).lines().count();
                json_resp(
                    StatusCode::OK,
                    &json!({"dryRun": qp(query, "dryRun").as_deref() == Some("true"),
                            "status": "success", "numberOfRowsProcessed": rows}),
                )
            }
            (m, rest) => {
                // The asynchronous delete answers like the synchronous one here.
                let rest = match rest {
                    ["async", id] if m == Method::DELETE => std::slice::from_ref(id),
                    // An alert's destinations by id, as OpenMetadata routes them.
                    ["id", id, "destinations"] if coll == "events/subscriptions" => &rest[1..],
                    r => r,
                };
                let (key, by_name, after) = match rest {
                    ["name", fqn, after @ ..] => (*fqn, true, after),
                    [id, after @ ..] => (*id, false, after),
                    [] => return om_error(StatusCode::NOT_FOUND, "HTTP 404 Not Found"),
                };
                let Some(id) = self.find(&st, coll, key, by_name) else {
                    return om_error(
                        StatusCode::NOT_FOUND,
                        &format!("{coll} instance for {key} not found"),
                    );
                };
                let entity = st
                    .collections
                    .get_mut(coll)
                    .and_then(|c| c.get_mut(&id))
                    .expect("entity");
                match (m, after) {
                    (Method::GET, []) => json_resp(StatusCode::OK, &entity.json),
                    (Method::GET, ["destinations"]) => {
                        json_resp(StatusCode::OK, &entity.json["destinations"])
                    }
                    (Method::GET, ["versions"]) => {
                        let mut versions: Vec<Value> = vec![json!(entity.json.to_string())];
                        versions.extend(entity.history.iter().rev().map(|s| json!(s)));
                        json_resp(
                            StatusCode::OK,
                            &json!({"entityType": coll, "versions": versions}),
                        )
                    }
                    (Method::GET, ["versions", v]) => {
                        let want: f64 = v.parse().unwrap_or(-1.0);
                        let cur = std::iter::once(entity.json.clone())
                            .chain(
                                entity
                                    .history
                                    .iter()
                                    .filter_map(|s| serde_json::from_str(s).ok()),
                            )
                            .find(|e: &Value| {
                                (e["version"].as_f64().unwrap_or(0.0) - want).abs() < 1e-9
                            });
                        match cur {
                            Some(e) => json_resp(StatusCode::OK, &e),
                            None => om_error(StatusCode::NOT_FOUND, "version not found"),
                        }
                    }
                    (Method::PATCH, []) => {
                        let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(body) else {
                            return om_error(
                                StatusCode::BAD_REQUEST,
                                "Unable to process JSON patch",
                            );
                        };
                        let mut doc = entity.json.clone();
                        if json_patch::patch_unsafe(&mut doc, &patch).is_err() {
                            return om_error(StatusCode::BAD_REQUEST, "JSON patch failed");
                        }
                        let version = entity.json["version"].as_f64().unwrap_or(0.1) + 0.1;
                        entity.history.push(entity.json.to_string());
                        finish_entity(&mut doc, &id, coll, (version * 10.0).round() / 10.0);
                        if TRACKED.contains(&coll) {
                            describe_change(&entity.json, &mut doc);
                        }
                        entity.json = doc.clone();
                        if TRACKED.contains(&coll) {
                            st.events.push(change_event(coll, "entityUpdated", &doc));
                        }
                        json_resp(StatusCode::OK, &doc)
                    }
                    (Method::PUT, ["testConnectionResult"]) => {
                        let Ok(v) = parse(body) else {
                            return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON");
                        };
                        entity.json["testConnectionResult"] = v;
                        json_resp(StatusCode::OK, &entity.json)
                    }
                    (Method::DELETE, []) => {
                        let hard = qp(query, "hardDelete").as_deref() == Some("true");
                        let mut gone = entity.json.clone();
                        gone["deleted"] = json!(true);
                        if hard {
                            st.collections.get_mut(coll).map(|c| c.remove(&id));
                            // A recursive hard delete of a service takes its ingestion
                            // pipelines with it, as OpenMetadata's does.
                            let recursive = qp(query, "recursive").as_deref() == Some("true");
                            if recursive && coll.starts_with("services/") {
                                // By the service's id: services of different kinds may share
                                // a name.
                                let service = gone["id"].clone();
                                if let Some(p) =
                                    st.collections.get_mut("services/ingestionPipelines")
                                {
                                    p.retain(|_, e| e.json["service"]["id"] != service);
                                }
                            }
                            // A bot contains its user: OpenMetadata deletes the user with it.
                            if coll == "bots" {
                                let user = gone["botUser"]["id"].clone();
                                if let Some(u) = st.collections.get_mut("users") {
                                    u.retain(|_, e| e.json["id"] != user);
                                }
                            }
                        } else {
                            entity.deleted = true;
                            entity.json["deleted"] = json!(true);
                        }
                        json_resp(StatusCode::OK, &gone)
                    }
                    _ => om_error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "HTTP 405 Method Not Allowed",
                    ),
                }
            }
        }
    }

    /// `/system/settings`: `{"config_type", "config_value"}` documents; a PATCH applies to
    /// the config value, as OpenMetadata's `patchSetting` does.
    fn settings(&self, method: Method, tail: &[&str], body: &Bytes) -> Response<EmuBody> {
        let mut st = self.state.lock().expect("state");
        let setting = |k: &str, v: &Value| json!({"config_type": k, "config_value": v});
        match (method, tail) {
            (Method::GET, []) => {
                let data: Vec<Value> = st.settings.iter().map(|(k, v)| setting(k, v)).collect();
                json_resp(
                    StatusCode::OK,
                    &json!({"data": data, "paging": {"total": data.len()}}),
                )
            }
            (Method::GET, [name]) => match st.settings.get(*name) {
                Some(v) => json_resp(StatusCode::OK, &setting(name, v)),
                None => om_error(StatusCode::NOT_FOUND, "setting not found"),
            },
            (Method::PUT, []) => {
                let Ok(v) = parse_deep(body) else {
                    return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON");
                };
                let Some(k) = v["config_type"].as_str().map(str::to_string) else {
                    return om_error(StatusCode::BAD_REQUEST, "config_type must not be null");
                };
                st.settings.insert(k.clone(), v["config_value"].clone());
                json_resp(StatusCode::OK, &setting(&k, &v["config_value"]))
            }
            (Method::PATCH, [name]) => {
                let Some(mut cur) = st.settings.get(*name).cloned() else {
                    return om_error(StatusCode::NOT_FOUND, "setting not found");
                };
                let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(body) else {
                    return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON patch");
                };
                if json_patch::patch_unsafe(&mut cur, &patch).is_err() {
                    return om_error(StatusCode::BAD_REQUEST, "JSON patch failed");
                }
                st.settings.insert(name.to_string(), cur.clone());
                json_resp(StatusCode::OK, &setting(name, &cur))
            }
            _ => om_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "HTTP 405 Method Not Allowed",
            ),
        }
    }

    /// `/system/security/config`: one `{"authenticationConfiguration", "authorizerConfiguration"}`.
    fn security_config(&self, method: Method, body: &Bytes) -> Response<EmuBody> {
        let mut st = self.state.lock().expect("state");
        let cur = st.security.clone().unwrap_or_else(|| {
            json!({"authenticationConfiguration": {"provider": "basic", "providerName": "basic"},
                   "authorizerConfiguration": {"className": "org.openmetadata.service.security.DefaultAuthorizer"}})
        });
        match method {
            Method::GET => json_resp(StatusCode::OK, &cur),
            Method::PUT => {
                let Ok(v) = parse_deep(body) else {
                    return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON");
                };
                st.security = Some(v.clone());
                json_resp(StatusCode::OK, &v)
            }
            Method::PATCH => {
                let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(body) else {
                    return om_error(StatusCode::BAD_REQUEST, "Unable to process JSON patch");
                };
                let mut doc = cur;
                if json_patch::patch_unsafe(&mut doc, &patch).is_err() {
                    return om_error(StatusCode::BAD_REQUEST, "JSON patch failed");
                }
                st.security = Some(doc.clone());
                json_resp(StatusCode::OK, &doc)
            }
            _ => om_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "HTTP 405 Method Not Allowed",
            ),
        }
    }

    /// The emulator's `/system/settings` value of `config_type`, as stored.
    pub fn setting(&self, config_type: &str) -> Option<Value> {
        self.state
            .lock()
            .expect("state")
            .settings
            .get(config_type)
            .cloned()
    }

    /// The emulator's `/system/security/config`, as stored.
    pub fn security(&self) -> Option<Value> {
        self.state.lock().expect("state").security.clone()
    }

    fn users(&self, method: Method, tail: &[&str], query: &str, body: &Bytes) -> Response<EmuBody> {
        match (&method, tail) {
            (&Method::GET, ["token", id]) | (&Method::GET, ["auth-mechanism", id]) => {
                let st = self.state.lock().expect("state");
                let Some(e) = st.collections.get("users").and_then(|c| c.get(*id)) else {
                    return om_error(StatusCode::NOT_FOUND, "user not found");
                };
                let am = e.json["authenticationMechanism"].clone();
                if tail[0] == "token" {
                    json_resp(StatusCode::OK, &am["config"])
                } else {
                    json_resp(StatusCode::OK, &am)
                }
            }
            (&Method::PUT, ["generateToken", id]) => {
                let mut st = self.state.lock().expect("state");
                let Some(e) = st.collections.get_mut("users").and_then(|c| c.get_mut(*id)) else {
                    return om_error(StatusCode::NOT_FOUND, "user not found");
                };
                let token = format!("eyJhbGciOiJSUzI1NiJ9.generated-{}.sig", fastrand::u64(..));
                let am = json!({"authType": "JWT", "config": {"JWTToken": token, "JWTTokenExpiry": "Unlimited"}});
                e.json["authenticationMechanism"] = am.clone();
                json_resp(StatusCode::OK, &am["config"])
            }
            _ => self.collection("users", method, tail, query, body),
        }
    }
}

/// An ingestion pipeline's `service` reference, as OpenMetadata resolves it: by `id`, else by
/// `fullyQualifiedName`; the entity gets the whole reference and the fully qualified name
/// `<service FQN>.<name>` (a dotted name quoted). Other entities are left alone.
/// A bot's `botUser` (a user's name in a create request) becomes a reference to that user.
fn scope_under_service(st: &State, coll: &str, v: &mut Value) -> Result<(), String> {
    if coll == "bots" {
        let name = match &v["botUser"] {
            Value::String(n) => n.clone(),
            Value::Object(r) => match r.get("name").and_then(Value::as_str) {
                Some(n) => n.to_string(),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        let user = st
            .collections
            .get("users")
            .and_then(|c| c.values().find(|e| e.json["name"] == name.as_str()))
            .ok_or_else(|| format!("user instance for {name} not found"))?;
        v["botUser"] = json!({"id": user.json["id"], "type": "user", "name": name,
            "fullyQualifiedName": user.json["fullyQualifiedName"]});
        return Ok(());
    }
    if coll != "services/ingestionPipelines" || !v["service"].is_object() {
        return Ok(());
    }
    let r = v["service"].clone();
    let by_id = |e: &Entity| r["id"].is_string() && e.json["id"] == r["id"];
    let by_fqn = |e: &Entity| {
        r["id"].is_null()
            && r["fullyQualifiedName"].is_string()
            && e.json["fullyQualifiedName"] == r["fullyQualifiedName"]
    };
    let kind = r["type"].as_str().unwrap_or("");
    let service = SERVICE_COLLECTIONS
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(&format!("{kind}s")))
        .filter_map(|c| st.collections.get(&format!("services/{c}")))
        .flat_map(|c| c.values())
        .find(|e| by_id(e) || by_fqn(e))
        .ok_or_else(|| format!("{kind} instance for {} not found", r["id"]))?;
    let sfqn = service.json["fullyQualifiedName"].as_str().unwrap_or("");
    let name = v["name"].as_str().unwrap_or("");
    let quoted = if name.contains('.') {
        format!("\"{name}\"")
    } else {
        name.to_string()
    };
    v["fullyQualifiedName"] = json!(format!("{sfqn}.{quoted}"));
    v["service"] = json!({"id": service.json["id"], "type": kind,
        "name": service.json["name"], "fullyQualifiedName": sfqn});
    Ok(())
}

/// A body that sends its first bytes, then nothing, never ending; counts its drop.
struct Stalling {
    first: Option<Bytes>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Parses a JSON body at any depth (OpenMetadata's own parser goes to 1,000 levels; the
/// gateway's write limit is far below that).
fn parse_deep(b: &[u8]) -> serde_json::Result<Value> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(b);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

fn finish_entity(v: &mut Value, id: &str, coll: &str, version: f64) {
    if !v.is_object() {
        *v = json!({});
    }
    let name = v["name"].as_str().unwrap_or("").to_string();
    v["id"] = json!(id);
    if v.get("fullyQualifiedName").is_none() {
        v["fullyQualifiedName"] = json!(name);
    }
    v["version"] = json!(version);
    v["updatedAt"] = json!(1_700_000_000_000u64);
    v["updatedBy"] = json!("admin");
    v["href"] = json!(format!("http://localhost:8585/api/v1/{coll}/{id}"));
    v["deleted"] = json!(false);
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn qp(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn stream_response(total: usize) -> Response<EmuBody> {
    const CHUNK: usize = 64 * 1024;
    let chunks = total.div_ceil(CHUNK);
    let stream = futures_lite_stream(total, CHUNK, chunks);
    let body = StreamBody::new(stream).boxed();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Deterministic bytes: byte i of the stream is (i * 31 + 7) mod 251.
pub fn pattern_byte(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

fn futures_lite_stream(
    total: usize,
    chunk: usize,
    chunks: usize,
) -> impl futures_core_like::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_core_like::iter((0..chunks).map(move |c| {
        let start = c * chunk;
        let end = (start + chunk).min(total);
        let data: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok(Frame::data(Bytes::from(data)))
    }))
}

/// A tiny iterator-backed stream, so the emulator needs no futures crate.
pub mod futures_core_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub use futures_core::Stream;

    pub struct Iter<I>(I);

    pub fn iter<I: Iterator>(i: I) -> Iter<I> {
        Iter(i)
    }

    impl<I: Iterator + Unpin> Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }
}
