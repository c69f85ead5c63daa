//! Connections to endpoints: an HTTP/1.1 keep-alive pool and a multiplexed HTTP/2 connection
//! per endpoint, with connect timeouts and a connection limit.
//!
//! Every endpoint owns its clients, so pools are never shared (or locked) across endpoints,
//! and an endpoint leaving the set drops its idle connections while requests already in
//! flight keep theirs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::{Builder, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use waymark_dtab::{Path, Prefix};
use waymark_tls::{ClientTls, TlsError};

use crate::balance::{FailureAccrualConfig, LoadBalancerConfig};
use crate::body::RequestBody;

/// How the router talks to endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The HTTP version of requests to endpoints whose protocol is not otherwise known. An
    /// endpoint's protocol is known from `destinations`, else from its address metadata
    /// (`appProtocol`: `kubernetes.io/h2c`, `h2c`, `http2` and `grpc` mean HTTP/2, `http`
    /// HTTP/1.1). gRPC calls always go over HTTP/2 and upgrades (WebSocket) over HTTP/1.1,
    /// whatever the endpoint.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The protocol of bound names under a prefix (`*` matches any one label), such as
    /// `{prefix: /#/io.l5d.fs/grpc-backend, protocol: http2}`; the first match wins.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    /// How long a TCP connect to an endpoint may take (and wait for a free connection slot).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The most connections open to one endpoint (Linkerd 1's `hostConnectionPool.maxSize`).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_endpoint: usize,
    /// The most idle HTTP/1.1 connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// How long an idle connection is kept (Linkerd 1's `hostConnectionPool.idleTimeMs`).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long one attempt may wait for response headers (Linkerd 1's
    /// `requestAttemptTimeoutMs`); unset means no limit besides the total timeout.
    #[serde(default)]
    pub request_attempt_timeout_ms: Option<u64>,
    /// How long a response body may go without a byte arriving from the endpoint before the
    /// response is cut off (nginx's `proxy_read_timeout`). Streams that legitimately stay
    /// quiet for longer (long polls, quiet gRPC streams) need a larger value.
    #[serde(default = "default_response_body_idle_timeout_ms")]
    pub response_body_idle_timeout_ms: u64,
    /// Taking failing endpoints out of service.
    #[serde(default)]
    pub failure_accrual: FailureAccrualConfig,
    /// How requests are spread over endpoints.
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    /// Talk to endpoints over TLS (Linkerd 1's client `tls`): the CAs their certificates must
    /// come from, the name they must carry (Linkerd's `commonName`; by default the endpoint's
    /// IP address), and this router's certificate for endpoints that require one. Two routers
    /// whose listener asks for client certificates so talk mutual TLS.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// The HTTP version of requests to endpoints whose protocol is not known. The version a
/// request arrived with has no say: the protocol is the endpoint's, and the router translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, which every server speaks; over TLS, whichever of HTTP/2 and HTTP/1.1 the
    /// endpoint picks through ALPN.
    #[default]
    Auto,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (over TLS, offered alone through ALPN).
    Http2,
}

/// A protocol an endpoint is known to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

/// The protocol of the bound names under a prefix.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// A bound name prefix, such as `/#/io.l5d.fs/grpc-backend` or `/$/inet/*/9000`.
    pub prefix: String,
    /// What the endpoints under it speak.
    pub protocol: EndpointProtocol,
}

/// How one attempt goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    Http1,
    Http2,
    /// Over TLS, whichever ALPN agrees (HTTP/1.1 in plain text).
    Negotiated,
}

/// The client settings shared by every endpoint, built once from configuration.
#[derive(Debug)]
pub(crate) struct ClientSettings {
    h1: Builder,
    h2: Builder,
    connect_timeout: Duration,
    max_connections: usize,
    tls: Option<Arc<EndpointTls>>,
    default_wire: Wire,
    destinations: Vec<(Prefix, EndpointProtocol)>,
    /// Every endpoint's connections go to a test's in-process server.
    #[cfg(test)]
    pub(crate) memory: Option<tests::InMemory>,
}

/// TLS to endpoints: one rustls configuration per ALPN offer, since ALPN must offer only the
/// protocols the client will speak.
struct EndpointTls {
    http1: tokio_rustls::TlsConnector,
    http2: tokio_rustls::TlsConnector,
    either: tokio_rustls::TlsConnector,
    /// The name every endpoint's certificate must carry, or `None` for its IP address.
    server_name: Option<ServerName<'static>>,
}

/// One endpoint's connections. The clients are built on first use: most endpoints of a
/// large set only ever see one protocol.
#[derive(Debug)]
pub(crate) struct EndpointClient {
    connector: Connector,
    settings: Arc<ClientSettings>,
    /// What the endpoint's address metadata says it speaks.
    protocol: Option<EndpointProtocol>,
    h1: OnceLock<Client<Connector, RequestBody>>,
    h2: OnceLock<Client<Connector, RequestBody>>,
    negotiated: OnceLock<Client<Connector, RequestBody>>,
}

