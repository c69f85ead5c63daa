//! The file store: a directory with one `<namespace>.dtab` file per namespace.
//!
//! Layout, all inside the configured directory:
//!
//! ```text
//! <namespace>.dtab                    the dtab in canonical text, then a newline
//! .waymark/lock                       flock(2) taken around every write
//! .waymark/history/<namespace>.jsonl  the namespace's history, one JSON record a line, oldest first
//! ```
//!
//! Every write takes the directory lock, checks its precondition against the file on disk,
//! writes a temporary file, fsyncs it, renames it over the old one, fsyncs the directory and
//! appends the history record, all under the lock. So several processes can share the
//! directory, and a crash leaves either the old file or the new one, never a torn one.
//!
//! The version is a digest of the file's bytes. Changes from any writer, including people
//! editing the files, reach watchers through file-system events (inotify) and a periodic
//! re-read of the directory, which also covers file systems without events. A file that does
//! not parse keeps the namespace's last good dtab in service; it is logged once per distinct
//! content and counted in [`ParseFailureMetrics`]. Changes made outside the store get a history
//! record (without author) when a store instance first sees them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, warn};
use waymark_dtab::Dtab;

use crate::canonical::{HistoryRecord, canonical_text, parse_stored};
use crate::error::StoreError;
use crate::hub::{HubGuard, WatchHub};
use crate::memory::DEFAULT_HISTORY_LIMIT;
use crate::metrics::ParseFailureMetrics;
use crate::namespace::Namespace;
use crate::store::{
    ChangeMeta, DtabStore, HistoryEntry, HistoryPage, HistorySlice, StoreHealth, Version, VersionedDtab,
};

/// The extension of namespace files.
const DTAB_EXTENSION: &str = "dtab";
/// The store's own directory inside the dtab directory.
const STATE_DIR: &str = ".waymark";
/// The suffix of temporary files, removed at start-up if a crash left any behind.
const TEMP_SUFFIX: &str = ".waymark-tmp";
/// The history message for changes the store did not make itself.
const OUTSIDE_CHANGE: &str = "changed outside the store";

/// How a [`FileStore`] is set up.
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    /// The directory holding the `<namespace>.dtab` files.
    pub dir: PathBuf,
    /// How many history entries each namespace keeps.
    pub history_limit: usize,
    /// How often the directory is re-read even without file-system events.
    pub poll_interval: Duration,
    /// Whether to listen for file-system events; without them only polling sees changes
    /// made by other processes.
    pub fs_events: bool,
    /// Whether to create the directory when it is missing.
    pub create_dir: bool,
    /// Where to count files that do not parse.
    pub parse_failures: ParseFailureMetrics,
}

/// Dtabs kept as files in a directory; see the [module documentation](self).
#[derive(Debug)]
pub struct FileStore {
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    history_dir: PathBuf,
    lock_path: PathBuf,
    history_limit: usize,
    hub: WatchHub,
    health: watch::Sender<StoreHealth>,
    parse_failures: ParseFailureMetrics,
    /// Namespaces whose file does not parse, with the digest of the bad content, so each bad
    /// content is reported once. Only changed under the hub lock.
    broken: Mutex<HashMap<Namespace, Version>>,
}

/// What a write requires of the namespace's current state.
#[derive(Debug, Clone)]
enum Precondition {
    Absent,
    Any,
    At(Version),
    Present,
}

impl FileStoreOptions {
    /// Defaults for `dir`: 100 history entries, a 2 s poll, file-system events on, and the
    /// directory must exist.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStoreOptions {
            dir: dir.into(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            poll_interval: Duration::from_secs(2),
            fs_events: true,
            create_dir: false,
            parse_failures: ParseFailureMetrics::default(),
        }
    }
}

