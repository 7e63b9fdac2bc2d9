//! Kubernetes Secrets (core/v1) over the gateway's own hyper client.
//!
//! Each secret is an `Opaque` Secret in the configured namespace, named by OpenMetadata's
//! `sanitizeSecretName` rules ([`names::kubernetes`]), holding the value under the data key
//! `value`, labelled `app=openmetadata`, `managed-by=openmetadata-secrets-manager` plus the
//! tags, and annotated with [`names::ID_TAG`] (the canonical id, which `list` reads back).
//!
//! The API server is reached through `kubeconfig_path` (else `KUBECONFIG`, else
//! `~/.kube/config`) with its current context: bearer `token`/`tokenFile`, client
//! certificate, or basic auth; or, with `in_cluster = true`, through the pod's service
//! account (token re-read as the kubelet rotates it, the cluster CA). `deploy/rbac-kubernetes-secrets.yaml`
//! grants what the gateway needs: get, list, create, update and delete on secrets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use http::{HeaderValue, Method, StatusCode, Uri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::names::{self, ID_TAG};
use super::rest::{self, FileToken, Payload, Reply, Rest, StaticToken, TokenCache, TokenSource};
use super::{listing, SecretStore, StoreError, StoreFuture};
use crate::config::KubernetesParams;

const VENDOR: &str = "kubernetes";
const SELECTOR: &str = "app%3Dopenmetadata%2Cmanaged-by%3Dopenmetadata-secrets-manager";
/// Where a pod's service account is mounted.
pub(crate) const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How requests prove who they are (a client certificate lives in the TLS config).
enum Auth {
    Bearer(TokenCache),
    Basic(HeaderValue),
    Certificate,
}

/// An API server and how to talk to it.
pub struct Connection {
    server: Uri,
    tls: rustls::ClientConfig,
    auth: Auth,
}

fn tls_config(
    ca: Option<Vec<CertificateDer<'static>>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("kubernetes: unusable cluster CA: {e}"))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("kubernetes: tls: {e}"))?
    .with_root_certificates(roots);
    match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("kubernetes: client certificate: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("kubernetes: {what} is not PEM"))?;
    if certs.is_empty() {
        return Err(format!("kubernetes: {what} holds no certificate"));
    }
    Ok(certs)
}

/// `<key>-data` (base64 PEM) or `<key>` (a file, relative to the kubeconfig's folder).
fn pem_field(node: &Yaml, key: &str, dir: &Path) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = node[format!("{key}-data").as_str()].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map_err(|_| format!("kubeconfig: {key}-data is not base64"))?;
        return Ok(Some(bytes));
    }
    if let Some(f) = node[key].as_str() {
        let path = dir.join(f);
        return std::fs::read(&path)
            .map(Some)
            .map_err(|e| format!("kubeconfig: {}: {e}", path.display()));
    }
    Ok(None)
}

/// The entry named `name` in a kubeconfig list (`clusters`, `users`, `contexts`).
fn named<'a>(doc: &'a Yaml, list: &str, name: &str) -> Result<&'a Yaml, String> {
    doc[list]
        .as_vec()
        .and_then(|v| v.iter().find(|e| e["name"].as_str() == Some(name)))
        .map(|e| &e[list.trim_end_matches('s')])
        .ok_or_else(|| {
            format!(
                "kubeconfig: no {} named {name:?}",
                list.trim_end_matches('s')
            )
        })
}

