//! The Kubernetes dtab store: `storage: {kind: k8s, namespace: NS}`.
//!
//! Dtabs are namerd's `DTab` objects (`l5d.io/v1alpha1`, the dtab namespace as the object's
//! name, the dentries in a top-level `dentries` list), so a namerd user's dtabs carry over
//! and `kubectl apply` of a `DTab` is a change like any other: it reaches every watcher and
//! shows in history. Versions are resourceVersions, compare-and-swap is an update carrying
//! `metadata.resourceVersion`, and reads go to the API server, so they see every write that
//! returned. History is kept in the cluster, bounded. Built from `waymark-store`'s backend
//! kit, it passes the same conformance suite as the memory, file and etcd stores.

mod call;
pub mod config;
pub mod history;
pub mod names;
mod store;

pub use config::{ClientError, K8sStoreConfig};
pub use store::{K8sStore, K8sStoreOptions};
