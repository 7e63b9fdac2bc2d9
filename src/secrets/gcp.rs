//! Google Secret Manager (v1 REST) over the gateway's own hyper client.
//!
//! Each secret is `projects/<project>/secrets/<name>` with the name OpenMetadata builds
//! ([`names::gcp`]), automatic replication, labels from the tags and the annotation
//! [`names::ID_TAG`] holding the canonical id. Every write adds a version (with its CRC32C);
//! reads access `versions/latest` and check the CRC32C as the Python SDK's users do. Older
//! versions are kept, as OpenMetadata keeps them.
//!
//! Tokens: `credentials_file` (a service-account key, signed into a JWT and exchanged at its
//! `token_uri`, or an authorized-user refresh token), else application default credentials:
//! `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's well-known file, then the metadata server.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{json, Map, Value};

use super::names::{self, ID_TAG};
use super::rest::{
    self, form, parse_token_answer, Payload, Reply, Rest, TokenCache, TokenFuture, TokenSource,
};
use super::{listing, SecretStore, StoreError, StoreFuture};
use crate::config::GcpParams;

const VENDOR: &str = "google secret manager";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

// === CRC32C (Castagnoli), as Secret Manager checksums payloads ===

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c = CRC32C[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// === credentials ===

fn split_url(url: &str) -> Result<(Uri, String), String> {
    let u = url
        .parse::<Uri>()
        .ok()
        .filter(|u| u.authority().is_some())
        .ok_or_else(|| format!("gcp: {url:?} is not a URL"))?;
    let base = format!(
        "{}://{}",
        u.scheme_str().unwrap_or("https"),
        u.authority().map(|a| a.as_str()).unwrap_or("")
    )
    .parse::<Uri>()
    .map_err(|_| format!("gcp: {url:?} is not a URL"))?;
    let pq = u
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok((base, pq))
}

/// A service account's key: a JWT signed with it buys an access token.
struct ServiceAccount {
    token_endpoint: Rest,
    token_path: String,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl ServiceAccount {
    fn assertion(&self) -> Result<String, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = Value::String(kid.clone());
        }
        let claims = json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri,
                            "iat": now, "exp": now + 3600});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| {
                StoreError::AccessDenied("gcp: cannot sign with the service-account key".into())
            })?;
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}

impl TokenSource for ServiceAccount {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let jwt = self.assertion()?;
            let body = form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &jwt),
            ]);
            let reply = self
                .token_endpoint
                .call(Method::POST, &self.token_path, &[], Payload::Form(body))
                .await?;
            parse_token_answer(VENDOR, &reply)
        })
    }
}

/// gcloud's `application-default login` credentials: a refresh token.
struct AuthorizedUser {
    token_endpoint: Rest,
    token_path: String,
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

impl TokenSource for AuthorizedUser {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let body = form(&[
                ("grant_type", "refresh_token"),
                ("client_id", &self.client_id),
                ("client_secret", &self.client_secret),
                ("refresh_token", &self.refresh_token),
            ]);
            let reply = self
                .token_endpoint
                .call(Method::POST, &self.token_path, &[], Payload::Form(body))
                .await?;
            parse_token_answer(VENDOR, &reply)
        })
    }
}

/// The metadata server of the VM, GKE node or Cloud Run instance.
struct MetadataServer(Rest);

impl TokenSource for MetadataServer {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let reply = self
                .0
                .call(
                    Method::GET,
                    "/computeMetadata/v1/instance/service-accounts/default/token",
                    &[(
                        HeaderName::from_static("metadata-flavor"),
                        HeaderValue::from_static("Google"),
                    )],
                    Payload::None,
                )
                .await?;
            parse_token_answer(VENDOR, &reply)
        })
    }
}

fn private_key(pem: &str) -> Result<ring::signature::RsaKeyPair, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "no PEM private key".to_string())?;
    match der {
        PrivateKeyDer::Pkcs8(k) => ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err("the private key is not an RSA key".into()),
    }
    .map_err(|_| "the private key is not a usable RSA key".to_string())
}

