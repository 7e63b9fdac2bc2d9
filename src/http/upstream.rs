//! The one pooled upstream client (http and https), built once at start-up: a lean
//! HTTP/1.1 pool for a plain-HTTP upstream (`pool`), hyper-util's client with rustls for
//! an https one.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::Body;
use super::pool::{Http1Pool, SendError};
use crate::config::UpstreamConfig;
use crate::tls;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
enum Transport {
    /// Plain HTTP: no TLS connector to clone per request, no pool key to hash.
    Plain(Arc<Http1Pool>),
    Tls(Box<Client<Connector, Body>>),
}

/// The message of the one upstream failure where the request certainly was not sent.
/// Why the upstream could not be asked, or did not answer. The error type turns it into
/// the gateway's answer (`From<UpstreamError> for GatewayError`: 400, 502, 504).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The request target cannot be put on the wire.
    #[error("{0}")]
    BadTarget(String),
    /// No connection, or no usable answer.
    #[error("{0}")]
    Failed(String),
    /// No answer within the timeout.
    #[error("{0}")]
    TimedOut(String),
}

pub(crate) const UNREACHABLE: &str = "upstream OpenMetadata server is unreachable";

#[derive(Clone)]
pub(crate) struct Upstream {
    client: Transport,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    host_header: HeaderValue,
    timeout: Duration,
}

impl Upstream {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Upstream, tls::TlsError> {
        let connect_timeout = cfg.timeout.min(Duration::from_secs(10));
        if cfg.url.scheme() != Some(&http::uri::Scheme::HTTPS) {
            let port = cfg.url.port_u16().unwrap_or(80);
            let host = cfg.url.host().unwrap_or("127.0.0.1");
            let client = Transport::Plain(Arc::new(Http1Pool::new(
                format!("{host}:{port}"),
                connect_timeout,
                cfg.pool_idle_per_host,
            )));
            return Ok(Upstream::assemble(cfg, client));
        }
        let tls_cfg = tls::client_config(cfg.ca_file.as_deref())?;
        Ok(Upstream::with_tls(cfg, tls_cfg))
    }

    /// An https client with its own TLS settings (a Kubernetes API server's CA and client
    /// certificate, say); `cfg.ca_file` is not read.
    pub(crate) fn with_tls(cfg: &UpstreamConfig, tls_cfg: rustls::ClientConfig) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(10))));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_cfg)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Transport::Tls(Box::new(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(cfg.pool_idle_per_host)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector),
        ));
        Upstream::assemble(cfg, client)
    }

    fn assemble(cfg: &UpstreamConfig, client: Transport) -> Upstream {
        let scheme = cfg.url.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = cfg
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| http::uri::Authority::from_static("127.0.0.1:8585"));
        let host_header = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Upstream {
            client,
            scheme,
            authority,
            base_path: cfg.base_path.clone(),
            host_header,
            timeout: cfg.timeout,
        }
    }

    /// The upstream URI for a client's path and query (forwarded as they came): origin-form
    /// for the plain-HTTP pool, absolute for the https client.
    pub(crate) fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let bad = |_| UpstreamError::BadTarget("request target cannot be forwarded".into());
        let pq = if self.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(path_and_query)
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{}", self.base_path, path_and_query))
        }
        .map_err(bad)?;
        if let Transport::Plain(_) = self.client {
            return Ok(Uri::from(pq));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| UpstreamError::BadTarget("request target cannot be forwarded".into()))
    }

    /// The upstream URI for a request's own path and query, reusing its bytes where the
    /// plain-HTTP pool has no base path to add.
    pub(crate) fn uri_from(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<Uri, UpstreamError> {
        match (&self.client, path_and_query) {
            (Transport::Plain(_), Some(pq)) if self.base_path.is_empty() => {
                Ok(Uri::from(pq.clone()))
            }
            _ => self.uri_for(path_and_query.map_or("/", |p| p.as_str())),
        }
    }

    /// Sends a request upstream; the answer's headers must arrive within the timeout. A
    /// connection that could not be made is a 502 with [`UNREACHABLE`] (the request was not
    /// sent); anything else failing is a 502 or a 504 after the request may have been applied.
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        req.headers_mut()
            .insert(header::HOST, self.host_header.clone());
        // The upstream connection picks its own HTTP version.
        *req.version_mut() = http::Version::HTTP_11;
        let sent = match &self.client {
            Transport::Plain(pool) => {
                if req.uri().scheme().is_some() {
                    // Origin-form on the wire (a URI built elsewhere may be absolute).
                    let pq = req.uri().path_and_query().cloned();
                    *req.uri_mut() = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
                }
                tokio::time::timeout(self.timeout, pool.send(req))
                    .await
                    .map(|r| r.map_err(|e| (matches!(e, SendError::Connect(_)), e.to_string())))
            }
            Transport::Tls(client) => tokio::time::timeout(self.timeout, client.request(req))
                .await
                // With its causes: a certificate the TLS library refuses is named in the log.
                .map(|r| r.map_err(|e| (e.is_connect(), with_causes(&e)))),
        };
        match sent {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err((connect, error))) => {
                tracing::warn!(error = %error, connect, "upstream request failed");
                Err(UpstreamError::Failed(if connect {
                    UNREACHABLE.into()
                } else {
                    "upstream OpenMetadata server failed to answer".into()
                }))
            }
            Err(_) => Err(UpstreamError::TimedOut(format!(
                "upstream OpenMetadata server did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A JSON GET with the given `Authorization` (the gateway's own reads); `None` unless the
    /// upstream answers 2xx with JSON of at most `limit` bytes.
    pub(crate) async fn get_json(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
        limit: usize,
    ) -> Result<Option<serde_json::Value>, UpstreamError> {
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
            .map_err(|_| UpstreamError::Failed("upstream entity could not be read".into()))?;
        Ok(serde_json::from_slice(&bytes).ok())
    }
}

/// An error and each of its causes, `: `-separated (hyper's own text says only "Connect").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Percent-encodes one path segment for the gateway's own upstream calls.
pub(crate) fn encode_segment(s: &str) -> String {
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
