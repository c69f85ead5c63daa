//! A TCP proxy on loopback whose connections a test can cut, to simulate a network partition
//! between a client and a server that keeps running.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Forwards every connection on its own loopback port to a target address, until
/// [`TcpProxy::block`] cuts them. Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    /// Bumped to close every open connection.
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0);
        let accept = tokio::spawn(
            accept_loop(listener, target, Arc::clone(&blocked), cuts.clone())
                .instrument(tracing::debug_span!("tcp_proxy", %addr, %target)),
        );
        Ok(TcpProxy { addr, blocked, cuts, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection and closes new ones as soon as they are accepted.
    pub fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn unblock(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, blocked: Arc<AtomicBool>, cuts: watch::Sender<u64>) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        if blocked.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut cut = cuts.subscribe();
        tokio::spawn(
            async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.changed() => {}
                }
            }
            .in_current_span(),
        );
    }
}