/// Opens connections to one endpoint, whatever URI the request names, so that requests
/// keep their own authority while going to the address the balancer chose.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    addr: SocketAddr,
    timeout: Duration,
    slots: Arc<Semaphore>,
    open: Gauge,
    tls: Option<Arc<EndpointTls>>,
    /// Which protocol connections are for: with TLS, what ALPN offers.
    wire: Wire,
    #[cfg(test)]
    memory: Option<tests::InMemory>,
}

/// An open connection to an endpoint, counted while it lives.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
    open: Gauge,
    _slot: OwnedSemaphorePermit,
    /// HTTP/2, by ALPN or prior knowledge.
    h2: bool,
}

#[derive(Debug)]
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
    /// An in-process pipe to a test's server: the client without sockets.
    #[cfg(test)]
    Memory(TokioIo<tokio::io::DuplexStream>),
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no free connection slot to {0} within the connect timeout")]
    Limit(SocketAddr),
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_idle() -> usize {
    512
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_response_body_idle_timeout_ms() -> u64 {
    300_000
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: UpstreamProtocol::default(),
            destinations: Vec::new(),
            connect_timeout_ms: default_connect_timeout_ms(),
            max_connections_per_endpoint: default_max_connections(),
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout_ms: default_idle_timeout_ms(),
            request_attempt_timeout_ms: None,
            response_body_idle_timeout_ms: default_response_body_idle_timeout_ms(),
            failure_accrual: FailureAccrualConfig::default(),
            load_balancer: LoadBalancerConfig::default(),
            tls: None,
        }
    }
}

impl ClientConfig {
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        if self.connect_timeout_ms == 0 {
            out.push(format!("{at}.connect_timeout_ms: must be more than 0"));
        }
        if self.max_connections_per_endpoint == 0 {
            out.push(format!("{at}.max_connections_per_endpoint: must be at least 1"));
        }
        if self.response_body_idle_timeout_ms == 0 {
            out.push(format!("{at}.response_body_idle_timeout_ms: must be more than 0"));
        }
        if self.request_attempt_timeout_ms == Some(0) {
            out.push(format!("{at}.request_attempt_timeout_ms: must be more than 0 (or left out)"));
        }
        if let Some(tls) = &self.tls {
            out.extend(tls.problems(&format!("{at}.tls")));
        }
        for (i, destination) in self.destinations.iter().enumerate() {
            if let Err(e) = destination.prefix.parse::<Prefix>() {
                out.push(format!("{at}.destinations[{i}].prefix: {:?} is not a prefix: {e}", destination.prefix));
            }
        }
        self.failure_accrual.problems(&format!("{at}.failure_accrual"), out);
        self.load_balancer.problems(&format!("{at}.load_balancer"), out);
    }
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientSettings {
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, TlsError> {
        let mut h1 = Client::builder(TokioExecutor::new());
        h1.pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let mut h2 = h1.clone();
        h2.http2_only(true)
            // Keep long-lived HTTP/2 connections healthy through middleboxes that drop idle flows.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10));
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let connector = |alpn: &[u8]| -> Result<tokio_rustls::TlsConnector, TlsError> {
                    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls.client_config(&[alpn])?)))
                };
                let server_name = match &tls.server_name {
                    None => None,
                    Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| TlsError::File {
                        path: "client.tls.server_name".to_string(),
                        message: format!("{name:?} is not a DNS name or IP address: {e}"),
                    })?),
                };
                let either = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config(&[b"h2", b"http/1.1"])?));
                Some(Arc::new(EndpointTls {
                    http1: connector(b"http/1.1")?,
                    http2: connector(b"h2")?,
                    either,
                    server_name,
                }))
            }
        };
        let default_wire = match config.protocol {
            UpstreamProtocol::Auto => Wire::Negotiated,
            UpstreamProtocol::Http1 => Wire::Http1,
            UpstreamProtocol::Http2 => Wire::Http2,
        };
        let destinations =
            config.destinations.iter().filter_map(|d| Some((d.prefix.parse::<Prefix>().ok()?, d.protocol))).collect();
        Ok(ClientSettings {
            h1,
            h2,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            max_connections: config.max_connections_per_endpoint,
            tls,
            default_wire,
            destinations,
            #[cfg(test)]
            memory: None,
        })
    }

    /// The protocol configured for bound name `id`, if a destination prefix matches it.
    pub(crate) fn destination_protocol(&self, id: &Path) -> Option<EndpointProtocol> {
        self.destinations.iter().find(|(prefix, _)| prefix.matches(id)).map(|(_, protocol)| *protocol)
    }

    /// How one attempt goes: an upgrade over HTTP/1.1 and gRPC over HTTP/2 whatever the
    /// endpoint; otherwise what the configuration says of its bound name, else what its
    /// address metadata says of it, else the default.
    pub(crate) fn wire(
        &self,
        upgrade: bool,
        grpc: bool,
        destination: Option<EndpointProtocol>,
        endpoint: Option<EndpointProtocol>,
    ) -> Wire {
        if upgrade {
            return Wire::Http1;
        }
        if grpc {
            return Wire::Http2;
        }
        match destination.or(endpoint) {
            Some(EndpointProtocol::Http1) => Wire::Http1,
            Some(EndpointProtocol::Http2) => Wire::Http2,
            None => self.default_wire,
        }
    }
}

