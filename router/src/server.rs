//! Listeners: accept connections (within the listener's limits), pick HTTP/1.1 or HTTP/2
//! from each connection's preface (or ALPN), and hand requests to the pipeline, each with the
//! connection's [`ConnectionInfo`]; on shutdown, stop accepting and let connections finish.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use futures::future::{BoxFuture, Either};
use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tracing::Instrument;
use waymark_tls::TlsIncoming;

use crate::body::ResponseBody;
use crate::conn::{self, ConnectionInfo, Connections, ServerLimits, TlsPeer, Tracked, Watched};
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
    /// is refused with a 400: what stops a routing loop (Linkerd 1's `maxCallDepth`, whose
    /// default of 1000 would let one looping request hold 2,000 connections). A destination
    /// that is this very listener is refused at once, without a hop.
    #[serde(default = "default_max_call_depth")]
    pub max_call_depth: usize,
    /// How long a client has to send a complete HTTP/1.1 request head: from the moment it
    /// connects until its first request, and from the first byte of each later one. Slower
    /// clients are disconnected (nginx's `client_header_timeout`).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a connection with no request in flight is kept open (HTTP/1.1 keep-alive, or
    /// HTTP/2 without streams).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// The most client connections open at once. A connection arriving at the limit closes the
    /// one idle the longest (one that never sent a request first) or, when every connection
    /// is busy, is closed itself; both are counted in `router_server_connection_limit_reached`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a request body may go without a byte arriving before the request is
    /// abandoned with a 408 (nginx's `client_body_timeout`).
    #[serde(default = "default_request_body_idle_timeout_ms")]
    pub request_body_idle_timeout_ms: u64,
    /// Read where each connection was headed before the kernel redirected it here
    /// (`SO_ORIGINAL_DST`, for a listener that iptables sends intercepted traffic to), and
    /// give it to every request in its connection context. A connection made to the listener
    /// itself has none.
    #[serde(default)]
    pub original_dst: bool,
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
    100
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_request_body_idle_timeout_ms() -> u64 {
    60_000
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
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
            request_body_idle_timeout_ms: default_request_body_idle_timeout_ms(),
            original_dst: false,
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
        if self.name == "admin" {
            out.push(format!("{at}.name: \"admin\" names the admin server in metrics; choose another"));
        }
        if self.header_read_timeout_ms == 0 {
            out.push(format!("{at}.header_read_timeout_ms: must be more than 0"));
        }
        if self.idle_timeout_ms == 0 {
            out.push(format!("{at}.idle_timeout_ms: must be more than 0"));
        }
        if self.max_connections == 0 {
            out.push(format!("{at}.max_connections: must be at least 1"));
        }
        if self.request_body_idle_timeout_ms == 0 {
            out.push(format!("{at}.request_body_idle_timeout_ms: must be more than 0"));
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

    pub(crate) fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}

/// The largest HTTP/1.1 request head a client may send (hyper's default is 400 KiB, which ten
/// thousand slow clients could turn into 4 GB); room for an 8 KiB dtab override and large
/// cookies. Larger heads get 431.
pub(crate) const MAX_HTTP1_HEAD_BYTES: usize = 64 * 1024;

/// The HTTP server settings every listener uses.
pub(crate) fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Request heads and idle connections are timed by `conn::watch`, which tells the two
    // apart; hyper's own header timer would also close kept-alive connections.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(MAX_HTTP1_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        // Ping idle clients so that dead connections do not hold memory forever.
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Where a listener's connections come from.
pub(crate) enum Incoming {
    Plain(TcpListener),
    /// Handshakes complete in their own tasks, with a timeout and a cap on how many are in
    /// progress, so a client that opens a TLS connection and says nothing holds up nobody.
    Tls(TlsIncoming),
}

/// Resolves once `shutdown` holds `true` (never, if its sender is gone while it is false).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Incoming {
    /// The address connections are accepted on.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Incoming::Plain(listener) => listener.local_addr(),
            Incoming::Tls(incoming) => Ok(incoming.local_addr()),
        }
    }
}