impl FileStore {
    /// Opens the store: reads the directory once, so watches start with real values, and
    /// starts following changes. Must be called inside a tokio runtime.
    pub async fn open(options: FileStoreOptions) -> Result<FileStore, StoreError> {
        let dir = options.dir.clone();
        let shared = Arc::new(Shared {
            history_dir: dir.join(STATE_DIR).join("history"),
            lock_path: dir.join(STATE_DIR).join("lock"),
            dir,
            history_limit: options.history_limit.max(1),
            hub: WatchHub::new(),
            health: watch::channel(StoreHealth::default()).0,
            parse_failures: options.parse_failures.clone(),
            broken: Mutex::new(HashMap::new()),
        });
        // Events start before the first read, so that nothing written in between is missed;
        // a directory about to be created gets them right after.
        let wake = Arc::new(Notify::new());
        let start_events = || {
            watch_events(&shared.dir, Arc::clone(&wake))
                .inspect_err(|error| {
                    let poll_interval_ms = options.poll_interval.as_millis();
                    warn!(%error, poll_interval_ms, "no file-system events; polling only");
                })
                .ok()
        };
        let early = options.fs_events && shared.dir.is_dir();
        let mut events = if early { start_events() } else { None };
        let create_dir = options.create_dir;
        let opened = Arc::clone(&shared);
        blocking(move || {
            opened.prepare(create_dir)?;
            opened.with_lock(true, || opened.open_scan())?.map_err(|e| opened.io_error("read", &opened.dir, e))
        })
        .await?;
        if options.fs_events && !early {
            events = start_events();
        }
        let span = tracing::info_span!("file_store_watch", dir = %shared.dir.display());
        let watcher =
            tokio::spawn(follow_directory(Arc::clone(&shared), wake, events, options.poll_interval).instrument(span));
        Ok(FileStore { shared, watcher })
    }

    /// The directory holding the dtab files.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The counts of files that did not parse.
    pub fn parse_failures(&self) -> &ParseFailureMetrics {
        &self.shared.parse_failures
    }

    async fn write(
        &self,
        ns: &Namespace,
        dtab: Option<&Dtab>,
        precondition: Precondition,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        let text = dtab.map(canonical_text).transpose()?.map(|(text, _)| text);
        let shared = Arc::clone(&self.shared);
        let (ns, dtab, meta) = (ns.clone(), dtab.cloned(), meta.clone());
        blocking(move || shared.write(&ns, text.zip(dtab), precondition, &meta)).await
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[async_trait]
impl DtabStore for FileStore {
    async fn list(&self) -> Result<Vec<Namespace>, StoreError> {
        let shared = Arc::clone(&self.shared);
        blocking(move || {
            let files = shared.namespace_files().map_err(|e| shared.io_error("read", &shared.dir, e))?;
            Ok(files.into_keys().collect())
        })
        .await
    }

    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError> {
        let shared = Arc::clone(&self.shared);
        let ns = ns.clone();
        blocking(move || {
            let path = shared.dtab_path(&ns);
            let bytes = read_if_exists(&path)
                .map_err(|e| shared.io_error("read", &path, e))?
                .ok_or_else(|| StoreError::NotFound(ns.clone()))?;
            if bytes.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "{} is empty (an empty dtab is stored as a single newline); its last good dtab stays in service",
                    path.display()
                )));
            }
            let dtab = parse_stored(&bytes).map_err(|e| {
                StoreError::Invalid(format!(
                    "{} does not parse: {e}; its last good dtab stays in service",
                    path.display()
                ))
            })?;
            Ok(VersionedDtab { version: digest(&bytes), dtab })
        })
        .await
    }

    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        self.write(ns, Some(dtab), Precondition::Absent, meta).await
    }

    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        self.write(ns, Some(dtab), Precondition::Any, meta).await
    }

    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        self.write(ns, Some(dtab), Precondition::At(expected.clone()), meta).await
    }

    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.write(ns, None, Precondition::Present, meta).await.map(drop)
    }

    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.write(ns, None, Precondition::At(expected.clone()), meta).await.map(drop)
    }

    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let ns = ns.clone();
        blocking(move || {
            let records = shared.with_lock(false, || shared.read_history(&ns))?;
            let path = shared.history_path(&ns);
            let records = records.map_err(|e| shared.io_error("read", &path, e))?;
            let entries: Vec<HistoryEntry> = records
                .into_iter()
                .rev()
                .take(shared.history_limit)
                .filter_map(|record| match record.into_entry(None) {
                    Ok(entry) => Some(entry),
                    Err(error) => {
                        warn!(file = %path.display(), %error, "skipping a history record that does not parse");
                        None
                    }
                })
                .collect();
            if entries.is_empty() && !shared.dtab_path(&ns).exists() {
                return Err(StoreError::NotFound(ns));
            }
            Ok(entries)
        })
        .await
    }

    /// Reads the log from its end, so that a page costs what is on it (and what it skips),
    /// not the whole log; only the page's dtabs are parsed.
    async fn history_page(&self, ns: &Namespace, page: &HistoryPage) -> Result<HistorySlice, StoreError> {
        let shared = Arc::clone(&self.shared);
        let (ns, page) = (ns.clone(), *page);
        blocking(move || {
            let path = shared.history_path(&ns);
            let read = shared.with_lock(false, || shared.read_history_page(&ns, &page))?;
            let (records, more) = read.map_err(|e| shared.io_error("read", &path, e))?;
            let entries: Vec<HistoryEntry> = records
                .into_iter()
                .filter_map(|record| match record.into_entry(None) {
                    Ok(entry) => Some(entry),
                    Err(error) => {
                        warn!(file = %path.display(), %error, "skipping a history record that does not parse");
                        None
                    }
                })
                .collect();
            if entries.is_empty() && page.offset == 0 && !shared.dtab_path(&ns).exists() {
                return Err(StoreError::NotFound(ns));
            }
            Ok(HistorySlice { entries, more })
        })
        .await
    }

    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        self.shared.hub.subscribe(ns)
    }

    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.shared.hub.subscribe_list()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }
}

