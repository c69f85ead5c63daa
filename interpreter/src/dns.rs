//! Host name resolution for `/$/inet` ids and for host names in namer files.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use tracing::warn;

/// A shared DNS resolver. It reads the system configuration (`/etc/resolv.conf`, and the
/// hosts file); when that cannot be read it falls back to the operating system's resolver.
#[derive(Clone)]
pub struct Dns {
    resolver: Option<Arc<TokioResolver>>,
}

/// Why a host name has no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    /// The name does not exist (NXDOMAIN or no address records).
    #[error("no such host: {0}")]
    NoSuchHost(String),
    /// The lookup failed (timeout, unreachable server, ...).
    #[error("resolving {host}: {cause}")]
    Failed {
        /// The host name.
        host: String,
        /// What went wrong.
        cause: String,
    },
}

impl Dns {
    /// A resolver from the system configuration.
    pub fn from_system() -> Self {
        let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(Arc::new(r)),
            Err(error) => {
                warn!(%error, "cannot read the system DNS configuration; using the OS resolver");
                None
            }
        };
        Dns { resolver }
    }

    /// The addresses of `host`: an IP literal as it is, otherwise through DNS. The result is
    /// sorted, so that unchanged answers compare equal.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        if let Some(ip) = waymark_dtab::global::parse_ip_literal(host) {
            return Ok(vec![ip]);
        }
        let mut ips = match &self.resolver {
            Some(resolver) => match resolver.lookup_ip(host).await {
                Ok(lookup) => lookup.iter().collect::<Vec<_>>(),
                Err(NetError::Dns(DnsError::NoRecordsFound(_))) => {
                    return Err(DnsFailure::NoSuchHost(host.to_string()));
                }
                Err(e) => return Err(DnsFailure::Failed { host: host.to_string(), cause: e.to_string() }),
            },
            None => match tokio::net::lookup_host((host, 0)).await {
                Ok(addrs) => addrs.map(|sa| sa.ip()).collect(),
                Err(e) => return Err(DnsFailure::Failed { host: host.to_string(), cause: e.to_string() }),
            },
        };
        if ips.is_empty() {
            return Err(DnsFailure::NoSuchHost(host.to_string()));
        }
        ips.sort();
        ips.dedup();
        Ok(ips)
    }
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.resolver.is_some() { "Dns(system config)" } else { "Dns(os resolver)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_the_hosts_file_resolve() {
        let dns = Dns::from_system();
        assert_eq!(dns.resolve("127.1").await.unwrap(), vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let localhost = dns.resolve("localhost").await.unwrap();
        assert!(localhost.iter().all(|ip| ip.is_loopback()), "{localhost:?}");
        assert!(!localhost.is_empty());
    }
}