/// Credentials from a JSON key file (service account or authorized user).
fn from_file(path: &Path, ca_file: Option<&Path>) -> Result<Box<dyn TokenSource>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|_| format!("{shown}: not a JSON credentials file"))?;
    let s = |k: &str| v[k].as_str().filter(|x| !x.is_empty()).map(str::to_string);
    let token_uri = s("token_uri").unwrap_or_else(|| DEFAULT_TOKEN_URI.into());
    let (base, token_path) = split_url(&token_uri)?;
    let token_endpoint = Rest::new(VENDOR, &base, ca_file)?;
    match v["type"].as_str() {
        Some("service_account") => {
            let client_email = s("client_email").ok_or_else(|| format!("{shown}: no client_email"))?;
            let pem = s("private_key").ok_or_else(|| format!("{shown}: no private_key"))?;
            Ok(Box::new(ServiceAccount {
                token_endpoint,
                token_path,
                token_uri,
                client_email,
                key_id: s("private_key_id"),
                key: private_key(&pem).map_err(|e| format!("{shown}: {e}"))?,
            }))
        }
        Some("authorized_user") => Ok(Box::new(AuthorizedUser {
            token_endpoint,
            token_path,
            client_id: s("client_id").ok_or_else(|| format!("{shown}: no client_id"))?,
            client_secret: s("client_secret").ok_or_else(|| format!("{shown}: no client_secret"))?,
            refresh_token: s("refresh_token").ok_or_else(|| format!("{shown}: no refresh_token"))?,
        })),
        other => Err(format!(
            "{shown}: credentials of type {other:?} are not supported (service_account, authorized_user)"
        )),
    }
}

