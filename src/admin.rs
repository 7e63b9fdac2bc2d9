//! The admin port: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::error_response;
use crate::http::body::{empty, full, Body};
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;
use crate::secrets::SecretStore;

pub(crate) struct Admin {
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: Arc<dyn SecretStore>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(3);

impl Admin {
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin routes answer GET only",
            );
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" => {
                let (upstream_ok, store_ok) =
                    tokio::join!(self.upstream_ready(), self.store_ready());
                let body = serde_json::json!({
                    "upstream": if upstream_ok { "ok" } else { "unreachable" },
                    "store": if store_ok { "ok" } else { "unreachable" },
                })
                .to_string();
                let status = if upstream_ok && store_ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, &body)
            }
            "/metrics" => {
                let mut resp = Response::new(full(self.metrics.render()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => error_response(
                StatusCode::NOT_FOUND,
                "admin routes are /healthz, /readyz and /metrics",
            ),
        }
    }

    /// The upstream is reachable when it answers anything at all to its version route.
    async fn upstream_ready(&self) -> bool {
        let Ok(uri) = self.upstream.uri_for("/api/v1/system/version") else {
            return false;
        };
        let mut req = Request::new(empty());
        *req.uri_mut() = uri;
        matches!(
            tokio::time::timeout(READY_TIMEOUT, self.upstream.send(req)).await,
            Ok(Ok(_))
        )
    }

    async fn store_ready(&self) -> bool {
        matches!(
            tokio::time::timeout(READY_TIMEOUT, self.store.health()).await,
            Ok(Ok(()))
        )
    }
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `om-secrets-proxy healthcheck`: asks a running gateway's admin port for `/healthz` (for a
/// container `HEALTHCHECK` in an image that has no curl). An unspecified listen address
/// (`0.0.0.0`, `[::]`) is probed on loopback. `Ok` only for a 200.
pub fn probe_healthz(addr: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("{addr}: cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: cannot send: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{addr}: no answer: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..n]);
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("{addr}/healthz answered {code}")),
        None => Err(format!("{addr}/healthz: not an HTTP answer")),
    }
}
