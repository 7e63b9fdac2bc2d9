//! The HTTP side of the vendor stores (Azure Key Vault, Google Secret Manager, Kubernetes),
//! on the gateway's own pooled hyper client ([`Upstream`]): one base URL per client, bearer
//! tokens fetched and cached by a [`TokenCache`], bounded answers, and one mapping from HTTP
//! statuses to the store error taxonomy. No vendor SDK, no second HTTP stack.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use serde_json::Value;

use super::StoreError;
use crate::config::UpstreamConfig;
use crate::http::body::{collect_limited, empty, full};
use crate::http::upstream::Upstream;

/// Largest answer a vendor store may send (a list page, a secret).
const MAX_ANSWER: usize = 8 << 20;

/// What a request carries.
pub(crate) enum Payload {
    None,
    Json(Value),
    /// `application/x-www-form-urlencoded` (OAuth token requests).
    Form(String),
}

/// A whole answer.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as JSON; a body that is not JSON means the service misbehaved.
    pub(crate) fn json(&self, vendor: &str) -> Result<Value, StoreError> {
        serde_json::from_slice(&self.body)
            .map_err(|_| StoreError::Unavailable(format!("{vendor}: answer is not JSON")))
    }

    /// `Ok` for a success status, the vendor's status error otherwise.
    pub(crate) fn success(&self, vendor: &str) -> Result<(), StoreError> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(status_error(vendor, self.status))
        }
    }

    /// `Ok` for a delete that happened or found nothing to delete.
    pub(crate) fn deleted(&self, vendor: &str) -> Result<(), StoreError> {
        if self.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.success(vendor)
    }

    /// The body as JSON, for a success status only.
    pub(crate) fn success_json(&self, vendor: &str) -> Result<Value, StoreError> {
        self.success(vendor)?;
        self.json(vendor)
    }
}

/// One vendor endpoint (scheme, host and any base path).
pub(crate) struct Rest {
    client: Upstream,
    vendor: &'static str,
}

/// An http(s) base URL split for [`UpstreamConfig`].
fn upstream_config(base: &Uri, ca_file: Option<&Path>) -> UpstreamConfig {
    UpstreamConfig {
        url: base.clone(),
        base_path: base.path().trim_end_matches('/').to_string(),
        ca_file: ca_file.map(Path::to_path_buf),
        timeout: Duration::from_secs(10),
        service_token: None,
        pool_idle_per_host: 16,
        body_timeout: std::time::Duration::from_secs(30),
    }
}

impl Rest {
    /// A client for `base` trusting the system roots plus `ca_file`.
    pub(crate) fn new(
        vendor: &'static str,
        base: &Uri,
        ca_file: Option<&Path>,
    ) -> Result<Rest, String> {
        let client = Upstream::new(&upstream_config(base, ca_file))
            .map_err(|e| format!("{vendor} client: {e}"))?;
        Ok(Rest { client, vendor })
    }

    /// A client for `base` with its own TLS settings.
    pub(crate) fn with_tls(vendor: &'static str, base: &Uri, tls: rustls::ClientConfig) -> Rest {
        Rest {
            client: Upstream::with_tls(&upstream_config(base, None), tls),
            vendor,
        }
    }

    /// Sends one request with the bearer from `token`; a 401 drops the cached token and the
    /// request is sent once more with a fresh one.
    pub(crate) async fn call_with_token(
        &self,
        token: &TokenCache,
        method: Method,
        path_and_query: &str,
        payload: Option<&Value>,
    ) -> Result<Reply, StoreError> {
        for attempt in 0..2 {
            let headers = [(header::AUTHORIZATION, token.bearer().await?)];
            let body = payload.cloned().map_or(Payload::None, Payload::Json);
            let reply = self
                .call(method.clone(), path_and_query, &headers, body)
                .await?;
            if reply.status == StatusCode::UNAUTHORIZED && attempt == 0 {
                token.invalidate().await;
                continue;
            }
            return Ok(reply);
        }
        Err(StoreError::AccessDenied(format!(
            "{} refused the token",
            self.vendor
        )))
    }

    /// Sends one request to `path_and_query` (below the base path).
    pub(crate) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, HeaderValue)],
        payload: Payload,
    ) -> Result<Reply, StoreError> {
        let vendor = self.vendor;
        let uri = self
            .client
            .uri_for(path_and_query)
            .map_err(|_| StoreError::Invalid(format!("{vendor}: name cannot be put in a URL")))?;
        let (body, content_type) = match payload {
            Payload::None => (empty(), None),
            Payload::Json(v) => (full(v.to_string()), Some("application/json")),
            Payload::Form(f) => (full(f), Some("application/x-www-form-urlencoded")),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("om-secrets-proxy/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(ct) = content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        for (k, v) in headers {
            h.insert(k.clone(), v.clone());
        }
        let resp = self.client.send(req).await.map_err(|_| {
            StoreError::Unavailable(format!("{vendor}: cannot connect or no answer in time"))
        })?;
        let status = resp.status();
        let body = collect_limited(resp.into_body(), MAX_ANSWER)
            .await
            .map_err(|_| StoreError::Unavailable(format!("{vendor}: answer could not be read")))?;
        Ok(Reply { status, body })
    }
}

