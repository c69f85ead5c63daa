//! The memory store: the reference implementation of [`DtabStore`], for tests and demos.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::watch;
use waymark_dtab::Dtab;

use crate::canonical::canonical_text;
use crate::error::StoreError;
use crate::hub::WatchHub;
use crate::namespace::Namespace;
use crate::store::{ChangeMeta, DtabStore, HistoryEntry, StoreHealth, Version, VersionedDtab};

/// How many history entries a namespace keeps unless configured otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Dtabs held in this process only, lost when it exits. Versions count writes: the first
/// write to the store is version 1 and every later write, to any namespace, takes the next
/// number. namerd's `io.l5d.inMemory` store counted per namespace and started again at 1
/// after a delete, so a client holding a version from before a delete and re-create could
/// overwrite the new dtab; a store-wide counter never hands out a version twice.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
    hub: WatchHub,
    health: watch::Sender<StoreHealth>,
    history_limit: usize,
}

#[derive(Debug, Default)]
struct MemoryState {
    dtabs: BTreeMap<Namespace, VersionedDtab>,
    history: HashMap<Namespace, VecDeque<HistoryEntry>>,
    /// The last version handed out, by any namespace.
    last_version: u64,
}

/// What a write requires of the namespace's current state.
enum Precondition<'a> {
    Absent,
    Any,
    At(&'a Version),
}

impl MemoryStore {
    /// An empty store keeping [`DEFAULT_HISTORY_LIMIT`] history entries per namespace.
    pub fn new() -> Self {
        MemoryStore::with_history_limit(DEFAULT_HISTORY_LIMIT)
    }

    /// An empty store keeping `limit` history entries per namespace (at least one).
    pub fn with_history_limit(limit: usize) -> Self {
        MemoryStore {
            state: Mutex::new(MemoryState::default()),
            hub: WatchHub::new(),
            health: watch::channel(StoreHealth::healthy()).0,
            history_limit: limit.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        // Every mutation below completes before it can panic, so a poisoned lock holds a
        // consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(
        &self,
        ns: &Namespace,
        dtab: Option<&Dtab>,
        precondition: Precondition<'_>,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        // Keep the dtab the canonical text stands for, as the other stores do.
        let dtab = dtab.map(canonical_text).transpose()?.map(|(_, dtab)| dtab);
        let dtab = dtab.as_ref();
        let mut state = self.state();
        let current = state.dtabs.get(ns);
        match (&precondition, current) {
            (Precondition::Absent, Some(_)) => return Err(StoreError::Exists),
            (Precondition::At(_), None) => return Err(StoreError::NotFound(ns.clone())),
            (Precondition::At(expected), Some(current)) if current.version != **expected => {
                return Err(StoreError::Conflict);
            }
            _ => {}
        }
        if dtab.is_none() && current.is_none() {
            return Err(StoreError::NotFound(ns.clone()));
        }
        state.last_version += 1;
        let version = Version::from_counter(state.last_version);
        let value = dtab.map(|dtab| VersionedDtab { version: version.clone(), dtab: dtab.clone() });
        match &value {
            Some(value) => state.dtabs.insert(ns.clone(), value.clone()),
            None => state.dtabs.remove(ns),
        };
        let history = state.history.entry(ns.clone()).or_default();
        history.push_front(HistoryEntry {
            version: version.clone(),
            dtab: dtab.cloned(),
            at: SystemTime::now(),
            author: meta.author.clone(),
            message: meta.message.clone(),
        });
        history.truncate(self.history_limit);
        // Publishing under the state lock keeps watchers in write order.
        self.hub.lock().set(ns, value);
        Ok(version)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

#[async_trait]
impl DtabStore for MemoryStore {
    async fn list(&self) -> Result<Vec<Namespace>, StoreError> {
        Ok(self.state().dtabs.keys().cloned().collect())
    }

    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError> {
        self.state().dtabs.get(ns).cloned().ok_or_else(|| StoreError::NotFound(ns.clone()))
    }

    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        self.write(ns, Some(dtab), Precondition::Absent, meta)
    }

    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        self.write(ns, Some(dtab), Precondition::Any, meta)
    }

    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        self.write(ns, Some(dtab), Precondition::At(expected), meta)
    }

    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.write(ns, None, Precondition::Any, meta).map(drop)
    }

    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.write(ns, None, Precondition::At(expected), meta).map(drop)
    }

    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError> {
        match self.state().history.get(ns) {
            Some(entries) if !entries.is_empty() => Ok(entries.iter().cloned().collect()),
            _ => Err(StoreError::NotFound(ns.clone())),
        }
    }

    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        self.hub.subscribe(ns)
    }

    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.hub.subscribe_list()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.subscribe()
    }
}
