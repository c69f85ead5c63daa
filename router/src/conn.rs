//! Client connections of a server (a proxy listener or the admin port): how many may be open,
//! how long one may take to send a request head or sit idle, and which one goes when room is
//! needed. Also what a request learns about the connection it came on.
//!
//! Every connection has a [`ConnectionInfo`], shared by the task serving it and by each of its
//! requests (in the request's extensions), and gone when the last of them is: that is when the
//! connection stops counting against the limit, so an upgraded connection (a WebSocket, say)
//! counts for as long as its tunnel lives.
//!
//! Timeouts are watched by one timer per connection rather than by hyper, because hyper's
//! HTTP/1.1 header timeout also runs while a kept-alive connection waits for its next request,
//! which would make the idle timeout and the header timeout one setting; and hyper has no
//! idle timeout for HTTP/2 at all.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::ListenerLabels;
use crate::sync::lock;

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerLimits {
    /// How long a client has to send a complete HTTP/1.1 request head: counted from the
    /// connection's start until its first request, and from the first byte of each later one.
    pub(crate) header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open (HTTP/1.1 keep-alive, or an
    /// HTTP/2 connection without streams).
    pub(crate) idle_timeout: Duration,
    /// The most connections open at once.
    pub(crate) max_connections: usize,
}

/// Why the server closed a connection, as a metric label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The request head did not arrive in time.
    HeaderTimeout,
    /// Idle for longer than the idle timeout.
    IdleTimeout,
    /// Closed while idle to make room for a new connection (at the connection limit, or out
    /// of file descriptors).
    Shed,
    /// Refused on arrival: the limit was reached and no connection was idle.
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClosedLabels {
    pub(crate) listener: String,
    pub(crate) reason: &'static str,
}

/// The connection metrics of every server of a process, labelled by listener (the admin
/// server is `admin`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionMetricFamilies {
    pub(crate) open: Family<ListenerLabels, Gauge>,
    pub(crate) accepted: Family<ListenerLabels, Counter>,
    pub(crate) limit_reached: Family<ListenerLabels, Counter>,
    pub(crate) accept_errors: Family<ListenerLabels, Counter>,
    pub(crate) closed: Family<ClosedLabels, Counter>,
}

/// One server's connection metrics.
#[derive(Debug, Clone)]
struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    limit_reached: Counter,
    accept_errors: Counter,
    closed: [Counter; 4],
}

/// The open connections of one server.
#[derive(Debug)]
pub(crate) struct Connections {
    name: String,
    limits: ServerLimits,
    metrics: ConnectionMetrics,
    live: Mutex<HashMap<u64, std::sync::Weak<ConnectionInfo>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// When an accept failure was last logged (ms since the epoch, plus one).
    accept_failure_logged_ms: AtomicU64,
}

/// Where a request came from: the connection, as every stage of the pipeline may see it.
/// Each request carries an `Arc<ConnectionInfo>` in its extensions.
#[derive(Debug)]
pub struct ConnectionInfo {
    listener: String,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsPeer>,
    original_dst: Option<SocketAddr>,
    track: Track,
}

/// What TLS told the server about its client.
#[derive(Debug, Clone, Default)]
pub struct TlsPeer {
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The protocol agreed through ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain (DER, end entity first), when it presented one: its
    /// identity.
    pub certificates: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// What the server watches on a connection.
#[derive(Debug)]
struct Track {
    id: u64,
    owner: Arc<Connections>,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicU32,
    /// When the connection last had no request in flight (ms since the owner's epoch).
    idle_since_ms: AtomicU64,
    /// When the first byte of a request head arrived while nothing was in flight (ms since
    /// the epoch, plus one; zero for none).
    head_started_ms: AtomicU64,
    /// Whether a request was ever in flight.
    served: AtomicBool,
    /// HTTP/2: no request heads to time, the idle timeout only.
    http2: AtomicBool,
    /// Set, and notified, when the server wants the connection closed.
    close: Notify,
    closing: AtomicBool,
}

/// Counts one request as in flight on its connection until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnectionInfo>);

/// A response body that keeps its request counted as in flight until it is sent or dropped.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

/// A connection's byte stream, noting when a request head starts to arrive.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    info: Arc<ConnectionInfo>,
    first_read: bool,
}

/// What a connection's serving task should do next.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do until then.
    CheckAt(Instant),
    Close(CloseReason),
}