impl Shared {
    fn dtab_path(&self, ns: &Namespace) -> PathBuf {
        self.dir.join(format!("{ns}.{DTAB_EXTENSION}"))
    }

    fn history_path(&self, ns: &Namespace) -> PathBuf {
        self.history_dir.join(format!("{ns}.jsonl"))
    }

    fn io_error(&self, action: &str, path: &Path, e: io::Error) -> StoreError {
        let cause = format!("cannot {action} {}: {e}", path.display());
        self.set_health(false, Some(cause.clone()));
        StoreError::Unavailable(cause)
    }

    fn set_health(&self, available: bool, last_error: Option<String>) {
        self.health.send_if_modified(|health| {
            let next = StoreHealth { available, synced: health.synced || available, last_error };
            let changed = *health != next;
            *health = next;
            changed
        });
    }

    /// Checks (or creates) the directory, creates the store's own files and removes temporary
    /// files a crash left behind.
    fn prepare(&self, create_dir: bool) -> Result<(), StoreError> {
        match fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(StoreError::Invalid(format!("{} is not a directory", self.dir.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create_dir => {
                return Err(StoreError::Invalid(format!(
                    "the dtab directory {} does not exist (set create_dir to create it)",
                    self.dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error("read", &self.dir, e)),
        }
        fs::create_dir_all(&self.history_dir).map_err(|e| self.io_error("create", &self.history_dir, e))?;
        self.with_lock(true, || -> io::Result<()> {
            for dir in [&self.dir, &self.history_dir] {
                for entry in fs::read_dir(dir)? {
                    let path = entry?.path();
                    if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(TEMP_SUFFIX)) {
                        debug!(file = %path.display(), "removing a temporary file left by an interrupted write");
                        fs::remove_file(&path)?;
                    }
                }
            }
            Ok(())
        })?
        .map_err(|e| self.io_error("clean up", &self.dir, e))
    }

    /// Runs `f` holding the directory lock: exclusive for writers, shared for readers.
    fn with_lock<T>(&self, exclusive: bool, f: impl FnOnce() -> T) -> Result<T, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io_error("open", &self.lock_path, e))?;
        let mut lock = fd_lock::RwLock::new(file);
        if exclusive {
            let _guard = lock.write().map_err(|e| self.io_error("lock", &self.lock_path, e))?;
            Ok(f())
        } else {
            let _guard = lock.read().map_err(|e| self.io_error("lock", &self.lock_path, e))?;
            Ok(f())
        }
    }

    /// The first read of the directory, under its lock: changes made while no store was
    /// running (including deletions) get history records, then everything is published.
    fn open_scan(&self) -> io::Result<()> {
        let scan = self.scan(&self.hub.lock(), &HashMap::new())?;
        let mut candidates: BTreeSet<Namespace> = self.namespaces_with_history()?.into_iter().collect();
        candidates.extend(scan.values.keys().cloned());
        self.record_outside_changes(&candidates, &scan.values)?;
        self.rescan(false);
        Ok(())
    }

    fn write(
        &self,
        ns: &Namespace,
        new: Option<(String, Dtab)>,
        precondition: Precondition,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        self.with_lock(true, || {
            let path = self.dtab_path(ns);
            let before = read_if_exists(&path).map_err(|e| self.io_error("read", &path, e))?;
            let current = before.as_deref().map(digest);
            match (&precondition, &current) {
                (Precondition::Absent, Some(_)) => return Err(StoreError::Exists),
                (Precondition::At(_) | Precondition::Present, None) => return Err(StoreError::NotFound(ns.clone())),
                (Precondition::At(expected), Some(current)) if current != expected => return Err(StoreError::Conflict),
                _ => {}
            }
            // The history log is opened before the dtab changes: a log that cannot be written
            // (a read-only file, a full disk) fails the write instead of losing its record.
            let history_path = self.history_path(ns);
            let mut history = self.open_history(ns).map_err(|e| self.io_error("open", &history_path, e))?;
            let now = SystemTime::now();
            let (version, value, record) = match new {
                Some((text, dtab)) => {
                    let bytes = format!("{text}\n");
                    write_atomically(&path, bytes.as_bytes()).map_err(|e| self.io_error("write", &path, e))?;
                    let version = digest(bytes.as_bytes());
                    let record = HistoryRecord::new(Some(&version), Some(&text), now, meta);
                    (version.clone(), Some(VersionedDtab { version, dtab }), record)
                }
                None => {
                    fs::remove_file(&path).map_err(|e| self.io_error("remove", &path, e))?;
                    sync_dir(&self.dir).map_err(|e| self.io_error("sync", &self.dir, e))?;
                    let version = deletion_version(current.as_ref());
                    let record = HistoryRecord::new(Some(&version), None, now, meta);
                    (version, None, record)
                }
            };
            if let Err(e) = append_record(&mut history, &record) {
                // Put the old file back, so that the caller's failure is the truth.
                let restored = match &before {
                    Some(bytes) => write_atomically(&path, bytes),
                    None => fs::remove_file(&path).and_then(|()| sync_dir(&self.dir)),
                };
                if let Err(error) = restored {
                    error!(namespace = %ns, %error, "cannot undo a write whose history record failed");
                }
                return Err(self.io_error("append to", &history_path, e));
            }
            drop(history);
            if let Err(error) = self.trim_history(ns) {
                warn!(namespace = %ns, %error, "cannot trim the history log; it is trimmed at a later write");
            }
            let mut hub = self.hub.lock();
            self.mark_parsed(&hub, ns);
            hub.set(ns, value);
            Ok(version)
        })?
    }

    /// Opens the namespace's history log for appending, creating it (durably) if need be.
    fn open_history(&self, ns: &Namespace) -> io::Result<File> {
        let path = self.history_path(ns);
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !existed {
            sync_dir(&self.history_dir)?;
        }
        Ok(file)
    }

    fn append_history(&self, ns: &Namespace, record: &HistoryRecord) -> io::Result<()> {
        append_record(&mut self.open_history(ns)?, record)?;
        self.trim_history(ns)
    }

    /// Appending is cheap; the log is cut back to the limit once it holds twice as much.
    fn trim_history(&self, ns: &Namespace) -> io::Result<()> {
        let path = self.history_path(ns);
        let content = fs::read(&path)?;
        let lines = content.iter().filter(|&&b| b == b'\n').count();
        if lines > 2 * self.history_limit {
            let keep: Vec<&[u8]> = content.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
            let keep = &keep[keep.len().saturating_sub(self.history_limit)..];
            let mut trimmed = keep.join(&b'\n');
            trimmed.push(b'\n');
            write_atomically(&path, &trimmed)?;
        }
        Ok(())
    }

    fn read_history(&self, ns: &Namespace) -> io::Result<Vec<HistoryRecord>> {
        let path = self.history_path(ns);
        let Some(content) = read_if_exists(&path)? else {
            return Ok(Vec::new());
        };
        Ok(content
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| match HistoryRecord::from_json(line) {
                Ok(record) => Some(record),
                Err(error) => {
                    warn!(file = %path.display(), %error, "skipping a history line that does not parse");
                    None
                }
            })
            .collect())
    }

    /// The records of one page of the namespace's history, newest first, and whether older
    /// ones follow; read from the end of the log.
    fn read_history_page(&self, ns: &Namespace, page: &HistoryPage) -> io::Result<(Vec<HistoryRecord>, bool)> {
        let path = self.history_path(ns);
        let (mut index, mut bytes, mut more) = (0usize, 0usize, false);
        let mut taken = Vec::new();
        let visit = |line: &[u8]| {
            if index >= self.history_limit {
                return false;
            }
            let record = match HistoryRecord::from_json(line) {
                Ok(record) => record,
                Err(error) => {
                    warn!(file = %path.display(), %error, "skipping a history line that does not parse");
                    return true;
                }
            };
            index += 1;
            if index <= page.offset {
                return true;
            }
            let size = record.dtab.as_ref().map_or(0, String::len);
            if taken.len() >= page.limit || (!taken.is_empty() && bytes + size > page.max_bytes) {
                more = true;
                return false;
            }
            bytes += size;
            taken.push(record);
            true
        };
        match for_each_line_backwards(&path, visit) {
            Ok(()) => Ok((taken, more)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), false)),
            Err(e) => Err(e),
        }
    }

    /// The namespace files in the directory, by namespace.
    fn namespace_files(&self) -> io::Result<BTreeMap<Namespace, PathBuf>> {
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let ns = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".dtab"))
                .and_then(|stem| stem.parse::<Namespace>().ok());
            if let Some(ns) = ns {
                files.insert(ns, path);
            }
        }
        Ok(files)
    }

    fn namespaces_with_history(&self) -> io::Result<Vec<Namespace>> {
        let mut namespaces = Vec::new();
        for entry in fs::read_dir(&self.history_dir)? {
            let path = entry?.path();
            let ns = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".jsonl"))
                .and_then(|stem| stem.parse::<Namespace>().ok());
            namespaces.extend(ns);
        }
        Ok(namespaces)
    }

    /// Brings watchers up to date with the directory. Changes made outside the store get
    /// their history record first, under the directory lock, so that a watcher never sees a
    /// state that history lacks; the lock is only taken when a lock-free look finds news.
    fn sync_directory(&self) {
        let news = {
            let hub = self.hub.lock();
            let broken = self.lock_broken(&hub);
            self.scan(&hub, &broken).map(|scan| scan.is_news())
        };
        match news {
            Ok(false) => {}
            Ok(true) => {
                if let Err(error) = self.with_lock(true, || self.rescan(true)) {
                    warn!(%error, "cannot lock the directory; publishing without recording history");
                    self.rescan(false);
                }
            }
            Err(e) => self.unreadable(&e),
        }
    }

    /// Reads the whole directory and publishes it, recording changes made outside the store
    /// in history first when `record` is set (the caller holds the directory lock).
    ///
    /// Reading and publishing happen under the hub lock, which writes also take after their
    /// rename, so an older read can never be published over a newer write.
    fn rescan(&self, record: bool) {
        let mut hub = self.hub.lock();
        let scan = {
            let broken = self.lock_broken(&hub);
            match self.scan(&hub, &broken) {
                Ok(scan) => scan,
                Err(e) => return self.unreadable(&e),
            }
        };
        if record {
            let candidates: BTreeSet<Namespace> = scan.changed.iter().cloned().collect();
            if let Err(error) = self.record_outside_changes(&candidates, &scan.values) {
                warn!(%error, "cannot record changes made outside the store in history");
            }
        }
        {
            let mut broken = self.lock_broken(&hub);
            let failures = scan.newly_broken.len();
            for (ns, version, error) in scan.newly_broken {
                let file = self.dtab_path(&ns);
                warn!(namespace = %ns, file = %file.display(), %error, "dtab file does not parse; keeping its last good dtab");
                broken.insert(ns, version);
            }
            for ns in &scan.parsed {
                if broken.remove(ns).is_some() {
                    info!(namespace = %ns, "dtab file parses again");
                }
            }
            broken.retain(|ns, _| scan.present.contains(ns));
            // The gauge first, so that whoever sees a failure counted sees it in force.
            self.parse_failures.set_invalid(broken.len());
            for _ in 0..failures {
                self.parse_failures.record_failure();
            }
        }
        hub.replace_all(scan.values);
        self.set_health(true, None);
    }

    /// Reads the directory and works out what [`Shared::rescan`] would publish, without
    /// changing anything.
    fn scan(&self, hub: &HubGuard<'_>, broken: &HashMap<Namespace, Version>) -> io::Result<Scan> {
        let files = self.namespace_files()?;
        let mut scan = Scan::default();
        for (ns, path) in &files {
            scan.present.insert(ns.clone());
            let current = hub.get(ns);
            let keep = |scan: &mut Scan| scan.values.extend(current.clone().map(|c| (ns.clone(), c)));
            let bytes = match fs::read(path) {
                Ok(bytes) => bytes,
                // Deleted since the directory was listed: the next scan sees the deletion.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    keep(&mut scan);
                    continue;
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read a dtab file; keeping its last good dtab");
                    keep(&mut scan);
                    continue;
                }
            };
            let version = digest(&bytes);
            if current.as_ref().is_some_and(|c| c.version == version) {
                // Unchanged, or put back to the last good content after a bad edit.
                if broken.contains_key(ns) {
                    scan.parsed.push(ns.clone());
                }
                keep(&mut scan);
                continue;
            }
            // An empty file is a write in progress (an empty dtab is stored as a newline).
            if bytes.is_empty() {
                keep(&mut scan);
                continue;
            }
            match parse_stored(&bytes) {
                Ok(dtab) => {
                    scan.parsed.push(ns.clone());
                    scan.values.insert(ns.clone(), VersionedDtab { version, dtab });
                    scan.changed.push(ns.clone());
                }
                Err(error) => {
                    if broken.get(ns) != Some(&version) {
                        scan.newly_broken.push((ns.clone(), version, error));
                    }
                    keep(&mut scan);
                }
            }
        }
        scan.changed.extend(hub.namespaces().into_iter().filter(|ns| !files.contains_key(ns)));
        scan.resolved = broken.keys().filter(|ns| !files.contains_key(*ns) || scan.parsed.contains(ns)).count();
        Ok(scan)
    }

    fn unreadable(&self, e: &io::Error) {
        let cause = format!("cannot read {}: {e}", self.dir.display());
        warn!(error = %cause, "keeping the last known dtabs");
        self.set_health(false, Some(cause));
    }

    fn lock_broken<'a>(&'a self, _hub: &HubGuard<'_>) -> MutexGuard<'a, HashMap<Namespace, Version>> {
        self.broken.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark_parsed(&self, hub: &HubGuard<'_>, ns: &Namespace) {
        let mut broken = self.lock_broken(hub);
        if broken.remove(ns).is_some() {
            info!(namespace = %ns, "dtab file parses again");
            self.parse_failures.set_invalid(broken.len());
        }
    }

    /// Gives changes made outside the store a history record, so that history shows every
    /// state a namespace was in: each candidate whose last record differs from `values` (its
    /// state now). The caller holds the directory lock, so several instances seeing the same
    /// change record it once.
    fn record_outside_changes(
        &self,
        candidates: &BTreeSet<Namespace>,
        values: &BTreeMap<Namespace, VersionedDtab>,
    ) -> io::Result<()> {
        for ns in candidates {
            let last = self.read_history(ns)?.pop();
            let record = match values.get(ns) {
                Some(value) => {
                    let recorded =
                        last.is_some_and(|r| r.dtab.is_some() && r.version.as_deref() == value.version.as_text());
                    if recorded {
                        continue;
                    }
                    let text = value.dtab.to_string();
                    HistoryRecord::new(Some(&value.version), Some(&text), SystemTime::now(), &outside_meta())
                }
                // A file that exists but is not in service (it does not parse) is not a deletion.
                None if self.dtab_path(ns).exists() => continue,
                None => match last {
                    Some(last) if last.dtab.is_some() => {
                        let deleted = last.version.as_deref().map(Version::from_bytes);
                        let version = deletion_version(deleted.as_ref());
                        HistoryRecord::new(Some(&version), None, SystemTime::now(), &outside_meta())
                    }
                    _ => continue,
                },
            };
            debug!(namespace = %ns, "recording a change made outside the store");
            self.append_history(ns, &record)?;
        }
        Ok(())
    }
}

