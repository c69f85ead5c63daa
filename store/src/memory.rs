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
use crate::store::{
    ChangeMeta, DtabStore, HistoryEntry, HistoryPage, HistorySlice, StoreHealth, Version, VersionedDtab, cut_page,
};

/// How many history entries a namespace keeps unless configured otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// How many deleted namespaces keep their history in a memory store; past it, the history of
/// the one deleted longest ago is forgotten, so that creating and deleting ever new names
/// cannot grow the store without bound.
pub const MAX_DELETED_HISTORIES: usize = 1_000;

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
    /// History is kept as canonical text, parsed only when read: a parsed dtab takes about
    /// ten times the memory of its text.
    history: HashMap<Namespace, VecDeque<StoredEntry>>,
    /// Deleted namespaces that still have a history, deleted longest ago first.
    deleted: VecDeque<Namespace>,
    /// The last version handed out, by any namespace.
    last_version: u64,
}

/// A history entry as the memory store keeps it.
#[derive(Debug, Clone)]
struct StoredEntry {
    version: Version,
    text: Option<Arc<str>>,
    at: SystemTime,
    author: Option<String>,
    message: Option<String>,
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
        let canonical = dtab.map(canonical_text).transpose()?;
        let text: Option<Arc<str>> = canonical.as_ref().map(|(text, _)| Arc::from(text.as_str()));
        let dtab = canonical.as_ref().map(|(_, dtab)| dtab);
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
        history.push_front(StoredEntry {
            version: version.clone(),
            text,
            at: SystemTime::now(),
            author: meta.author.clone(),
            message: meta.message.clone(),
        });
        history.truncate(self.history_limit);
        state.deleted.retain(|deleted| deleted != ns);
        if value.is_none() {
            state.deleted.push_back(ns.clone());
            if state.deleted.len() > MAX_DELETED_HISTORIES
                && let Some(forgotten) = state.deleted.pop_front()
            {
                state.history.remove(&forgotten);
            }
        }
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
        let page = HistoryPage { offset: 0, limit: usize::MAX, max_bytes: usize::MAX };
        Ok(self.history_page(ns, &page).await?.entries)
    }

    async fn history_page(&self, ns: &Namespace, page: &HistoryPage) -> Result<HistorySlice, StoreError> {
        // Copied out under the lock (the texts are shared, not copied), parsed after it.
        let entries: Vec<StoredEntry> = match self.state().history.get(ns) {
            Some(entries) if !entries.is_empty() => entries.iter().skip(page.offset).cloned().collect(),
            _ => return Err(StoreError::NotFound(ns.clone())),
        };
        let size = |e: &StoredEntry| e.text.as_ref().map_or(0, |t| t.len());
        Ok(cut_page(entries.into_iter(), page, size, |e| {
            let dtab = e.text.as_deref().map(str::parse::<Dtab>).transpose().ok()?;
            Some(HistoryEntry { version: e.version, dtab, at: e.at, author: e.author, message: e.message })
        }))
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