const HTTP2_PREFACE_START: &[u8] = b"PRI ";

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Shed => "shed",
            CloseReason::Refused => "refused",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl ConnectionMetricFamilies {
    fn for_server(&self, name: &str) -> ConnectionMetrics {
        let labels = ListenerLabels { listener: name.to_string() };
        let closed = |reason: CloseReason| {
            self.closed.get_or_create_owned(&ClosedLabels { listener: name.to_string(), reason: reason.label() })
        };
        ConnectionMetrics {
            open: self.open.get_or_create_owned(&labels),
            accepted: self.accepted.get_or_create_owned(&labels),
            limit_reached: self.limit_reached.get_or_create_owned(&labels),
            accept_errors: self.accept_errors.get_or_create_owned(&labels),
            closed: [
                closed(CloseReason::HeaderTimeout),
                closed(CloseReason::IdleTimeout),
                closed(CloseReason::Shed),
                closed(CloseReason::Refused),
            ],
        }
    }

    /// Registers every family in `registry`, prefixed `server_`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("server_connections", "Open client connections, by listener", self.open.clone());
        registry.register("server_accepted_connections", "Accepted connections, by listener", self.accepted.clone());
        registry.register(
            "server_connection_limit_reached",
            "Connections that arrived while the server was at its connection limit, by listener",
            self.limit_reached.clone(),
        );
        registry.register(
            "server_accept_errors",
            "Failures to accept a connection (such as running out of file descriptors), by listener",
            self.accept_errors.clone(),
        );
        registry.register(
            "server_closed_connections",
            "Connections the server closed itself, by listener and reason (header_timeout, \
             idle_timeout, shed: closed while idle to make room, refused: at the limit with none idle)",
            self.closed.clone(),
        );
    }
}