impl EndpointProtocol {
    /// What an address's `appProtocol` metadata says, when it says something this router
    /// knows: Kubernetes' `kubernetes.io/h2c`, and the names service meshes use.
    pub(crate) fn from_app_protocol(value: &str) -> Option<EndpointProtocol> {
        match value.to_ascii_lowercase().as_str() {
            "kubernetes.io/h2c" | "h2c" | "http2" | "grpc" | "kubernetes.io/grpc" => Some(EndpointProtocol::Http2),
            "http" | "http/1.1" | "http1" | "kubernetes.io/ws" => Some(EndpointProtocol::Http1),
            _ => None,
        }
    }
}

impl EndpointClient {
    pub(crate) fn new(
        addr: SocketAddr,
        protocol: Option<EndpointProtocol>,
        settings: Arc<ClientSettings>,
        open: Gauge,
    ) -> Self {
        let connector = Connector {
            addr,
            timeout: settings.connect_timeout,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            open,
            tls: settings.tls.clone(),
            wire: Wire::Http1,
            #[cfg(test)]
            memory: settings.memory.clone(),
        };
        EndpointClient {
            connector,
            settings,
            protocol,
            h1: OnceLock::new(),
            h2: OnceLock::new(),
            negotiated: OnceLock::new(),
        }
    }

    /// How an attempt goes: see [`ClientSettings::wire`]; `destination` is what the
    /// configuration says of the endpoint's bound name.
    pub(crate) fn wire(&self, upgrade: bool, grpc: bool, destination: Option<EndpointProtocol>) -> Wire {
        self.settings.wire(upgrade, grpc, destination, self.protocol)
    }

    /// What the endpoint's address metadata says it speaks.
    pub(crate) fn protocol(&self) -> Option<EndpointProtocol> {
        self.protocol
    }

