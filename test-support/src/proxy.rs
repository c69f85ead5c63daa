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
                // A cut wins over traffic that arrives with it.
                tokio::select! {
                    biased;
                    _ = cut.changed() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut reply = [0; 4];
        stream.read_exact(&mut reply).await?;
        Ok(reply.to_vec())
    }

    #[tokio::test]
    async fn forwards_until_blocked_and_again_after() {
        let proxy = TcpProxy::start(echo().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open).await.unwrap(), b"ping");

        proxy.block();
        assert!(round_trip(&mut open).await.is_err(), "an open connection must be cut");
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut refused).await.is_err(), "a new connection must be closed");

        proxy.unblock();
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh).await.unwrap(), b"ping");
    }
}
