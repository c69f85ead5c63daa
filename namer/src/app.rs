//! The namer process: build everything from the configuration, then serve until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use waymark_admin::{Admin, LogControl, ReadinessCheck};
use waymark_interpreter::{FromConfigError, Interpreter};
use waymark_store::{DtabStore, StoreMetrics};

use crate::config::{InterfaceConfig, NamerConfig};
use crate::grpc::{LinkerdCompat, Mesh};
use crate::http::HttpApi;
use crate::metrics::{ApiMetrics, ServerMetrics};
use crate::serve::{self, Io, Protocols, Server};
use crate::source::StoreDtabs;

/// A built namer: the store is open, the namers are running and every port is bound.
pub struct NamerApp {
    http: Vec<Server>,
    mesh: Vec<Server>,
    admin: Server,
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
    #[error("opening the {kind} store")]
    Store {
        /// The store's kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: waymark_store::StoreError,
    },
    /// A namer could not be started.
    #[error("starting the namers")]
    Namers(#[source] FromConfigError),
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

/// The gRPC API's connections pass through [`LinkerdCompat`] (inside TLS, as it reads
/// HTTP/2 frames).
fn linkerd_compat(io: Box<dyn Io>) -> Box<dyn Io> {
    Box::new(LinkerdCompat::new(io))
}

impl NamerApp {
    /// Opens the store, starts the namers and binds every port. `log` controls the process's
    /// log filter from the admin port, when the process owns its logger.
    ///
    /// Raises the process's open-file limit to its hard limit: connection limits that are not
    /// configured are shares of it.
    pub async fn build(config: NamerConfig, log: Option<LogControl>) -> Result<Self, StartError> {
        let mut registry = Registry::with_prefix("waymark_namer");
        let store_metrics = StoreMetrics::new();
        store_metrics.register(&mut registry);
        let store = config
            .storage
            .build_instrumented(&store_metrics)
            .await
            .map_err(|source| StartError::Store { kind: config.storage.kind(), source })?;
        let dtabs = Arc::new(StoreDtabs::new(store.clone()));
        let interpreter = Interpreter::from_config(dtabs, &config.namers, config.interpreter.options())
            .await
            .map_err(StartError::Namers)?;
        interpreter.metrics().register(registry.sub_registry_with_prefix("interpreter"));
        let metrics = ApiMetrics::default();
        metrics.register(&mut registry);
        let server_metrics = ServerMetrics::default();
        server_metrics.register(&mut registry);

        let open_files = serve::raise_open_file_limit();
        let api_connections = serve::default_api_connections(open_files, config.interfaces.len());
        let mut http = Vec::new();
        let mut mesh = Vec::new();
        for (index, interface) in config.interfaces.iter().enumerate() {
            let (name, alpn, protocols, adapt): (_, &[&[u8]], _, Option<serve::Adapt>) = match interface {
                InterfaceConfig::Http { .. } => ("http", &[b"h2", b"http/1.1"], Protocols::Both, None),
                InterfaceConfig::Mesh { .. } => ("grpc", &[b"h2"], Protocols::Http2, Some(linkerd_compat)),
            };
            let tls = interface
                .tls()
                .map(|tls| tls.acceptor(alpn))
                .transpose()
                .map_err(|cause| StartError::Tls { index, cause })?;
            let server = Server {
                name,
                listener: listen(interface.addr()).await?,
                tls,
                protocols,
                adapt,
                limits: interface.limits().resolve(api_connections),
                metrics: server_metrics.clone(),
            };
            match interface {
                InterfaceConfig::Http { .. } => http.push(server),
                InterfaceConfig::Mesh { .. } => mesh.push(server),
            }
        }
        let admin = Server {
            name: "admin",
            listener: listen(config.admin.addr()).await?,
            tls: None,
            protocols: Protocols::Both,
            adapt: None,
            limits: config.admin.limits.resolve(serve::default_admin_connections()),
            metrics: server_metrics,
        };
        Ok(NamerApp { http, mesh, admin, store, interpreter, metrics, registry, log, config })
    }

    /// The addresses the HTTP API listens on.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http.iter().filter_map(Server::local_addr).collect()
    }

    /// The addresses the gRPC API listens on.
    pub fn mesh_addrs(&self) -> Vec<SocketAddr> {
        self.mesh.iter().filter_map(Server::local_addr).collect()
    }

    /// The admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr()
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
            history_slots: Arc::new(tokio::sync::Semaphore::new(crate::http::HISTORY_PAGES_AT_ONCE)),
        };
        for server in http {
            info!(addr = ?server.local_addr(), tls = server.tls.is_some(), "namerd HTTP API listening");
            servers.spawn(server.serve(api.clone().router(), stop.clone()));
        }
        for server in mesh {
            info!(addr = ?server.local_addr(), tls = server.tls.is_some(), "io.l5d.mesh gRPC API listening");
            let routes = Mesh::new(interpreter.clone(), store.clone(), stop.clone(), metrics.clone(), timeout).routes();
            servers.spawn(server.serve(routes.prepare(), stop.clone()));
        }
        // Not ready while the store or a namer cannot be read: both keep serving their last
        // good state, and say why here (and in metrics) rather than publish it as routing.
        let health = store.health();
        let naming = interpreter.clone();
        let ready: ReadinessCheck = Arc::new(move || {
            let mut problems = Vec::new();
            {
                let health = health.borrow();
                match (health.available, health.synced) {
                    (true, true) => {}
                    (false, _) => problems
                        .push(format!("store unavailable: {}", health.last_error.as_deref().unwrap_or("unknown"))),
                    (true, false) => problems.push("store not synced yet".to_string()),
                }
            }
            problems.extend(naming.namer_problems());
            if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
        });
        info!(addr = ?admin.local_addr(), "admin listening");
        let admin_router = Admin::new(registry, ready, log).router().merge(api.admin_routes());
        servers.spawn(admin.serve(admin_router, stop.clone()));

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

impl std::fmt::Debug for NamerApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamerApp")
            .field("http", &self.http_addrs())
            .field("mesh", &self.mesh_addrs())
            .field("admin", &self.admin_addr())
            .finish_non_exhaustive()
    }
}
