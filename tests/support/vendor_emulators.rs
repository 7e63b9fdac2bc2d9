//! Emulators of the three vendor secret services the gateway talks to, following each
//! vendor's REST reference, so the stores are tested over real HTTP without a cloud account:
//! - [`AzureKeyVault`]: Key Vault secrets API 7.4 (bearer tokens with the 401 challenge,
//!   versions, tags, paging by `nextLink`, soft delete, purge, recover), Microsoft Entra ID's
//!   token endpoint (client secret or federated assertion) and the managed identity endpoint;
//! - [`SecretManager`]: Google Secret Manager v1 REST (secrets, versions, `:addVersion` with
//!   CRC32C, `versions/latest:access`, labels, annotations, paging), the OAuth token endpoint
//!   (service-account JWT, verified when its key is registered; refresh tokens) and the
//!   metadata server;
//! - [`KubeApi`]: the Kubernetes core/v1 Secret API (create, get, replace with
//!   `resourceVersion` conflicts, merge patch, delete, list with label selectors and `limit`/
//!   `continue`), bearer tokens.
//!
//! `tests/vendor_sdk_check.py` drives each one with the vendor's own Python client, so the
//! shapes here are the vendors', not our assumptions. `examples/vendor-emulators.rs` serves
//! all three for it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

// === the shared server ===

/// A request as a handler sees it.
pub struct Req {
    pub method: Method,
    /// The path, percent-decoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn bearer(&self) -> Option<&str> {
        self.headers
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn form(&self) -> HashMap<String, String> {
        parse_query(std::str::from_utf8(&self.body).unwrap_or(""))
            .into_iter()
            .collect()
    }
}

pub type Handler = Arc<dyn Fn(Req) -> Response<Full<Bytes>> + Send + Sync>;

/// Percent-decodes `s`; `plus` turns `+` into a space (query strings and forms).
fn pct_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && s.is_char_boundary(i + 1)
            && s.get(i + 1..i + 3).is_some()
        {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if plus && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (pct_decode(k, true), pct_decode(v, true)),
            None => (pct_decode(p, true), String::new()),
        })
        .collect()
}

pub fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

fn empty(status: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r
}

/// A self-signed CA and a server certificate for 127.0.0.1 and localhost.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer equals its subject for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vendor emulator test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("cert");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key pem");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

async fn to_req(req: Request<Incoming>) -> Req {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Req {
        method: parts.method,
        path: pct_decode(parts.uri.path(), false),
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers: parts.headers,
        body,
    }
}

/// Serves `handler` on `listener` (TLS with `pki`) until the process ends.
pub fn serve(listener: TcpListener, handler: Handler, pki: Option<&Pki>) {
    let acceptor = pki.map(tls_acceptor);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = handler.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(to_req(req).await)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
}

