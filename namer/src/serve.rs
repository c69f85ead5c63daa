//! Serving connections within limits, for every server the namer runs (the HTTP API, the
//! gRPC API and the admin port).
//!
//! A connection may not stay silent, half-sent or unused for long, and a server holds a
//! bounded number of them:
//!
//! - **header read**: once a request has begun to arrive (or a connection has opened), its
//!   headers must be complete within `header_read_timeout_ms`, or the connection is closed;
//! - **idle**: a connection with no request in progress for `idle_timeout_ms` is closed
//!   (HTTP/1.1 keep-alive and HTTP/2 alike); a request body that stops arriving for that long
//!   fails;
//! - **keep-alive**: HTTP/2 connections are pinged after `keep_alive_timeout_ms` without
//!   traffic and closed when a ping goes unanswered for as long, and every connection has TCP
//!   keep-alive probes on the same period, so a peer that vanished while holding a watch
//!   stream is noticed;
//! - **connections**: at most `max_connections` at once. When a new connection arrives at
//!   the limit, `waymark_namer_connection_limit_reached_total` counts it and the connection
//!   that has gone longest without a request in progress is closed to make room
//!   (`waymark_namer_connections_evicted_total`), so that silent or idle sockets can never
//!   lock clients out; when every connection is busy, new ones wait in the listen queue. The
//!   default is a share of the process's open-file limit, which the namer raises to its hard
//!   limit at start, so that connections alone can never exhaust the file descriptors the
//!   store and the namers need;
//! - **accepting** survives running out of file descriptors (`EMFILE`): it is counted, and
//!   accepting pauses for 100 ms instead of spinning.
//!
//! TLS handshakes happen in the connection's own task, under the same header-read timeout,
//! so a client that never completes one holds neither the accept loop nor a slot for long.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::metrics::ServerMetrics;

/// File descriptors kept out of every connection budget: the store, the namers' files and
/// watches, DNS, logs.
const RESERVED_FDS: u64 = 256;

/// The default connection limit of the admin port: enough for probes, scrapers and people.
const DEFAULT_ADMIN_CONNECTIONS: usize = 64;

/// The largest default connection limit of one API server.
const MAX_DEFAULT_CONNECTIONS: usize = 20_000;

/// The smallest default connection limit of one API server, whatever the file limit says.
const MIN_DEFAULT_CONNECTIONS: usize = 16;

/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection told to close (idle, or the server stopping) may take to do so.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The connection limits of one server, as configured.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// The most connections held at once; further ones wait in the listen queue. Default: a
    /// share of the process's open-file limit (64 for the admin port).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// How long a request's headers may take to arrive once it has begun (or once the
    /// connection opened). Default 10,000.
    #[serde(default)]
    pub header_read_timeout_ms: Option<u64>,
    /// How long a connection may stay open with no request in progress, and a request body
    /// may stall. Default 60,000.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// The HTTP/2 ping and TCP keep-alive period: a peer that does not answer within it is
    /// disconnected. Default 20,000.
    #[serde(default)]
    pub keep_alive_timeout_ms: Option<u64>,
}

/// Limits in force for one server, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
}

/// Which HTTP versions a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS).
    Both,
    /// HTTP/2 only (gRPC).
    Http2,
}

/// An accepted connection, plain or TLS, possibly adapted.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Adapts a connection before HTTP is served on it (the gRPC API's Linkerd compatibility).
pub(crate) type Adapt = fn(Box<dyn Io>) -> Box<dyn Io>;

/// One server: a bound listener, how to speak on it, and its limits.
pub(crate) struct Server {
    /// The metric label: `http`, `grpc` or `admin`.
    pub(crate) name: &'static str,
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) protocols: Protocols,
    pub(crate) adapt: Option<Adapt>,
    pub(crate) limits: Limits,
    pub(crate) metrics: ServerMetrics,
}

/// What one connection is doing, for its watchdog.
#[derive(Debug)]
struct Activity {
    /// Requests whose response has not finished.
    in_flight: usize,
    /// When the connection last had no request in progress (or opened).
    idle_since: Instant,
    /// When the first byte arrived since then: a request (or a TLS handshake, or an HTTP/2
    /// preface) is on its way. A new connection counts from when it opened.
    reading_since: Option<Instant>,
    /// Any byte arrived on the connection.
    spoke: bool,
    /// The client speaks HTTP/2: once it has spoken, its connection frames (settings, pings)
    /// are not a request being read.
    http2: bool,
}