/// Application default credentials, in Google's order.
fn credential(
    p: &GcpParams,
    ca_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn TokenSource>, String> {
    let envv = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(f) = p
        .credentials_file
        .clone()
        .or_else(|| envv("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from))
    {
        return from_file(&f, ca_file);
    }
    if let Some(home) = envv("HOME") {
        let wellknown =
            Path::new(&home).join(".config/gcloud/application_default_credentials.json");
        if wellknown.is_file() {
            return from_file(&wellknown, ca_file);
        }
    }
    let host = envv("GCE_METADATA_HOST").unwrap_or_else(|| "metadata.google.internal".into());
    let base = format!("http://{host}")
        .parse::<Uri>()
        .map_err(|_| format!("gcp: GCE_METADATA_HOST {host:?} is not a host"))?;
    Ok(Box::new(MetadataServer(Rest::new(VENDOR, &base, ca_file)?)))
}

// === the store ===

pub struct SecretManagerStore {
    api: Rest,
    /// `/v1/projects/<project>/secrets`
    secrets: String,
    token: TokenCache,
    labels: Map<String, Value>,
}

fn name_of(id: &str) -> Result<String, StoreError> {
    names::gcp(id)
        .ok_or_else(|| StoreError::Invalid("secret id has no character Google keeps".into()))
}

impl SecretManagerStore {
    /// Builds the store; reads the credentials file but calls nothing until used.
    pub fn new(
        p: &GcpParams,
        tags: &[(String, String)],
        ca_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecretManagerStore, String> {
        let project = p
            .project_id
            .clone()
            .ok_or("secrets_manager.parameters.project_id: must be set for provider gcp")?;
        let mut labels = Map::new();
        for (k, v) in tags {
            let key = names::label_value(k, true);
            if key.starts_with(|c: char| c.is_ascii_lowercase()) {
                labels.insert(key, Value::String(names::label_value(v, true)));
            }
        }
        Ok(SecretManagerStore {
            api: Rest::new(VENDOR, &p.endpoint, ca_file)?,
            secrets: format!("/v1/projects/{}/secrets", rest::pct(&project)),
            token: TokenCache::new(credential(p, ca_file, env)?),
            labels,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        payload: Option<Value>,
    ) -> Result<Reply, StoreError> {
        self.api
            .call_with_token(&self.token, method, path, payload.as_ref())
            .await
    }

    /// The secret's metadata (labels, annotations), `None` when it does not exist.
    async fn metadata(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let reply = self
            .call(Method::GET, &format!("{}/{name}", self.secrets), None)
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(reply.json(VENDOR)?)),
            s => Err(rest::status_error(VENDOR, s)),
        }
    }

    async fn create(&self, name: &str, id: &str) -> Result<(), StoreError> {
        let body = json!({"replication": {"automatic": {}}, "labels": self.labels, "annotations": {ID_TAG: id}});
        let reply = self
            .call(
                Method::POST,
                &format!("{}?secretId={name}", self.secrets),
                Some(body),
            )
            .await?;
        match reply.status {
            // Created meanwhile by another writer: the caller adds a version.
            StatusCode::CONFLICT => Ok(()),
            s if s.is_success() => Ok(()),
            s => Err(rest::status_error(VENDOR, s)),
        }
    }

    async fn add_version(&self, name: &str, value: &str) -> Result<Reply, StoreError> {
        let data = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        let crc = crc32c(value.as_bytes()).to_string();
        self.call(
            Method::POST,
            &format!("{}/{name}:addVersion", self.secrets),
            Some(json!({"payload": {"data": data, "dataCrc32c": crc}})),
        )
        .await
    }

    async fn list_page(&self, token: Option<String>) -> Result<listing::Page, StoreError> {
        let mut path = format!("{}?pageSize=250", self.secrets);
        if let Some(t) = token {
            path.push_str(&format!("&pageToken={}", rest::pct(&t)));
        }
        let v = self
            .call(Method::GET, &path, None)
            .await?
            .success_json(VENDOR)?;
        let ids = v["secrets"].as_array().into_iter().flatten();
        let ids = ids.filter_map(|s| s["annotations"][ID_TAG].as_str());
        Ok((
            ids.map(str::to_string).collect(),
            v["nextPageToken"].as_str().map(str::to_string),
        ))
    }
}

/// The value of an `:access` answer, its CRC32C checked when the answer carries one.
fn payload_value(v: &Value) -> Result<String, StoreError> {
    let data = v["payload"]["data"].as_str().unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| {
            StoreError::Unavailable("google secret manager: payload is not base64".into())
        })?;
    let sent = match &v["payload"]["dataCrc32c"] {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    if let Some(sum) = sent {
        if sum != u64::from(crc32c(&bytes)) {
            return Err(StoreError::Unavailable(
                "google secret manager: data corruption detected (CRC32C)".into(),
            ));
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| StoreError::Invalid("google secret manager: value is not UTF-8".into()))
}

impl SecretStore for SecretManagerStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let name = name_of(id)?;
            let reply = self
                .call(
                    Method::GET,
                    &format!("{}/{name}/versions/latest:access", self.secrets),
                    None,
                )
                .await?;
            match reply.status {
                StatusCode::NOT_FOUND => Ok(None),
                s if s.is_success() => payload_value(&reply.json(VENDOR)?).map(Some),
                s => Err(rest::status_error(VENDOR, s)),
            }
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let name = name_of(id)?;
            match self.metadata(&name).await? {
                Some(s)
                    if s["annotations"][ID_TAG]
                        .as_str()
                        .is_some_and(|other| other != id) =>
                {
                    return Err(StoreError::Invalid(format!(
                        "google secret {name} already holds another id's secret"
                    )))
                }
                Some(_) => {}
                None => self.create(&name, id).await?,
            }
            let reply = self.add_version(&name, value).await?;
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(rest::status_error(VENDOR, reply.status))
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let name = name_of(id)?;
            match self.metadata(&name).await? {
                None => return Ok(()),
                Some(s)
                    if s["annotations"][ID_TAG]
                        .as_str()
                        .is_some_and(|other| other != id) =>
                {
                    return Ok(())
                }
                Some(_) => {}
            }
            let reply = self
                .call(Method::DELETE, &format!("{}/{name}", self.secrets), None)
                .await?;
            reply.deleted(VENDOR)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(listing::collect(VENDOR, prefix, |t| self.list_page(t)))
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.call(Method::GET, &format!("{}?pageSize=1", self.secrets), None)
                .await?
                .success(VENDOR)
        })
    }

    fn name(&self) -> &'static str {
        "google-secret-manager"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_payload_whose_checksum_does_not_match_is_corruption_not_a_value() {
        let good =
            json!({"payload": {"data": "c2VjcmV0", "dataCrc32c": crc32c(b"secret").to_string()}});
        assert_eq!(payload_value(&good).unwrap(), "secret");
        let bad = json!({"payload": {"data": "c2VjcmV0", "dataCrc32c": "1"}});
        assert!(matches!(
            payload_value(&bad),
            Err(StoreError::Unavailable(_))
        ));
        let unsummed = json!({"payload": {"data": "c2VjcmV0"}});
        assert_eq!(payload_value(&unsummed).unwrap(), "secret");
    }

    #[test]
    fn a_service_account_assertion_is_an_rs256_jwt_for_the_token_uri() {
        let pem = include_str!("../../tests/fixtures/jwt/key1.pem");
        let sa = ServiceAccount {
            token_endpoint: Rest::new(VENDOR, &"http://127.0.0.1:1".parse().unwrap(), None)
                .unwrap(),
            token_path: "/token".into(),
            token_uri: "http://127.0.0.1:1/token".into(),
            client_email: "gw@p.iam.gserviceaccount.com".into(),
            key_id: Some("k1".into()),
            key: private_key(pem).unwrap(),
        };
        let jwt = sa.assertion().unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:1/token");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["iss"], "gw@p.iam.gserviceaccount.com");
    }
}
