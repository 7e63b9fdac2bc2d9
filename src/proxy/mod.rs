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

pub mod headers;
mod passthrough;
pub(crate) mod secure;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::config::{PolicyConfig, Provider};
use crate::error::GatewayError;
use crate::http::body::Body;
use crate::http::path::NormPath;
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;
use crate::policy::CallerClass;
use crate::rules::ids::IdBuilder;
use crate::rules::RuleSet;
use crate::secrets::fernet::FernetKeys;
use crate::secrets::SecretStore;

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
    /// Rules and read policy, swapped whole on SIGHUP; requests in flight keep what they
    /// started with.
    pub live: RwLock<Arc<Live>>,
    pub ids: IdBuilder,
    pub store: Arc<dyn SecretStore>,
    pub fernet: FernetKeys,
    pub provider: Provider,
    pub wrap_references: bool,
    pub service_token: Option<String>,
    /// One lock per entity id root, so store and upstream agree on the last writer.
    pub entity_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub auth: Option<crate::auth::Auth>,
    /// ViewAll answers of the upstream's permission API, by (token, resource, entity) hash.
    pub permissions: Mutex<HashMap<u64, (bool, Instant)>>,
}

/// The methods OpenMetadata's API answers. Anything else (extension methods, lower-case
/// spellings some servers fold to upper case, TRACE, CONNECT) is refused with 405.
fn method_allowed(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .contains(m)
}

/// What SIGHUP reloads.
pub struct Live {
    pub rules: RuleSet,
    pub policy: PolicyConfig,
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
        // The path is kept for the access line only when that line is written.
        let path_for_log = tracing::enabled!(target: "omsp::access", tracing::Level::INFO)
            .then(|| req.uri().path().to_string());
        let mut ctx = RequestCtx {
            route_class: "passthrough",
        };
        let mut resp = match self.pipeline(req, conn, &request_id, &mut ctx).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(
                    e,
                    GatewayError::BadGateway(_) | GatewayError::GatewayTimeout(_)
                ) {
                    self.metrics
                        .upstream_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                e.into_response()
            }
        };
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
        let latency = started.elapsed();
        self.metrics
            .record_request(ctx.route_class, resp.status().as_u16(), latency);
        tracing::info!(
            target: "omsp::access",
            method = %method,
            path = path_for_log.as_deref().unwrap_or(""),
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
        if !method_allowed(req.method()) {
            return Err(GatewayError::MethodNotAllowed(
                "method not allowed: OpenMetadata's API uses GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS"
                    .into(),
            ));
        }
        let norm = NormPath::parse(req.uri().path())
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        // 2. identify
        let (caller, sub) = self.identify(req.headers()).await;
        // 3. route
        let live = self.live();
        if let Some(m) = live.rules.match_request(req.method(), &norm) {
            ctx.route_class = "ruled";
            // 4-7 for ruled routes
            // Boxed: the ruled steps' large state stays out of every pass-through request's
            // future (which hyper moves and keeps per connection).
            return Box::pin(self.ruled(&live, m, req, conn, request_id, caller, &sub)).await;
        }
        ctx.route_class = "passthrough";

        // 5-6. forward and answer (unruled: streamed both ways; JSON answers pass the safety net)
        let action = crate::policy::decide(caller, &live.policy, &Default::default());
        self.pass_through(req, conn, request_id, action).await
    }

    /// The caller's class from a verified JWT only; anything unverifiable is anonymous.
    async fn identify(&self, headers: &http::HeaderMap) -> (CallerClass, String) {
        match &self.auth {
            Some(auth) => auth.identify(headers).await,
            None => (CallerClass::Anonymous, "anonymous".to_string()),
        }
    }

    /// The rules and policy in force now.
    pub fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swaps in new rules and policy (SIGHUP). Requests in flight keep the old ones.
    pub fn replace_live(&self, live: Live) {
        let live = Arc::new(live);
        match self.live.write() {
            Ok(mut l) => *l = live,
            Err(p) => *p.into_inner() = live,
        }
    }

    fn entity_lock(&self, root: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.entity_locks.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(root.to_string()).or_default().clone()
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
}
