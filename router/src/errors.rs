//! Failures the router answers itself, and the one place that turns them into responses.
//!
//! A router-made response carries `l5d-err` (Linkerd's URL-form-encoded message), a plain
//! text body that explains the routing decision (the logical name, the dtab, the bound tree
//! and every attempt), and `l5d-retryable: true` when the request is known safe to retry.
//! On an untrusted listener the body is replaced by the status text and every `l5d-*`
//! header goes, so that nothing about the mesh leaks to the outside.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use waymark_dtab::{Dtab, Path};

use crate::body::{RequestBodyError, ResponseBody};
use crate::context::{L5D_ERR, L5D_RETRYABLE, OverrideError, form_encode};
use crate::routes::RouteState;

/// Something went wrong in the router rather than in the destination.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouterError {
    #[error("Unknown destination: {0}")]
    Unidentified(&'static str),
    #[error("Bad request: {0}")]
    Malformed(&'static str),
    #[error(
        "too many distinct dtab overrides are in use at once ({count} bindings, {bytes} bytes of overrides; see binding_cache.max_override_bindings and max_override_total_bytes)"
    )]
    OverridesBusy { count: usize, bytes: usize },
    #[error("CONNECT is not supported: the router forwards requests to services, it does not open tunnels")]
    Tunnel,
    #[error(transparent)]
    BadOverride(#[from] OverrideError),
    #[error("reading the request body: {cause}")]
    RequestBody { cause: String },
    #[error("no part of the request body arrived for {idle_ms} ms")]
    RequestBodyTimeout { idle_ms: u64 },
    #[error("exceeded {timeout_ms} ms binding timeout while resolving name {name}")]
    BindingTimeout { name: Path, timeout_ms: u64 },
    #[error("binding {name} failed: {why}")]
    BindFailed { name: Path, why: Arc<str> },
    #[error("{name} is not bound: no dentry or namer matched it (neg)")]
    Neg { name: Path },
    #[error("{name} is bound to a failure (!)")]
    Fail { name: Path },
    #[error("no endpoints available for {name}: {detail}")]
    NoEndpoints { name: Path, detail: String },
    #[error("connection to {addr} failed: {cause}")]
    Connect { addr: SocketAddr, cause: String },
    #[error("request to {addr} failed: {cause}")]
    Upstream { addr: SocketAddr, cause: String },
    #[error("exceeded {timeout_ms} ms total timeout for {name}")]
    TotalTimeout { name: Path, timeout_ms: u64 },
    #[error("no response from {addr} within the {timeout_ms} ms attempt timeout")]
    AttemptTimeout { addr: SocketAddr, timeout_ms: u64 },
    #[error(
        "exceeded the caller's deadline (l5d-ctx-deadline) for {name}: {remaining_ms} ms were left when the request arrived"
    )]
    DeadlineExceeded { name: Path, remaining_ms: u64 },
    #[error(
        "the request has passed {depth} proxies (by its Via header), more than the limit of {max}: is a dtab routing it in a loop?"
    )]
    CallDepth { depth: usize, max: usize },
    #[error(
        "{name} is routed to {addr}, which is this router's own listener {listener:?}: a routing loop (check the dtab and any l5d-dtab override)"
    )]
    Loop { name: Path, addr: SocketAddr, listener: String },
}

/// What the router learnt about a request while routing it, for the error body. The logical
/// name and the override come from the binding (or the caller, when routing failed before
/// there was one): this is carried by every request in flight, so it stays small.
#[derive(Debug, Default)]
pub(crate) struct Explanation {
    pub(crate) state: Option<Arc<RouteState>>,
    /// One line per failed attempt; empty (and unallocated) on the happy path.
    pub(crate) attempts: Vec<String>,
    /// True when the request was never (or never fully) handled by a destination, or is
    /// idempotent and replayable: safe for a client or an earlier router to send again.
    pub(crate) retryable: bool,
    /// A gRPC call: the answer must be a gRPC status, which gRPC clients can read.
    pub(crate) grpc: bool,
}