impl Connection {
    /// The current context of a kubeconfig file.
    pub(crate) fn from_kubeconfig(path: &Path) -> Result<Connection, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let docs = YamlLoader::load_from_str(&text)
            .map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
        let doc = docs
            .first()
            .ok_or_else(|| format!("{}: empty kubeconfig", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let current = doc["current-context"]
            .as_str()
            .ok_or("kubeconfig: no current-context")?;
        let context = named(doc, "contexts", current)?;
        let cluster = named(
            doc,
            "clusters",
            context["cluster"].as_str().unwrap_or_default(),
        )?;
        let user = named(doc, "users", context["user"].as_str().unwrap_or_default())?;
        let server = cluster["server"]
            .as_str()
            .and_then(|s| s.parse::<Uri>().ok())
            .filter(|u| u.authority().is_some())
            .ok_or("kubeconfig: the cluster has no server URL")?;
        if cluster["insecure-skip-tls-verify"].as_bool() == Some(true) {
            return Err("kubeconfig: insecure-skip-tls-verify is not supported; give the cluster's certificate-authority".into());
        }
        let ca = match pem_field(cluster, "certificate-authority", dir)? {
            Some(pem) => Some(pem_certs(&pem, "certificate-authority")?),
            None => None,
        };
        let cert = pem_field(user, "client-certificate", dir)?;
        let key = pem_field(user, "client-key", dir)?;
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((
                pem_certs(&c, "client-certificate")?,
                PrivateKeyDer::from_pem_slice(&k)
                    .map_err(|_| "kubeconfig: client-key is not a PEM private key".to_string())?,
            )),
            (None, None) => None,
            _ => return Err("kubeconfig: client-certificate and client-key go together".into()),
        };
        let auth = if let Some(t) = user["token"].as_str() {
            Auth::Bearer(TokenCache::new(Box::new(StaticToken(t.to_string()))))
        } else if let Some(f) = user["tokenFile"].as_str() {
            Auth::Bearer(TokenCache::new(Box::new(FileToken(dir.join(f)))))
        } else if client.is_some() {
            Auth::Certificate
        } else if let (Some(u), Some(p)) = (user["username"].as_str(), user["password"].as_str()) {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            let mut v = HeaderValue::from_str(&format!("Basic {b}"))
                .map_err(|_| "kubeconfig: bad username/password".to_string())?;
            v.set_sensitive(true);
            Auth::Basic(v)
        } else {
            return Err("kubeconfig: the user has no token, tokenFile, client certificate or username/password (exec and auth-provider plugins are not supported)".into());
        };
        Ok(Connection {
            server,
            tls: tls_config(ca, client)?,
            auth,
        })
    }

    /// The pod's service account: `KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA in `dir`.
    pub fn in_cluster(
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Connection, String> {
        let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty()).ok_or("kubernetes: in_cluster, but KUBERNETES_SERVICE_HOST is not set (not running in a pod?)")?;
        let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let server = format!("https://{host}:{port}")
            .parse::<Uri>()
            .map_err(|_| {
                "kubernetes: KUBERNETES_SERVICE_HOST/PORT do not form a URL".to_string()
            })?;
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path)
            .map_err(|e| format!("kubernetes: {}: {e}", ca_path.display()))?;
        let token = dir.join("token");
        if !token.is_file() {
            return Err(format!("kubernetes: {} does not exist", token.display()));
        }
        Ok(Connection {
            server,
            tls: tls_config(Some(pem_certs(&ca, "ca.crt")?), None)?,
            auth: Auth::Bearer(TokenCache::new(
                Box::new(FileToken(token)) as Box<dyn TokenSource>
            )),
        })
    }

    /// What the configuration says: in-cluster, the kubeconfig given, `KUBECONFIG`,
    /// `~/.kube/config`, and in a pod with none of those, its service account.
    pub(crate) fn from_params(
        p: &KubernetesParams,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Connection, String> {
        if p.in_cluster {
            return Connection::in_cluster(Path::new(SERVICE_ACCOUNT_DIR), env);
        }
        let path = p
            .kubeconfig_path
            .clone()
            .or_else(|| {
                env("KUBECONFIG")
                    .and_then(|k| k.split(':').find(|s| !s.is_empty()).map(PathBuf::from))
            })
            .or_else(|| {
                env("HOME")
                    .map(|h| Path::new(&h).join(".kube/config"))
                    .filter(|p| p.is_file())
            });
        match path {
            Some(p) => Connection::from_kubeconfig(&p),
            None if env("KUBERNETES_SERVICE_HOST").is_some() => {
                Connection::in_cluster(Path::new(SERVICE_ACCOUNT_DIR), env)
            }
            None => {
                Err("kubernetes: no kubeconfig (set kubeconfig_path or in_cluster = true)".into())
            }
        }
    }
}

pub struct KubernetesStore {
    api: Rest,
    auth: Auth,
    /// `/api/v1/namespaces/<namespace>/secrets`
    secrets: String,
    namespace: String,
    labels: Map<String, Value>,
}

fn name_of(id: &str) -> Result<String, StoreError> {
    names::kubernetes(id).ok_or_else(|| {
        StoreError::Invalid("secret id has no character a Kubernetes name keeps".into())
    })
}

fn held_id(secret: &Value) -> Option<&str> {
    secret["metadata"]["annotations"][ID_TAG].as_str()
}

