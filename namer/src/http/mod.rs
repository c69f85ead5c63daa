//! namerd's HTTP API (`io.l5d.httpController`), so that namerctl, Linkerd's
//! `io.l5d.namerd.http` interpreter and existing scripts keep working.
//!
//! Where namerd answers bad input with a 500 (an unparsable `dtab` parameter, a missing
//! `path`, an undecodable `If-Match`), this API answers 400 or 412 with a body that says what
//! is wrong and where. Additions, all outside namerd's paths: `/api/1/dtabs/<ns>/history`,
//! the `waymark-author` and `waymark-message` request headers on writes, an `ETag` on write
//! responses, `/api/1/bind` without a namespace (binds with the given dtab alone, as
//! `/api/1/delegate` does) and `/api/1/bound-names/<ns>` (the logical names bound in a
//! namespace, for dry runs).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio_util::sync::CancellationToken;
use waymark_interpreter::Interpreter;
use waymark_store::{DtabStore, StoreError};

use crate::metrics::ApiMetrics;

mod dtabs;
mod names;
mod watch;

pub use dtabs::{AUTHOR_HEADER, MESSAGE_HEADER};

/// Everything the handlers share.
#[derive(Clone)]
pub struct HttpApi {
    pub(crate) interpreter: Interpreter,
    pub(crate) store: Arc<dyn DtabStore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: ApiMetrics,
    pub(crate) request_timeout: Duration,
    /// The delegation output limit; rendered JSON with addresses may take four times this.
    pub(crate) max_delegation_bytes: usize,
    /// History pages read at once.
    pub(crate) history_slots: Arc<tokio::sync::Semaphore>,
}

/// How many history pages are read at once; others wait, within the request timeout.
pub(crate) const HISTORY_PAGES_AT_ONCE: usize = 4;

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi").field("interpreter", &self.interpreter).finish_non_exhaustive()
    }
}

/// A failed request, turned into a response in exactly one place.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400, with what is wrong.
    BadRequest(String),
    /// 404, with an empty body (as namerd).
    NotFound,
    /// 403: a write a web page could have sent; with why.
    Forbidden(String),
    /// 409: the namespace exists.
    Conflict,
    /// 412: the version given is not current, or cannot be one; with why.
    PreconditionFailed(String),
    /// 405, with the methods that are allowed.
    MethodNotAllowed(&'static str),
    /// 415: the body's media type is not accepted.
    UnsupportedMediaType(String),
    /// 500: binding or the store failed.
    Internal(String),
    /// 503: the store is unreachable, or no answer arrived in time.
    Unavailable(String),
    /// 507: the write would pass one of the store's limits.
    InsufficientStorage(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::MethodNotAllowed(allow) => {
                let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                return response;
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound => (StatusCode::NOT_FOUND, String::new()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::Conflict => (StatusCode::CONFLICT, String::new()),
            ApiError::PreconditionFailed(m) => (StatusCode::PRECONDITION_FAILED, m),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::InsufficientStorage(m) => (StatusCode::INSUFFICIENT_STORAGE, m),
        };
        if body.is_empty() {
            return status.into_response();
        }
        let mut response = (status, format!("{body}\n")).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError::NotFound,
            StoreError::Exists => ApiError::Conflict,
            StoreError::Conflict => {
                ApiError::PreconditionFailed("the namespace changed since the given version was read".into())
            }
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(format!("store unavailable: {m}")),
            StoreError::LimitReached(m) => ApiError::InsufficientStorage(format!("store limit reached: {m}")),
        }
    }
}

