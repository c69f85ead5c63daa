//! Test helpers shared by the workspace's test suites: a real etcd server on loopback, a fake
//! Kubernetes API server, a TCP proxy that can cut connections on demand, throwaway
//! certificates, free loopback ports and test logging.
//!
//! Only leaf crates are dependencies, so any crate can use this one in `[dev-dependencies]`.

mod etcd;
pub mod kube;
mod pki;
mod proxy;

pub use etcd::{ETCD_BINARY_ENV, EtcdServer, EtcdServerTls};
pub use pki::{TestCa, TestCert};
pub use proxy::TcpProxy;

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before
/// the caller binds it, so callers that spawn servers retry with a new port on failure.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Sends `tracing` output to the test harness's captured output, filtered by `RUST_LOG`
/// (default `info`). Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
