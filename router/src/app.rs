//! The router as an application: built from configuration, run until a shutdown signal, then
//! drained.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use waymark_dtab::Dtab;

use crate::admin::{self, Admin, LogControl};
use crate::client::ClientSettings;
use crate::config::{ConfigError, RouterConfig};
use crate::conn::Connections;
use crate::mesh::MeshClient;
use crate::metrics::{DtabLabels, Metrics};
use crate::naming::{InterpreterConfig, Naming};
use crate::proxy::{ListenerProxy, Proxy};
use crate::routes::Routes;
use crate::server::{self, Incoming};
use tokio_rustls::TlsAcceptor;
use waymark_tls::{TlsError, TlsIncoming};

/// A router, built and bound, ready to run.
pub struct App {
    listeners: Vec<Listener>,
    listener_addrs: Vec<SocketAddr>,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    admin: Arc<Admin>,
    admin_connections: Arc<Connections>,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    naming: Naming,
    drain_timeout: Duration,
}

/// A bound listener, ready to serve.
struct Listener {
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<ListenerProxy>,
    connections: Arc<Connections>,
    original_dst: bool,
}

/// The router could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The binding source could not be set up.
    #[error("could not set up naming: {0}")]
    Naming(String),
    /// A standalone router's namers could not start.
    #[error("could not start the namers")]
    Namers(#[from] waymark_interpreter::FromConfigError),
    /// A listener's TLS could not be set up.
    #[error("listener {listener}: {source}")]
    Tls {
        /// The listener's name.
        listener: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// TLS to endpoints could not be set up.
    #[error("client.tls: {0}")]
    ClientTls(#[source] TlsError),
    /// A listener could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("listeners", &self.listener_addrs)
            .field("admin", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })
}

impl App {
    /// Builds a router from `config`, binding its listeners. Must run inside a tokio runtime.
    pub async fn build(config: RouterConfig) -> Result<App, AppError> {
        config.validate()?;
        let metrics = Metrics::new();
        let naming = match &config.interpreter {
            InterpreterConfig::Standalone { dtab, namers } => {
                let dtab: Dtab = dtab.parse().map_err(|e| AppError::Naming(format!("dtab: {e}")))?;
                Naming::standalone(dtab, namers).await?
            }
            InterpreterConfig::Mesh { dst, namespace, retry_base_ms, retry_max_ms, tls } => MeshClient::new(
                dst,
                namespace,
                Duration::from_millis(*retry_base_ms),
                Duration::from_millis(*retry_max_ms),
                tls.as_ref(),
                metrics.clone(),
            )
            .map_err(AppError::Naming)?
            .naming(),
        };
        App::assemble(config, naming, metrics).await
    }

    /// Builds a router that binds through `naming` instead of its configured interpreter.
    pub async fn with_naming(config: RouterConfig, naming: Naming) -> Result<App, AppError> {
        App::assemble(config, naming, Metrics::new()).await
    }

    async fn assemble(config: RouterConfig, naming: Naming, metrics: Arc<Metrics>) -> Result<App, AppError> {
        config.validate()?;
        let client = Arc::new(ClientSettings::new(&config.client).map_err(AppError::ClientTls)?);
        let proxy = Proxy::new(&config, naming.clone(), client, metrics.clone());
        let routes = proxy.routes.clone();

        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut listener_addrs = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let tls = match &listener.tls {
                Some(tls) => Some(
                    tls.acceptor(&[b"h2", b"http/1.1"])
                        .map_err(|source| AppError::Tls { listener: listener.name.clone(), source })?,
                ),
                None => None,
            };
            let socket = bind(listener.addr()).await?;
            let bound = socket.local_addr().map_err(|source| AppError::Bind { addr: listener.addr(), source })?;
            listener_addrs.push(bound);
            let prefix = config.prefix(listener);
            let connections = Connections::new(&listener.name, listener.limits(), &metrics.connections);
            let identifiers = listener.identifier.as_ref().unwrap_or(&config.identifier);
            let view = Arc::new(ListenerProxy::new(proxy.clone(), listener, identifiers, &prefix, bound));
            listeners.push(Listener { socket, tls, proxy: view, connections, original_dst: listener.original_dst });
        }
        let admin_listener = bind(config.admin.addr()).await?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| AppError::Bind { addr: config.admin.addr(), source })?;
        let admin =
            Arc::new(Admin { metrics: metrics.clone(), naming: naming.clone(), routes: routes.clone(), log: None });
        let admin_connections = Connections::new("admin", config.admin.limits(), &metrics.connections);
        Ok(App {
            listeners,
            admin_connections,
            listener_addrs,
            admin_listener,
            admin_addr,
            admin,
            routes,
            metrics,
            naming,
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        })
    }

    /// Lets the admin port read and change the log filter.
    pub fn with_log_control(mut self, log: Arc<dyn LogControl>) -> App {
        if let Some(admin) = Arc::get_mut(&mut self.admin) {
            admin.log = Some(log);
        }
        self
    }

    /// The bound address of each listener, in configuration order.
    pub fn listener_addrs(&self) -> &[SocketAddr] {
        &self.listener_addrs
    }

    /// The bound address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets requests in flight finish
    /// for up to the drain timeout, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (drained_tx, mut drained) = mpsc::channel::<()>(1);
        let mut accept_loops: Vec<JoinHandle<()>> = Vec::new();
        for (listener, addr) in self.listeners.into_iter().zip(&self.listener_addrs) {
            let Listener { socket, tls, proxy, connections, original_dst } = listener;
            tracing::info!(%addr, trusted = proxy.trusted, tls = tls.is_some(), "listening");
            let incoming = match tls {
                None => Incoming::Plain(socket),
                Some(acceptor) => Incoming::Tls(
                    TlsIncoming::new(socket, acceptor).map_err(|source| AppError::Bind { addr: *addr, source })?,
                ),
            };
            let serve = server::serve(incoming, proxy, connections, drained_tx.clone(), stop_rx.clone(), original_dst);
            accept_loops.push(tokio::spawn(serve.instrument(tracing::info_span!("listener", %addr))));
        }
        tracing::info!(addr = %self.admin_addr, "admin listening");
        let admin_task =
            tokio::spawn(admin::serve(self.admin_listener, self.admin, self.admin_connections, stop_rx.clone()));
        let evictor = self.routes.spawn_evictor();
        let status_task = tokio::spawn(report_status(self.naming.clone(), self.metrics.clone()));

        shutdown.await;
        tracing::info!(drain_ms = self.drain_timeout.as_millis() as u64, "shutting down: draining");
        let _ = stop_tx.send(true);
        for task in accept_loops {
            let _ = task.await;
        }
        drop(drained_tx);
        // Every connection holds a sender; recv ends when the last one is gone.
        if tokio::time::timeout(self.drain_timeout, drained.recv()).await.is_err() {
            tracing::warn!("drain timeout passed with requests still in flight");
        }
        let _ = admin_task.await;
        evictor.abort();
        status_task.abort();
        Ok(())
    }
}

/// Keeps the namer metrics in step with the naming status.
async fn report_status(naming: Naming, metrics: Arc<Metrics>) {
    let mut status = naming.status.clone();
    let mut shown: Option<DtabLabels> = None;
    loop {
        let current = status.borrow_and_update().clone();
        metrics.namer_connected.set(i64::from(current.reachable));
        let labels = current.version.map(|version| DtabLabels { namespace: naming.namespace.clone(), version });
        if labels != shown {
            if let Some(old) = shown.take() {
                metrics.dtab_version.remove(&old);
            }
            if let Some(new) = &labels {
                metrics.dtab_version.get_or_create(new).set(1);
            }
            shown = labels;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