type SharedActivity = Arc<Mutex<Activity>>;

/// A connection that tells its [`Activity`] when bytes arrive.
struct Watched<T> {
    inner: T,
    activity: SharedActivity,
    first_read: bool,
}

/// Counts a request in flight until its response body ends or is dropped.
struct InFlight(SharedActivity);

/// A response body carrying its request's [`InFlight`].
pub(crate) struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

/// A request body that fails when no frame arrives within the idle timeout.
pub(crate) struct StallGuardBody {
    inner: Incoming,
    timeout: Duration,
    stall: Pin<Box<Sleep>>,
}

/// The body of a request whose body stalled.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for more than {0:?}")]
pub(crate) struct BodyStalled(Duration);

/// Why a connection is closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    HeaderReadTimeout,
    IdleTimeout,
    /// Room was needed for a new connection, and this one had no request in progress.
    Evicted,
}

/// The open connections of one server, so that the one idle the longest can be closed when
/// the limit is reached.
#[derive(Default)]
struct Live {
    connections: Mutex<HashMap<u64, LiveConnection>>,
    next_id: AtomicU64,
}

struct LiveConnection {
    activity: SharedActivity,
    evict: Arc<Notify>,
}

impl ConnectionLimits {
    /// The limits in force, with `default_max` connections unless configured.
    pub(crate) fn resolve(&self, default_max: usize) -> Limits {
        Limits {
            max_connections: self.max_connections.unwrap_or(default_max),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.unwrap_or(10_000)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.unwrap_or(60_000)),
            keep_alive_timeout: Duration::from_millis(self.keep_alive_timeout_ms.unwrap_or(20_000)),
        }
    }

    /// Every problem with these values; `at` is where they are in the configuration.
    pub(crate) fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.max_connections == Some(0) {
            problems.push((format!("{at}.max_connections"), "must be at least 1".to_string()));
        }
        for (key, value) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("keep_alive_timeout_ms", self.keep_alive_timeout_ms),
        ] {
            if value == Some(0) {
                problems.push((format!("{at}.{key}"), "must be at least 1".to_string()));
            }
        }
        problems
    }
}

/// Raises the process's soft open-file limit to its hard limit, and returns the soft limit
/// then in force (what connection defaults are shared out of).
pub(crate) fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(error) => debug!(%error, soft, hard, "cannot raise the open-file limit"),
        }
    }
    soft
}

/// The default connection limit of each of `api_servers` API servers, given the process's
/// open-file limit: what is left after the reserve and the admin port, shared equally.
pub(crate) fn default_api_connections(open_file_limit: u64, api_servers: usize) -> usize {
    let spare = open_file_limit.saturating_sub(RESERVED_FDS + DEFAULT_ADMIN_CONNECTIONS as u64);
    let share = usize::try_from(spare / api_servers.max(1) as u64).unwrap_or(usize::MAX);
    share.clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS)
}

/// The default connection limit of the admin port.
pub(crate) fn default_admin_connections() -> usize {
    DEFAULT_ADMIN_CONNECTIONS
}

impl Server {
    /// The address the server listens on.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `service` until `shutdown` is cancelled, then closes every connection
    /// gracefully and returns once they are all gone.
    pub(crate) async fn serve<S, B>(self, service: S, shutdown: CancellationToken)
    where
        S: tower::Service<Request<StallGuardBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Server { name, listener, tls, protocols, adapt, limits, metrics } = self;
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let connections = TaskTracker::new();
        let live = Arc::new(Live::default());
        info!(server = name, max_connections = limits.max_connections, "accepting connections");
        loop {
            // At the limit, a connection idle for longest can make room for the next one; when
            // every connection is busy, the next waits in the listen queue for a slot instead.
            let mut slot = slots.clone().try_acquire_owned().ok();
            if slot.is_none() && !live.any_idle() {
                metrics.limit_reached(name);
                warn!(server = name, max_connections = limits.max_connections, "connection limit reached");
                slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => Some(slot),
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                };
            }
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if out_of_resources(&error) => {
                    metrics.accept_error(name, "out_of_file_descriptors");
                    warn!(server = name, %error, "cannot accept: out of file descriptors; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(error) => {
                    metrics.accept_error(name, "other");
                    debug!(server = name, %error, "accepting a connection failed");
                    continue;
                }
            };
            let slot = match slot {
                Some(slot) => slot,
                None => {
                    metrics.limit_reached(name);
                    if live.evict_longest_idle() {
                        metrics.evicted(name);
                        debug!(server = name, "connection limit reached; closed the connection idle the longest");
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            metrics.opened(name);
            let activity: SharedActivity = Arc::new(Mutex::new(Activity {
                in_flight: 0,
                idle_since: Instant::now(),
                reading_since: Some(Instant::now()),
                spoke: false,
                http2: protocols == Protocols::Http2,
            }));
            let (id, evict) = live.add(&activity);
            let (tls, metrics, shutdown, live) = (tls.clone(), metrics.clone(), shutdown.clone(), live.clone());
            let service = service.clone();
            let span = tracing::debug_span!("connection", server = name, %peer);
            let connection =
                Connection { tls, adapt, limits, metrics: metrics.clone(), name, activity, evict, shutdown };
            connections.spawn(
                async move {
                    connection.serve(tcp, service).await;
                    live.remove(id);
                    metrics.closed(name);
                    drop(slot);
                }
                .instrument(span),
            );
        }
        connections.close();
        connections.wait().await;
    }
}

/// True for accept errors that mean the process (or system) is out of descriptors or memory:
/// retrying at once would fail the same way.
fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE
            || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS
            || code == nix::libc::ENOMEM
    )
}

