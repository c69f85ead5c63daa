//! The namer process: build everything from the configuration, then serve until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use waymark_admin::{Admin, LogControl, ReadinessCheck};
use waymark_interpreter::Interpreter;
use waymark_store::{DtabStore, StoreMetrics};
use waymark_tls::TlsIncoming;

use crate::config::{InterfaceConfig, NamerConfig};
use crate::grpc::{LinkerdCompat, Mesh};
use crate::http::HttpApi;
use crate::metrics::ApiMetrics;
use crate::source::StoreDtabs;

/// How often the gRPC server pings an idle client, so that connections that died without a
/// goodbye (or were cut by a load balancer) are noticed.
const GRPC_KEEPALIVE: Duration = Duration::from_secs(30);

/// A bound port: plain, or accepting TLS connections.
enum Bound {
    Plain(TcpListener),
    Tls(TlsIncoming),
}

impl Bound {
    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Plain(listener) => listener.local_addr().ok(),
            Bound::Tls(incoming) => Some(incoming.local_addr()),
        }
    }
}

/// A built namer: the store is open, the namers are running and every port is bound.
pub struct NamerApp {
    http: Vec<Bound>,
    mesh: Vec<Bound>,
    admin: TcpListener,
    store: Arc<dyn DtabStore>,
    interpreter: Interpreter,
    metrics: ApiMetrics,
    registry: Registry,
    log: Option<LogControl>,
    config: NamerConfig,
}

/// Why the namer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening the {kind} store: {cause}")]
    Store {
        /// The store's kind.
        kind: &'static str,
        /// Why.
        cause: String,
    },
    /// A namer could not be started.
    #[error("starting the namers: {0}")]
    Namers(String),
    /// An interface's TLS could not be set up.
    #[error("interfaces[{index}].tls: {cause}")]
    Tls {
        /// The interface's position in the configuration.
        index: usize,
        /// Why.
        cause: waymark_tls::TlsError,
    },
    /// A port could not be bound.
    #[error("listening on {addr}: {cause}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|cause| StartError::Listen { addr, cause })
}

impl NamerApp {
    /// Opens the store, starts the namers and binds every port. `log` controls the process's
    /// log filter from the admin port, when the process owns its logger.
    pub async fn build(config: NamerConfig, log: Option<LogControl>) -> Result<Self, StartError> {
        let mut registry = Registry::with_prefix("waymark_namer");
        let store_metrics = StoreMetrics::new();
        store_metrics.register(&mut registry);
        let store = config
            .storage
            .build_instrumented(&store_metrics)
            .await
            .map_err(|e| StartError::Store { kind: config.storage.kind(), cause: e.to_string() })?;
        let dtabs = Arc::new(StoreDtabs::new(store.clone()));
        let interpreter = Interpreter::from_config(dtabs, &config.namers, config.interpreter.options())
            .await
            .map_err(StartError::Namers)?;
        interpreter.metrics().register(registry.sub_registry_with_prefix("interpreter"));
        let metrics = ApiMetrics::default();
        metrics.register(&mut registry);

        let mut http = Vec::new();
        let mut mesh = Vec::new();
        for (index, interface) in config.interfaces.iter().enumerate() {
            let alpn: &[&[u8]] = match interface {
                InterfaceConfig::Http { .. } => &[b"h2", b"http/1.1"],
                InterfaceConfig::Mesh { .. } => &[b"h2"],
            };
            let tls = interface
                .tls()
                .map(|tls| tls.acceptor(alpn))
                .transpose()
                .map_err(|cause| StartError::Tls { index, cause })?;
            let listener = listen(interface.addr()).await?;
            let bound = match tls {
                None => Bound::Plain(listener),
                Some(tls) => Bound::Tls(
                    TlsIncoming::new(listener, tls)
                        .map_err(|cause| StartError::Listen { addr: interface.addr(), cause })?,
                ),
            };
            match interface {
                InterfaceConfig::Http { .. } => http.push(bound),
                InterfaceConfig::Mesh { .. } => mesh.push(bound),
            }
        }
        let admin = listen(config.admin.addr()).await?;
        Ok(NamerApp { http, mesh, admin, store, interpreter, metrics, registry, log, config })
    }

