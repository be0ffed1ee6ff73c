//! Data-path errors: which side failed, what the client is told, whether a retry is safe.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::{Completion, ProxyBody};
use crate::io::ActiveRequest;
use crate::upstream::UpstreamError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we will not forward.
    Downstream,
    /// A backend failed or no backend could be used.
    Upstream,
    /// This daemon: short of descriptors or memory. Neither the client's fault nor the
    /// backend's, and another backend would meet the same shortage.
    Internal,
}

/// Why a request was not forwarded or not answered by a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("invalid or repeated Host header")]
    InvalidHost,
    #[error("request path cannot be normalised")]
    InvalidPath,
    #[error("no service for this host on listener {listener}")]
    UnknownHost { listener: String },
    #[error("no route for this path on listener {listener}")]
    UnknownPath { listener: String },
    #[error("method {method} is not supported by this proxy")]
    MethodNotAllowed { method: String },
    #[error("method names are upper case")]
    InvalidMethod,
    #[error("service {service}: no usable backend in any region")]
    NoBackend { service: String },
    #[error("backend {backend}: connect failed: {reason}")]
    Connect { backend: SocketAddr, reason: String },
    #[error("backend {backend}: connect timed out")]
    ConnectTimeout { backend: SocketAddr },
    /// Connecting failed for want of this process's or host's resources (EMFILE, ENFILE,
    /// ENOBUFS, ENOMEM).
    #[error("cannot connect to backend {backend}: this process is short of resources: {source}")]
    Shortage {
        backend: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("backend {backend}: no response head within {after:?}")]
    ResponseTimeout {
        backend: SocketAddr,
        after: Duration,
    },
    #[error("backend {backend}: {reason}")]
    Upstream { backend: SocketAddr, reason: String },
    #[error("client request body failed: {reason}")]
    ClientAborted { reason: String },
    #[error("client request body stalled for {after:?}")]
    RequestBodyTimeout { after: Duration },
    #[error("request body larger than max_body ({max} bytes)")]
    PayloadTooLarge { max: u64 },
    #[error("request rate limit reached")]
    TooManyRequests { retry_after: Duration },
    #[error("service {service}: refused by its access list ({reason})")]
    Forbidden {
        service: String,
        reason: &'static str,
    },
    #[error("forwarding loop: Via already names this proxy {hops} times")]
    LoopDetected { hops: usize },
    #[error("HTTP/2 request with more than max_headers ({max}) fields")]
    TooManyFields { max: usize },
    /// An HTTP/2 WebSocket past its connection's first, with no slot left under
    /// `max_connections_per_client` (`per_client`) or `max_connections`.
    #[error("no connection slot left for another tunnel (per client: {per_client})")]
    TunnelLimit { per_client: bool },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::InvalidHost
            | ProxyError::InvalidPath
            | ProxyError::InvalidMethod
            | ProxyError::ClientAborted { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost { .. } | ProxyError::UnknownPath { .. } => {
                StatusCode::NOT_FOUND
            }
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::TooManyFields { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::TooManyRequests { .. } | ProxyError::TunnelLimit { per_client: true } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::NoBackend { .. }
            | ProxyError::TunnelLimit { per_client: false }
            | ProxyError::Shortage { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::MissingHost
            | ProxyError::InvalidHost
            | ProxyError::InvalidPath
            | ProxyError::UnknownHost { .. }
            | ProxyError::UnknownPath { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::InvalidMethod
            | ProxyError::ClientAborted { .. }
            | ProxyError::RequestBodyTimeout { .. }
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::TooManyFields { .. }
            | ProxyError::TooManyRequests { .. }
            | ProxyError::TunnelLimit { .. }
            | ProxyError::Forbidden { .. }
            | ProxyError::LoopDetected { .. } => Side::Downstream,
            ProxyError::Shortage { .. } => Side::Internal,
            _ => Side::Upstream,
        }
    }

    /// True when the request never reached a backend, so sending it elsewhere cannot repeat it.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. }
        )
    }

    /// The `upstream_errors_total` kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } => "connect",
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => "timeout",
            ProxyError::Upstream { .. } => "protocol",
            _ => "none",
        }
    }

    /// The short plain-text body the client gets: what happened, never a backend address.
    pub fn client_message(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "400 Bad Request: missing Host header\n",
            ProxyError::InvalidHost => "400 Bad Request: invalid Host header\n",
            ProxyError::InvalidPath => "400 Bad Request: invalid path\n",
            ProxyError::InvalidMethod => "400 Bad Request: method names are upper case\n",
            ProxyError::ClientAborted { .. } => "400 Bad Request: request body ended early\n",
            ProxyError::RequestBodyTimeout { .. } => {
                "408 Request Timeout: the request body stopped arriving\n"
            }
            ProxyError::PayloadTooLarge { .. } => "413 Content Too Large\n",
            ProxyError::TooManyFields { .. } => "431 Request Header Fields Too Large\n",
            ProxyError::TooManyRequests { .. } => "429 Too Many Requests\n",
            ProxyError::TunnelLimit { per_client: true } => {
                "429 Too Many Requests: this client's connections are all in use\n"
            }
            ProxyError::TunnelLimit { per_client: false } => {
                "503 Service Unavailable: the listener's connections are all in use\n"
            }
            ProxyError::UnknownHost { .. } => "404 Not Found: no service for this host\n",
            ProxyError::UnknownPath { .. } => "404 Not Found: no route for this path\n",
            ProxyError::MethodNotAllowed { .. } => "405 Method Not Allowed\n",
            ProxyError::Forbidden { .. } => "403 Forbidden\n",
            ProxyError::LoopDetected { .. } => {
                "508 Loop Detected: this request has already passed through this proxy\n"
            }
            ProxyError::NoBackend { .. } => "503 Service Unavailable: no healthy backend\n",
            ProxyError::Shortage { .. } => {
                "503 Service Unavailable: the proxy is short of connections; try again\n"
            }
            ProxyError::Connect { .. } => "502 Bad Gateway: backend unreachable\n",
            ProxyError::Upstream { .. } => "502 Bad Gateway: backend failed\n",
            ProxyError::ConnectTimeout { .. } => {
                "504 Gateway Timeout: backend did not accept the connection in time\n"
            }
            ProxyError::ResponseTimeout { .. } => {
                "504 Gateway Timeout: backend did not answer in time\n"
            }
        }
    }

    /// Classifies a failed exchange with `backend`.
    pub fn from_upstream(backend: SocketAddr, e: UpstreamError) -> ProxyError {
        match e {
            UpstreamError::ConnectTimeout => ProxyError::ConnectTimeout { backend },
            UpstreamError::Connect(source)
                if streamgate_balance::shortage::is_local_shortage(&source) =>
            {
                ProxyError::Shortage { backend, source }
            }
            UpstreamError::Connect(source) => ProxyError::Connect {
                backend,
                reason: source.to_string(),
            },
            UpstreamError::ClientBody(reason) => ProxyError::ClientAborted { reason },
            other => ProxyError::Upstream {
                backend,
                reason: other.to_string(),
            },
        }
    }
}

