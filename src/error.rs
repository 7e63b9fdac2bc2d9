//! The gateway's error type and the one place that turns errors into responses.
//!
//! Every error the gateway itself produces is answered in OpenMetadata's shape,
//! `{"code": <status>, "message": "..."}`, with `Content-Type: application/json`.
//! Messages are written by the gateway; they never carry a secret value, a token or
//! an upstream error body.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::http::body::{full, Body};

/// Everything that can stop a request inside the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    /// A method OpenMetadata's API does not use (extension methods, lower-case spellings,
    /// TRACE, CONNECT): refused, so no upstream can read it as a write the gateway did not judge.
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// A body whose media type the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Two entities whose names map to one secret id root.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadGateway(String),
    /// A ruled answer the gateway cannot fully read and rewrite: refused, never passed on.
    #[error("{}", .0.message())]
    ReadRefused(crate::refusal::Unreadable),
    /// The client did not send its whole body within `server.body_timeout_ms`.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    StoreUnavailable(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// The upstream refused a write whose masks the gateway filled in: its message may quote
    /// the values, so it is withheld whole; its status is kept.
    #[error("OpenMetadata refused the write; its message is withheld because it may quote the values the gateway filled in for masks")]
    RefusalWithheld(StatusCode),
    /// An error the caller cannot act on; logged, answered with a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::http::upstream::UpstreamError> for GatewayError {
    fn from(e: crate::http::upstream::UpstreamError) -> Self {
        use crate::http::upstream::UpstreamError as U;
        match e {
            U::BadTarget(m) => GatewayError::BadRequest(m),
            U::Failed(m) => GatewayError::BadGateway(m),
            U::TimedOut(m) => GatewayError::GatewayTimeout(m),
        }
    }
}

impl GatewayError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UnsupportedEncoding(_) | GatewayError::UnsupportedMediaType(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            GatewayError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::BadGateway(_) | GatewayError::ReadRefused(_) => StatusCode::BAD_GATEWAY,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::RefusalWithheld(status) => *status,
        }
    }

    /// Whether an upstream request that failed this way may still have been applied: it
    /// timed out or broke off after it was sent. Only a connection never made is certain
    /// not to have reached the upstream.
    pub(crate) fn upstream_may_have_applied(&self) -> bool {
        match self {
            GatewayError::GatewayTimeout(_) => true,
            GatewayError::BadGateway(m) => m != crate::http::upstream::UNREACHABLE,
            _ => false,
        }
    }

    /// The message a client may see.
    pub(crate) fn public_message(&self) -> String {
        match self {
            GatewayError::Internal(_) => "internal gateway error".to_string(),
            other => other.to_string(),
        }
    }

    /// The one place where an error becomes a response.
    pub(crate) fn into_response(self) -> Response<Body> {
        if let GatewayError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let mut resp = error_response(self.status(), &self.public_message());
        if matches!(self, GatewayError::RequestTimeout(_)) {
            // The rest of the body may still be on its way: this connection cannot be reused.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if matches!(self, GatewayError::MethodNotAllowed(_)) {
            resp.headers_mut().insert(
                header::ALLOW,
                header::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        resp
    }
}

/// An OpenMetadata-shaped JSON error response.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message });
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