/// What a read of the directory found.
#[derive(Debug, Default)]
struct Scan {
    /// The complete state to publish.
    values: BTreeMap<Namespace, VersionedDtab>,
    /// Namespaces whose published value this state changes.
    changed: Vec<Namespace>,
    /// Namespaces whose file parsed.
    parsed: Vec<Namespace>,
    /// Files with bad content not reported before: namespace, digest, parse error.
    newly_broken: Vec<(Namespace, Version, String)>,
    /// Namespaces that have a file.
    present: BTreeSet<Namespace>,
    /// How many namespaces reported as broken parse again or have no file any more.
    resolved: usize,
}

impl Scan {
    /// Whether publishing this would change anything: values, or what is reported broken.
    fn is_news(&self) -> bool {
        !self.changed.is_empty() || !self.newly_broken.is_empty() || self.resolved > 0
    }
}

/// Re-reads the directory when `wake` fires (on file-system events) and on every poll tick,
/// until the store is dropped. Holds the event watcher so that it lives as long.
async fn follow_directory(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    _events: Option<RecommendedWatcher>,
    poll_interval: Duration,
) {
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = poll.tick() => {}
        }
        let scanning = Arc::clone(&shared);
        let span = tracing::Span::current();
        let scanned = tokio::task::spawn_blocking(move || span.in_scope(|| scanning.sync_directory())).await;
        if let Err(error) = scanned {
            error!(%error, "directory scan failed");
        }
    }
}

