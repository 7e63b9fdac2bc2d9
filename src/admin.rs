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

pub struct Admin {
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn SecretStore>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(3);

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
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
