//! The proxy pipeline. Every request goes through the same named phases, in order:
//!
//! 1. `identify`      – the caller's class from a verified JWT only (`RequestCtx::caller`);
//! 2. `route`         – the path read the way the upstream could, then the rule (entity kind,
//!    route) it matches, if any; unruled requests stream through both ways (phase 5 and 6 only);
//! 3. `prepare_write` – ruled requests: the body is judged by the entity it produces, its
//!    secrets become references, and the store changes are planned (`write.rs`);
//! 4. `store`         – the planned changes as one store transaction (`secrets::transaction`);
//! 5. `forward`       – one pooled upstream client; hop-by-hop headers dropped, X-Forwarded-*
//!    set (`forward.rs`); a refused write rolls the store back, an accepted one commits, one
//!    whose outcome is unknown (timed out, broken off) keeps its values;
//! 6. `rewrite_answer`– secret fields resolved, referenced or masked per caller, found by
//!    structure wherever they sit; a ruled answer that cannot be read whole is refused (502)
//!    for every caller (`read.rs`);
//! 7. `audit`         – one access line per request and one line per secret operation
//!    (`audit.rs`), never a value.

mod audit;
mod context;
mod forward;
pub mod headers;
mod passthrough;
mod read;
mod write;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::config::PolicyConfig;
use crate::error::GatewayError;
use crate::http::body::Body;
use crate::http::path::NormPath;
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;
use crate::policy::decide;
use crate::rules::ids::IdBuilder;
use crate::rules::{Op, RouteMatch, RuleSet};
use crate::secrets::fernet::FernetKeys;
use crate::secrets::transaction::{EntityLocks, StoreTxn};
use crate::secrets::SecretStore;
use context::RequestCtx;
pub(crate) use context::{Caller, ConnInfo};

use std::sync::atomic::Ordering;
use std::time::Duration;

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_body_bytes: usize,
    /// A client's whole request body must arrive within this (`server.body_timeout_ms`).
    pub(crate) client_body_timeout: Duration,
    /// An upstream answer read whole must arrive within this; a streamed one may not stall
    /// longer (`upstream.body_timeout_ms`).
    pub(crate) upstream_body_timeout: Duration,
    /// Rules and read policy, swapped whole on SIGHUP; requests in flight keep what they
    /// started with.
    live: RwLock<Arc<Live>>,
    pub(crate) ids: IdBuilder,
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) fernet: FernetKeys,
    /// Values go to the store (managed providers) rather than travelling as Fernet tokens.
    pub(crate) managed: bool,
    pub(crate) wrap_references: bool,
    /// `Bearer <service token>`, for the gateway's own upstream reads.
    pub(crate) service_auth: Option<HeaderValue>,
    /// One lock per entity id root, so store and upstream agree on the last writer.
    pub(crate) entity_locks: EntityLocks,
    pub(crate) auth: Option<crate::auth::Auth>,
    /// ViewAll answers of the upstream's permission API, by (token, resource, entity) hash.
    permissions: Mutex<std::collections::HashMap<u64, (bool, Instant)>>,
}

/// What SIGHUP reloads.
pub(crate) struct Live {
    pub(crate) rules: RuleSet,
    pub(crate) policy: PolicyConfig,
}

/// The parts of a [`Gateway`] that are not derived from others.
pub(crate) struct GatewayParts {
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_body_bytes: usize,
    pub(crate) client_body_timeout: Duration,
    pub(crate) upstream_body_timeout: Duration,
    pub(crate) live: Live,
    pub(crate) ids: IdBuilder,
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) fernet: FernetKeys,
    pub(crate) managed: bool,
    pub(crate) wrap_references: bool,
    pub(crate) service_token: Option<String>,
    pub(crate) auth: Option<crate::auth::Auth>,
}

