//! Azure Key Vault (secrets API 7.4) over the gateway's own hyper client.
//!
//! Each secret is the vault secret named as OpenMetadata names it ([`names::azure`]), with the
//! configured tags plus [`names::ID_TAG`] holding the canonical id. `setSecret` is both create
//! and update (Key Vault keeps the old value as an older version). Delete purges the deleted
//! secret when soft-delete is on and the caller may purge; without purge permission it stays
//! deleted-but-recoverable until the vault's retention ends, and a later write of the same id
//! recovers it first and then writes the new value.
//!
//! Tokens: a service principal's client secret (`client_id`, `client_secret`, `tenant_id`, or
//! the `AZURE_*` variables), else workload identity (`AZURE_FEDERATED_TOKEN_FILE`), else the
//! managed identity endpoint (App Service's `IDENTITY_ENDPOINT`, or IMDS).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{json, Map, Value};

use super::names::{self, ID_TAG};
use super::rest::{
    self, form, parse_token_answer, Payload, Reply, Rest, TokenCache, TokenFuture, TokenSource,
};
use super::{listing, SecretStore, StoreError, StoreFuture};
use crate::config::AzureParams;

const API: &str = "api-version=7.4";
const VENDOR: &str = "azure key vault";
/// Azure tags hold at most 256 characters.
const MAX_TAG_VALUE: usize = 256;

pub struct AzureKeyVaultStore {
    vault: Rest,
    token: TokenCache,
    tags: Vec<(String, String)>,
}

/// `https://vault.azure.net` for `<name>.vault.azure.net` (and the sovereign clouds' vault
/// domains); the public cloud's for anything else (an emulator).
fn resource_for(vault: &Uri) -> String {
    let host = vault.host().unwrap_or_default();
    match host.split_once('.') {
        Some((_, rest)) if rest.starts_with("vault.") => format!("https://{rest}"),
        _ => "https://vault.azure.net".to_string(),
    }
}

fn base(url: &str) -> Result<Uri, String> {
    url.parse::<Uri>()
        .ok()
        .filter(|u| u.authority().is_some())
        .ok_or_else(|| format!("azure: {url:?} is not a URL"))
}

/// Picks the credential the way Azure's DefaultAzureCredential does, minus developer tools.
fn credential(
    p: &AzureParams,
    resource: &str,
    ca_file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn TokenSource>, String> {
    let envv = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let client_id = p.client_id.clone().or_else(|| envv("AZURE_CLIENT_ID"));
    let tenant_id = p.tenant_id.clone().or_else(|| envv("AZURE_TENANT_ID"));
    let scope = format!("{resource}/.default");
    let aad = || Rest::new(VENDOR, &p.authority_host, ca_file);
    let secret = p
        .client_secret
        .clone()
        .or_else(|| envv("AZURE_CLIENT_SECRET"));
    if let Some(secret) = secret {
        let (Some(client_id), Some(tenant_id)) = (client_id, tenant_id) else {
            return Err("azure: a client secret needs client_id and tenant_id".into());
        };
        return Ok(Box::new(EntraToken {
            aad: aad()?,
            tenant_id,
            client_id,
            scope,
            proof: Proof::Secret(secret),
        }));
    }
    if let Some(file) = envv("AZURE_FEDERATED_TOKEN_FILE") {
        let (Some(client_id), Some(tenant_id)) = (client_id, tenant_id) else {
            return Err("azure: workload identity needs client_id and tenant_id (or AZURE_CLIENT_ID / AZURE_TENANT_ID)".into());
        };
        return Ok(Box::new(EntraToken {
            aad: aad()?,
            tenant_id,
            client_id,
            scope,
            proof: Proof::FederatedTokenFile(file.into()),
        }));
    }
    let (endpoint, path, header) = match (envv("IDENTITY_ENDPOINT"), envv("IDENTITY_HEADER")) {
        (Some(e), Some(h)) => {
            let u = base(&e)?;
            let path = u.path().to_string();
            (
                u,
                format!("{path}?api-version=2019-08-01"),
                ("x-identity-header", h),
            )
        }
        _ => {
            let host = envv("AZURE_POD_IDENTITY_AUTHORITY_HOST")
                .unwrap_or_else(|| "http://169.254.169.254".into());
            (
                base(&host)?,
                "/metadata/identity/oauth2/token?api-version=2018-02-01".to_string(),
                ("metadata", "true".to_string()),
            )
        }
    };
    let mut query = format!("{path}&resource={}", rest::pct(resource));
    if let Some(id) = &client_id {
        query.push_str(&format!("&client_id={}", rest::pct(id)));
    }
    let header_value = HeaderValue::from_str(&header.1)
        .map_err(|_| "azure: IDENTITY_HEADER is not a header value".to_string())?;
    Ok(Box::new(ManagedIdentity {
        endpoint: Rest::new(VENDOR, &endpoint, ca_file)?,
        path_and_query: query,
        header: (HeaderName::from_static(header.0), header_value),
    }))
}

enum Proof {
    Secret(String),
    FederatedTokenFile(std::path::PathBuf),
}

/// Microsoft Entra ID's client-credentials grant, with a secret or a federated token.
struct EntraToken {
    aad: Rest,
    tenant_id: String,
    client_id: String,
    scope: String,
    proof: Proof,
}

impl TokenSource for EntraToken {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let mut pairs = vec![
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("scope", self.scope.as_str()),
            ];
            let assertion;
            match &self.proof {
                Proof::Secret(s) => pairs.push(("client_secret", s.as_str())),
                Proof::FederatedTokenFile(f) => {
                    assertion = tokio::fs::read_to_string(f).await.map_err(|_| {
                        StoreError::AccessDenied(format!("azure: cannot read {}", f.display()))
                    })?;
                    pairs.push((
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ));
                    pairs.push(("client_assertion", assertion.trim()));
                }
            }
            let path = format!("/{}/oauth2/v2.0/token", rest::pct(&self.tenant_id));
            let reply = self
                .aad
                .call(Method::POST, &path, &[], Payload::Form(form(&pairs)))
                .await?;
            parse_token_answer(VENDOR, &reply)
        })
    }
}

