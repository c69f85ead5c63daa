//! Linkerd 1's Kubernetes namers, on EndpointSlices.
//!
//! - `io.l5d.k8s`: `/#/io.l5d.k8s/<namespace>/<port>/<service>[/<label value>]` binds when the
//!   Service exists (carrying that value of the configured label) and has the TCP port, named
//!   or by number; the rest of the path is the residual. Its addresses are the ready
//!   endpoints of the service's `discovery.k8s.io/v1` EndpointSlices, merged, IPv4 and IPv6,
//!   at the port's target on each pod; when none is ready, the terminating ones that still
//!   serve. Each address carries `nodeName`, `zone`, `pod`, the port's `appProtocol`, the
//!   pod's `serviceAccount` and, for a meshed pod, its mesh `identity`.
//! - `io.l5d.k8s.ns`: the same in the pod's own namespace, from an environment variable.
//! - `io.l5d.k8s.external`: the same paths, bound to the Service's load-balancer addresses.
//!
//! Watches are shared by every binding and address set of a service and dropped when idle; a
//! missing service is negative and binds as soon as it appears; an API server that cannot be
//! reached leaves the last good state in service and shows in the namer's health. This crate
//! plugs into the namer service only: routers never link it.

mod cluster;
pub mod config;
mod model;
mod namer;
mod names;

pub use config::{ApiServer, ClientError, K8sConfig, K8sExternalConfig, K8sNsConfig};
pub use namer::{KubernetesNamer, NoNamespace};

/// Metadata key: the endpoint's node.
pub const NODE_NAME_KEY: &str = "nodeName";
/// Metadata key: the endpoint's zone.
pub const ZONE_KEY: &str = "zone";
/// Metadata key: the endpoint's pod.
pub const POD_KEY: &str = "pod";
/// Metadata key: the port's application protocol (such as `http`, `kubernetes.io/h2c`), from
/// which a router chooses HTTP/1.1 or HTTP/2 towards the endpoint.
pub use waymark_dtab::APP_PROTOCOL_KEY;
/// Metadata key: the pod's service account.
pub const SERVICE_ACCOUNT_KEY: &str = "serviceAccount";
/// Metadata key: a meshed pod's identity,
/// `<service account>.<namespace>.serviceaccount.identity.<control namespace>.<trust domain>`.
pub const IDENTITY_KEY: &str = "identity";
/// The pod label that marks a meshed pod; its value is the control plane's namespace.
pub const CONTROL_PLANE_NS_LABEL: &str = "waymark.io/control-plane-ns";
