//! Limits on what a store holds: how many namespaces, and how many bytes of dtabs in service.
//!
//! Every namer replica keeps every namespace's dtab in memory, parsed (about ten times its
//! text), and a client with write access could otherwise create namespaces or grow dtabs
//! until the namer runs out of memory. [`LimitedStore`] wraps any store and refuses a write
//! that would pass either limit with [`StoreError::LimitReached`], saying which and where it
//! is set. It counts what the store publishes (its watches), so it sees writes made through
//! other replicas and by hand too; two replicas creating namespaces at the same moment may
//! pass the namespace limit by one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::watch;
use waymark_dtab::Dtab;

use crate::error::StoreError;
use crate::namespace::Namespace;
use crate::store::{
    ChangeMeta, DtabStore, HistoryEntry, HistoryPage, HistorySlice, StoreHealth, Version, VersionedDtab,
};

/// The default limit on namespaces.
pub const DEFAULT_MAX_NAMESPACES: usize = 10_000;

/// The default limit on the canonical text of every dtab in service, in bytes.
pub const DEFAULT_MAX_STORED_BYTES: usize = 32 * 1024 * 1024;

/// What a store may hold; part of every store's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreLimits {
    /// The most namespaces; creating one more is refused.
    #[serde(default = "default_max_namespaces")]
    pub max_namespaces: usize,
    /// The most bytes of canonical dtab text in service, summed over namespaces; a write that
    /// would pass it is refused.
    #[serde(default = "default_max_stored_bytes")]
    pub max_stored_bytes: usize,
}

/// A store that refuses writes past its [`StoreLimits`].
pub struct LimitedStore {
    inner: Arc<dyn DtabStore>,
    limits: StoreLimits,
    /// The text length of each namespace's dtab, by the version it was measured at.
    sizes: Mutex<HashMap<Namespace, (Version, usize)>>,
    /// Writes are checked one at a time, so that two cannot both take the last room.
    writing: tokio::sync::Mutex<()>,
}

fn default_max_namespaces() -> usize {
    DEFAULT_MAX_NAMESPACES
}

fn default_max_stored_bytes() -> usize {
    DEFAULT_MAX_STORED_BYTES
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits { max_namespaces: DEFAULT_MAX_NAMESPACES, max_stored_bytes: DEFAULT_MAX_STORED_BYTES }
    }
}

impl StoreLimits {
    /// Problems with these values, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.max_namespaces == 0 {
            problems.push(("limits.max_namespaces", "must be at least 1"));
        }
        if self.max_stored_bytes == 0 {
            problems.push(("limits.max_stored_bytes", "must be at least 1"));
        }
        problems
    }
}

impl LimitedStore {
    /// `inner`, refusing writes past `limits`.
    pub fn new(inner: Arc<dyn DtabStore>, limits: StoreLimits) -> Self {
        LimitedStore { inner, limits, sizes: Mutex::new(HashMap::new()), writing: tokio::sync::Mutex::new(()) }
    }

    /// Whether writing `dtab` to `ns` stays within the limits.
    fn check(&self, ns: &Namespace, dtab: &Dtab) -> Result<(), StoreError> {
        let names = self.inner.watch_list().borrow().clone();
        let exists = names.binary_search(ns).is_ok();
        if !exists && names.len() >= self.limits.max_namespaces {
            return Err(StoreError::LimitReached(format!(
                "the store holds {} namespaces, its limit (max_namespaces in the store's limits)",
                names.len()
            )));
        }
        let mut sizes = self.sizes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sizes.retain(|name, _| names.binary_search(name).is_ok());
        let mut total = 0usize;
        for name in names.iter().filter(|name| *name != ns) {
            let Some(current) = self.inner.watch(name).borrow().clone() else { continue };
            let size = match sizes.get(name) {
                Some((version, size)) if *version == current.version => *size,
                _ => {
                    let size = current.dtab.to_string().len();
                    sizes.insert(name.clone(), (current.version, size));
                    size
                }
            };
            total += size;
        }
        let new = dtab.to_string().len();
        if total + new > self.limits.max_stored_bytes {
            return Err(StoreError::LimitReached(format!(
                "the dtabs in service would take {} bytes, more than the store's limit of {} \
                 (max_stored_bytes in the store's limits)",
                total + new,
                self.limits.max_stored_bytes
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for LimitedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedStore").field("limits", &self.limits).finish_non_exhaustive()
    }
}

#[async_trait]
impl DtabStore for LimitedStore {
    async fn list(&self) -> Result<Vec<Namespace>, StoreError> {
        self.inner.list().await
    }

    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError> {
        self.inner.get(ns).await
    }

    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<crate::Version, StoreError> {
        let _writing = self.writing.lock().await;
        self.check(ns, dtab)?;
        self.inner.create(ns, dtab, meta).await
    }

    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<crate::Version, StoreError> {
        let _writing = self.writing.lock().await;
        self.check(ns, dtab)?;
        self.inner.put(ns, dtab, meta).await
    }

    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<crate::Version, StoreError> {
        let _writing = self.writing.lock().await;
        self.check(ns, dtab)?;
        self.inner.update(ns, dtab, expected, meta).await
    }

    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.inner.delete(ns, meta).await
    }

    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.inner.delete_at(ns, expected, meta).await
    }

    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError> {
        self.inner.history(ns).await
    }

    async fn history_page(&self, ns: &Namespace, page: &HistoryPage) -> Result<HistorySlice, StoreError> {
        self.inner.history_page(ns, page).await
    }

    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        self.inner.watch(ns)
    }

    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.inner.watch_list()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.inner.health()
    }
}
