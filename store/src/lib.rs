//! Dtab stores: where the namer keeps the dtab of each namespace.
//!
//! One trait, [`DtabStore`], with one meaning whatever the backend: every write is checked
//! (`create` only creates, `update` is compare-and-swap on an opaque [`Version`], `put` is the
//! one unconditional write), every change by any writer reaches [`DtabStore::watch`] as a
//! `tokio::sync::watch` value, and every namespace keeps a history that can be rolled back.
//! Dtabs are stored as their canonical text, so people and other tools can read and edit the
//! backing data; text that does not parse is reported and never replaces a good dtab in
//! service.
//!
//! Backends, chosen by [`StoreConfig`]:
//!
//! - [`MemoryStore`]: the reference implementation, in this process only.
//! - [`FileStore`]: a directory with one `<namespace>.dtab` file per namespace, safe to share
//!   between processes and to edit by hand.
//! - [`EtcdStore`]: etcd v3, for a fleet of namers; versions are `mod_revision`s and history is
//!   written in the same transaction as the change.
//!
//! [`InstrumentedStore`] wraps any of them with Prometheus metrics.
//!
//! # What counts as invalid
//!
//! Names are checked when a [`Namespace`] is made, so no store ever sees a bad one. Writes
//! take an already parsed [`waymark_dtab::Dtab`] and store its canonical text, so a write is
//! [`StoreError::Invalid`] only when that text is longer than [`MAX_DTAB_BYTES`] or does not
//! parse (possible only for a dtab built in code with no text form). The canonical text prints
//! weights with two decimals, as namerd does (except that a weight above zero never prints as
//! `0.00`), and what every store keeps and serves is the dtab
//! that text stands for (`0.333` is kept as `0.33`). Backing data changed outside the store is
//! the other source: a file or etcd value that does not parse makes `get` return
//! [`StoreError::Invalid`] with the parse error, while watches keep the last good dtab and the
//! failure is logged and counted.
//!
//! # A Kubernetes backend
//!
//! The trait is shaped so that a store over namerd's `DTab` custom resources (group `l5d.io`)
//! fits without change. Its [`Version`] is the object's `resourceVersion` text; `update` is a
//! replace carrying that `resourceVersion` (a 409 becomes [`StoreError::Conflict`]); `create`
//! is a POST (409 becomes [`StoreError::Exists`]). Its watch is a reflector: when the API
//! server answers `410 Gone` to a resumed watch, it lists everything again and publishes the
//! complete state at once, as the etcd store does after a compaction. Kubernetes keeps no
//! history and has no multi-object transactions, so history would live in a companion
//! object per namespace (a `DTabHistory` resource or a ConfigMap named after it) holding the
//! last N records, appended after each successful write with its own `resourceVersion`
//! compare-and-swap and retries. A crash between the two writes loses that record only; the
//! reflector, like the file store, would then record the change it sees without an author.
//!
//! ```
//! use waymark_store::{ChangeMeta, DtabStore, MemoryStore, Namespace};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let ns: Namespace = "default".parse()?;
//! let mut watch = store.watch(&ns);
//! let v1 = store.create(&ns, &"/svc => /#/io.l5d.fs".parse()?, &ChangeMeta::by("alice")).await?;
//! store.update(&ns, &"/svc => /#/io.l5d.k8s/prod/http".parse()?, &v1, &ChangeMeta::default()).await?;
//! watch.changed().await?;
//! assert_eq!(watch.borrow().as_ref().unwrap().dtab.to_string(), "/svc=>/#/io.l5d.k8s/prod/http");
//! assert_eq!(store.history(&ns).await?.len(), 2);
//! # Ok(())
//! # }
//! ```

mod canonical;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod etcd;
pub mod file;
mod hub;
pub mod kit;
pub mod limits;
mod memory;
mod metrics;
mod namespace;
mod store;

pub use canonical::MAX_DTAB_BYTES;
pub use config::{ConfigErrors, ConfigProblem, StoreConfig};
pub use error::StoreError;
pub use etcd::{EtcdStore, EtcdStoreOptions, EtcdTls};
pub use file::{FileStore, FileStoreOptions};
pub use limits::{DEFAULT_MAX_NAMESPACES, DEFAULT_MAX_STORED_BYTES, LimitedStore, StoreLimits};
pub use memory::{DEFAULT_HISTORY_LIMIT, MAX_DELETED_HISTORIES, MemoryStore};
pub use metrics::{InstrumentedStore, ParseFailureMetrics, StoreMetrics};
pub use namespace::{InvalidNamespace, MAX_NAMESPACE_LEN, Namespace};
pub use store::{ChangeMeta, DtabStore, HistoryEntry, HistoryPage, HistorySlice, StoreHealth, Version, VersionedDtab};