async fn bind(addr: &str) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind(addr).await.expect("bind emulator");
    let a = l.local_addr().expect("addr");
    (l, a)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC for Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn new_token(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// State every emulator shares: accepted tokens, counters, forced failures.
#[derive(Default)]
struct Common {
    tokens: HashSet<String>,
    token_requests: usize,
    requests: Vec<(Method, String)>,
    allow_anonymous: bool,
    /// Answer the next N service calls (not token calls) with this status.
    fail_next: Option<(u16, usize)>,
}

impl Common {
    fn forced_failure(&mut self) -> Option<u16> {
        let (status, left) = self.fail_next?;
        self.fail_next = (left > 1).then_some((status, left - 1));
        Some(status)
    }
}

// === Azure Key Vault ===

#[derive(Clone)]
struct AzVersion {
    id: String,
    value: String,
    created: u64,
    content_type: Option<String>,
    enabled: bool,
}

#[derive(Clone)]
struct AzSecret {
    versions: Vec<AzVersion>,
    tags: Map<String, Value>,
    deleted: Option<u64>,
}

#[derive(Default)]
struct AzState {
    common: Common,
    base: String,
    tenant: String,
    clients: HashMap<String, String>,
    federated: HashMap<String, String>,
    secrets: BTreeMap<String, AzSecret>,
    soft_delete: bool,
    purge_allowed: bool,
}

/// Azure Key Vault (secrets 7.4) plus Microsoft Entra ID's token endpoint and IMDS.
#[derive(Clone)]
pub struct AzureKeyVault {
    pub url: String,
    pub ca_pem: Option<String>,
    state: Arc<Mutex<AzState>>,
}

fn az_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Response<Full<Bytes>> {
    let mut e = json!({"code": code, "message": message});
    if let Some(i) = inner {
        e["innererror"] = json!({"code": i});
    }
    reply(status, &json!({ "error": e }))
}

fn valid_kv_name(n: &str) -> bool {
    (1..=127).contains(&n.len()) && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl AzState {
    fn attributes(&self, v: &AzVersion) -> Value {
        json!({"enabled": v.enabled, "created": v.created, "updated": v.created,
               "recoveryLevel": if self.soft_delete { "Recoverable+Purgeable" } else { "Purgeable" },
               "recoverableDays": if self.soft_delete { 90 } else { 0 }})
    }

    fn bundle(&self, name: &str, s: &AzSecret, v: &AzVersion, with_value: bool) -> Value {
        let mut b = json!({"id": format!("{}/secrets/{name}/{}", self.base, v.id),
                           "attributes": self.attributes(v), "tags": s.tags});
        if with_value {
            b["value"] = Value::String(v.value.clone());
        }
        if let Some(ct) = &v.content_type {
            b["contentType"] = Value::String(ct.clone());
        }
        b
    }

    fn deleted_bundle(&self, name: &str, s: &AzSecret) -> Value {
        let v = s.versions.last().expect("a secret has a version");
        let mut b = self.bundle(name, s, v, false);
        let when = s.deleted.unwrap_or_else(now);
        b["recoveryId"] = Value::String(format!("{}/deletedsecrets/{name}", self.base));
        b["deletedDate"] = json!(when);
        b["scheduledPurgeDate"] = json!(when + 90 * 86_400);
        b
    }

    fn token(&mut self, r: &Req) -> Response<Full<Bytes>> {
        self.common.token_requests += 1;
        let f = r.form();
        let ok_scope = f.get("scope").is_some_and(|s| s.ends_with("/.default"));
        let client = f.get("client_id").cloned().unwrap_or_default();
        let tenant_ok = r.path.starts_with(&format!("/{}/", self.tenant));
        let proof_ok = match (f.get("client_secret"), f.get("client_assertion")) {
            (Some(s), _) => self.clients.get(&client) == Some(s),
            (None, Some(a)) => self.federated.get(&client) == Some(a),
            _ => false,
        };
        if f.get("grant_type").map(String::as_str) != Some("client_credentials")
            || !ok_scope
            || !tenant_ok
            || !proof_ok
        {
            return reply(
                401,
                &json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            );
        }
        let t = new_token("aad");
        self.common.tokens.insert(t.clone());
        reply(
            200,
            &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": t}),
        )
    }

    fn imds(&mut self, r: &Req) -> Response<Full<Bytes>> {
        self.common.token_requests += 1;
        if r.headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true")
            || r.q("resource").is_none()
        {
            return reply(
                400,
                &json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
            );
        }
        let t = new_token("msi");
        self.common.tokens.insert(t.clone());
        reply(
            200,
            &json!({"access_token": t, "expires_in": "86399", "expires_on": (now() + 86_399).to_string(),
                    "resource": r.q("resource"), "token_type": "Bearer"}),
        )
    }

    fn handle(&mut self, r: Req) -> Response<Full<Bytes>> {
        if r.method == Method::POST && r.path.ends_with("/oauth2/v2.0/token") {
            return self.token(&r);
        }
        if r.path == "/metadata/identity/oauth2/token" {
            return self.imds(&r);
        }
        self.common
            .requests
            .push((r.method.clone(), r.path.clone()));
        let authorized = r.bearer().is_some_and(|t| self.common.tokens.contains(t));
        if !authorized {
            let mut resp = az_error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                None,
            );
            let challenge = format!(
                "Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"",
                self.base, self.tenant
            );
            resp.headers_mut()
                .insert("www-authenticate", challenge.parse().expect("challenge"));
            return resp;
        }
        if r.q("api-version").is_none_or(str::is_empty) {
            return az_error(
                400,
                "BadParameter",
                "The api-version query parameter is missing or not supported.",
                None,
            );
        }
        if let Some(status) = self.common.forced_failure() {
            return az_error(status, "Throttled", "Forced failure.", None);
        }
        let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        match (r.method.clone(), parts.as_slice()) {
            (Method::GET, ["secrets"]) => self.list(&r),
            (Method::PUT, ["secrets", name]) => self.set(name, &r),
            (Method::GET, ["secrets", name]) | (Method::GET, ["secrets", name, ""]) => {
                self.get(name, None)
            }
            (Method::GET, ["secrets", name, "versions"]) => self.versions(name),
            (Method::GET, ["secrets", name, version]) => self.get(name, Some(version)),
            (Method::PATCH, ["secrets", name, version]) => self.update(name, version, &r),
            (Method::PATCH, ["secrets", name]) => self.update(name, "", &r),
            (Method::DELETE, ["secrets", name]) => self.delete(name),
            (Method::GET, ["deletedsecrets", name]) => match self.secrets.get(*name) {
                Some(s) if s.deleted.is_some() => reply(200, &self.deleted_bundle(name, s)),
                _ => az_error(
                    404,
                    "DeletedSecretNotFound",
                    &format!("Deleted Secret not found: {name}"),
                    None,
                ),
            },
            (Method::DELETE, ["deletedsecrets", name]) => self.purge(name),
            (Method::POST, ["deletedsecrets", name, "recover"]) => self.recover(name),
            _ => az_error(404, "NotFound", "No such route.", None),
        }
    }

    fn not_found(name: &str) -> Response<Full<Bytes>> {
        az_error(
            404,
            "SecretNotFound",
            &format!("A secret with (name/id) {name} was not found in this key vault."),
            None,
        )
    }

    fn live(&self, name: &str) -> Option<&AzSecret> {
        self.secrets.get(name).filter(|s| s.deleted.is_none())
    }

    fn set(&mut self, name: &str, r: &Req) -> Response<Full<Bytes>> {
        if !valid_kv_name(name) {
            return az_error(
                400,
                "BadParameter",
                "The request URI contains an invalid name.",
                None,
            );
        }
        let Some(body) = r.json() else {
            return az_error(400, "BadParameter", "The request body is not JSON.", None);
        };
        let Some(value) = body["value"].as_str() else {
            return az_error(400, "BadParameter", "Property value is required.", None);
        };
        if value.len() > 25 * 1024 {
            return az_error(400, "BadParameter", "Secret value is too large.", None);
        }
        let tags = body["tags"].as_object().cloned().unwrap_or_default();
        if tags.len() > 15
            || tags
                .values()
                .any(|v| v.as_str().is_none_or(|s| s.len() > 256))
        {
            return az_error(
                400,
                "BadParameter",
                "Tags are invalid: at most 15, values up to 256 characters.",
                None,
            );
        }
        if self.secrets.get(name).is_some_and(|s| s.deleted.is_some()) {
            return az_error(
                409,
                "Conflict",
                &format!("Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."),
                Some("ObjectIsDeletedButRecoverable"),
            );
        }
        let version = AzVersion {
            id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            value: value.to_string(),
            created: now(),
            content_type: body["contentType"].as_str().map(str::to_string),
            enabled: body["attributes"]["enabled"].as_bool().unwrap_or(true),
        };
        let s = self.secrets.entry(name.to_string()).or_insert(AzSecret {
            versions: Vec::new(),
            tags: Map::new(),
            deleted: None,
        });
        s.versions.push(version);
        s.tags = tags;
        let s = s.clone();
        reply(
            200,
            &self.bundle(name, &s, s.versions.last().expect("pushed"), true),
        )
    }

    fn get(&self, name: &str, version: Option<&str>) -> Response<Full<Bytes>> {
        let Some(s) = self.live(name) else {
            return Self::not_found(name);
        };
        let v = match version {
            None | Some("") => s.versions.last(),
            Some(id) => s.versions.iter().find(|v| v.id == id),
        };
        match v {
            Some(v) if !v.enabled => az_error(
                403,
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
                Some("SecretDisabled"),
            ),
            Some(v) => reply(200, &self.bundle(name, s, v, true)),
            None => Self::not_found(name),
        }
    }

    fn update(&mut self, name: &str, version: &str, r: &Req) -> Response<Full<Bytes>> {
        let body = r.json().unwrap_or(Value::Null);
        let Some(s) = self.secrets.get_mut(name).filter(|s| s.deleted.is_none()) else {
            return Self::not_found(name);
        };
        if let Some(t) = body["tags"].as_object() {
            s.tags = t.clone();
        }
        let Some(v) = s
            .versions
            .iter_mut()
            .rev()
            .find(|v| version.is_empty() || v.id == version)
        else {
            return Self::not_found(name);
        };
        if let Some(ct) = body["contentType"].as_str() {
            v.content_type = Some(ct.to_string());
        }
        if let Some(e) = body["attributes"]["enabled"].as_bool() {
            v.enabled = e;
        }
        let v = v.clone();
        let s = s.clone();
        reply(200, &self.bundle(name, &s, &v, false))
    }

    fn versions(&self, name: &str) -> Response<Full<Bytes>> {
        let Some(s) = self.live(name) else {
            return Self::not_found(name);
        };
        let items: Vec<Value> = s
            .versions
            .iter()
            .map(|v| json!({"id": format!("{}/secrets/{name}/{}", self.base, v.id), "attributes": self.attributes(v), "tags": s.tags}))
            .collect();
        reply(200, &json!({"value": items, "nextLink": null}))
    }

    fn list(&self, r: &Req) -> Response<Full<Bytes>> {
        let max: usize = r
            .q("maxresults")
            .and_then(|m| m.parse().ok())
            .unwrap_or(25)
            .clamp(1, 25);
        let skip: usize = r.q("$skiptoken").and_then(|m| m.parse().ok()).unwrap_or(0);
        let live: Vec<(&String, &AzSecret)> = self
            .secrets
            .iter()
            .filter(|(_, s)| s.deleted.is_none())
            .collect();
        let items: Vec<Value> = live
            .iter()
            .skip(skip)
            .take(max)
            .map(|(n, s)| {
                let v = s.versions.last().expect("a secret has a version");
                let mut item = json!({"id": format!("{}/secrets/{n}", self.base), "attributes": self.attributes(v), "tags": s.tags});
                if let Some(ct) = &v.content_type {
                    item["contentType"] = Value::String(ct.clone());
                }
                item
            })
            .collect();
        let next = (skip + max < live.len()).then(|| {
            format!(
                "{}/secrets?api-version=7.4&$skiptoken={}&maxresults={max}",
                self.base,
                skip + max
            )
        });
        reply(200, &json!({"value": items, "nextLink": next}))
    }

    fn delete(&mut self, name: &str) -> Response<Full<Bytes>> {
        let Some(s) = self.live(name).cloned() else {
            return Self::not_found(name);
        };
        if self.soft_delete {
            let when = now();
            if let Some(s) = self.secrets.get_mut(name) {
                s.deleted = Some(when);
            }
            reply(200, &self.deleted_bundle(name, &s))
        } else {
            self.secrets.remove(name);
            let v = s.versions.last().expect("a secret has a version");
            reply(200, &self.bundle(name, &s, v, false))
        }
    }

    fn purge(&mut self, name: &str) -> Response<Full<Bytes>> {
        if self.secrets.get(name).is_none_or(|s| s.deleted.is_none()) {
            return az_error(
                404,
                "DeletedSecretNotFound",
                &format!("Deleted Secret not found: {name}"),
                None,
            );
        }
        if !self.purge_allowed {
            return az_error(403, "Forbidden", "The user, group or application does not have secrets purge permission on key vault.", Some("ForbiddenByPolicy"));
        }
        self.secrets.remove(name);
        empty(204)
    }

    fn recover(&mut self, name: &str) -> Response<Full<Bytes>> {
        let Some(s) = self.secrets.get_mut(name).filter(|s| s.deleted.is_some()) else {
            return az_error(
                404,
                "DeletedSecretNotFound",
                &format!("Deleted Secret not found: {name}"),
                None,
            );
        };
        s.deleted = None;
        let s = s.clone();
        reply(
            200,
            &self.bundle(
                name,
                &s,
                s.versions.last().expect("a secret has a version"),
                false,
            ),
        )
    }
}

impl AzureKeyVault {
    /// Serves on `addr` (`127.0.0.1:0` for any port); with `tls`, over HTTPS with a fresh CA
    /// (`ca_pem`), as Azure's SDKs insist on.
    pub async fn start_on(addr: &str, tls: bool) -> AzureKeyVault {
        let (listener, a) = bind(addr).await;
        let pki = tls.then(make_pki);
        let url = format!("{}://{a}", if tls { "https" } else { "http" });
        let state = Arc::new(Mutex::new(AzState {
            base: url.clone(),
            tenant: "emulator-tenant".into(),
            soft_delete: true,
            purge_allowed: true,
            ..Default::default()
        }));
        let s = state.clone();
        serve(
            listener,
            Arc::new(move |r| s.lock().expect("state").handle(r)),
            pki.as_ref(),
        );
        AzureKeyVault {
            url,
            ca_pem: pki.map(|p| p.ca_pem),
            state,
        }
    }

    pub async fn start() -> AzureKeyVault {
        AzureKeyVault::start_on("127.0.0.1:0", false).await
    }

    fn st(&self) -> std::sync::MutexGuard<'_, AzState> {
        self.state.lock().expect("state")
    }

    pub fn tenant(&self) -> String {
        self.st().tenant.clone()
    }

    /// A service principal that may get tokens with this secret.
    pub fn add_client(&self, client_id: &str, secret: &str) {
        self.st().clients.insert(client_id.into(), secret.into());
    }

    /// A workload identity: `client_id` may present `assertion` instead of a secret.
    pub fn add_federated(&self, client_id: &str, assertion: &str) {
        self.st()
            .federated
            .insert(client_id.into(), assertion.into());
    }

    /// A token the vault accepts without asking Entra ID (the SDK check's static token).
    pub fn accept_token(&self, token: &str) {
        self.st().common.tokens.insert(token.into());
    }

    pub fn revoke_tokens(&self) {
        self.st().common.tokens.clear();
    }

    pub fn set_purge_allowed(&self, yes: bool) {
        self.st().purge_allowed = yes;
    }

    pub fn set_soft_delete(&self, yes: bool) {
        self.st().soft_delete = yes;
    }

    pub fn token_requests(&self) -> usize {
        self.st().common.token_requests
    }

    /// Method and path of every vault call.
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.st().common.requests.clone()
    }

    pub fn fail_next(&self, status: u16, times: usize) {
        self.st().common.fail_next = Some((status, times));
    }

    /// Names of deleted, not yet purged secrets.
    pub fn deleted_names(&self) -> Vec<String> {
        self.st()
            .secrets
            .iter()
            .filter(|(_, s)| s.deleted.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Tags of the live secret `name`.
    pub fn tags(&self, name: &str) -> Option<Map<String, Value>> {
        self.st().live(name).map(|s| s.tags.clone())
    }

    /// The latest value of the live secret `name`.
    pub fn value(&self, name: &str) -> Option<String> {
        self.st()
            .live(name)
            .and_then(|s| s.versions.last())
            .map(|v| v.value.clone())
    }

    pub fn version_count(&self, name: &str) -> usize {
        self.st()
            .secrets
            .get(name)
            .map(|s| s.versions.len())
            .unwrap_or(0)
    }

    /// Writes a secret directly (as another writer would).
    pub fn seed(&self, name: &str, value: &str, tags: Value) {
        let mut st = self.st();
        st.secrets.insert(
            name.into(),
            AzSecret {
                versions: vec![AzVersion {
                    id: "seed".into(),
                    value: value.into(),
                    created: now(),
                    content_type: None,
                    enabled: true,
                }],
                tags: tags.as_object().cloned().unwrap_or_default(),
                deleted: None,
            },
        );
    }
}

// === Google Secret Manager ===

#[derive(Clone)]
struct GVersion {
    data: Vec<u8>,
    /// The checksum the client sent, if any.
    crc: Option<u64>,
    /// The checksum computed when the version was written (what `:access` reports).
    stored_crc: u32,
    state: &'static str,
    created: u64,
}

#[derive(Clone)]
struct GSecret {
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    replication: Value,
    created: u64,
    versions: Vec<GVersion>,
}

#[derive(Default)]
struct GState {
    common: Common,
    base: String,
    /// (project, secret id) -> secret
    secrets: BTreeMap<(String, String), GSecret>,
    /// service-account email -> PKCS#1 RSA public key (DER): assertions are verified
    service_accounts: HashMap<String, Vec<u8>>,
    refresh_tokens: HashSet<String>,
}

/// A Secret Manager secret's labels, annotations and number of versions.
pub struct SecretMeta {
    pub labels: Map<String, Value>,
    pub annotations: Map<String, Value>,
    pub versions: usize,
}

/// Google Secret Manager v1 plus the OAuth token endpoint and the metadata server.
#[derive(Clone)]
pub struct SecretManager {
    pub url: String,
    state: Arc<Mutex<GState>>,
}

fn g_error(code: u16, status: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        code,
        &json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn valid_label_key(k: &str) -> bool {
    (1..=63).contains(&k.len())
        && k.starts_with(|c: char| c.is_ascii_lowercase())
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_annotation_key(k: &str) -> bool {
    let b = k.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl GState {
    fn secret_json(&self, project: &str, id: &str, s: &GSecret) -> Value {
        let mut v = json!({"name": format!("projects/{project}/secrets/{id}"), "replication": s.replication,
                           "createTime": rfc3339(s.created), "etag": format!("\"{:x}\"", s.created + s.versions.len() as u64)});
        if !s.labels.is_empty() {
            v["labels"] = Value::Object(s.labels.clone());
        }
        if !s.annotations.is_empty() {
            v["annotations"] = Value::Object(s.annotations.clone());
        }
        v
    }

    fn version_json(project: &str, id: &str, n: usize, v: &GVersion) -> Value {
        json!({"name": format!("projects/{project}/secrets/{id}/versions/{n}"), "createTime": rfc3339(v.created),
               "state": v.state, "etag": format!("\"{n:x}\""), "clientSpecifiedPayloadChecksum": v.crc.is_some(),
               "replicationStatus": {"automatic": {}}})
    }

    fn token(&mut self, r: &Req) -> Response<Full<Bytes>> {
        self.common.token_requests += 1;
        let f = r.form();
        let ok = match f.get("grant_type").map(String::as_str) {
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                f.get("assertion").is_some_and(|a| self.assertion_ok(a))
            }
            Some("refresh_token") => f
                .get("refresh_token")
                .is_some_and(|t| self.refresh_tokens.contains(t)),
            _ => false,
        };
        if !ok {
            return reply(
                400,
                &json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            );
        }
        let t = new_token("ya29");
        self.common.tokens.insert(t.clone());
        reply(
            200,
            &json!({"access_token": t, "expires_in": 3599, "token_type": "Bearer"}),
        )
    }

    fn assertion_ok(&self, jwt: &str) -> bool {
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return false;
        }
        let dec = |p: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        };
        let (Some(h), Some(c), Some(sig)) = (dec(parts[0]), dec(parts[1]), dec(parts[2])) else {
            return false;
        };
        let (Ok(h), Ok(c)) = (
            serde_json::from_slice::<Value>(&h),
            serde_json::from_slice::<Value>(&c),
        ) else {
            return false;
        };
        let claims_ok = h["alg"] == "RS256"
            && c["aud"].as_str() == Some(format!("{}/token", self.base).as_str())
            && c["scope"].as_str().is_some_and(|s| {
                s.split(' ')
                    .any(|x| x == "https://www.googleapis.com/auth/cloud-platform")
            })
            && c["exp"].as_u64().is_some_and(|e| e > now())
            && c["iat"].as_u64().is_some_and(|i| i <= now() + 60);
        let Some(key) = c["iss"].as_str().and_then(|i| self.service_accounts.get(i)) else {
            return false;
        };
        let signed = format!("{}.{}", parts[0], parts[1]);
        claims_ok
            && ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                key,
            )
            .verify(signed.as_bytes(), &sig)
            .is_ok()
    }

    fn handle(&mut self, r: Req) -> Response<Full<Bytes>> {
        if r.method == Method::POST && r.path == "/token" {
            return self.token(&r);
        }
        if r.path == "/computeMetadata/v1/instance/service-accounts/default/token" {
            self.common.token_requests += 1;
            if r.headers
                .get("metadata-flavor")
                .and_then(|v| v.to_str().ok())
                != Some("Google")
            {
                return empty(403);
            }
            let t = new_token("ya29.md");
            self.common.tokens.insert(t.clone());
            return reply(
                200,
                &json!({"access_token": t, "expires_in": 3599, "token_type": "Bearer"}),
            );
        }
        self.common
            .requests
            .push((r.method.clone(), r.path.clone()));
        let authorized = match r.bearer() {
            Some(t) => self.common.tokens.contains(t),
            None => self.common.allow_anonymous,
        };
        if !authorized {
            return g_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            );
        }
        if let Some(status) = self.common.forced_failure() {
            return g_error(status, "UNAVAILABLE", "Forced failure.");
        }
        let Some(rest) = r.path.strip_prefix("/v1/projects/") else {
            return g_error(404, "NOT_FOUND", "No such route.");
        };
        let (rest, verb) = match rest.rsplit_once(':') {
            Some((p, v)) if !v.contains('/') => (p, Some(v)),
            _ => (rest, None),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match (r.method.clone(), parts.as_slice(), verb) {
            (Method::POST, [p, "secrets"], None) => self.create(p, &r),
            (Method::GET, [p, "secrets"], None) => self.list(p, &r),
            (Method::GET, [p, "secrets", s], None) => {
                self.with(p, s, |st, s0| reply(200, &st.secret_json(p, s, s0)))
            }
            (Method::PATCH, [p, "secrets", s], None) => self.patch(p, s, &r),
            (Method::DELETE, [p, "secrets", s], None) => {
                match self.secrets.remove(&(p.to_string(), s.to_string())) {
                    Some(_) => reply(200, &json!({})),
                    None => g_error(
                        404,
                        "NOT_FOUND",
                        &format!("Secret [projects/{p}/secrets/{s}] not found."),
                    ),
                }
            }
            (Method::POST, [p, "secrets", s], Some("addVersion")) => self.add_version(p, s, &r),
            (Method::GET, [p, "secrets", s, "versions"], None) => self.with(p, s, |_, s0| {
                let items: Vec<Value> = s0
                    .versions
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, v)| GState::version_json(p, s, i + 1, v))
                    .collect();
                reply(200, &json!({"versions": items, "totalSize": items.len()}))
            }),
            (Method::GET, [p, "secrets", s, "versions", v], verb) => self.version(p, s, v, verb),
            (
                Method::POST,
                [p, "secrets", s, "versions", v],
                Some(op @ ("disable" | "enable" | "destroy")),
            ) => self.set_state(p, s, v, op),
            _ => g_error(404, "NOT_FOUND", "No such route."),
        }
    }

    fn with(
        &self,
        p: &str,
        s: &str,
        f: impl FnOnce(&GState, &GSecret) -> Response<Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        match self.secrets.get(&(p.to_string(), s.to_string())) {
            Some(sec) => f(self, sec),
            None => g_error(
                404,
                "NOT_FOUND",
                &format!("Secret [projects/{p}/secrets/{s}] not found or has no versions."),
            ),
        }
    }

    fn check_meta(
        labels: &Map<String, Value>,
        annotations: &Map<String, Value>,
    ) -> Option<&'static str> {
        if labels.len() > 64
            || labels
                .iter()
                .any(|(k, v)| !valid_label_key(k) || !v.as_str().is_some_and(valid_label_value))
        {
            return Some("Invalid labels.");
        }
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > 16 * 1024
            || annotations
                .iter()
                .any(|(k, v)| !valid_annotation_key(k) || !v.is_string())
        {
            return Some("Invalid annotations.");
        }
        None
    }

    fn create(&mut self, p: &str, r: &Req) -> Response<Full<Bytes>> {
        let id = r.q("secretId").unwrap_or("");
        if !(1..=255).contains(&id.len())
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return g_error(
                400,
                "INVALID_ARGUMENT",
                "Secret ID must be 1-255 of [a-zA-Z0-9_-].",
            );
        }
        let body = r.json().unwrap_or(Value::Null);
        let replication = body["replication"].clone();
        if !(replication["automatic"].is_object() || replication["userManaged"].is_object()) {
            return g_error(400, "INVALID_ARGUMENT", "Secret.replication is required.");
        }
        let labels = body["labels"].as_object().cloned().unwrap_or_default();
        let annotations = body["annotations"].as_object().cloned().unwrap_or_default();
        if let Some(m) = GState::check_meta(&labels, &annotations) {
            return g_error(400, "INVALID_ARGUMENT", m);
        }
        let key = (p.to_string(), id.to_string());
        if self.secrets.contains_key(&key) {
            return g_error(
                409,
                "ALREADY_EXISTS",
                &format!("Secret [projects/{p}/secrets/{id}] already exists."),
            );
        }
        let s = GSecret {
            labels,
            annotations,
            replication,
            created: now(),
            versions: Vec::new(),
        };
        let out = self.secret_json(p, id, &s);
        self.secrets.insert(key, s);
        reply(200, &out)
    }

    fn patch(&mut self, p: &str, s: &str, r: &Req) -> Response<Full<Bytes>> {
        let body = r.json().unwrap_or(Value::Null);
        let mask = r.q("updateMask").unwrap_or("").to_string();
        let key = (p.to_string(), s.to_string());
        let Some(mut sec) = self.secrets.get(&key).cloned() else {
            return g_error(
                404,
                "NOT_FOUND",
                &format!("Secret [projects/{p}/secrets/{s}] not found."),
            );
        };
        for field in mask.split(',').filter(|f| !f.is_empty()) {
            match field {
                "labels" => sec.labels = body["labels"].as_object().cloned().unwrap_or_default(),
                "annotations" => {
                    sec.annotations = body["annotations"].as_object().cloned().unwrap_or_default()
                }
                _ => return g_error(400, "INVALID_ARGUMENT", "Unsupported update mask."),
            }
        }
        if let Some(m) = GState::check_meta(&sec.labels, &sec.annotations) {
            return g_error(400, "INVALID_ARGUMENT", m);
        }
        let out = self.secret_json(p, s, &sec);
        self.secrets.insert(key, sec);
        reply(200, &out)
    }

    fn add_version(&mut self, p: &str, s: &str, r: &Req) -> Response<Full<Bytes>> {
        let body = r.json().unwrap_or(Value::Null);
        let Some(data) = body["payload"]["data"]
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        else {
            return g_error(
                400,
                "INVALID_ARGUMENT",
                "Payload data is required (base64).",
            );
        };
        if data.len() > 64 * 1024 {
            return g_error(
                400,
                "INVALID_ARGUMENT",
                "Secret payload is larger than 65536 bytes.",
            );
        }
        let crc = match &body["payload"]["dataCrc32c"] {
            Value::String(c) => c.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        if crc.is_some_and(|c| c != u64::from(crc32c(&data))) {
            return g_error(
                400,
                "INVALID_ARGUMENT",
                "Checksum mismatch: the payload's data_crc32c does not match its data.",
            );
        }
        let Some(sec) = self.secrets.get_mut(&(p.to_string(), s.to_string())) else {
            return g_error(
                404,
                "NOT_FOUND",
                &format!("Secret [projects/{p}/secrets/{s}] not found."),
            );
        };
        let stored_crc = crc32c(&data);
        sec.versions.push(GVersion {
            data,
            crc,
            stored_crc,
            state: "ENABLED",
            created: now(),
        });
        let n = sec.versions.len();
        reply(200, &GState::version_json(p, s, n, &sec.versions[n - 1]))
    }

    fn pick(sec: &GSecret, v: &str) -> Option<usize> {
        if v == "latest" {
            sec.versions.iter().rposition(|x| x.state != "DESTROYED")
        } else {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n >= 1 && *n <= sec.versions.len())
                .map(|n| n - 1)
        }
    }

    fn version(&self, p: &str, s: &str, v: &str, verb: Option<&str>) -> Response<Full<Bytes>> {
        let Some(sec) = self.secrets.get(&(p.to_string(), s.to_string())) else {
            return g_error(
                404,
                "NOT_FOUND",
                &format!("Secret [projects/{p}/secrets/{s}] not found or has no versions."),
            );
        };
        let Some(i) = GState::pick(sec, v) else {
            return g_error(
                404,
                "NOT_FOUND",
                &format!("Secret Version [projects/{p}/secrets/{s}/versions/{v}] not found."),
            );
        };
        let ver = &sec.versions[i];
        match verb {
            None => reply(200, &GState::version_json(p, s, i + 1, ver)),
            Some("access") if ver.state != "ENABLED" => g_error(
                400,
                "FAILED_PRECONDITION",
                &format!(
                    "Secret Version [projects/{p}/secrets/{s}/versions/{}] is in {} state.",
                    i + 1,
                    ver.state
                ),
            ),
            Some("access") => reply(
                200,
                &json!({"name": format!("projects/{p}/secrets/{s}/versions/{}", i + 1),
                "payload": {"data": base64::engine::general_purpose::STANDARD.encode(&ver.data),
                            "dataCrc32c": ver.stored_crc.to_string()}}),
            ),
            _ => g_error(404, "NOT_FOUND", "No such route."),
        }
    }

    fn set_state(&mut self, p: &str, s: &str, v: &str, op: &str) -> Response<Full<Bytes>> {
        let Some(sec) = self.secrets.get_mut(&(p.to_string(), s.to_string())) else {
            return g_error(
                404,
                "NOT_FOUND",
                &format!("Secret [projects/{p}/secrets/{s}] not found."),
            );
        };
        let Some(i) = GState::pick(sec, v) else {
            return g_error(404, "NOT_FOUND", "Secret Version not found.");
        };
        let ver = &mut sec.versions[i];
        if ver.state == "DESTROYED" {
            return g_error(400, "FAILED_PRECONDITION", "Secret Version is destroyed.");
        }
        ver.state = match op {
            "disable" => "DISABLED",
            "enable" => "ENABLED",
            _ => {
                ver.data.clear();
                "DESTROYED"
            }
        };
        reply(200, &GState::version_json(p, s, i + 1, ver))
    }

    fn list(&self, p: &str, r: &Req) -> Response<Full<Bytes>> {
        let size: usize = r
            .q("pageSize")
            .and_then(|x| x.parse().ok())
            .unwrap_or(25_000)
            .clamp(1, 25_000);
        let start: usize = r.q("pageToken").and_then(|x| x.parse().ok()).unwrap_or(0);
        let all: Vec<(&(String, String), &GSecret)> = self
            .secrets
            .iter()
            .filter(|((proj, _), _)| proj == p)
            .collect();
        let items: Vec<Value> = all
            .iter()
            .skip(start)
            .take(size)
            .map(|((_, id), s)| self.secret_json(p, id, s))
            .collect();
        let mut out = json!({"totalSize": all.len()});
        if !items.is_empty() {
            out["secrets"] = Value::Array(items);
        }
        if start + size < all.len() {
            out["nextPageToken"] = Value::String((start + size).to_string());
        }
        reply(200, &out)
    }
}