    /// The addresses the HTTP API listens on.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http.iter().filter_map(Bound::local_addr).collect()
    }

    /// The addresses the gRPC API listens on.
    pub fn mesh_addrs(&self) -> Vec<SocketAddr> {
        self.mesh.iter().filter_map(Bound::local_addr).collect()
    }

    /// The admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The store, for tests and embedding.
    pub fn store(&self) -> Arc<dyn DtabStore> {
        self.store.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, ends watch streams and lets
    /// requests in flight finish within the configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let NamerApp { http, mesh, admin, store, interpreter, metrics, registry, log, config } = self;
        let stop = CancellationToken::new();
        let timeout = config.interpreter.request_timeout();
        let mut servers = tokio::task::JoinSet::new();

        let api = HttpApi {
            interpreter: interpreter.clone(),
            store: store.clone(),
            shutdown: stop.clone(),
            metrics: metrics.clone(),
            request_timeout: timeout,
            max_delegation_bytes: config.interpreter.max_delegation_bytes,
        };
        for bound in http {
            info!(addr = ?bound.local_addr(), tls = matches!(bound, Bound::Tls(_)), "namerd HTTP API listening");
            let (router, stop) = (api.clone().router(), stop.clone().cancelled_owned());
            servers.spawn(async move {
                let served = match bound {
                    Bound::Plain(listener) => axum::serve(listener, router).with_graceful_shutdown(stop).await,
                    Bound::Tls(incoming) => {
                        axum::serve(HttpsListener(incoming), router).with_graceful_shutdown(stop).await
                    }
                };
                if let Err(error) = served {
                    warn!(%error, "HTTP API server failed");
                }
            });
        }
        for bound in mesh {
            info!(addr = ?bound.local_addr(), tls = matches!(bound, Bound::Tls(_)), "io.l5d.mesh gRPC API listening");
            let routes = Mesh::new(interpreter.clone(), store.clone(), stop.clone(), metrics.clone(), timeout).routes();
            let stop = stop.clone().cancelled_owned();
            let server =
                tonic::transport::Server::builder().http2_keepalive_interval(Some(GRPC_KEEPALIVE)).add_routes(routes);
            servers.spawn(async move {
                // LinkerdCompat reads HTTP/2 frames, so it goes inside TLS.
                let served = match bound {
                    Bound::Plain(listener) => {
                        let incoming = TcpListenerStream::new(listener).map_ok(LinkerdCompat::new);
                        server.serve_with_incoming_shutdown(incoming, stop).await
                    }
                    Bound::Tls(incoming) => {
                        let incoming = futures::stream::unfold(incoming, |mut incoming| async move {
                            let (stream, _) = incoming.accept().await?;
                            Some((Ok::<_, std::io::Error>(LinkerdCompat::new(stream)), incoming))
                        });
                        server.serve_with_incoming_shutdown(incoming, stop).await
                    }
                };
                if let Err(error) = served {
                    warn!(%error, "gRPC API server failed");
                }
            });
        }
        let health = store.health();
        let ready: ReadinessCheck = Arc::new(move || {
            let health = health.borrow();
            match (health.available, health.synced) {
                (true, true) => Ok(()),
                (false, _) => Err(format!("store unavailable: {}", health.last_error.as_deref().unwrap_or("unknown"))),
                (true, false) => Err("store not synced yet".to_string()),
            }
        });
        info!(addr = ?admin.local_addr().ok(), "admin listening");
        let admin_router = Admin::new(registry, ready, log).router().merge(api.admin_routes());
        let admin_stop = stop.clone();
        servers.spawn(async move {
            let served = axum::serve(admin, admin_router).with_graceful_shutdown(admin_stop.cancelled_owned()).await;
            if let Err(error) = served {
                warn!(%error, "admin server failed");
            }
        });

        shutdown.await;
        info!("shutting down");
        stop.cancel();
        let grace = Duration::from_millis(config.admin.shutdown_grace_ms);
        let drained = tokio::time::timeout(grace, async { while servers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(grace_ms = config.admin.shutdown_grace_ms, "requests still in flight at the end of the grace period");
            servers.abort_all();
        }
    }
}

/// The HTTP API's TLS connections, for axum.
struct HttpsListener(TlsIncoming);

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept().await {
            Some(accepted) => accepted,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.0.local_addr())
    }
}

impl std::fmt::Debug for NamerApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamerApp")
            .field("http", &self.http_addrs())
            .field("mesh", &self.mesh_addrs())
            .field("admin", &self.admin_addr())
            .finish_non_exhaustive()
    }
}
