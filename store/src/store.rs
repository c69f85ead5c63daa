//! The store trait and the values it trades in.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::watch;
use waymark_dtab::Dtab;

use crate::error::StoreError;
use crate::namespace::Namespace;

/// An opaque version of a namespace's dtab, as its backend defines it. Clients only compare
/// versions for equality and hand them back to [`DtabStore::update`]; the HTTP API sends the
/// bytes base64-encoded as an `ETag`.
///
/// A version is never repeated within a store's life for different content: a client holding
/// a version from before a namespace was deleted and created again cannot overwrite the new
/// dtab with it.
///
/// The memory store uses an 8-byte big-endian counter shared by all its namespaces (1 for the
/// first write, +1 for every write after it, never reset), etcd the decimal text of the key's
/// `mod_revision` (also store-wide), the file store a hex digest of the file's content (equal
/// versions mean byte-identical dtabs), and Kubernetes would use the object's
/// `resourceVersion` text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<[u8]>);

/// A dtab together with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedDtab {
    /// The version to pass to [`DtabStore::update`] to replace this dtab.
    pub version: Version,
    /// The dtab.
    pub dtab: Dtab,
}

/// Who made a change and why, recorded in the namespace's history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeMeta {
    /// Who made the change, for example the authenticated user of the HTTP API.
    pub author: Option<String>,
    /// Why, for example a CLI `--message`.
    pub message: Option<String>,
}

/// One past state of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The version the write produced. For a deletion it identifies the deletion and is never a
    /// valid `expected` version.
    pub version: Version,
    /// The dtab written, or `None` when the namespace was deleted.
    pub dtab: Option<Dtab>,
    /// When the store recorded the change.
    pub at: SystemTime,
    /// Who made the change, when known.
    pub author: Option<String>,
    /// Why, when given.
    pub message: Option<String>,
}

/// Which part of a namespace's history to read: newest first, skipping `offset` entries,
/// then at most `limit` entries and (after the first) at most `max_bytes` of dtab text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPage {
    /// Entries to skip, newest first.
    pub offset: usize,
    /// The most entries to return.
    pub limit: usize,
    /// The most canonical dtab text to return in all; the first entry is returned whatever
    /// its size, so that every entry can be read.
    pub max_bytes: usize,
}

/// A page of history, and whether older entries follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySlice {
    /// The entries, newest first.
    pub entries: Vec<HistoryEntry>,
    /// More entries follow, from `offset + entries.len()`.
    pub more: bool,
}

/// Whether a store can currently serve, for readiness checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreHealth {
    /// The backing store answered the last time it was asked.
    pub available: bool,
    /// The first full read of the backing store has completed, so watches hold real values.
    pub synced: bool,
    /// Why the store is unavailable or not yet synced; `None` when healthy.
    pub last_error: Option<String>,
}

