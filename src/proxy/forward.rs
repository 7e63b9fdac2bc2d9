//! Phase 5: the request the upstream receives.

use http::{header, Request};

use super::context::RequestCtx;
use super::{headers, Gateway};
use crate::error::GatewayError;
use crate::http::body::Body;

impl Gateway {
    /// Same method, path and query; hop-by-hop headers out, forwarding headers in.
    pub(super) fn upstream_request(
        &self,
        parts: http::request::Parts,
        body: Body,
        ctx: &RequestCtx,
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
        headers::set_forwarded(
            &mut headers,
            ctx.conn.remote.ip(),
            ctx.conn.https,
            host.as_deref(),
        );
        headers.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }
}