impl HttpApi {
    /// The API's routes. Unknown paths answer 404 at once.
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/1/dtabs", get(dtabs::list))
            .route("/api/1/dtabs/", get(dtabs::list))
            .route("/api/1/dtabs/{*rest}", any(dtabs::resource))
            .route("/api/1/bind", get(names::bind_without_namespace))
            .route("/api/1/bind/{*ns}", get(names::bind))
            .route("/api/1/addr/{*ns}", get(names::addr))
            .route("/api/1/resolve/{*ns}", get(names::resolve))
            .route("/api/1/delegate", get(names::delegate_query).post(names::delegate_post))
            .route("/api/1/delegate/{*ns}", get(names::delegate))
            .route("/api/1/bound-names", get(names::bound_names))
            .route("/api/1/bound-names/{*ns}", get(names::active_names))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(middleware::from_fn_with_state(self.clone(), count_requests))
            .with_state(self)
    }

    /// What namerd's admin port serves besides metrics: `/dtab/delegator.json` (its dashboard's
    /// delegator; POST `{"namespace", "dtab", "path"}`, or GET with those as parameters) and
    /// `/bound-names.json`. The same handlers as `/api/1/delegate` and `/api/1/bound-names`.
    pub fn admin_routes(self) -> Router {
        Router::new()
            .route("/dtab/delegator.json", get(names::delegate_query).post(names::delegate_post))
            .route("/bound-names.json", get(names::bound_names))
            .route("/namer_state/{*namer}", get(names::namer_state))
            .with_state(self)
    }
}

/// The API a path belongs to, for metric labels.
fn api_of(path: &str) -> &'static str {
    let rest = path.strip_prefix("/api/1/").unwrap_or("");
    let first = rest.split('/').next().unwrap_or("");
    match first {
        "dtabs" if rest.ends_with("/history") => "history",
        "dtabs" if rest.trim_end_matches('/') == "dtabs" => "dtabs",
        "dtabs" => "dtab",
        "bind" => "bind",
        "addr" => "addr",
        "resolve" => "resolve",
        "delegate" => "delegate",
        "bound-names" => "bound-names",
        _ => "other",
    }
}

async fn count_requests(State(api): State<HttpApi>, request: Request, next: Next) -> Response {
    let name = api_of(request.uri().path());
    let response = next.run(request).await;
    api.metrics.http_request(name, response.status().as_u16());
    response
}

/// Refuses a write that a web page could have sent: a page an operator opens can make the
/// browser send a "simple" request (a form's content types) to any address without asking,
/// and would change routing. So writes may not carry a simple content type, nor come from a
/// web page of another origin (`Origin`, `Sec-Fetch-Site`). `waymark dtab`, namerctl and
/// scripts send `application/dtab` or `application/json` and no `Origin`.
pub(crate) fn refuse_browser_write(headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    const SIMPLE: [&str; 3] = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"];
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if SIMPLE.contains(&media_type.as_str()) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "writes with Content-Type {media_type} are refused: any web page can make a browser send that \
             to this API; send the dtab as application/dtab or application/json"
        )));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).unwrap_or("");
    if matches!(site, "cross-site" | "same-site") {
        return Err(ApiError::Forbidden(format!(
            "writes from a web page of another site (Sec-Fetch-Site: {site}) are refused; \
             change dtabs with waymark dtab, namerctl or a script"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        if !same_origin(origin, authority) {
            return Err(ApiError::Forbidden(format!(
                "writes from a web page at {} are refused; change dtabs with waymark dtab, namerctl or a script",
                dtabs::quoted(origin)
            )));
        }
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) names the server the request was sent to.
fn same_origin(origin: &str, authority: Option<&str>) -> bool {
    let Some(authority) = authority else { return false };
    let Some((scheme, host)) = origin.split_once("://") else { return false };
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let normal = |a: &str| a.strip_suffix(default_port).unwrap_or(a).to_ascii_lowercase();
    normal(host) == normal(authority)
}

/// True for namerd's truthy `watch` values: `true`, `1`, `t`, any case.
pub(crate) fn is_watch(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "t"))
}

/// A response whose body is `text` followed by a newline, with `content_type` if given.
pub(crate) fn document(content_type: Option<&'static str>, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    response
}