/// Starts inotify (or the platform's equivalent) on `dir`, waking `wake` on changes that
/// complete a write: renames, removals and closes after writing. Plain data writes are left
/// for the close that follows, so a file being written is not read half-way.
fn watch_events(dir: &Path, wake: Arc<Notify>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) if event.need_rescan() => true,
            Ok(event) => {
                let completes_a_write = match event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) | EventKind::Create(_) => false,
                    EventKind::Modify(notify::event::ModifyKind::Data(_) | notify::event::ModifyKind::Metadata(_)) => {
                        false
                    }
                    _ => true,
                };
                completes_a_write && event.paths.iter().any(|p| p.extension().is_some_and(|ext| ext == DTAB_EXTENSION))
            }
            Err(_) => true,
        };
        if relevant {
            wake.notify_one();
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

fn outside_meta() -> ChangeMeta {
    ChangeMeta { author: None, message: Some(OUTSIDE_CHANGE.to_string()) }
}

/// The file store's version: the first 128 bits of the SHA-256 of the file, in hex.
fn digest(bytes: &[u8]) -> Version {
    let hash = Sha256::digest(bytes);
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    Version::from_bytes(hex)
}

/// Calls `visit` with each non-empty line of `path`, last line first, until it returns false.
/// Reads the file backwards in blocks, so that stopping early reads only the end of it.
fn for_each_line_backwards(path: &Path, mut visit: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let mut end = file.metadata()?.len();
    // The start of a line whose beginning is in a block not read yet.
    let mut partial: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&partial);
        let mut cut = block.len();
        for i in (0..block.len()).rev() {
            if block[i] == b'\n' {
                let line = &block[i + 1..cut];
                if !line.is_empty() && !visit(line) {
                    return Ok(());
                }
                cut = i;
            }
        }
        block.truncate(cut);
        partial = block;
        end = start;
    }
    if !partial.is_empty() {
        visit(&partial);
    }
    Ok(())
}