    /// The client for requests that go as `wire` says. Without TLS, a negotiated protocol is
    /// HTTP/1.1.
    pub(crate) fn get(&self, wire: Wire) -> &Client<Connector, RequestBody> {
        let connector = |wire| Connector { wire, ..self.connector.clone() };
        match wire {
            Wire::Http2 => self.h2.get_or_init(|| self.settings.h2.build(connector(Wire::Http2))),
            Wire::Negotiated if self.connector.tls.is_some() => {
                // Not HTTP/2-only: the client speaks HTTP/2 on a connection whose ALPN says so.
                self.negotiated.get_or_init(|| self.settings.h1.build(connector(Wire::Negotiated)))
            }
            Wire::Http1 | Wire::Negotiated => self.h1.get_or_init(|| self.settings.h1.build(connector(Wire::Http1))),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = this.addr;
            #[cfg(test)]
            if let Some(memory) = &this.memory {
                let slot = this.slots.clone().acquire_owned().await.map_err(|_| ConnectError::Limit(addr))?;
                this.open.inc();
                let io = Io::Memory(TokioIo::new(memory.connect()));
                return Ok(Conn { io, open: this.open, _slot: slot, h2: this.wire == Wire::Http2 });
            }
            let connect = async {
                let slot = this.slots.clone().acquire_owned().await.map_err(|_| ConnectError::Limit(addr))?;
                let stream = TcpStream::connect(addr).await.map_err(|source| ConnectError::Io { addr, source })?;
                Ok::<_, ConnectError>((slot, stream))
            };
            let (slot, stream) = match tokio::time::timeout(this.timeout, connect).await {
                Ok(result) => result?,
                Err(_) if this.slots.available_permits() == 0 => return Err(ConnectError::Limit(addr)),
                Err(_) => return Err(ConnectError::Timeout(addr)),
            };
            // Requests are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            let (io, h2) = match &this.tls {
                None => (Io::Plain(TokioIo::new(stream)), this.wire == Wire::Http2),
                Some(tls) => {
                    let connector = match this.wire {
                        Wire::Http1 => &tls.http1,
                        Wire::Http2 => &tls.http2,
                        Wire::Negotiated => &tls.either,
                    };
                    let name = tls.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                    let handshake = tokio::time::timeout(this.timeout, connector.connect(name, stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(source)) => return Err(ConnectError::Tls { addr, source }),
                        Err(_) => return Err(ConnectError::Timeout(addr)),
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    (Io::Tls(Box::new(TokioIo::new(stream))), h2)
                }
            };
            this.open.inc();
            Ok(Conn { io, open: this.open, _slot: slot, h2 })
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        // Tells the client to speak HTTP/2 on a connection whose ALPN chose it.
        if self.h2 { Connected::new().negotiated_h2() } else { Connected::new() }
    }
}

/// Forwards a call to whichever stream the connection has.
macro_rules! on_io {
    ($conn:expr, $io:ident => $call:expr) => {
        match &mut $conn.io {
            Io::Plain($io) => $call,
            Io::Tls($io) => $call,
            #[cfg(test)]
            Io::Memory($io) => $call,
        }
    };
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        on_io!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        on_io!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
            #[cfg(test)]
            Io::Memory(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn test_client(addr: SocketAddr) -> EndpointClient {
        let settings = Arc::new(ClientSettings::new(&ClientConfig::default()).unwrap());
        EndpointClient::new(addr, None, settings, Gauge::default())
    }

    /// Connections to a test's server in the same process, over in-memory pipes: each new
    /// connection is handed to `accept`.
    #[derive(Clone)]
    pub(crate) struct InMemory {
        accept: Arc<dyn Fn(tokio::io::DuplexStream) + Send + Sync>,
    }

    impl std::fmt::Debug for InMemory {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("InMemory")
        }
    }

    impl InMemory {
        pub(crate) fn new(accept: impl Fn(tokio::io::DuplexStream) + Send + Sync + 'static) -> Self {
            InMemory { accept: Arc::new(accept) }
        }

        pub(super) fn connect(&self) -> tokio::io::DuplexStream {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            (self.accept)(theirs);
            ours
        }
    }

    #[test]
    fn the_protocol_is_the_endpoints() {
        let mut config = ClientConfig::default();
        config
            .destinations
            .push(DestinationConfig { prefix: "/#/io.l5d.fs/grpc".to_string(), protocol: EndpointProtocol::Http2 });
        let settings = ClientSettings::new(&config).unwrap();
        let (h1, h2) = (Some(EndpointProtocol::Http1), Some(EndpointProtocol::Http2));
        assert_eq!(settings.wire(false, false, None, None), Wire::Negotiated, "unknown: HTTP/1.1, or ALPN's choice");
        assert_eq!(settings.wire(false, true, None, h1), Wire::Http2, "gRPC is HTTP/2 whatever the endpoint");
        assert_eq!(settings.wire(true, false, h2, h2), Wire::Http1, "an upgrade is HTTP/1.1 whatever the endpoint");
        assert_eq!(settings.wire(false, false, None, h2), Wire::Http2, "address metadata");
        assert_eq!(settings.wire(false, false, h1, h2), Wire::Http1, "configuration over metadata");
        let id = |s: &str| s.parse::<Path>().unwrap();
        assert_eq!(settings.destination_protocol(&id("/#/io.l5d.fs/grpc/x")), h2);
        assert_eq!(settings.destination_protocol(&id("/#/io.l5d.fs/web")), None);
        assert_eq!(EndpointProtocol::from_app_protocol("kubernetes.io/h2c"), h2);
        assert_eq!(EndpointProtocol::from_app_protocol("HTTP"), h1);
        assert_eq!(EndpointProtocol::from_app_protocol("linkerd.io/opaque"), None);
        let http1 = ClientSettings::new(&ClientConfig { protocol: UpstreamProtocol::Http1, ..ClientConfig::default() });
        assert_eq!(http1.unwrap().wire(false, false, None, None), Wire::Http1);
    }

    #[tokio::test]
    async fn connection_limit_is_enforced_and_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Gauge::default();
        let mut connector = Connector {
            addr,
            timeout: Duration::from_millis(200),
            slots: Arc::new(Semaphore::new(1)),
            open: open.clone(),
            tls: None,
            wire: Wire::Http1,
            memory: None,
        };
        let first = tower_service::Service::call(&mut connector, Uri::from_static("http://x/")).await.unwrap();
        assert_eq!(open.get(), 1);
        let second = tower_service::Service::call(&mut connector, Uri::from_static("http://x/")).await;
        assert!(matches!(second, Err(ConnectError::Limit(_))), "{second:?}");
        drop(first);
        assert_eq!(open.get(), 0);
        let third = tower_service::Service::call(&mut connector, Uri::from_static("http://x/")).await;
        assert!(third.is_ok());
    }
}
