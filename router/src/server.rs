//! Listeners: accept connections, pick HTTP/1.1 or HTTP/2 from each connection's preface,
//! and hand requests to the pipeline; on shutdown, stop accepting and let connections finish.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::identify::IdentifierConfig;
use crate::proxy::ListenerProxy;

/// One listening socket (Linkerd 1's `servers` entry).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The listener's name, used in metrics.
    #[serde(default = "default_name")]
    pub name: String,
    /// The address to listen on.
    #[serde(default = "default_ip")]
    pub ip: IpAddr,
    /// The port to listen on (0 picks a free one).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Whether clients of this listener may steer routing with `l5d-*` headers and see
    /// router error details. Untrusted listeners (edges) strip every `l5d-*` header both ways
    /// and answer errors with the status text only (Linkerd 1's `clearContext: true`).
    /// Unset: trusted on a loopback address, untrusted otherwise.
    #[serde(default)]
    pub trusted: Option<bool>,
    /// Identifiers for this listener, instead of the router's.
    #[serde(default)]
    pub identifier: Option<Vec<IdentifierConfig>>,
    /// The name prefix for this listener, instead of the router's `dst_prefix`.
    #[serde(default)]
    pub dst_prefix: Option<String>,
    /// Serve TLS (Linkerd 1's server `tls`); HTTP/2 is then offered through ALPN (`h2`), next
    /// to HTTP/1.1. With `client_ca_path`, clients must present a certificate from those CAs.
    #[serde(default)]
    pub tls: Option<waymark_tls::ServerTls>,
    /// The most proxies, counted from the `Via` header, a request may have passed before it
    /// is refused with a 400: what stops a routing loop (Linkerd 1's `maxCallDepth`).
    #[serde(default = "default_max_call_depth")]
    pub max_call_depth: usize,
}

fn default_name() -> String {
    "outbound".to_string()
}
fn default_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_port() -> u16 {
    4140
}
fn default_max_call_depth() -> usize {
    1000
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: default_name(),
            ip: default_ip(),
            port: default_port(),
            trusted: None,
            identifier: None,
            dst_prefix: None,
            tls: None,
            max_call_depth: default_max_call_depth(),
        }
    }
}

impl ListenerConfig {
    /// Whether the listener trusts its clients.
    pub fn is_trusted(&self) -> bool {
        self.trusted.unwrap_or_else(|| self.ip.is_loopback())
    }

    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        if self.name.is_empty() {
            out.push(format!("{at}.name: may not be empty"));
        }
        if self.max_call_depth == 0 {
            out.push(format!("{at}.max_call_depth: must be at least 1"));
        }
        if let Some(prefix) = &self.dst_prefix
            && let Err(e) = prefix.parse::<waymark_dtab::Path>()
        {
            out.push(format!("{at}.dst_prefix: {prefix:?} is not a path: {e}"));
        }
        for (i, identifier) in self.identifier.iter().flatten().enumerate() {
            identifier.problems(&format!("{at}.identifier[{i}]"), out);
        }
        if self.identifier.as_ref().is_some_and(Vec::is_empty) {
            out.push(format!("{at}.identifier: needs at least one identifier (or leave it out)"));
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// The HTTP server settings every listener uses.
pub(crate) fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        // Ping idle clients so that dead connections do not hold memory forever.
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Counters for one listener.
#[derive(Debug, Clone)]
pub(crate) struct ListenerMetrics {
    pub(crate) open: Gauge,
    pub(crate) accepted: Counter,
}

/// Resolves once `shutdown` holds `true` (never, if its sender is gone while it is false).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Accepts connections on `listener` until `shutdown` turns true; then every connection is
/// asked to finish (HTTP/1.1 closes after the response in flight, HTTP/2 sends GOAWAY). Each
/// connection holds a clone of `drained` until it is gone, so that the caller can wait for
/// all of them.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<ListenerProxy>,
    drained: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
    metrics: ListenerMetrics,
) {
    let builder = Arc::new(http_builder());
    let mut stop = shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        metrics.accepted.inc();
        metrics.open.inc();
        let (proxy, builder, open) = (proxy.clone(), builder.clone(), metrics.open.clone());
        let (drained, mut shutdown) = (drained.clone(), shutdown.clone());
        let tls = tls.clone();
        tokio::spawn(
            async move {
                match tls {
                    None => serve_connection(stream, &builder, proxy, &mut shutdown).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => serve_connection(stream, &builder, proxy, &mut shutdown).await,
                        Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                    },
                }
                open.dec();
                drop(drained);
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

/// Serves HTTP on one connection until it closes, or, after `shutdown` turns true, until the
/// requests in flight are answered.
async fn serve_connection<S>(
    stream: S,
    builder: &auto::Builder<TokioExecutor>,
    proxy: Arc<ListenerProxy>,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: hyper keeps room for the service future in every connection, idle or not; a
    // box costs one allocation per request instead of ~3 KiB per connection.
    let service = service_fn(move |req| -> BoxFuture<'static, _> { Box::pin(proxy.clone().serve(req)) });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopped(shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