/// Appends one record to an open history log, durably.
/// A record that cannot be written whole is cut off again, so that it cannot glue itself to
/// the next record.
fn append_record(file: &mut File, record: &HistoryRecord) -> io::Result<()> {
    let length = file.metadata()?.len();
    let appended = file.write_all(format!("{}\n", record.to_json()).as_bytes()).and_then(|()| file.sync_data());
    if appended.is_err() {
        let _ = file.set_len(length);
    }
    appended
}

/// The version a deletion is recorded under: a digest of what was deleted, when and by
/// which process, so that it never repeats a version in history and never matches a file.
fn deletion_version(deleted: Option<&Version>) -> Version {
    static DELETIONS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let n = DELETIONS.fetch_add(1, Ordering::Relaxed);
    let deleted = deleted.map(Version::as_bytes).unwrap_or_default();
    let mut seed = b"deleted\0".to_vec();
    seed.extend_from_slice(deleted);
    seed.extend_from_slice(format!("\0{nanos}\0{}\0{n}", std::process::id()).as_bytes());
    digest(&seed)
}

fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `bytes` so that readers and crashes see the old or the new content,
/// never a mix: temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("dtab");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.{}-{n}{TEMP_SUFFIX}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs blocking file work off the async threads, in the caller's span.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("file store task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_short_hex_of_the_content() {
        let v = digest(b"/a=>/b\n");
        assert_eq!(v.as_text().map(str::len), Some(32));
        assert_ne!(v, digest(b"/a=>/c\n"));
        assert_eq!(v, digest(b"/a=>/b\n"));
    }

    #[test]
    fn lines_are_read_backwards_across_blocks_and_stopped_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let long = "x".repeat(150_000);
        fs::write(&path, format!("one\n{long}\n\nthree\nfour")).unwrap();
        let mut seen = Vec::new();
        for_each_line_backwards(&path, |line| {
            seen.push(String::from_utf8(line.to_vec()).unwrap());
            true
        })
        .unwrap();
        assert_eq!(seen, vec!["four".to_string(), "three".into(), long, "one".into()]);
        let mut first = Vec::new();
        for_each_line_backwards(&path, |line| {
            first.push(line.to_vec());
            false
        })
        .unwrap();
        assert_eq!(first, vec![b"four".to_vec()]);
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.dtab");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