/// One accepted connection and what it is served with.
struct Connection {
    tls: Option<TlsAcceptor>,
    adapt: Option<Adapt>,
    limits: Limits,
    metrics: ServerMetrics,
    name: &'static str,
    activity: SharedActivity,
    evict: Arc<Notify>,
    shutdown: CancellationToken,
}

impl Connection {
    /// Serves the connection until it ends, is closed for a timeout, is evicted to make room,
    /// or the server stops.
    async fn serve<S, B>(self, tcp: TcpStream, service: S)
    where
        S: tower::Service<Request<StallGuardBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Connection { tls, adapt, limits, metrics, name, activity, evict, shutdown } = self;
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(limits.keep_alive_timeout)
            .with_interval((limits.keep_alive_timeout / 3).max(Duration::from_secs(1)))
            .with_retries(3);
        if let Err(error) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            debug!(%error, "cannot set TCP keep-alive");
        }
        let http2_only = lock(&activity).http2;
        let watched = Watched { inner: tcp, activity: activity.clone(), first_read: true };
        let io: Box<dyn Io> = match tls {
            None => Box::new(watched),
            Some(acceptor) => {
                let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(watched));
                let handshake = tokio::select! {
                    handshake = handshake => handshake,
                    () = evict.notified() => return debug!("closed to make room for a new connection"),
                    () = shutdown.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            lock(&activity).http2 = true;
                        }
                        Box::new(tls)
                    }
                    Ok(Err(error)) => return debug!(%error, "TLS handshake failed"),
                    Err(_) => {
                        metrics.timed_out(name, "header_read");
                        return debug!("TLS handshake timed out");
                    }
                }
            }
        };
        let io = match adapt {
            Some(adapt) => adapt(io),
            None => io,
        };

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.keep_alive_timeout)
            .keep_alive_timeout(limits.keep_alive_timeout);
        if http2_only {
            builder = builder.http2_only();
        }
        let hyper_service = TrackedService { inner: service, activity: activity.clone(), stall: limits.idle_timeout };
        let connection = builder.serve_connection(TokioIo::new(io), hyper_service);
        tokio::pin!(connection);

        let check_every = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut watchdog = tokio::time::interval(check_every);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closing = loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        debug!(error = %error, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled() => break None,
                () = evict.notified() => break Some(Close::Evicted),
                _ = watchdog.tick() => {
                    if let Some(close) = overdue(&activity, &limits) {
                        break Some(close);
                    }
                }
            }
        };
        match closing {
            Some(Close::HeaderReadTimeout) => {
                metrics.timed_out(name, "header_read");
                debug!("request headers did not arrive in time; closing");
            }
            Some(Close::Evicted) => debug!("closed to make room for a new connection"),
            Some(Close::IdleTimeout) => {
                metrics.timed_out(name, "idle");
                debug!("idle; closing");
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await;
            }
            None => {
                connection.as_mut().graceful_shutdown();
                // Requests in flight finish; the process's own grace period bounds this.
                let _ = connection.as_mut().await;
            }
        }
    }
}