impl SecretManager {
    pub async fn start_on(addr: &str) -> SecretManager {
        let (listener, a) = bind(addr).await;
        let url = format!("http://{a}");
        let state = Arc::new(Mutex::new(GState {
            base: url.clone(),
            ..Default::default()
        }));
        let s = state.clone();
        serve(
            listener,
            Arc::new(move |r| s.lock().expect("state").handle(r)),
            None,
        );
        SecretManager { url, state }
    }

    pub async fn start() -> SecretManager {
        SecretManager::start_on("127.0.0.1:0").await
    }

    fn st(&self) -> std::sync::MutexGuard<'_, GState> {
        self.state.lock().expect("state")
    }

    /// Lets requests without a token in (the SDK check uses anonymous credentials).
    pub fn allow_anonymous(&self, yes: bool) {
        self.st().common.allow_anonymous = yes;
    }

    /// A service account whose JWTs (signed by the private half of `pkcs1_public_der`) buy tokens.
    pub fn add_service_account(&self, email: &str, pkcs1_public_der: Vec<u8>) {
        self.st()
            .service_accounts
            .insert(email.into(), pkcs1_public_der);
    }

    pub fn add_refresh_token(&self, token: &str) {
        self.st().refresh_tokens.insert(token.into());
    }

    pub fn revoke_tokens(&self) {
        self.st().common.tokens.clear();
    }

    pub fn token_requests(&self) -> usize {
        self.st().common.token_requests
    }

    pub fn requests(&self) -> Vec<(Method, String)> {
        self.st().common.requests.clone()
    }

    pub fn fail_next(&self, status: u16, times: usize) {
        self.st().common.fail_next = Some((status, times));
    }

    /// What a secret carries besides its values.
    pub fn secret(&self, project: &str, id: &str) -> Option<SecretMeta> {
        self.st()
            .secrets
            .get(&(project.to_string(), id.to_string()))
            .map(|s| SecretMeta {
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                versions: s.versions.len(),
            })
    }

    /// The latest version's value of a secret.
    pub fn latest(&self, project: &str, id: &str) -> Option<String> {
        let st = self.st();
        let v = st
            .secrets
            .get(&(project.to_string(), id.to_string()))?
            .versions
            .last()?
            .clone();
        String::from_utf8(v.data).ok()
    }

    /// Flips a stored byte of the latest version without fixing its checksum.
    pub fn corrupt_latest(&self, project: &str, id: &str) {
        if let Some(s) = self
            .st()
            .secrets
            .get_mut(&(project.to_string(), id.to_string()))
        {
            if let Some(v) = s.versions.last_mut() {
                if let Some(b) = v.data.first_mut() {
                    *b ^= 1;
                }
            }
        }
    }
}