/// The managed identity endpoint (IMDS, or App Service's).
struct ManagedIdentity {
    endpoint: Rest,
    path_and_query: String,
    header: (HeaderName, HeaderValue),
}

impl TokenSource for ManagedIdentity {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let reply = self
                .endpoint
                .call(
                    Method::GET,
                    &self.path_and_query,
                    std::slice::from_ref(&self.header),
                    Payload::None,
                )
                .await?;
            parse_token_answer(VENDOR, &reply)
        })
    }
}

fn name_of(id: &str) -> Result<String, StoreError> {
    names::azure(id)
        .ok_or_else(|| StoreError::Invalid("secret id has no character Azure keeps".into()))
}

/// The canonical id a secret says it holds, if it says.
fn tagged_id(secret: &Value) -> Option<&str> {
    secret["tags"][ID_TAG].as_str()
}

fn error_code(reply: &Reply) -> String {
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let inner = v["error"]["innererror"]["code"].as_str();
    inner
        .or(v["error"]["code"].as_str())
        .unwrap_or("")
        .to_string()
}

impl AzureKeyVaultStore {
    /// Builds the store; reads no secret and calls nothing until used.
    pub fn new(
        p: &AzureParams,
        tags: Vec<(String, String)>,
        ca_file: Option<&std::path::Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AzureKeyVaultStore, String> {
        let vault_url = p
            .vault_url
            .clone()
            .ok_or("secrets_manager.parameters.vault_name: must be set for Azure Key Vault")?;
        let resource = resource_for(&vault_url);
        Ok(AzureKeyVaultStore {
            vault: Rest::new(VENDOR, &vault_url, ca_file)?,
            token: TokenCache::new(credential(p, &resource, ca_file, env)?),
            tags,
        })
    }

    /// One vault call with the bearer token; a 401 gets one retry with a fresh token.
    async fn call(
        &self,
        method: Method,
        path: &str,
        payload: Option<Value>,
    ) -> Result<Reply, StoreError> {
        self.vault
            .call_with_token(&self.token, method, path, payload.as_ref())
            .await
    }

    /// The current secret under `name`, `None` when there is none.
    async fn current(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let reply = self
            .call(Method::GET, &format!("/secrets/{name}?{API}"), None)
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(reply.json(VENDOR)?)),
            s => Err(rest::status_error(VENDOR, s)),
        }
    }

    async fn set(&self, name: &str, id: &str, value: &str) -> Result<Reply, StoreError> {
        let mut tags = Map::new();
        for (k, v) in &self.tags {
            tags.insert(k.clone(), Value::String(v.clone()));
        }
        tags.insert(ID_TAG.into(), Value::String(id.into()));
        self.call(
            Method::PUT,
            &format!("/secrets/{name}?{API}"),
            Some(json!({"value": value, "tags": tags})),
        )
        .await
    }

    /// A name held by a deleted-but-recoverable secret: purge it when allowed, else
    /// recover it, then wait (bounded) until the name can be written again.
    async fn free_deleted(&self, name: &str) -> Result<(), StoreError> {
        let purge = self
            .call(
                Method::DELETE,
                &format!("/deletedsecrets/{name}?{API}"),
                None,
            )
            .await?;
        if purge.status == StatusCode::FORBIDDEN {
            let r = self
                .call(
                    Method::POST,
                    &format!("/deletedsecrets/{name}/recover?{API}"),
                    None,
                )
                .await?;
            if !r.status.is_success() && r.status != StatusCode::CONFLICT {
                return Err(rest::status_error(VENDOR, r.status));
            }
        } else if !purge.status.is_success() && purge.status != StatusCode::NOT_FOUND {
            return Err(rest::status_error(VENDOR, purge.status));
        }
        Ok(())
    }

    /// After a delete, purges the deleted secret once Key Vault lists it (deletion is
    /// asynchronous). Purge refused: it stays recoverable until the retention period ends.
    async fn purge_when_deleted(&self, name: &str) {
        for _ in 0..20 {
            match self
                .call(Method::GET, &format!("/deletedsecrets/{name}?{API}"), None)
                .await
            {
                Ok(r) if r.status.is_success() => break,
                Ok(r) if r.status == StatusCode::NOT_FOUND => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                _ => return,
            }
        }
        match self
            .call(
                Method::DELETE,
                &format!("/deletedsecrets/{name}?{API}"),
                None,
            )
            .await
        {
            Ok(r) if r.status.is_success() => {}
            Ok(r) if r.status == StatusCode::FORBIDDEN => tracing::debug!(
                secret = name,
                "azure key vault: no purge permission, the deleted secret stays recoverable"
            ),
            Ok(r) => tracing::warn!(
                secret = name,
                status = r.status.as_u16(),
                "azure key vault: purge failed"
            ),
            Err(e) => tracing::warn!(secret = name, error = %e, "azure key vault: purge failed"),
        }
    }

    /// One page of the listing: the first for `None`, else the page at `next` (a path).
    async fn list_page(&self, next: Option<String>) -> Result<listing::Page, StoreError> {
        let path = next.unwrap_or_else(|| format!("/secrets?{API}&maxresults=25"));
        let v = self
            .call(Method::GET, &path, None)
            .await?
            .success_json(VENDOR)?;
        let ids = v["value"].as_array().into_iter().flatten();
        let ids = ids.filter_map(tagged_id).map(str::to_string).collect();
        // The next page, as a path on this vault (the bearer never goes anywhere else).
        let next = v["nextLink"]
            .as_str()
            .and_then(|l| l.parse::<Uri>().ok())
            .and_then(|u| u.path_and_query().map(|pq| pq.as_str().to_string()));
        Ok((ids, next))
    }
}

