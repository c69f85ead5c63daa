//! What every Kubernetes part of Waymark shares: a `kube` client configured as `kubectl` users
//! expect ([`client`]: in-cluster service account, else `$KUBECONFIG`, else `~/.kube/config`),
//! namerd's `DTab` resource and its CRD ([`dtab`]), and watched sets of objects that survive
//! dropped connections, compaction and an unreachable API server ([`watch`]).
//!
//! kube runs on rustls with the ring provider, as the rest of the workspace. The router never
//! depends on this crate: Kubernetes reaches the data plane only through the namer's APIs.

pub mod client;
pub mod dtab;
pub mod watch;

pub use client::{ClientError, ClientOptions, ConfigSource, KubeEnv};
pub use dtab::{DTab, DTabDentry};
pub use watch::{ObjectKey, ObjectSet, WatchError, wait_ready, watch_mapped, watch_objects};
