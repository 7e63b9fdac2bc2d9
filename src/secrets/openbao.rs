//! OpenBao / HashiCorp Vault KV v2 over its HTTP API, through the gateway's own hyper client:
//! each secret is `<mount>/data/<id without its leading "/">` holding one key, `value`.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use serde_json::{json, Value};

use super::{SecretStore, StoreError, StoreFuture};
use crate::http::body::{collect_limited, empty, full};
use crate::http::upstream::Upstream;

pub(crate) struct OpenBaoStore {
    client: Upstream,
    token: HeaderValue,
    mount: String,
}

/// Percent-encodes each segment of an id; refuses ids that could leave the mount.
fn kv_path(id: &str) -> Result<String, StoreError> {
    let trimmed = id.trim_start_matches('/');
    let mut out = Vec::new();
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(StoreError::Invalid(
                "secret id has an empty, '.' or '..' segment".into(),
            ));
        }
        let mut enc = String::new();
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        out.push(enc);
    }
    Ok(out.join("/"))
}

fn status_error(status: StatusCode) -> StoreError {
    let d = format!("openbao answered {}", status.as_u16());
    match status.as_u16() {
        401 | 403 => StoreError::AccessDenied(d),
        429 => StoreError::Throttled(d),
        400 | 405 | 413 | 422 => StoreError::Invalid(d),
        _ => StoreError::Unavailable(d),
    }
}

impl OpenBaoStore {
    pub(crate) fn new(client: Upstream, token: &str, mount: &str) -> Result<OpenBaoStore, String> {
        Ok(OpenBaoStore {
            client,
            token: HeaderValue::from_str(token).map_err(|_| {
                "secrets_manager.parameters.token is not a valid header value".to_string()
            })?,
            mount: mount.trim_matches('/').to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), StoreError> {
        let uri = self
            .client
            .uri_for(path)
            .map_err(|_| StoreError::Invalid("secret id cannot be put in a URL".into()))?;
        let mut req = Request::new(match &body {
            Some(b) => full(b.to_string()),
            None => empty(),
        });
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert("x-vault-token", self.token.clone());
        if body.is_some() {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let resp = self
            .client
            .send(req)
            .await
            // Not the HTTP client's own message: it speaks of the OpenMetadata upstream.
            .map_err(|_| {
                StoreError::Unavailable("openbao: cannot connect or no answer in time".into())
            })?;
        let status = resp.status();
        let bytes = collect_limited(resp.into_body(), 8 << 20)
            .await
            .map_err(|_| StoreError::Unavailable("openbao: answer could not be read".into()))?;
        Ok((status, bytes))
    }

    fn list_folder<'a>(&'a self, folder: String, out: &'a mut Vec<String>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = format!("/v1/{}/metadata/{}?list=true", self.mount, folder);
            let (status, bytes) = self.call(Method::GET, &path, None).await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(());
            }
            if !status.is_success() {
                return Err(status_error(status));
            }
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|_| StoreError::Unavailable("openbao: bad list answer".into()))?;
            let keys: Vec<String> = v["data"]["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            for k in keys {
                let child = format!("{folder}{k}");
                if k.ends_with('/') {
                    self.list_folder(child, out).await?;
                } else {
                    out.push(child);
                }
            }
            Ok(())
        })
    }
}

impl SecretStore for OpenBaoStore {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let path = format!("/v1/{}/data/{}", self.mount, kv_path(id)?);
            let (status, bytes) = self.call(Method::GET, &path, None).await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(status_error(status));
            }
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|_| StoreError::Unavailable("openbao: bad answer".into()))?;
            match v["data"]["data"]["value"].as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => Ok(None),
            }
        })
    }

    fn put<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = format!("/v1/{}/data/{}", self.mount, kv_path(id)?);
            let (status, _) = self
                .call(Method::POST, &path, Some(json!({"data": {"value": value}})))
                .await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(status_error(status))
            }
        })
    }

    /// A KV v2 write with `cas=0`, which the server refuses (400, "check-and-set parameter
    /// did not match the current version") when the key exists.
    fn create<'a>(&'a self, id: &'a str, value: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let path = format!("/v1/{}/data/{}", self.mount, kv_path(id)?);
            let body = json!({"options": {"cas": 0}, "data": {"value": value}});
            let (status, bytes) = self.call(Method::POST, &path, Some(body)).await?;
            if status.is_success() {
                return Ok(true);
            }
            let cas_refused = status == StatusCode::BAD_REQUEST
                && String::from_utf8_lossy(&bytes).contains("check-and-set");
            if cas_refused {
                Ok(false)
            } else {
                Err(status_error(status))
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = format!("/v1/{}/metadata/{}", self.mount, kv_path(id)?);
            let (status, _) = self.call(Method::DELETE, &path, None).await?;
            if status.is_success() || status == StatusCode::NOT_FOUND {
                Ok(())
            } else {
                Err(status_error(status))
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let p = prefix.trim_start_matches('/');
            let folder = match p.rfind('/') {
                Some(i) => kv_path(&p[..i])? + "/",
                None => String::new(),
            };
            let mut raw = Vec::new();
            self.list_folder(folder, &mut raw).await?;
            let mut out: Vec<String> = raw
                .into_iter()
                .map(|k| format!("/{}", crate::http::path::percent_decode(&k).unwrap_or(k)))
                .filter(|k| k.starts_with(prefix))
                .collect();
            out.sort();
            Ok(out)
        })
    }

    fn health(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (status, _) = self.call(Method::GET, "/v1/sys/health", None).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(status_error(status))
            }
        })
    }

    fn name(&self) -> &'static str {
        "openbao"
    }
}