// === Kubernetes ===

#[derive(Default)]
struct KState {
    common: Common,
    /// (namespace, name) -> Secret object
    secrets: BTreeMap<(String, String), Value>,
    resource_version: u64,
    /// Verbs the token is not allowed (RBAC says no).
    forbidden: HashSet<&'static str>,
}

/// The Kubernetes core/v1 Secret API.
#[derive(Clone)]
pub struct KubeApi {
    pub url: String,
    pub ca_pem: Option<String>,
    state: Arc<Mutex<KState>>,
}

fn k_status(code: u16, reason: &str, message: &str, name: Option<&str>) -> Response<Full<Bytes>> {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code});
    if let Some(n) = name {
        s["details"] = json!({"name": n, "kind": "secrets"});
    }
    reply(code, &s)
}

fn dns_subdomain(n: &str) -> bool {
    (1..=253).contains(&n.len())
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
fn selector_matches(sel: &str, labels: &Value) -> bool {
    sel.split(',').filter(|t| !t.is_empty()).all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k].is_null()
        } else {
            !labels[term].is_null()
        }
    })
}

impl KState {
    fn validate(obj: &Value) -> Option<String> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        if !dns_subdomain(name) {
            return Some(format!("Secret \"{name}\" is invalid: metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"));
        }
        let mut size = 0;
        if let Some(data) = obj["data"].as_object() {
            for (k, v) in data {
                let Some(bytes) = v
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                else {
                    return Some(format!(
                        "Secret \"{name}\" is invalid: data[{k}]: not base64"
                    ));
                };
                size += bytes.len();
            }
        }
        (size > 1024 * 1024).then(|| {
            format!("Secret \"{name}\" is invalid: data: Too long: must have at most 1048576 bytes")
        })
    }

    fn stamp(&mut self, obj: &mut Value, ns: &str, created: Option<Value>) {
        self.resource_version += 1;
        let m = &mut obj["metadata"];
        m["namespace"] = Value::String(ns.to_string());
        m["resourceVersion"] = Value::String(self.resource_version.to_string());
        m["uid"] = created
            .as_ref()
            .map(|c| c["uid"].clone())
            .unwrap_or_else(|| {
                Value::String(format!(
                    "{:08x}-0000-4000-8000-{:012x}",
                    fastrand::u32(..),
                    fastrand::u64(..) & 0xffff_ffff_ffff
                ))
            });
        m["creationTimestamp"] = created
            .map(|c| c["creationTimestamp"].clone())
            .unwrap_or_else(|| Value::String(rfc3339(now())));
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Secret");
        if obj["type"].is_null() {
            obj["type"] = json!("Opaque");
        }
        if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
            for (k, v) in sd.as_object().into_iter().flatten() {
                obj["data"][k] = Value::String(
                    base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or("")),
                );
            }
        }
    }

    fn handle(&mut self, r: Req) -> Response<Full<Bytes>> {
        self.common
            .requests
            .push((r.method.clone(), r.path.clone()));
        if !r.bearer().is_some_and(|t| self.common.tokens.contains(t)) {
            return k_status(401, "Unauthorized", "Unauthorized", None);
        }
        if r.path == "/version" {
            return reply(
                200,
                &json!({"major": "1", "minor": "30", "gitVersion": "v1.30.0-emulator", "platform": "linux/amd64"}),
            );
        }
        if let Some(status) = self.common.forced_failure() {
            return k_status(status, "TooManyRequests", "Forced failure.", None);
        }
        let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        let (ns, name) = match parts.as_slice() {
            ["api", "v1", "namespaces", ns, "secrets"] => (ns.to_string(), None),
            ["api", "v1", "namespaces", ns, "secrets", name] => {
                (ns.to_string(), Some(name.to_string()))
            }
            _ => {
                return k_status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                    None,
                )
            }
        };
        let verb = match (&r.method, name.is_some()) {
            (&Method::GET, false) => "list",
            (&Method::GET, true) => "get",
            (&Method::POST, false) => "create",
            (&Method::PUT, true) => "update",
            (&Method::PATCH, true) => "patch",
            (&Method::DELETE, true) => "delete",
            _ => {
                return k_status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    None,
                )
            }
        };
        if self.forbidden.contains(verb) {
            return k_status(403, "Forbidden", &format!("secrets is forbidden: User \"system:serviceaccount:{ns}:gateway\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"{ns}\""), name.as_deref());
        }
        match (verb, name) {
            ("list", _) => self.list(&ns, &r),
            ("create", _) => self.create(&ns, &r),
            ("get", Some(n)) => match self.secrets.get(&(ns, n.clone())) {
                Some(s) => reply(200, s),
                None => k_status(
                    404,
                    "NotFound",
                    &format!("secrets \"{n}\" not found"),
                    Some(&n),
                ),
            },
            ("update", Some(n)) => self.replace(&ns, &n, &r),
            ("patch", Some(n)) => self.patch(&ns, &n, &r),
            ("delete", Some(n)) => match self.secrets.remove(&(ns, n.clone())) {
                Some(_) => reply(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                              "details": {"name": n, "kind": "secrets", "uid": "deleted"}}),
                ),
                None => k_status(
                    404,
                    "NotFound",
                    &format!("secrets \"{n}\" not found"),
                    Some(&n),
                ),
            },
            _ => k_status(405, "MethodNotAllowed", "unsupported", None),
        }
    }

    fn create(&mut self, ns: &str, r: &Req) -> Response<Full<Bytes>> {
        let Some(mut obj) = r.json().filter(|o| o.is_object()) else {
            return k_status(
                400,
                "BadRequest",
                "the body of the request was in an unknown format",
                None,
            );
        };
        if obj["metadata"]["namespace"]
            .as_str()
            .is_some_and(|n| n != ns)
        {
            return k_status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request", None);
        }
        if let Some(m) = KState::validate(&obj) {
            return k_status(422, "Invalid", &m, None);
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if self.secrets.contains_key(&(ns.to_string(), name.clone())) {
            return k_status(
                409,
                "AlreadyExists",
                &format!("secrets \"{name}\" already exists"),
                Some(&name),
            );
        }
        self.stamp(&mut obj, ns, None);
        self.secrets.insert((ns.to_string(), name), obj.clone());
        reply(201, &obj)
    }

    fn replace(&mut self, ns: &str, name: &str, r: &Req) -> Response<Full<Bytes>> {
        let Some(mut obj) = r.json().filter(|o| o.is_object()) else {
            return k_status(
                400,
                "BadRequest",
                "the body of the request was in an unknown format",
                None,
            );
        };
        let key = (ns.to_string(), name.to_string());
        let Some(cur) = self.secrets.get(&key).cloned() else {
            return k_status(
                404,
                "NotFound",
                &format!("secrets \"{name}\" not found"),
                Some(name),
            );
        };
        if obj["metadata"]["name"].as_str() != Some(name) {
            return k_status(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
                None,
            );
        }
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
            if Some(rv) != cur["metadata"]["resourceVersion"].as_str() {
                return k_status(409, "Conflict", &format!("Operation cannot be fulfilled on secrets \"{name}\": the object has been modified; please apply your changes to the latest version and try again"), Some(name));
            }
        }
        if let Some(m) = KState::validate(&obj) {
            return k_status(422, "Invalid", &m, None);
        }
        self.stamp(&mut obj, ns, Some(cur["metadata"].clone()));
        self.secrets.insert(key, obj.clone());
        reply(200, &obj)
    }

    fn patch(&mut self, ns: &str, name: &str, r: &Req) -> Response<Full<Bytes>> {
        let ct = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !(ct.starts_with("application/merge-patch+json")
            || ct.starts_with("application/strategic-merge-patch+json"))
        {
            return k_status(415, "UnsupportedMediaType", &format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {ct})"), None);
        }
        let key = (ns.to_string(), name.to_string());
        let Some(mut obj) = self.secrets.get(&key).cloned() else {
            return k_status(
                404,
                "NotFound",
                &format!("secrets \"{name}\" not found"),
                Some(name),
            );
        };
        let Some(patch) = r.json() else {
            return k_status(
                400,
                "BadRequest",
                "the body of the request was in an unknown format",
                None,
            );
        };
        json_patch::merge(&mut obj, &patch);
        if let Some(m) = KState::validate(&obj) {
            return k_status(422, "Invalid", &m, None);
        }
        let meta = obj["metadata"].clone();
        self.stamp(&mut obj, ns, Some(meta));
        self.secrets.insert(key, obj.clone());
        reply(200, &obj)
    }

    fn list(&self, ns: &str, r: &Req) -> Response<Full<Bytes>> {
        let sel = r.q("labelSelector").unwrap_or("");
        let limit: usize = r
            .q("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let start: usize = r.q("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let all: Vec<&Value> = self
            .secrets
            .iter()
            .filter(|((n, _), s)| n == ns && selector_matches(sel, &s["metadata"]["labels"]))
            .map(|(_, s)| s)
            .collect();
        let items: Vec<Value> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|s| {
                let mut s = (*s).clone();
                if let Some(o) = s.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                s
            })
            .collect();
        let mut meta = json!({"resourceVersion": self.resource_version.to_string()});
        if start.saturating_add(limit) < all.len() {
            meta["continue"] = Value::String((start + limit).to_string());
            meta["remainingItemCount"] = json!(all.len() - start - limit);
        }
        reply(
            200,
            &json!({"kind": "SecretList", "apiVersion": "v1", "metadata": meta, "items": items}),
        )
    }
}