impl KubernetesStore {
    pub fn new(conn: Connection, namespace: &str, tags: &[(String, String)]) -> KubernetesStore {
        let mut labels = Map::new();
        for (k, v) in tags {
            let key = names::label_value(k, false);
            if !key.is_empty() {
                labels.insert(key, Value::String(names::label_value(v, false)));
            }
        }
        labels.insert("app".into(), "openmetadata".into());
        labels.insert("managed-by".into(), "openmetadata-secrets-manager".into());
        KubernetesStore {
            api: Rest::with_tls(VENDOR, &conn.server, conn.tls),
            auth: conn.auth,
            secrets: format!("/api/v1/namespaces/{namespace}/secrets"),
            namespace: namespace.to_string(),
            labels,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        payload: Option<Value>,
    ) -> Result<Reply, StoreError> {
        let headers = match &self.auth {
            Auth::Bearer(t) => {
                return self
                    .api
                    .call_with_token(t, method, path, payload.as_ref())
                    .await
            }
            Auth::Basic(v) => vec![(http::header::AUTHORIZATION, v.clone())],
            Auth::Certificate => Vec::new(),
        };
        let body = payload.map_or(Payload::None, Payload::Json);
        self.api.call(method, path, &headers, body).await
    }

    async fn read(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let reply = self
            .call(Method::GET, &format!("{}/{name}", self.secrets), None)
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(reply.json(VENDOR)?)),
            s => Err(rest::status_error(VENDOR, s)),
        }
    }

    fn encoded(value: &str) -> Value {
        json!({"value": base64::engine::general_purpose::STANDARD.encode(value.as_bytes())})
    }

    /// One attempt: create, or replace what is there (`Ok(false)`: lost a race, try again).
    async fn write_once(&self, name: &str, id: &str, value: &str) -> Result<bool, StoreError> {
        let reply = match self.read(name).await? {
            None => {
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": self.namespace, "labels": self.labels,
                                 "annotations": {ID_TAG: id}},
                    "data": Self::encoded(value),
                });
                self.call(Method::POST, &self.secrets, Some(secret)).await?
            }
            Some(s) if held_id(&s).is_some_and(|other| other != id) => {
                return Err(StoreError::Invalid(format!(
                    "kubernetes secret {name} already holds another id's secret"
                )))
            }
            Some(mut s) => {
                s["data"] = Self::encoded(value);
                if let Some(m) = s["metadata"].as_object_mut() {
                    let labels = m.entry("labels").or_insert_with(|| json!({}));
                    for (k, v) in &self.labels {
                        labels[k] = v.clone();
                    }
                    let ann = m.entry("annotations").or_insert_with(|| json!({}));
                    ann[ID_TAG] = Value::String(id.to_string());
                }
                self.call(Method::PUT, &format!("{}/{name}", self.secrets), Some(s))
                    .await?
            }
        };
        match reply.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            s => Err(rest::status_error(VENDOR, s)),
        }
    }

    /// One page of the gateway's labelled secrets, after the continuation `cont`.
    async fn list_page(&self, cont: Option<String>) -> Result<listing::Page, StoreError> {
        let mut path = format!("{}?labelSelector={SELECTOR}&limit=500", self.secrets);
        if let Some(c) = cont {
            path.push_str(&format!("&continue={}", rest::pct(&c)));
        }
        let v = self
            .call(Method::GET, &path, None)
            .await?
            .success_json(VENDOR)?;
        let items = v["items"].as_array().into_iter().flatten();
        Ok((
            items.filter_map(held_id).map(str::to_string).collect(),
            v["metadata"]["continue"].as_str().map(str::to_string),
        ))
    }
}

impl SecretStore for KubernetesStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let name = name_of(id)?;
            let Some(s) = self.read(&name).await? else {
                return Ok(None);
            };
            if held_id(&s).is_some_and(|other| other != id) {
                return Ok(None);
            }
            let Some(data) = s["data"]["value"].as_str() else {
                return Ok(None);
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| {
                    StoreError::Unavailable("kubernetes: secret data is not base64".into())
                })?;
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StoreError::Invalid("kubernetes: value is not UTF-8".into()))
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let name = name_of(id)?;
            for _ in 0..5 {
                if self.write_once(&name, id, value).await? {
                    return Ok(());
                }
            }
            Err(StoreError::Unavailable(format!(
                "kubernetes: secret {name} kept changing under the write"
            )))
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let name = name_of(id)?;
            match self.read(&name).await? {
                None => return Ok(()),
                Some(s) if held_id(&s).is_some_and(|other| other != id) => return Ok(()),
                Some(_) => {}
            }
            let reply = self
                .call(Method::DELETE, &format!("{}/{name}", self.secrets), None)
                .await?;
            reply.deleted(VENDOR)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(listing::collect(VENDOR, prefix, |c| self.list_page(c)))
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.call(Method::GET, &format!("{}?limit=1", self.secrets), None)
                .await?
                .success(VENDOR)
        })
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }
}
