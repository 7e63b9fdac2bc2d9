//! Phase 7: the access line of every request and the audit line of every secret operation.
//! Never a body, a value or the Authorization header.

use std::time::Duration;

use http::Method;

use super::context::RequestCtx;
use crate::rewrite::strip::AuditEntry;

/// One line per request (`omsp::access`); `read_refused` names why an answer was refused
/// (empty when none was).
pub(crate) fn access(ctx: &RequestCtx, method: &Method, status: u16, latency: Duration) {
    tracing::info!(
        target: "omsp::access",
        method = %method,
        path = ctx.path_for_log.as_deref().unwrap_or(""),
        route_class = ctx.route_class,
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        request_id = ctx.request_id.to_str().unwrap_or(""),
        read_refused = ctx.read_refused.unwrap_or(""),
        "request"
    );
}

/// One line per secret operation (`omsp::audit`); `accepted` says whether the upstream took
/// the write (otherwise the store changes were undone).
pub(crate) fn secret_ops(sub: &str, kind: &str, entries: &[AuditEntry], accepted: bool) {
    let outcome = if accepted { "ok" } else { "undone" };
    for e in entries {
        tracing::info!(
            target: "omsp::audit",
            sub,
            kind,
            field = %e.field,
            secret_id = %e.secret_id,
            op = e.op.as_str(),
            outcome,
            "secret"
        );
    }
}