/// A versioned, watchable home for the dtabs of many namespaces.
///
/// Every write is checked: `create` only creates, `update` is compare-and-swap on a
/// [`Version`], and `put` is the one unconditional write. Every change, made through this
/// process or any other, reaches [`DtabStore::watch`]. Every write leaves a
/// [`HistoryEntry`], and rolling back is an `update` to an old dtab.
///
/// The trait is object-safe: services hold an `Arc<dyn DtabStore>`.
#[async_trait]
pub trait DtabStore: Send + Sync + 'static {
    /// Every namespace that exists, sorted.
    async fn list(&self) -> Result<Vec<Namespace>, StoreError>;

    /// The namespace's dtab and version. [`StoreError::NotFound`] when it does not exist, and
    /// [`StoreError::Invalid`] when its backing data was edited into something that does not
    /// parse (watches keep serving the last good dtab meanwhile).
    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError>;

    /// Creates the namespace. [`StoreError::Exists`] when it already exists.
    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError>;

    /// Writes the namespace whatever its state: creates it, or replaces its dtab.
    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError>;

    /// Replaces the dtab only if the namespace is still at `expected`.
    /// [`StoreError::Conflict`] when it has moved on, [`StoreError::NotFound`] when it does
    /// not exist.
    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError>;

    /// Deletes the namespace. Its history stays, with a deletion entry on top.
    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError>;

    /// Deletes the namespace only if it is still at `expected`, as [`DtabStore::update`]
    /// replaces it: [`StoreError::Conflict`] when it has moved on, [`StoreError::NotFound`]
    /// when it does not exist. The check and the deletion are one atomic step.
    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError>;

    /// Past states of the namespace, newest first, at most the configured limit.
    /// [`StoreError::NotFound`] when the namespace has neither a dtab nor any history.
    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError>;

    /// A page of [`DtabStore::history`], so that reading a long history of large dtabs costs
    /// one page at a time. [`StoreError::NotFound`] as for `history`.
    ///
    /// The default reads the whole history and cuts the page out of it; backends override it
    /// to read (and parse) only the page.
    async fn history_page(&self, ns: &Namespace, page: &HistoryPage) -> Result<HistorySlice, StoreError> {
        let entries = self.history(ns).await?;
        let size = |e: &HistoryEntry| e.dtab.as_ref().map_or(0, |d| d.to_string().len());
        Ok(cut_page(entries.into_iter().skip(page.offset), page, size, Some))
    }

    /// The namespace's current value, updated on every change by any writer; `None` while it
    /// does not exist. A dtab whose backing data stops parsing keeps its last good value.
    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>>;

    /// The sorted set of namespaces that have a dtab in service, updated on every change.
    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>>;

    /// Whether the store can serve; see [`StoreHealth`].
    fn health(&self) -> watch::Receiver<StoreHealth>;

    /// Rolls the namespace back to the dtab it had at `to`, a version from
    /// [`DtabStore::history`]. This is an `update` against the current version, so it leaves a
    /// history entry of its own and fails with [`StoreError::Conflict`] if another write lands
    /// in between. [`StoreError::Invalid`] when no history entry with a dtab has that version.
    async fn rollback(&self, ns: &Namespace, to: &Version, meta: &ChangeMeta) -> Result<Version, StoreError> {
        let current = self.get(ns).await?;
        let history = self.history(ns).await?;
        let target = history
            .iter()
            .find_map(|entry| (entry.version == *to).then_some(entry.dtab.as_ref()).flatten())
            .ok_or_else(|| {
            StoreError::Invalid(format!("namespace {ns} has no dtab at version {to:?} in its history"))
        })?;
        self.update(ns, target, &current.version, meta).await
    }
}

/// The entries of `page` from `entries` (already past the offset), measuring each with
/// `size` and turning only the ones taken into entries with `entry`; `more` when any is left.
pub fn cut_page<T>(
    entries: impl Iterator<Item = T>,
    page: &HistoryPage,
    size: impl Fn(&T) -> usize,
    entry: impl Fn(T) -> Option<HistoryEntry>,
) -> HistorySlice {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    for item in entries {
        let item_bytes = size(&item);
        if taken.len() >= page.limit || (!taken.is_empty() && bytes + item_bytes > page.max_bytes) {
            return HistorySlice { entries: taken, more: true };
        }
        bytes += item_bytes;
        taken.extend(entry(item));
    }
    HistorySlice { entries: taken, more: false }
}

impl Version {
    /// A version made of these bytes.
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Self {
        Version(bytes.as_ref().into())
    }

    /// The version's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The memory store's form: an 8-byte big-endian counter.
    pub(crate) fn from_counter(n: u64) -> Self {
        Version::from_bytes(n.to_be_bytes())
    }

    /// The version as text, when it is UTF-8 (etcd, file and Kubernetes versions are).
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Version {
    /// Printable versions show as text, others as hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) if text.chars().all(|c| c.is_ascii_graphic()) => write!(f, "Version({text})"),
            _ => {
                f.write_str("Version(0x")?;
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl ChangeMeta {
    /// Metadata naming an author.
    pub fn by(author: impl Into<String>) -> Self {
        ChangeMeta { author: Some(author.into()), message: None }
    }

    /// This metadata with a message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

impl StoreHealth {
    /// Reachable and fully read.
    pub fn healthy() -> Self {
        StoreHealth { available: true, synced: true, last_error: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_bytes_and_debug_readably() {
        assert_eq!(Version::from_counter(1), Version::from_bytes([0, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(format!("{:?}", Version::from_bytes("42")), "Version(42)");
        assert_eq!(format!("{:?}", Version::from_counter(1)), "Version(0x0000000000000001)");
    }
}