/// Where `stream` was headed before the kernel redirected it to this listener: `None` when
/// it was not redirected (the address it names is the listener's own, or there is none).
pub(crate) fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    #[cfg(target_os = "linux")]
    {
        let socket = socket2::SockRef::from(stream);
        let found = if local.is_ipv4() { socket.original_dst_v4() } else { socket.original_dst_v6() };
        found.ok().and_then(|addr| addr.as_socket()).filter(|addr| *addr != local && addr.port() != 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (stream, local);
        None
    }
}

/// What TLS says about the client of `stream`.
fn tls_peer(stream: &TlsStream<TcpStream>) -> TlsPeer {
    let session = stream.get_ref().1;
    TlsPeer {
        server_name: session.server_name().map(str::to_string),
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        certificates: session.peer_certificates().map(|certs| certs.to_vec()).unwrap_or_default(),
    }
}

/// Accepts connections on `incoming` until `shutdown` turns true, within the listener's
/// connection limit; then every connection is asked to finish (HTTP/1.1 closes after the
/// response in flight, HTTP/2 sends GOAWAY). Each connection holds a clone of `drained`
/// until it is gone, so that the caller can wait for all of them.
pub(crate) async fn serve(
    mut incoming: Incoming,
    proxy: Arc<ListenerProxy>,
    connections: Arc<Connections>,
    drained: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
    read_original_dst: bool,
) {
    let builder = Arc::new(http_builder());
    let local = incoming.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut stop = shutdown.clone();
    loop {
        let (stream, peer, tls, original) = match &mut incoming {
            Incoming::Plain(listener) => tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Requests are small and latency matters more than packet count.
                        let _ = stream.set_nodelay(true);
                        let original = read_original_dst.then(|| original_dst(&stream, local)).flatten();
                        (Either::Left(stream), peer, None, original)
                    }
                    Err(e) => {
                        let pause = connections.accept_failed(&e);
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => break,
            },
            Incoming::Tls(tls) => tokio::select! {
                accepted = tls.accept() => match accepted {
                    Some((stream, peer)) => {
                        let tcp = stream.get_ref().0;
                        let _ = tcp.set_nodelay(true);
                        let original = read_original_dst.then(|| original_dst(tcp, local)).flatten();
                        let peer_tls = tls_peer(&stream);
                        (Either::Right(stream), peer, Some(peer_tls), original)
                    }
                    None => break,
                },
                _ = stopped(&mut stop) => break,
            },
        };
        if !connections.make_room() {
            tracing::debug!(%peer, "refused: at the connection limit with every connection busy");
            continue;
        }
        let info = connections.open(peer, local, tls, original);
        let (proxy, builder) = (proxy.clone(), builder.clone());
        let (drained, mut shutdown) = (drained.clone(), shutdown.clone());
        tokio::spawn(
            async move {
                match stream {
                    Either::Left(tcp) => serve_connection(tcp, &builder, proxy, info, &mut shutdown).await,
                    Either::Right(tls) => serve_connection(tls, &builder, proxy, info, &mut shutdown).await,
                }
                drop(drained);
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

/// Serves HTTP on one connection until it closes, its timeouts pass, the listener sheds it,
/// or, after `shutdown` turns true, until the requests in flight are answered.
async fn serve_connection<S>(
    stream: S,
    builder: &auto::Builder<TokioExecutor>,
    proxy: Arc<ListenerProxy>,
    info: Arc<ConnectionInfo>,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched::new(stream, info.clone()));
    let conn_info = info.clone();
    // Boxed: hyper keeps room for the service future in every connection, idle or not; a
    // box costs one allocation per request instead of ~3 KiB per connection.
    let service = service_fn(move |mut req: Request<hyper::body::Incoming>| -> BoxFuture<'static, _> {
        let in_flight = conn_info.request_started();
        req.extensions_mut().insert(conn_info.clone());
        let response = proxy.clone().serve(req);
        Box::pin(async move {
            let response: Response<ResponseBody> = response.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        })
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    conn::watch(conn, |conn| conn.graceful_shutdown(), &info, stopped(shutdown)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_made_to_the_listener_itself_has_no_original_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let _client = TcpStream::connect(local).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&accepted, local), None);
    }
}