impl Live {
    fn add(&self, activity: &SharedActivity) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        let connection = LiveConnection { activity: activity.clone(), evict: evict.clone() };
        self.lock().insert(id, connection);
        (id, evict)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Whether some connection has no request in progress.
    fn any_idle(&self) -> bool {
        self.lock().values().any(|c| lock(&c.activity).in_flight == 0)
    }

    /// Tells the connection idle the longest to close; false when every one is busy.
    fn evict_longest_idle(&self) -> bool {
        let mut connections = self.lock();
        let longest = connections
            .iter()
            .filter_map(|(id, c)| {
                let activity = lock(&c.activity);
                (activity.in_flight == 0).then_some((*id, activity.idle_since))
            })
            .min_by_key(|(_, since)| *since)
            .map(|(id, _)| id);
        match longest.and_then(|id| connections.remove(&id)) {
            Some(connection) => {
                connection.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConnection>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether the watchdog must close the connection now, and why.
fn overdue(activity: &SharedActivity, limits: &Limits) -> Option<Close> {
    let activity = lock(activity);
    if activity.in_flight > 0 {
        return None;
    }
    let now = Instant::now();
    if let Some(since) = activity.reading_since
        && !(activity.http2 && activity.spoke)
        && now.duration_since(since) >= limits.header_read_timeout
    {
        return Some(Close::HeaderReadTimeout);
    }
    (now.duration_since(activity.idle_since) >= limits.idle_timeout).then_some(Close::IdleTimeout)
}

fn lock(activity: &SharedActivity) -> std::sync::MutexGuard<'_, Activity> {
    activity.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The service each connection runs: counts requests in flight for the watchdog, and guards
/// request bodies against stalling.
#[derive(Clone)]
struct TrackedService<S> {
    inner: S,
    activity: SharedActivity,
    stall: Duration,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for TrackedService<S>
where
    S: tower::Service<Request<StallGuardBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        let request = request.map(|body| StallGuardBody::new(body, self.stall));
        let inner = self.inner.clone();
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(inner, request).await?;
            Ok(response.map(|inner| TrackedBody { inner, _in_flight: in_flight }))
        })
    }
}

impl InFlight {
    fn start(activity: &SharedActivity) -> Self {
        let mut state = lock(activity);
        state.in_flight += 1;
        state.reading_since = None;
        drop(state);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.reading_since = None;
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl StallGuardBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        StallGuardBody { inner, timeout, stall: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl Body for StallGuardBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.timeout;
                this.stall.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            let first = std::mem::take(&mut self.first_read);
            let mut state = lock(&self.activity);
            state.spoke = true;
            if first && read.starts_with(b"PRI * HTTP/2") {
                state.http2 = true;
            }
            if state.in_flight == 0 && state.reading_since.is_none() {
                state.reading_since = Some(Instant::now());
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_servers_share_what_the_file_limit_leaves() {
        assert_eq!(default_api_connections(1024, 2), (1024 - 256 - 64) / 2);
        assert_eq!(default_api_connections(1_048_576, 2), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(default_api_connections(100, 2), MIN_DEFAULT_CONNECTIONS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_closes_half_sent_requests_and_idle_connections_but_not_busy_ones() {
        let limits = ConnectionLimits::default().resolve(10);
        let activity: SharedActivity = Arc::new(Mutex::new(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
            reading_since: Some(Instant::now()),
            spoke: false,
            http2: false,
        }));
        assert_eq!(overdue(&activity, &limits), None);
        tokio::time::advance(limits.header_read_timeout).await;
        assert_eq!(overdue(&activity, &limits), Some(Close::HeaderReadTimeout));

        // A request in progress is never the watchdog's business.
        let request = InFlight::start(&activity);
        tokio::time::advance(limits.idle_timeout * 2).await;
        assert_eq!(overdue(&activity, &limits), None);
        drop(request);
        assert_eq!(overdue(&activity, &limits), None);
        tokio::time::advance(limits.idle_timeout).await;
        assert_eq!(overdue(&activity, &limits), Some(Close::IdleTimeout));

        // An HTTP/2 client that has not even sent its preface is a half-sent request...
        lock(&activity).http2 = true;
        lock(&activity).idle_since = Instant::now();
        lock(&activity).reading_since = Some(Instant::now());
        tokio::time::advance(limits.header_read_timeout).await;
        assert_eq!(overdue(&activity, &limits), Some(Close::HeaderReadTimeout));
        // ...but once it has spoken, its connection frames are not a request being read.
        lock(&activity).spoke = true;
        assert_eq!(overdue(&activity, &limits), None);
    }
}
