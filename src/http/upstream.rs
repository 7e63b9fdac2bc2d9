//! The one pooled upstream client (http and https), built once at start-up.

use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::Body;
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::tls;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    host_header: HeaderValue,
    timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, tls::TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(10))));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls_cfg = tls::client_config(cfg.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_cfg)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.pool_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let scheme = cfg.url.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = cfg
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| http::uri::Authority::from_static("127.0.0.1:8585"));
        let host_header = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Ok(Upstream {
            client,
            scheme,
            authority,
            base_path: cfg.base_path.clone(),
            host_header,
            timeout: cfg.timeout,
        })
    }

    /// The upstream URI for a client's path and query (forwarded as they came).
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, GatewayError> {
        let pq = if self.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(path_and_query)
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{}", self.base_path, path_and_query))
        }
        .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded".into()))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded".into()))
    }

    /// Sends a request upstream; the answer's headers must arrive within the timeout.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        req.headers_mut()
            .insert(header::HOST, self.host_header.clone());
        // The upstream connection picks its own HTTP version.
        *req.version_mut() = http::Version::HTTP_11;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, connect = e.is_connect(), "upstream request failed");
                Err(GatewayError::BadGateway(if e.is_connect() {
                    "upstream OpenMetadata server is unreachable".into()
                } else {
                    "upstream OpenMetadata server failed to answer".into()
                }))
            }
            Err(_) => Err(GatewayError::GatewayTimeout(format!(
                "upstream OpenMetadata server did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A JSON GET with the given `Authorization` (the gateway's own reads); `None` unless the
    /// upstream answers 2xx with JSON of at most `limit` bytes.
    pub async fn get_json(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
        limit: usize,
    ) -> Result<Option<serde_json::Value>, GatewayError> {
        let mut req = Request::new(super::body::empty());
        *req.uri_mut() = self.uri_for(path)?;
        if let Some(a) = authorization {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        // A stalled body is given up like a late answer.
        let bytes = super::body::collect_within(resp.into_body(), limit, self.timeout)
            .await
            .map_err(|_| GatewayError::BadGateway("upstream entity could not be read".into()))?;
        Ok(serde_json::from_slice(&bytes).ok())
    }
}

/// Percent-encodes one path segment for the gateway's own upstream calls.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