/// The most bytes of message put in `l5d-err` (Linkerd 1's `maxHeadersKB` default).
const MAX_ERR_HEADER_BYTES: usize = 8 * 1024;

impl RouterError {
    /// The failure of the client's request body somewhere in `error`'s causes, if that is what
    /// failed: the request was malformed or abandoned, not refused by the endpoint.
    pub(crate) fn from_request_body(error: &(dyn std::error::Error + 'static)) -> Option<RouterError> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(body) = e.downcast_ref::<RequestBodyError>() {
                return Some(match body {
                    RequestBodyError::Stalled(idle) => {
                        RouterError::RequestBodyTimeout { idle_ms: idle.as_millis() as u64 }
                    }
                    RequestBodyError::Read(read) => RouterError::RequestBody { cause: chain(&**read) },
                });
            }
            cause = e.source();
        }
        None
    }

    /// The status Linkerd 1 answers this failure with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            RouterError::Unidentified(_) | RouterError::Malformed(_) | RouterError::CallDepth { .. } => {
                StatusCode::BAD_REQUEST
            }
            RouterError::Tunnel => StatusCode::METHOD_NOT_ALLOWED,
            RouterError::BadOverride(OverrideError::TooLarge { .. }) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RouterError::BadOverride(_) | RouterError::RequestBody { .. } => StatusCode::BAD_REQUEST,
            RouterError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            RouterError::BindingTimeout { .. }
            | RouterError::OverridesBusy { .. }
            | RouterError::TotalTimeout { .. }
            | RouterError::AttemptTimeout { .. }
            | RouterError::DeadlineExceeded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RouterError::BindFailed { .. }
            | RouterError::Neg { .. }
            | RouterError::Fail { .. }
            | RouterError::NoEndpoints { .. }
            | RouterError::Loop { .. }
            | RouterError::Connect { .. }
            | RouterError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Why a request was refused before it was routed, as a metric label.
    pub(crate) fn refusal(&self) -> &'static str {
        match self {
            RouterError::Unidentified(_) => "unidentified",
            RouterError::Malformed(_) => "malformed",
            RouterError::OverridesBusy { .. } => "overrides_busy",
            RouterError::Tunnel => "connect",
            RouterError::BadOverride(OverrideError::TooLarge { .. }) => "override_too_large",
            RouterError::BadOverride(_) => "bad_override",
            RouterError::CallDepth { .. } => "call_depth",
            _ => "other",
        }
    }

    /// The gRPC status code for this failure, for gRPC calls.
    fn grpc_code(&self) -> u8 {
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const FAILED_PRECONDITION: u8 = 9;
        const UNAVAILABLE: u8 = 14;
        match self {
            RouterError::Unidentified(_) | RouterError::Malformed(_) | RouterError::Tunnel => INVALID_ARGUMENT,
            RouterError::BadOverride(OverrideError::TooLarge { .. }) => RESOURCE_EXHAUSTED,
            RouterError::BadOverride(_) => INVALID_ARGUMENT,
            RouterError::TotalTimeout { .. }
            | RouterError::AttemptTimeout { .. }
            | RouterError::DeadlineExceeded { .. } => DEADLINE_EXCEEDED,
            RouterError::CallDepth { .. } | RouterError::Loop { .. } => FAILED_PRECONDITION,
            RouterError::OverridesBusy { .. } => RESOURCE_EXHAUSTED,
            _ => UNAVAILABLE,
        }
    }
}