/// The answer a client gets for `e`: its status and a plain-text message.
pub(crate) fn error_response(e: &ProxyError, active: ActiveRequest) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(
        e.client_message(),
        Completion::serving(active),
    ));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let ProxyError::TooManyRequests { retry_after } = e {
        // Whole seconds (RFC 9110 §10.2.3), rounded up so a client that waits is admitted.
        let secs = retry_after.as_nanos().div_ceil(1_000_000_000).max(1);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
    }
    resp
}

/// The status hyper's HTTP/1.1 server sent for a head it could not take, from the error it
/// ended the connection with; `None` for errors it answers nothing to (an HTTP/2 preface on
/// an HTTP/1.1 connection, its internal errors) and for every other error.
pub(super) fn refused_head_status(e: &hyper::Error) -> Option<StatusCode> {
    if !e.is_parse() {
        return None;
    }
    let text = e.to_string();
    if e.is_parse_too_large() {
        // hyper's two "too large" kinds (the head past `max_buf_size` or `max_headers`, or a
        // Content-Length past 2^64 - 2; and a request-target past 65 534 bytes) differ only in
        // their text. A newer hyper that
        // changed it would log 431 for a 414: tests/tests/e2e/hardening.rs checks both.
        return Some(if text.starts_with("URI too long") {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        });
    }
    if e.is_parse_version_h2() || text.starts_with("internal error") {
        return None;
    }
    Some(StatusCode::BAD_REQUEST)
}