impl KubeApi {
    /// Serves on `addr`; with `tls` over HTTPS with a fresh CA (`ca_pem`), as API servers do.
    pub async fn start_on(addr: &str, tls: bool) -> KubeApi {
        let (listener, a) = bind(addr).await;
        let pki = tls.then(make_pki);
        let url = format!("{}://{a}", if tls { "https" } else { "http" });
        let state = Arc::new(Mutex::new(KState::default()));
        let s = state.clone();
        serve(
            listener,
            Arc::new(move |r| s.lock().expect("state").handle(r)),
            pki.as_ref(),
        );
        KubeApi {
            url,
            ca_pem: pki.map(|p| p.ca_pem),
            state,
        }
    }

    pub async fn start() -> KubeApi {
        KubeApi::start_on("127.0.0.1:0", true).await
    }

    fn st(&self) -> std::sync::MutexGuard<'_, KState> {
        self.state.lock().expect("state")
    }

    pub fn accept_token(&self, token: &str) {
        self.st().common.tokens.insert(token.into());
    }

    pub fn revoke_tokens(&self) {
        self.st().common.tokens.clear();
    }

    /// RBAC denies this verb (`get`, `list`, `create`, `update`, `patch`, `delete`).
    pub fn forbid(&self, verb: &'static str) {
        self.st().forbidden.insert(verb);
    }

    pub fn requests(&self) -> Vec<(Method, String)> {
        self.st().common.requests.clone()
    }

    pub fn fail_next(&self, status: u16, times: usize) {
        self.st().common.fail_next = Some((status, times));
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        self.st()
            .secrets
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// A kubeconfig for this server with a bearer token and the CA inline.
    pub fn kubeconfig(&self, token: &str) -> String {
        let ca = self
            .ca_pem
            .as_ref()
            .map(|p| {
                format!(
                    "    certificate-authority-data: {}\n",
                    base64::engine::general_purpose::STANDARD.encode(p)
                )
            })
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: emulator\nclusters:\n- name: emu\n  cluster:\n    server: {}\n{ca}contexts:\n- name: other\n  context:\n    cluster: nowhere\n    user: nobody\n- name: emulator\n  context:\n    cluster: emu\n    user: gateway\n    namespace: ignored\nusers:\n- name: gateway\n  user:\n    token: \"{token}\"\n",
            self.url
        )
    }
}