/// The response for `error`. `base` is the namespace's dtab as last known; `trusted` says
/// whether the listener may show details.
pub(crate) fn respond(
    error: &RouterError,
    why: &Explanation,
    name: Option<(&Path, &Dtab)>,
    base: &Dtab,
    trusted: bool,
) -> Response<ResponseBody> {
    let status = error.status();
    let message = error.to_string();
    tracing::debug!(%status, error = %message, "router error");
    if why.grpc {
        return grpc_status(error, status, &message, why, trusted);
    }
    let mut response = Response::builder().status(status);
    let body = if trusted {
        if let Ok(value) = HeaderValue::from_str(&form_encode(&message, MAX_ERR_HEADER_BYTES)) {
            response = response.header(L5D_ERR, value);
        }
        if why.retryable {
            response = response.header(L5D_RETRYABLE, HeaderValue::from_static("true"));
        }
        printable(explain(error, &message, why, name, base))
    } else {
        format!("{}\n", status.canonical_reason().unwrap_or("error"))
    };
    if matches!(error, RouterError::Tunnel) {
        response =
            response.header(ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"));
    }
    response
        .header(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::empty()))
}

/// A trailers-only gRPC response: HTTP 200 with `grpc-status` and `grpc-message` in the
/// headers, as gRPC servers answer calls that fail before any message.
fn grpc_status(
    error: &RouterError,
    status: StatusCode,
    message: &str,
    why: &Explanation,
    trusted: bool,
) -> Response<ResponseBody> {
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .header("grpc-status", HeaderValue::from(u16::from(error.grpc_code())));
    let shown = if trusted { message } else { status.canonical_reason().unwrap_or("error") };
    if let Ok(value) = HeaderValue::from_str(&grpc_percent_encode(shown)) {
        response = response.header("grpc-message", value);
    }
    if trusted {
        if let Ok(value) = HeaderValue::from_str(&form_encode(message, MAX_ERR_HEADER_BYTES)) {
            response = response.header(L5D_ERR, value);
        }
        if why.retryable {
            response = response.header(L5D_RETRYABLE, HeaderValue::from_static("true"));
        }
    }
    response.body(ResponseBody::empty()).unwrap_or_else(|_| Response::new(ResponseBody::empty()))
}

/// `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn explain(error: &RouterError, message: &str, why: &Explanation, name: Option<(&Path, &Dtab)>, base: &Dtab) -> String {
    let mut out = String::with_capacity(256);
    let _ = writeln!(out, "{message}");
    if let RouterError::BadOverride(e) = error
        && let Some(excerpt) = e.excerpt()
    {
        let _ = writeln!(out, "{excerpt}");
    }
    if let Some((name, local)) = name {
        let _ = writeln!(out, "logical name: {name}");
        let _ = writeln!(out, "base dtab: {base}");
        let _ = writeln!(out, "override (l5d-ctx-dtab ++ l5d-dtab): {local}");
    }
    match why.state.as_deref() {
        Some(RouteState::Bound { shown, .. }) => {
            let _ = writeln!(out, "bound tree: {shown}");
        }
        Some(RouteState::Pending) => {
            let _ = writeln!(out, "bound tree: pending");
        }
        Some(RouteState::Failed(why)) => {
            let _ = writeln!(out, "bound tree: failed: {why}");
        }
        None => {}
    }
    if !why.attempts.is_empty() {
        let _ = writeln!(out, "attempts:");
        for (i, attempt) in why.attempts.iter().enumerate() {
            let _ = writeln!(out, "  {}. {attempt}", i + 1);
        }
    }
    out
}

/// `text` with control characters other than line breaks and tabs shown as `\u{..}`
/// escapes: an error body may quote what a client sent, and must not hand a NUL or a
/// terminal escape back raw.
pub(crate) fn printable(text: String) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return text;
    }
    text.chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_unicode().to_string() } else { c.to_string() })
        .collect()
}

/// The error and its causes on one line, as `a: b: c`.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    with_causes(error.to_string(), error.source())
}

/// `first`, then each cause under it that it does not already say, as `a: b: c`.
pub(crate) fn with_causes(first: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = first;
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_come_back_raw() {
        assert_eq!(printable("fine\n\tstill fine".to_string()), "fine\n\tstill fine");
        assert_eq!(printable("a\0b\x1b[31m".to_string()), "a\\u{0}b\\u{1b}[31m");
    }
}
