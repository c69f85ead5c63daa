//! Address sets: what a bound name currently resolves to.
//!
//! The serde form is namerd's JSON (`{"type":"bound","addrs":[...],"meta":{}}`, `neg`,
//! `pending`, `failed`), which the HTTP API and delegation trees use.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The current state of a bound name's replica set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Addr {
    /// The replicas are known (possibly none).
    Bound {
        /// The replicas, in a stable order.
        addrs: Vec<Address>,
        /// Metadata about the whole set.
        #[serde(default)]
        meta: Map<String, Value>,
    },
    /// The name does not exist (for example, an unknown host or service).
    Neg,
    /// Not known yet.
    Pending,
    /// Resolution failed.
    Failed {
        /// Why.
        cause: String,
    },
}

/// One replica: an IP socket address and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    /// The replica's IP address.
    pub ip: IpAddr,
    /// The replica's port.
    pub port: u16,
    /// Per-address metadata, such as `nodeName` or `endpoint_addr_weight`.
    #[serde(default)]
    pub meta: Map<String, Value>,
}

/// The metadata key carrying a per-address load-balancing weight (Linkerd 1's name).
pub const ADDR_WEIGHT_KEY: &str = "endpoint_addr_weight";

/// The metadata key carrying the protocol an address speaks, as Kubernetes names it in a
/// port's `appProtocol` (such as `kubernetes.io/h2c`): what a router speaks to it.
pub const APP_PROTOCOL_KEY: &str = "appProtocol";

impl Addr {
    /// A bound set of plain socket addresses without metadata.
    pub fn bound(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Addr::Bound { addrs: addrs.into_iter().map(Address::from).collect(), meta: Map::new() }
    }

    /// True while the address is not known yet.
    pub fn is_pending(&self) -> bool {
        matches!(self, Addr::Pending)
    }
}

impl Address {
    /// The socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The load-balancing weight of this address (1.0 unless its metadata says otherwise).
    pub fn weight(&self) -> f64 {
        self.meta.get(ADDR_WEIGHT_KEY).and_then(Value::as_f64).filter(|w| w.is_finite() && *w >= 0.0).unwrap_or(1.0)
    }
}

impl From<SocketAddr> for Address {
    fn from(sa: SocketAddr) -> Self {
        Address { ip: sa.ip(), port: sa.port(), meta: Map::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_namerd() {
        let addr = Addr::bound(["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            serde_json::to_string(&addr).unwrap(),
            r#"{"type":"bound","addrs":[{"ip":"127.0.0.1","port":8080,"meta":{}}],"meta":{}}"#
        );
        assert_eq!(serde_json::to_string(&Addr::Neg).unwrap(), r#"{"type":"neg"}"#);
        let failed = Addr::Failed { cause: "boom".into() };
        assert_eq!(serde_json::to_string(&failed).unwrap(), r#"{"type":"failed","cause":"boom"}"#);
        let back: Addr = serde_json::from_str(r#"{"type":"bound","addrs":[{"ip":"::1","port":1}]}"#).unwrap();
        assert_eq!(back, Addr::bound(["[::1]:1".parse().unwrap()]));
    }
}