/// Maps a failed status to the taxonomy (not-found is the caller's business).
pub(crate) fn status_error(vendor: &str, status: StatusCode) -> StoreError {
    let d = format!("{vendor} answered {}", status.as_u16());
    match status.as_u16() {
        401 | 403 => StoreError::AccessDenied(d),
        429 => StoreError::Throttled(d),
        408 | 500..=599 => StoreError::Unavailable(d),
        _ => StoreError::Invalid(d),
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// === tokens ===

pub(crate) type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(String, Duration), StoreError>> + Send + 'a>>;

/// Where bearer tokens come from: an OAuth endpoint, a metadata server, a file.
pub(crate) trait TokenSource: Send + Sync {
    /// A new token and how long it lives.
    fn fetch(&self) -> TokenFuture<'_>;
}

/// A bearer token shared by every request, refreshed a while before it expires; one
/// refresh at a time.
pub(crate) struct TokenCache {
    source: Box<dyn TokenSource>,
    current: tokio::sync::Mutex<Option<(HeaderValue, Instant)>>,
}

impl TokenCache {
    pub(crate) fn new(source: Box<dyn TokenSource>) -> TokenCache {
        TokenCache {
            source,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// `Authorization: Bearer ...` (marked sensitive so it is never logged).
    pub(crate) async fn bearer(&self) -> Result<HeaderValue, StoreError> {
        let mut cur = self.current.lock().await;
        if let Some((v, until)) = cur.as_ref() {
            if Instant::now() < *until {
                return Ok(v.clone());
            }
        }
        let (token, lifetime) = self.source.fetch().await?;
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| StoreError::AccessDenied("token is not a header value".into()))?;
        v.set_sensitive(true);
        // Refresh at 80% of its life, and at least a minute early.
        let early = (lifetime / 5).max(Duration::from_secs(60));
        let until = Instant::now() + lifetime.saturating_sub(early);
        *cur = Some((v.clone(), until));
        Ok(v)
    }

    /// Forgets the token (after a 401: it was revoked or the clock is off).
    pub(crate) async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}

/// A token endpoint's `{"access_token": ..., "expires_in": ...}` (a number, or a string as
/// Azure's managed identity endpoint sends it).
pub(crate) fn parse_token_answer(
    vendor: &str,
    reply: &Reply,
) -> Result<(String, Duration), StoreError> {
    if !reply.status.is_success() {
        return Err(match reply.status.as_u16() {
            400 | 401 | 403 => StoreError::AccessDenied(format!(
                "{vendor}: the token endpoint refused the credentials ({})",
                reply.status.as_u16()
            )),
            s => status_error(
                &format!("{vendor} token endpoint"),
                StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
            ),
        });
    }
    let v = reply.json(vendor)?;
    let token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            StoreError::AccessDenied(format!("{vendor}: token answer has no access_token"))
        })?;
    let secs = match &v["expires_in"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(300);
    Ok((
        token.to_string(),
        Duration::from_secs(secs.clamp(60, 24 * 3600)),
    ))
}

/// A token read from a file each time it is needed (Kubernetes service-account tokens rotate).
pub(crate) struct FileToken(pub std::path::PathBuf);

impl TokenSource for FileToken {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let t = tokio::fs::read_to_string(&self.0).await.map_err(|_| {
                StoreError::AccessDenied(format!("cannot read the token file {}", self.0.display()))
            })?;
            // Re-read every few minutes: the kubelet rotates projected tokens.
            Ok((t.trim().to_string(), Duration::from_secs(300)))
        })
    }
}

/// A token that never changes (a kubeconfig's `token`).
pub(crate) struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn fetch(&self) -> TokenFuture<'_> {
        Box::pin(async move { Ok((self.0.clone(), Duration::from_secs(24 * 3600))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_everything_but_unreserved_characters() {
        assert_eq!(
            form(&[
                ("scope", "https://vault.azure.net/.default"),
                ("a b", "x+y&z")
            ]),
            "scope=https%3A%2F%2Fvault.azure.net%2F.default&a%20b=x%2By%26z"
        );
    }

    #[test]
    fn token_answers_accept_string_lifetimes_and_refuse_missing_tokens() {
        let ok = Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(br#"{"access_token":"t","expires_in":"3599"}"#),
        };
        assert_eq!(
            parse_token_answer("x", &ok).unwrap(),
            ("t".to_string(), Duration::from_secs(3599))
        );
        let empty = Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(br#"{"expires_in":3599}"#),
        };
        assert!(matches!(
            parse_token_answer("x", &empty),
            Err(StoreError::AccessDenied(_))
        ));
        let refused = Reply {
            status: StatusCode::UNAUTHORIZED,
            body: Bytes::new(),
        };
        assert!(matches!(
            parse_token_answer("x", &refused),
            Err(StoreError::AccessDenied(_))
        ));
    }
}
