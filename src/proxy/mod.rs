//! The proxy pipeline. Every request goes through the same named steps, in order:
//!
//! 1. `normalise`  – read the path the way the upstream could (400 when it cannot be read safely);
//! 2. `identify`   – the caller's class from a verified JWT only;
//! 3. `route`      – the rule (entity kind, route) the path and method match, if any;
//! 4. `rewrite_request` – on ruled writes, secrets go to the store and references go upstream;
//! 5. `forward`    – one pooled upstream client; hop-by-hop headers dropped, X-Forwarded-* set;
//! 6. `rewrite_response` – secret fields resolved, referenced or masked per caller;
//! 7. `audit`      – one log line per request (and one per secret operation), never a value.
//!
//! Routes without rules stream through unbuffered in both directions.

pub mod body;
pub mod headers;
pub mod path;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use body::Body;
use path::NormPath;
use upstream::Upstream;

/// What the server knows about the client connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub https: bool,
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
}

/// Per-request facts gathered along the pipeline, for the log line and metrics.
struct RequestCtx {
    route_class: &'static str,
}

impl Gateway {
    /// Runs the pipeline and turns any error into a response (the one place that does).
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let request_id = headers::request_id(req.headers());
        let method = req.method().clone();
        let path_for_log = req.uri().path().to_string();
        let mut ctx = RequestCtx {
            route_class: "passthrough",
        };
        let mut resp = match self.pipeline(req, conn, &request_id, &mut ctx).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, GatewayError::BadGateway(_) | GatewayError::GatewayTimeout(_)) {
                    self.metrics
                        .upstream_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                e.into_response()
            }
        };
        resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), request_id.clone());
        let latency = started.elapsed();
        self.metrics
            .record_request(ctx.route_class, resp.status().as_u16(), latency);
        tracing::info!(
            target: "omsp::access",
            method = %method,
            path = %path_for_log,
            route_class = ctx.route_class,
            status = resp.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            request_id = request_id.to_str().unwrap_or(""),
            "request"
        );
        resp
    }

    async fn pipeline(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, GatewayError> {
        // 1. normalise
        let _norm = NormPath::parse(req.uri().path()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        ctx.route_class = "passthrough";

        // 5. forward (unruled: streamed both ways)
        let (parts, incoming) = req.into_parts();
        let upstream_req = self.upstream_request(parts, body::stream(incoming), conn, request_id)?;
        let resp = self.upstream.send(upstream_req).await?;
        Ok(self.downstream_response(resp))
    }

    /// Builds the upstream request: same method, path and query; hop-by-hop headers out,
    /// forwarding headers in.
    fn upstream_request(
        &self,
        parts: http::request::Parts,
        body: Body,
        conn: ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Request<Body>, GatewayError> {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = self.upstream.uri_for(pq)?;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        let mut headers = parts.headers;
        headers::strip_hop_by_hop(&mut headers);
        headers::set_forwarded(&mut headers, conn.remote.ip(), conn.https, host.as_deref());
        headers.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Streams an upstream answer back with hop-by-hop headers removed.
    fn downstream_response(&self, resp: Response<Incoming>) -> Response<Body> {
        let (mut parts, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body::stream(incoming))
    }
}