/// The methods OpenMetadata's API answers. Anything else (extension methods, lower-case
/// spellings some servers fold to upper case, TRACE, CONNECT) is refused with 405.
fn method_allowed(m: &Method) -> bool {
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

impl Gateway {
    pub(crate) fn new(p: GatewayParts) -> Gateway {
        Gateway {
            upstream: p.upstream,
            metrics: p.metrics,
            max_body_bytes: p.max_body_bytes,
            client_body_timeout: p.client_body_timeout,
            upstream_body_timeout: p.upstream_body_timeout,
            live: RwLock::new(Arc::new(p.live)),
            ids: p.ids,
            store: p.store,
            fernet: p.fernet,
            managed: p.managed,
            wrap_references: p.wrap_references,
            service_auth: p
                .service_token
                .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
            entity_locks: EntityLocks::default(),
            auth: p.auth,
            permissions: Default::default(),
        }
    }

    /// Runs the pipeline and turns any error into a response (the one place that does).
    pub(crate) async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let mut ctx = RequestCtx::new(&req, conn);
        let method = req.method().clone();
        let mut resp = match self.pipeline(req, &mut ctx).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(
                    e,
                    GatewayError::BadGateway(_) | GatewayError::GatewayTimeout(_)
                ) {
                    self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                }
                if let GatewayError::ReadRefused(why) = &e {
                    self.metrics.record_read_refused(*why);
                    ctx.read_refused = Some(why.as_str());
                    tracing::warn!(reason = why.as_str(), "upstream answer refused");
                }
                e.into_response()
            }
        };
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
        let latency = started.elapsed();
        self.metrics
            .record_request(ctx.route_class, resp.status().as_u16(), latency);
        audit::access(&ctx, &method, resp.status().as_u16(), latency);
        resp
    }

    async fn pipeline(
        &self,
        req: Request<Incoming>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, GatewayError> {
        if !method_allowed(req.method()) {
            return Err(GatewayError::MethodNotAllowed(
                "method not allowed: OpenMetadata's API uses GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS"
                    .into(),
            ));
        }
        // A path the upstream could read another way is refused before anything else.
        let norm = NormPath::parse(req.uri().path())
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        // 1. identify
        ctx.caller = self.identify(req.headers()).await;
        // 2. route
        let live = self.live();
        if let Some(m) = live
            .rules
            .match_request(req.method(), &norm)
            .filter(|m| m.op() != Op::Forward)
        {
            ctx.route_class = "ruled";
            // Boxed: the ruled phases' large state stays out of every pass-through request's
            // future (which hyper moves and keeps per connection).
            return Box::pin(self.ruled(&live, m, req, ctx)).await;
        }
        // A bot's hard delete takes the bot's user with it upstream: handled as that user's.
        if req.method() == Method::DELETE {
            let m = self
                .deleted_bots_user(&live.rules, req.method(), &norm, req.uri().query())
                .await;
            if let Some(m) = m {
                ctx.route_class = "ruled";
                return Box::pin(self.ruled(&live, m, req, ctx)).await;
            }
        }
        // 5-6 for unruled routes: streamed both ways; JSON answers pass the safety net.
        let action = decide(ctx.caller.class, &live.policy, &Default::default());
        let hide_mask_only = crate::policy::decide_mask_only(
            ctx.caller.class,
            &ctx.caller.sub,
            &live.policy,
            &Default::default(),
        ) != crate::config::ReadAction::Resolve;
        let net = passthrough::Net {
            refs: action != crate::config::ReadAction::Resolve,
            mask_only: (hide_mask_only && !live.rules.net_words().is_empty()).then(|| live.clone()),
        };
        self.pass_through(req, ctx, net).await
    }

    /// The 408 of a client that did not send its body in time.
    pub(crate) fn client_too_slow(&self) -> GatewayError {
        GatewayError::RequestTimeout(format!(
            "the request body did not arrive within {} ms",
            self.client_body_timeout.as_millis()
        ))
    }

    /// Phases 3 to 7 of a ruled request.
    async fn ruled(
        &self,
        live: &Live,
        m: RouteMatch<'_>,
        req: Request<Incoming>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, incoming) = req.into_parts();
        let caller_auth = parts.headers.get(header::AUTHORIZATION).cloned();
        read::ask_for_whole_answers(&mut parts);
        // 3. prepare write
        let write = self
            .prepare_write(&live.rules, &m, &mut parts, incoming)
            .await?;
        // 4. store
        let txn = StoreTxn::begin(self.store.as_ref(), &write.plan).await?;
        self.metrics
            .secrets_written
            .fetch_add(txn.written() as u64, Ordering::Relaxed);
        // 5. forward
        let resp = match self.upstream_request(parts, write.body, ctx) {
            Ok(r) => self.upstream.send(r).await.map_err(GatewayError::from),
            Err(e) => Err(e),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.upstream_may_have_applied() => {
                // The upstream may hold the references by now (or later): the values stay.
                txn.keep();
                return Err(e);
            }
            Err(e) => {
                txn.rollback().await;
                return Err(e);
            }
        };
        let accepted = resp.status().is_success();
        if accepted {
            txn.commit().await;
        } else {
            txn.rollback().await;
        }
        drop(write.lock);
        // 7. audit (secret operations; the access line is written by `handle`)
        audit::secret_ops(&ctx.caller.sub, &m.rule.kind, &write.audit, accepted);
        // 6. rewrite answer
        let action =
            crate::policy::decide_for(ctx.caller.class, &ctx.caller.sub, &live.policy, m.rule);
        let permit = self.view_all_permit(action, live, &m, caller_auth);
        let scope = read::Scope {
            rules: &live.rules,
            rule: m.rule,
            response_at: m.route.map(|r| r.response_at.as_slice()).unwrap_or(&[]),
            op: m.op(),
            filled: &write.filled,
        };
        let reader = read::Reader {
            personal: ctx.caller.personal,
            class: ctx.caller.class,
            sub: &ctx.caller.sub,
            policy: &live.policy,
            permit: permit
                .as_ref()
                .map(|p| p as &dyn crate::rewrite::response::Permit),
        };
        self.rewrite_answer(resp, scope, reader).await
    }

    /// The caller's class from a verified JWT only; anything unverifiable is anonymous.
    async fn identify(&self, headers: &http::HeaderMap) -> Caller {
        let (class, sub, personal) = match &self.auth {
            Some(auth) => auth.identify(headers).await,
            None => (
                crate::policy::CallerClass::Anonymous,
                "anonymous".to_string(),
                false,
            ),
        };
        Caller {
            class,
            sub,
            personal,
        }
    }

    /// The rules and policy in force now.
    pub(crate) fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swaps in new rules and policy (SIGHUP). Requests in flight keep the old ones.
    pub(crate) fn replace_live(&self, live: Live) {
        let live = Arc::new(live);
        match self.live.write() {
            Ok(mut l) => *l = live,
            Err(p) => *p.into_inner() = live,
        }
    }
}
