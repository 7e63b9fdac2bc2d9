//! What one request carries through the pipeline.

use std::net::SocketAddr;

use http::{HeaderValue, Request};

use super::headers;
use crate::policy::CallerClass;

/// What the server knows about the client connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) remote: SocketAddr,
    pub(crate) https: bool,
}

/// The caller, as far as a verified token says.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) class: CallerClass,
    /// The token's `sub` (for audit lines), or `anonymous`.
    pub(crate) sub: String,
    /// The token is a personal access token (a person's, perhaps run by an SDK).
    pub(crate) personal: bool,
}

/// Per-request facts gathered along the pipeline.
pub(crate) struct RequestCtx {
    pub(crate) request_id: HeaderValue,
    pub(crate) conn: ConnInfo,
    pub(crate) caller: Caller,
    /// `ruled` or `passthrough`, for the access line and metrics.
    pub(crate) route_class: &'static str,
    /// The path, kept only when the access line is written.
    pub(crate) path_for_log: Option<String>,
    /// Why the upstream's answer was refused, if it was (`refusal.rs`).
    pub(crate) read_refused: Option<&'static str>,
}

impl RequestCtx {
    pub(crate) fn new<B>(req: &Request<B>, conn: ConnInfo) -> RequestCtx {
        RequestCtx {
            request_id: headers::request_id(req.headers()),
            conn,
            caller: Caller {
                class: CallerClass::Anonymous,
                sub: "anonymous".to_string(),
                personal: false,
            },
            route_class: "passthrough",
            path_for_log: tracing::enabled!(target: "omsp::access", tracing::Level::INFO)
                .then(|| req.uri().path().to_string()),
            read_refused: None,
        }
    }
}
