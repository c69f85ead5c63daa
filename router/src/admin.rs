//! The admin port: metrics, readiness, liveness, delegation and the log level.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use waymark_dtab::{Dtab, Path};

use crate::conn::{self, Connections, ServerLimits, Tracked, Watched};
use crate::errors::printable;
use crate::metrics::Metrics;
use crate::naming::Naming;
use crate::routes::Routes;

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The address to listen on.
    #[serde(default = "default_ip")]
    pub ip: IpAddr,
    /// The port (0 picks a free one).
    #[serde(default = "default_port")]
    pub port: u16,
    /// How long a client has to send a complete request head, from the moment it connects
    /// and from the first byte of each later request.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a connection with no request in flight is kept open.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// The most connections open at once; at the limit the one idle the longest is closed to
    /// make room (or, when all are busy, the new one), so that an operator can always get in.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// Reads and changes the process's log filter at run time; the binary provides it.
pub trait LogControl: Send + Sync + 'static {
    /// The current filter, such as `info,waymark_router=debug`.
    fn current(&self) -> String;
    /// Replaces the filter.
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// What the admin endpoints read.
pub(crate) struct Admin {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) naming: Naming,
    pub(crate) routes: Arc<Routes>,
    pub(crate) log: Option<Arc<dyn LogControl>>,
}

#[derive(Deserialize)]
struct DelegateRequest {
    #[serde(default)]
    dtab: String,
    path: String,
    #[serde(default, rename = "namespace")]
    _namespace: Option<String>,
}

fn default_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_port() -> u16 {
    9990
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    100
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            ip: default_ip(),
            port: default_port(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
        }
    }
}

impl AdminConfig {
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    pub(crate) fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        }
    }

    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        if self.header_read_timeout_ms == 0 {
            out.push(format!("{at}.header_read_timeout_ms: must be more than 0"));
        }
        if self.idle_timeout_ms == 0 {
            out.push(format!("{at}.idle_timeout_ms: must be more than 0"));
        }
        if self.max_connections == 0 {
            out.push(format!("{at}.max_connections: must be at least 1"));
        }
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> AdminResponse {
    // Error texts may quote what the client sent.
    let mut response = Response::new(Full::new(Bytes::from(printable(body.into()))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json(status: StatusCode, body: String) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == key).then(|| form_decode(v))
    })
}

impl Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<AdminResponse, Infallible> {
        let path = req.uri().path().to_string();
        let response = match (req.method().clone(), path.as_str()) {
            (Method::GET, "/metrics" | "/admin/metrics/prometheus") => {
                let mut response = text(StatusCode::OK, self.metrics.encode());
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (Method::GET, "/admin/ping") => text(StatusCode::OK, "pong"),
            (Method::GET, "/ready") => self.ready(),
            (Method::GET, "/delegator.json") => {
                let query = req.uri().query().unwrap_or("");
                let dtab = query_param(query, "dtab").unwrap_or_default();
                match query_param(query, "path") {
                    Some(path) => self.delegate(&path, &dtab).await,
                    None => text(StatusCode::BAD_REQUEST, "the path parameter is required\n"),
                }
            }
            (Method::POST, "/delegator.json") => match read_body(req).await {
                Ok(body) => match serde_json::from_slice::<DelegateRequest>(&body) {
                    Ok(r) => self.delegate(&r.path, &r.dtab).await,
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("invalid request: {e}\n")),
                },
                Err(response) => response,
            },
            (Method::GET, "/logging") => match &self.log {
                Some(log) => text(StatusCode::OK, format!("{}\n", log.current())),
                None => text(StatusCode::NOT_FOUND, "log control is not available\n"),
            },
            (Method::PUT | Method::POST, "/logging") => {
                let Some(log) = self.log.clone() else {
                    return Ok(text(StatusCode::NOT_FOUND, "log control is not available\n"));
                };
                match read_body(req).await {
                    Ok(body) => match log.set(String::from_utf8_lossy(&body).trim()) {
                        Ok(()) => text(StatusCode::OK, format!("{}\n", log.current())),
                        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                    Err(response) => response,
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        Ok(response)
    }

    fn ready(&self) -> AdminResponse {
        let status = self.naming.status.borrow().clone();
        let why = status.last_error.as_deref().map(|e| format!("\nlast error: {e}")).unwrap_or_default();
        if !status.ever_reached {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: the namer has not answered yet{why}\n"));
        }
        let bindings = self.routes.len();
        if status.reachable {
            text(StatusCode::OK, format!("ready\nbindings: {bindings}\n"))
        } else {
            // Still ready: the router keeps serving its last known routes.
            text(
                StatusCode::OK,
                format!("ready (namer unreachable: serving last known state)\nbindings: {bindings}{why}\n"),
            )
        }
    }

    async fn delegate(&self, path: &str, dtab: &str) -> AdminResponse {
        let path: Path = match path.parse() {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid path: {e}\n")),
        };
        let local: Dtab = match dtab.parse() {
            Ok(d) => d,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid dtab: {e}\n")),
        };
        match self.naming.delegator.delegate(path, local).await {
            Ok(tree) => json(StatusCode::OK, serde_json::to_string(&tree).unwrap_or_default()),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminResponse> {
    match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(text(StatusCode::BAD_REQUEST, format!("could not read the body: {e}\n"))),
    }
}

/// Serves the admin endpoints until `shutdown` turns true, within the admin server's limits.
pub(crate) async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let builder = {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Timed by `conn::watch` instead (see `server::http_builder`).
        builder.timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(crate::server::MAX_HTTP1_HEAD_BYTES);
        Arc::new(builder)
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tokio::time::sleep(connections.accept_failed(&e)).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        if !connections.make_room() {
            continue;
        }
        let info = connections.open(peer, local, None, None);
        let (admin, builder, mut shutdown) = (admin.clone(), builder.clone(), shutdown.clone());
        tokio::spawn(async move {
            let conn_info = info.clone();
            let service = service_fn(move |req| {
                let in_flight = conn_info.request_started();
                let admin = admin.clone();
                async move {
                    let response = admin.handle(req).await?;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            });
            let conn = builder.serve_connection(TokioIo::new(Watched::new(stream, info.clone())), service);
            let stop = async move { crate::server::stopped(&mut shutdown).await };
            conn::watch(conn, |conn| conn.graceful_shutdown(), &info, stop).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_form_decoded() {
        let q = "path=%2Fsvc%2Fweb&dtab=%2Fsvc+%3D%3E+%2F%24%2Finet%2F127.1%2F80";
        assert_eq!(query_param(q, "path").unwrap(), "/svc/web");
        assert_eq!(query_param(q, "dtab").unwrap(), "/svc => /$/inet/127.1/80");
        assert_eq!(query_param(q, "none"), None);
        assert_eq!(form_decode("100%"), "100%");
    }
}