impl Connections {
    /// The connections of server `name` (a listener's name, or `admin`).
    pub(crate) fn new(name: &str, limits: ServerLimits, families: &ConnectionMetricFamilies) -> Arc<Connections> {
        Arc::new(Connections {
            name: name.to_string(),
            limits,
            metrics: families.for_server(name),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            accept_failure_logged_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    fn now_ms(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// How many connections are open.
    pub(crate) fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Makes room for one more connection, if the server is at its limit: closes the
    /// connection idle the longest (one that never sent a request first). False when the
    /// server is full of busy connections and the new one must be refused.
    pub(crate) fn make_room(&self) -> bool {
        if self.len() < self.limits.max_connections {
            return true;
        }
        self.metrics.limit_reached.inc();
        if self.shed_one() {
            true
        } else {
            self.metrics.closed[CloseReason::Refused.index()].inc();
            false
        }
    }

    /// Accepting failed: counts it, and when the process is out of file descriptors (or
    /// memory for sockets), closes the connection idle the longest so that the next accept
    /// can succeed. Returns how long to pause before accepting again.
    pub(crate) fn accept_failed(&self, error: &io::Error) -> Duration {
        self.metrics.accept_errors.inc();
        match error.kind() {
            // The client gave up before we took the connection: nothing wrong here.
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => Duration::ZERO,
            _ => {
                let shed = self.shed_one();
                // Once a second at most: this repeats for as long as the shortage lasts.
                let now = self.now_ms() + 1;
                let last = self.accept_failure_logged_ms.load(Ordering::Relaxed);
                if last == 0 || now.saturating_sub(last) >= 1000 {
                    self.accept_failure_logged_ms.store(now, Ordering::Relaxed);
                    let failures = self.metrics.accept_errors.get();
                    tracing::warn!(listener = %self.name, %error, shed, failures, "accepting a connection failed");
                }
                // Pause rather than spin: whatever ran out is unlikely to come back at once.
                Duration::from_millis(10)
            }
        }
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn shed_one(&self) -> bool {
        let live = lock(&self.live);
        // Connections that never sent a request go first, then the longest idle.
        let victim = live
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|c| c.track.in_flight.load(Ordering::Relaxed) == 0 && !c.track.closing.load(Ordering::Relaxed))
            .min_by_key(|c| (c.track.served.load(Ordering::Relaxed), c.track.idle_since_ms.load(Ordering::Relaxed)));
        drop(live);
        match victim {
            Some(victim) => {
                self.metrics.closed[CloseReason::Shed.index()].inc();
                victim.track.ask_to_close();
                true
            }
            None => false,
        }
    }

    /// Registers a new connection.
    pub(crate) fn open(
        self: &Arc<Self>,
        peer: SocketAddr,
        local: SocketAddr,
        tls: Option<TlsPeer>,
        original_dst: Option<SocketAddr>,
    ) -> Arc<ConnectionInfo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let http2 = tls.as_ref().is_some_and(|t| t.alpn.as_deref() == Some(b"h2"));
        let info = Arc::new(ConnectionInfo {
            listener: self.name.clone(),
            peer,
            local,
            tls,
            original_dst,
            track: Track {
                id,
                owner: self.clone(),
                in_flight: AtomicU32::new(0),
                idle_since_ms: AtomicU64::new(self.now_ms()),
                head_started_ms: AtomicU64::new(0),
                served: AtomicBool::new(false),
                http2: AtomicBool::new(http2),
                close: Notify::new(),
                closing: AtomicBool::new(false),
            },
        });
        lock(&self.live).insert(id, Arc::downgrade(&info));
        self.metrics.accepted.inc();
        self.metrics.open.inc();
        info
    }
}

impl ConnectionInfo {
    /// The name of the listener (or `admin`).
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The address the connection was accepted on.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// What TLS said about the client, on a TLS listener.
    pub fn tls(&self) -> Option<&TlsPeer> {
        self.tls.as_ref()
    }

    /// Where the client meant to connect, when the connection was redirected to this
    /// listener (transparent interception) rather than made to it.
    pub fn original_dst(&self) -> Option<SocketAddr> {
        self.original_dst
    }

    /// A request starts on this connection; it counts as in flight until the guard goes.
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        let track = &self.track;
        track.in_flight.fetch_add(1, Ordering::Relaxed);
        track.head_started_ms.store(0, Ordering::Relaxed);
        if !track.served.load(Ordering::Relaxed) {
            track.served.store(true, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    /// Resolves when the server wants this connection closed (to make room).
    pub(crate) async fn close_requested(&self) {
        loop {
            let notified = self.track.close.notified();
            if self.track.closing.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Marks the connection as speaking HTTP/2 (no request heads to time).
    fn note_first_bytes(&self, bytes: &[u8]) {
        if bytes.starts_with(HTTP2_PREFACE_START) {
            self.track.http2.store(true, Ordering::Relaxed);
        }
    }

    /// Bytes arrived: when nothing is in flight, a request head may be starting.
    fn note_read(&self) {
        let track = &self.track;
        if track.in_flight.load(Ordering::Relaxed) == 0
            && track.head_started_ms.load(Ordering::Relaxed) == 0
            && !track.http2.load(Ordering::Relaxed)
        {
            track.head_started_ms.store(track.owner.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// What the connection's task should do now, given the limits.
    fn verdict(&self) -> Verdict {
        let track = &self.track;
        let owner = &track.owner;
        let limits = &owner.limits;
        let now = Instant::now();
        if track.in_flight.load(Ordering::Relaxed) > 0 {
            // Busy: the body timeouts watch requests; look again later.
            return Verdict::CheckAt(now + limits.idle_timeout);
        }
        let head_started = track.head_started_ms.load(Ordering::Relaxed);
        let http1 = !track.http2.load(Ordering::Relaxed);
        let (deadline, reason) = if head_started != 0 {
            (owner.at_ms(head_started - 1) + limits.header_read_timeout, CloseReason::HeaderTimeout)
        } else if http1 && !track.served.load(Ordering::Relaxed) {
            // A new connection owes its first request head at once.
            let since = owner.at_ms(track.idle_since_ms.load(Ordering::Relaxed));
            (since + limits.header_read_timeout, CloseReason::HeaderTimeout)
        } else {
            let since = owner.at_ms(track.idle_since_ms.load(Ordering::Relaxed));
            (since + limits.idle_timeout, CloseReason::IdleTimeout)
        };
        if now >= deadline { Verdict::Close(reason) } else { Verdict::CheckAt(deadline) }
    }
}

impl Track {
    fn ask_to_close(&self) {
        self.closing.store(true, Ordering::Release);
        self.close.notify_waiters();
    }
}

impl Drop for ConnectionInfo {
    fn drop(&mut self) {
        let owner = &self.track.owner;
        lock(&owner.live).remove(&self.track.id);
        owner.metrics.open.dec();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let track = &self.0.track;
        if track.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            track.idle_since_ms.store(track.owner.now_ms(), Ordering::Relaxed);
        }
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked { inner, _in_flight: in_flight }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, info: Arc<ConnectionInfo>) -> Self {
        Watched { inner, info, first_read: true }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if this.first_read {
                this.first_read = false;
                this.info.note_first_bytes(&buf.filled()[before..]);
            }
            this.info.note_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `conn` until it ends, closing it when its timeouts pass, when the server sheds it,
/// or (gracefully) once `stop` resolves. `graceful_shutdown` asks it to finish (HTTP/1.1
/// closes after the response in flight, HTTP/2 sends GOAWAY); a connection asked to finish
/// because of its timeouts or to make room gets the header read timeout to do so, then is
/// dropped.
pub(crate) async fn watch<C, E>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    info: &ConnectionInfo,
    stop: impl Future<Output = ()>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::pin!(stop);
    let limits = *info.track.owner.limits();
    let check = tokio::time::sleep_until(Instant::now() + limits.header_read_timeout.min(limits.idle_timeout));
    tokio::pin!(check);
    let finish_within = loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut stop => {
                // Shutting down: the requests in flight may take the drain timeout.
                graceful_shutdown(conn.as_mut());
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = info.close_requested() => {
                tracing::debug!("closing an idle connection to make room");
                break limits.header_read_timeout;
            }
            () = &mut check => match info.verdict() {
                Verdict::CheckAt(at) => check.as_mut().reset(at),
                Verdict::Close(reason) => {
                    tracing::debug!(reason = reason.label(), "closing the connection");
                    info.track.owner.metrics.closed[reason.index()].inc();
                    break limits.header_read_timeout;
                }
            },
        }
    };
    graceful_shutdown(conn.as_mut());
    match tokio::time::timeout(finish_within, conn).await {
        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Ok(Ok(())) => {}
        Err(_) => tracing::debug!("the connection did not finish in time; dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize) -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections,
        }
    }

    fn addr() -> SocketAddr {
        ([127, 0, 0, 1], 1).into()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_http1_connection_owes_its_head_and_an_idle_one_gets_the_idle_timeout() {
        let conns = Connections::new("test", limits(10), &ConnectionMetricFamilies::default());
        let info = conns.open(addr(), addr(), None, None);
        let start = Instant::now();
        assert_eq!(info.verdict(), Verdict::CheckAt(start + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(info.verdict(), Verdict::Close(CloseReason::HeaderTimeout));

        let request = info.request_started();
        assert!(matches!(info.verdict(), Verdict::CheckAt(_)), "busy connections are not timed here");
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(request);
        let idle_from = Instant::now();
        assert_eq!(info.verdict(), Verdict::CheckAt(idle_from + Duration::from_secs(60)));
        // A head starting to arrive is timed from its first byte.
        tokio::time::advance(Duration::from_secs(30)).await;
        info.note_read();
        assert_eq!(info.verdict(), Verdict::CheckAt(Instant::now() + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(info.verdict(), Verdict::Close(CloseReason::HeaderTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_only_idle() {
        let conns = Connections::new("test", limits(10), &ConnectionMetricFamilies::default());
        let info = conns.open(addr(), addr(), None, None);
        info.note_first_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        info.note_read();
        assert_eq!(info.verdict(), Verdict::CheckAt(Instant::now() + Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(info.verdict(), Verdict::Close(CloseReason::IdleTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_connection_that_never_asked_anything_goes_first_then_busy_ones_refuse() {
        let conns = Connections::new("test", limits(3), &ConnectionMetricFamilies::default());
        let served = conns.open(addr(), addr(), None, None);
        drop(served.request_started());
        tokio::time::advance(Duration::from_secs(1)).await;
        let silent = conns.open(addr(), addr(), None, None);
        let busy = conns.open(addr(), addr(), None, None);
        let _request = busy.request_started();
        assert_eq!(conns.len(), 3);
        assert!(conns.make_room());
        assert!(silent.track.closing.load(Ordering::Relaxed), "the silent one goes first");
        tokio::time::timeout(Duration::from_secs(1), silent.close_requested()).await.expect("notified");
        assert!(conns.make_room());
        assert!(served.track.closing.load(Ordering::Relaxed), "then the idle one");
        assert!(!conns.make_room(), "only busy connections are left");
        drop((silent, served));
        assert_eq!(conns.len(), 1, "a connection stops counting when its info goes");
        assert_eq!(conns.metrics.closed[CloseReason::Refused.index()].get(), 1);
        assert_eq!(conns.metrics.limit_reached.get(), 3);
    }
}