impl SecretStore for AzureKeyVaultStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let name = name_of(id)?;
            Ok(self
                .current(&name)
                .await?
                .and_then(|s| match tagged_id(&s) {
                    Some(other) if other != id => None,
                    _ => s["value"].as_str().map(str::to_string),
                }))
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let name = name_of(id)?;
            if id.len() > MAX_TAG_VALUE {
                return Err(StoreError::Invalid(format!(
                    "secret id longer than the {MAX_TAG_VALUE} characters an Azure tag holds"
                )));
            }
            if let Some(existing) = self.current(&name).await? {
                if tagged_id(&existing).is_some_and(|other| other != id) {
                    return Err(StoreError::Invalid(format!(
                        "azure key vault secret {name} already holds another id's secret"
                    )));
                }
            }
            for attempt in 0..20 {
                let reply = self.set(&name, id, value).await?;
                if reply.status.is_success() {
                    return Ok(());
                }
                if reply.status != StatusCode::CONFLICT {
                    return Err(rest::status_error(VENDOR, reply.status));
                }
                // Deleted but recoverable (or still being purged or recovered).
                if attempt == 0 && error_code(&reply) == "ObjectIsDeletedButRecoverable" {
                    self.free_deleted(&name).await?;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(StoreError::Unavailable(format!(
                "azure key vault: {name} stayed in a deleted state"
            )))
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let name = name_of(id)?;
            match self.current(&name).await? {
                None => return Ok(()),
                Some(s) if tagged_id(&s).is_some_and(|other| other != id) => return Ok(()),
                Some(_) => {}
            }
            let reply = self
                .call(Method::DELETE, &format!("/secrets/{name}?{API}"), None)
                .await?;
            match reply.status {
                StatusCode::NOT_FOUND => Ok(()),
                s if s.is_success() => {
                    let deleted = reply.json(VENDOR)?;
                    if deleted["recoveryId"].is_string() {
                        self.purge_when_deleted(&name).await;
                    }
                    Ok(())
                }
                s => Err(rest::status_error(VENDOR, s)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(listing::collect(VENDOR, prefix, |n| self.list_page(n)))
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.call(Method::GET, &format!("/secrets?{API}&maxresults=1"), None)
                .await?
                .success(VENDOR)
        })
    }

    fn name(&self) -> &'static str {
        "azure-key-vault"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_resource_follows_the_vault_domain() {
        let r = |u: &str| resource_for(&u.parse().unwrap());
        assert_eq!(r("https://acme.vault.azure.net"), "https://vault.azure.net");
        assert_eq!(r("https://acme.vault.azure.cn/"), "https://vault.azure.cn");
        assert_eq!(r("http://127.0.0.1:8200"), "https://vault.azure.net");
    }
}
