//! The listening half: an HTTP/1.1 and HTTP/2 server (plain or TLS) on a loopback port that can
//! be stopped, closing every connection, and started again on the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{Shared, handler};
use crate::TestCert;

/// A running listener: cancelling it closes the listener and every connection.
#[derive(Debug)]
pub(crate) struct Listening {
    cancel: CancellationToken,
    connections: Arc<AtomicUsize>,
    closed: std::sync::mpsc::Receiver<()>,
}

/// How long `stop` waits for connections to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A rustls server configuration (ring) for a test certificate, offering h2 and HTTP/1.1.
pub(crate) fn tls_config(cert: &TestCert) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("parsing the certificate")?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).context("parsing the key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds `addr` (port 0 picks one) and serves on `runtime`.
pub(crate) fn listen(
    runtime: &Handle,
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(Listening, SocketAddr)> {
    // The old listener of a restart may take a moment to close; retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    };
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let connections = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = std::sync::mpsc::channel();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    {
        let cancel = cancel.clone();
        let connections = connections.clone();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "fake API server listener");
                    return;
                }
            };
            loop {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(error = %e, "fake API server accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let cancel = cancel.clone();
                let acceptor = acceptor.clone();
                let guard = ConnectionGuard::new(connections.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handler::handle(shared, request).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            tokio::select! {
                                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                                _ = cancel.cancelled() => {}
                            }
                        }
                        Some(acceptor) => {
                            let tls = tokio::select! {
                                tls = acceptor.accept(stream) => tls,
                                _ = cancel.cancelled() => return,
                            };
                            let Ok(tls) = tls else { return };
                            tokio::select! {
                                _ = builder.serve_connection(TokioIo::new(tls), service) => {}
                                _ = cancel.cancelled() => {}
                            }
                        }
                    }
                });
            }
            drop(listener);
            let _ = closed_tx.send(());
        });
    }
    Ok((Listening { cancel, connections, closed }, local))
}

impl Listening {
    /// Closes the listener and every connection, and waits until they are closed.
    pub(crate) fn stop(self) {
        self.cancel.cancel();
        let _ = self.closed.recv_timeout(STOP_TIMEOUT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Counts a connection while it is open.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(count: Arc<AtomicUsize>) -> ConnectionGuard {
        count.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(count)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
