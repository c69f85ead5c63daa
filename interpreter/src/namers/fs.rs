//! `io.l5d.fs`: service discovery from a directory of files.
//!
//! Each regular file under the root directory is a concrete name (sub-directories become path
//! segments: `web/v2` is `/#/io.l5d.fs/web/v2`). Each line is `host port`, optionally followed
//! by `* weight`; `#` starts a comment and blank lines are ignored. A malformed line makes the
//! whole file's address set failed, as in Linkerd. Hidden files (`.name`) are skipped, so that
//! editors' swap files and atomic-write temporaries never become names.
//!
//! The directory is watched with inotify (through `notify`) and also rescanned periodically,
//! which covers file systems where notifications do not arrive.
//!
//! What cannot be read is never taken for what is not there. When the root directory cannot
//! be read (permissions, the process out of file descriptors), every name and address stays
//! as it was; when a sub-directory cannot be read, the names under it stay; when a file cannot
//! be read, or a host name in it cannot be resolved for a reason other than its not existing,
//! its address set stays. The namer reports the trouble in [`ServiceNamer::health`] (the
//! namer's `/ready` and metrics) and recovers on the next scan that works. Only a file that
//! is gone makes its name negative, and only content that does not parse makes it failed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info_span, warn};
use waymark_dtab::{ADDR_WEIGHT_KEY, Addr, Address, BoundName, Label, Lookup, Name, NameTree, Namer, Path};

use super::{ConfigProblem, NamerHealth, ServiceNamer};
use crate::dns::{Dns, DnsFailure};

/// Settings of an `io.l5d.fs` namer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Mounted under `/#/<prefix>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The directory holding one file per service.
    #[serde(alias = "rootDir")]
    pub root_dir: PathBuf,
    /// How often to rescan the directory even without change notifications.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_prefix() -> String {
    "/io.l5d.fs".to_string()
}

fn default_poll_interval_ms() -> u64 {
    2_000
}

/// How long to wait after a change notification before rescanning, so that a burst of events
/// (an editor's write, rename and chmod) costs one scan.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The namer. Lookups and address watches answer from the last scan.
pub struct FsNamer {
    root: PathBuf,
    dns: Dns,
    state: Mutex<FsState>,
    changes: watch::Sender<u64>,
    health: Mutex<NamerHealth>,
}

/// What one read of the directory tree found.
#[derive(Debug, Default)]
struct TreeScan {
    /// Every regular, non-hidden file, with its contents or why it could not be read.
    files: Vec<(Path, Result<String, String>)>,
    /// Sub-directories that could not be read, as name prefixes, with why.
    unreadable: Vec<(Path, String)>,
}

/// A file's address set as a scan found it.
enum Scanned {
    /// Read (and resolved): this is its address set now.
    Addr(Addr),
    /// Could not be read or resolved: keep what it had.
    Unknown,
}

#[derive(Default)]
struct FsState {
    /// The files found by the last scan, relative to the root.
    files: BTreeSet<Path>,
    /// Address watches, for every file and for every id someone asked about.
    addrs: BTreeMap<Path, watch::Sender<Addr>>,
}

impl std::fmt::Debug for FsNamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsNamer").field("root", &self.root).finish_non_exhaustive()
    }
}

impl FsConfig {
    /// Adds every problem with these settings; `at` is the key path of the namer.
    pub fn validate(&self, at: &str, problems: &mut Vec<ConfigProblem>) {
        if self.root_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem { at: format!("{at}.root_dir"), message: "may not be empty".into() });
        }
        if self.poll_interval_ms == 0 {
            problems.push(ConfigProblem { at: format!("{at}.poll_interval_ms"), message: "must be at least 1".into() });
        }
    }
}

impl FsNamer {
    /// Scans the directory once, then keeps watching it in the background for as long as the
    /// namer is alive. It always starts: a directory it cannot read yet is reported in
    /// [`ServiceNamer::health`] and read again on every scan.
    pub async fn start(config: FsConfig, dns: Dns) -> Arc<dyn ServiceNamer> {
        let namer = Arc::new(FsNamer {
            root: config.root_dir.clone(),
            dns,
            state: Mutex::new(FsState::default()),
            changes: watch::Sender::new(0),
            health: Mutex::new(NamerHealth::default()),
        });
        namer.rescan().await;
        let (notify_tx, notify_rx) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // A full channel already means "rescan soon".
                let _ = notify_tx.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&config.root_dir, RecursiveMode::Recursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(error) => {
                warn!(root = %config.root_dir.display(), %error, "cannot watch the directory; polling only");
                None
            }
        };
        let poll = Duration::from_millis(config.poll_interval_ms.max(1));
        let span = info_span!("fs_namer", root = %config.root_dir.display());
        tokio::spawn(watch_loop(Arc::downgrade(&namer), watcher, notify_rx, poll).instrument(span));
        namer
    }

    /// Reads every file and updates the names and address sets that changed. What cannot be
    /// read keeps its last good state, and is reported in [`ServiceNamer::health`].
    async fn rescan(&self) {
        let root = self.root.clone();
        let scan = match tokio::task::spawn_blocking(move || read_tree(&root)).await {
            Ok(Ok(scan)) => scan,
            Ok(Err(error)) => {
                let problem = format!("cannot read {}: {error}", self.root.display());
                warn!(error = %problem, "keeping the last good names and addresses");
                return self.report(vec![problem]);
            }
            Err(_) => return,
        };
        let mut problems: Vec<String> = Vec::new();
        let mut scanned = BTreeMap::new();
        for (name, content) in scan.files {
            let addr = match content {
                Ok(text) => self.addr_of(&text).await.unwrap_or_else(|problem| {
                    problems.push(problem);
                    Scanned::Unknown
                }),
                Err(problem) => {
                    problems.push(problem);
                    Scanned::Unknown
                }
            };
            scanned.insert(name, addr);
        }
        for (_, problem) in &scan.unreadable {
            problems.push(problem.clone());
        }
        if !problems.is_empty() {
            warn!(problems = ?problems, "keeping the last good state of what could not be read");
        }
        let unreadable: Vec<Path> = scan.unreadable.into_iter().map(|(prefix, _)| prefix).collect();
        self.apply(scanned, &unreadable);
        self.report(problems);
    }

    /// Records the outcome of a scan: healthy without problems, else the first problem.
    fn report(&self, problems: Vec<String>) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if problems.is_empty() {
            if let Some(problem) = health.problem.take() {
                tracing::info!(was = %problem, "the directory reads again");
            }
            return;
        }
        health.read_failures += 1;
        let more = if problems.len() > 1 { format!(" (and {} more)", problems.len() - 1) } else { String::new() };
        health.problem = Some(format!(
            "{}{more}; serving the last good names and addresses",
            problems.into_iter().next().unwrap_or_default()
        ));
    }

    /// Publishes a scan. Names under `unreadable` prefixes keep their last good state, and so
    /// do files whose state is [`Scanned::Unknown`]; names that are gone become negative.
    fn apply(&self, scanned: BTreeMap<Path, Scanned>, unreadable: &[Path]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: BTreeSet<Path> = scanned.keys().cloned().collect();
        names.extend(state.files.iter().filter(|name| unreadable.iter().any(|p| name.starts_with(p))).cloned());
        let names_changed = names != state.files;
        for (name, tx) in &state.addrs {
            if !names.contains(name) {
                tx.send_if_modified(|a| replace(a, Addr::Neg));
            }
        }
        for (name, addr) in scanned {
            match (state.addrs.get(&name), addr) {
                (Some(tx), Scanned::Addr(addr)) => {
                    tx.send_if_modified(|a| replace(a, addr));
                }
                // Unknown after being known: keep it. Unknown and never known: pending.
                (Some(tx), Scanned::Unknown) => {
                    tx.send_if_modified(|a| *a == Addr::Neg && replace(a, Addr::Pending));
                }
                (None, Scanned::Addr(addr)) => {
                    state.addrs.insert(name, watch::Sender::new(addr));
                }
                (None, Scanned::Unknown) => {
                    state.addrs.insert(name, watch::Sender::new(Addr::Pending));
                }
            }
        }
        // Forget watches of ids that are neither files nor watched by anyone.
        state.addrs.retain(|name, tx| names.contains(name) || tx.receiver_count() > 0);
        state.files = names;
        drop(state);
        if names_changed {
            debug!("names changed");
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// Parses a file's lines and resolves any host names in it. A file that does not parse,
    /// or names a host that does not exist, is failed; a host that cannot be resolved now
    /// (the DNS server is unreachable, the process is out of sockets) is an error: the file's
    /// last good address set stays.
    async fn addr_of(&self, text: &str) -> Result<Scanned, String> {
        let entries = match parse_file(text) {
            Ok(entries) => entries,
            Err(cause) => return Ok(Scanned::Addr(Addr::Failed { cause })),
        };
        let mut addrs = Vec::with_capacity(entries.len());
        for (host, port, weight) in entries {
            let ips = match self.dns.resolve(&host).await {
                Ok(ips) => ips,
                Err(e @ DnsFailure::NoSuchHost(_)) => return Ok(Scanned::Addr(Addr::Failed { cause: e.to_string() })),
                Err(e @ DnsFailure::Failed { .. }) => return Err(e.to_string()),
            };
            for ip in ips {
                let mut meta = Map::new();
                if let Some(w) = weight {
                    meta.insert(ADDR_WEIGHT_KEY.to_string(), Value::from(w));
                }
                addrs.push(Address { ip, port, meta });
            }
        }
        Ok(Scanned::Addr(Addr::Bound { addrs, meta: Map::new() }))
    }
}

fn replace(current: &mut Addr, new: Addr) -> bool {
    if *current == new {
        return false;
    }
    *current = new;
    true
}

async fn watch_loop(
    namer: Weak<FsNamer>,
    _watcher: Option<notify::RecommendedWatcher>,
    mut notified: mpsc::Receiver<()>,
    poll: Duration,
) {
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            Some(()) = notified.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while notified.try_recv().is_ok() {}
            }
            _ = ticks.tick() => {}
        }
        let Some(namer) = namer.upgrade() else { return };
        namer.rescan().await;
    }
}

/// Every regular, non-hidden file under `root` (recursively) with its contents, or why it
/// could not be read, and the sub-directories that could not be read. Only the root itself
/// failing is an error: then nothing is known.
fn read_tree(root: &std::path::Path) -> std::io::Result<TreeScan> {
    let mut scan = TreeScan::default();
    let mut dirs = vec![(root.to_path_buf(), Vec::<Label>::new())];
    while let Some((dir, labels)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir == root => return Err(e),
            // Gone since it was listed: its names are gone too.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                scan.unreadable.push((Path::from_labels(labels), format!("cannot read {}: {e}", dir.display())));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let prefix = Path::from_labels(labels.clone());
                    scan.unreadable.push((prefix, format!("cannot list {}: {e}", dir.display())));
                    break;
                }
            };
            let file_name = entry.file_name();
            if file_name.as_bytes().starts_with(b".") {
                continue;
            }
            let Ok(label) = Label::new(file_name.as_bytes()) else { continue };
            let mut child = labels.clone();
            child.push(label);
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let at = entry.path();
                    scan.unreadable.push((Path::from_labels(child), format!("cannot inspect {}: {e}", at.display())));
                    continue;
                }
            };
            if kind.is_dir() {
                dirs.push((entry.path(), child));
            } else if kind.is_file() || kind.is_symlink() {
                let content = match std::fs::read(entry.path()) {
                    // Text that is not UTF-8 is content: it does not parse.
                    Ok(bytes) => Ok(String::from_utf8(bytes).unwrap_or_else(|_| "\u{fffd} not UTF-8".to_string())),
                    // Removed since it was listed, or a link to a directory: not a name.
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory) => {
                        continue;
                    }
                    Err(e) => Err(format!("cannot read {}: {e}", entry.path().display())),
                };
                scan.files.push((Path::from_labels(child), content));
            }
        }
    }
    Ok(scan)
}

/// Parses `host port [* weight]` lines. Any malformed line fails the whole file.
fn parse_file(text: &str) -> Result<Vec<(String, u16, Option<f64>)>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let (host, port, weight) = match tokens.as_slice() {
            [host, port] => (*host, *port, None),
            [host, port, "*", weight] => (*host, *port, Some(*weight)),
            [host, port, star_weight] if star_weight.starts_with('*') => (*host, *port, Some(&star_weight[1..])),
            _ => return Err(bad("expected `host port` or `host port * weight`")),
        };
        let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
        let weight = match weight {
            Some(w) => Some(
                w.parse::<f64>().ok().filter(|w| w.is_finite() && *w >= 0.0).ok_or_else(|| bad("invalid weight"))?,
            ),
            None => None,
        };
        entries.push((host.to_string(), port, weight));
    }
    Ok(entries)
}

impl Namer for FsNamer {
    /// The file named by the first labels of `path` binds it; the rest is the residual.
    fn lookup(&self, path: &Path) -> Lookup {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (1..=path.len()).map(|n| path.take(n)).find(|p| state.files.contains(p)) {
            Some(id) => {
                let residual = path.drop(id.len());
                Lookup::Found(NameTree::Leaf(Name::Bound(BoundName::new(id, residual))))
            }
            None => Lookup::Found(NameTree::Neg),
        }
    }
}

impl ServiceNamer for FsNamer {
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.addrs.entry(id.clone()).or_insert_with(|| watch::Sender::new(Addr::Neg)).subscribe()
    }

    fn names(&self) -> Option<Vec<Path>> {
        Some(self.state.lock().unwrap_or_else(|e| e.into_inner()).files.iter().cloned().collect())
    }

    fn health(&self) -> NamerHealth {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_weights_and_comments() {
        let entries = parse_file("# web\n127.0.0.1 8080\n\n10.0.0.1 81 * 2.5 # heavier\nlocalhost 82 *0.5\n").unwrap();
        assert_eq!(
            entries,
            vec![
                ("127.0.0.1".into(), 8080, None),
                ("10.0.0.1".into(), 81, Some(2.5)),
                ("localhost".into(), 82, Some(0.5))
            ]
        );
        assert!(parse_file("127.0.0.1\n").unwrap_err().starts_with("line 1"));
        assert!(parse_file("ok 1\nhost notaport\n").unwrap_err().starts_with("line 2"));
        assert!(parse_file("h 1 * -3\n").is_err());
    }

    async fn wait_for<T: Clone>(rx: &mut watch::Receiver<T>, pred: impl Fn(&T) -> bool) -> T {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| pred(v)))
            .await
            .expect("the watch reaches the expected state")
            .expect("the watch stays open")
            .clone()
    }

    #[tokio::test]
    async fn files_appear_change_and_disappear() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web"), "127.0.0.1 8080\n").unwrap();
        std::fs::create_dir(dir.path().join("api")).unwrap();
        std::fs::write(dir.path().join("api/v2"), "127.0.0.1 9090 * 3\n").unwrap();
        std::fs::write(dir.path().join(".web.swp"), "garbage").unwrap();
        let config = FsConfig { prefix: default_prefix(), root_dir: dir.path().into(), poll_interval_ms: 50 };
        let namer = FsNamer::start(config, Dns::from_system()).await;
        let p = |s: &str| s.parse::<Path>().unwrap();

        assert_eq!(namer.names().unwrap(), vec![p("/api/v2"), p("/web")]);
        let bound = |id: &str, rest: &str| Lookup::Found(NameTree::Leaf(Name::Bound(BoundName::new(p(id), p(rest)))));
        assert_eq!(namer.lookup(&p("/web/x")), bound("/web", "/x"));
        assert_eq!(namer.lookup(&p("/api/v2")), bound("/api/v2", "/"));
        assert_eq!(namer.lookup(&p("/api")), Lookup::Found(NameTree::Neg));
        assert_eq!(namer.lookup(&p("/..")), Lookup::Found(NameTree::Neg));

        let weighted = namer.resolve(&p("/api/v2")).borrow().clone();
        let Addr::Bound { addrs, .. } = weighted else { panic!("bound") };
        assert_eq!(addrs[0].weight(), 3.0);

        let mut web = namer.resolve(&p("/web"));
        let mut changes = namer.changes();
        changes.mark_unchanged();
        std::fs::write(dir.path().join("web"), "127.0.0.1 8080\n127.0.0.1 8081\n").unwrap();
        let addr = wait_for(&mut web, |a| matches!(a, Addr::Bound { addrs, .. } if addrs.len() == 2)).await;
        assert_eq!(addr, Addr::bound(["127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8081".parse().unwrap()]));
        assert!(!changes.has_changed().unwrap(), "content changes do not change names");

        std::fs::write(dir.path().join("web"), "127.0.0.1 nope\n").unwrap();
        wait_for(&mut web, |a| matches!(a, Addr::Failed { .. })).await;

        let mut db = namer.resolve(&p("/db"));
        assert_eq!(*db.borrow(), Addr::Neg);
        std::fs::write(dir.path().join("db"), "127.0.0.1 5432\n").unwrap();
        wait_for(&mut db, |a| matches!(a, Addr::Bound { .. })).await;
        tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.unwrap().unwrap();
        assert_eq!(namer.lookup(&p("/db")), bound("/db", "/"));

        std::fs::remove_file(dir.path().join("web")).unwrap();
        wait_for(&mut web, |a| *a == Addr::Neg).await;
        assert_eq!(namer.lookup(&p("/web")), Lookup::Found(NameTree::Neg));
    }

    #[tokio::test]
    async fn a_root_that_cannot_be_read_keeps_every_name_and_is_reported() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("disco");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("web"), "127.0.0.1 8080\n").unwrap();
        let config = FsConfig { prefix: default_prefix(), root_dir: root.clone(), poll_interval_ms: 20 };
        let namer = FsNamer::start(config, Dns::from_system()).await;
        let p = |s: &str| s.parse::<Path>().unwrap();
        let web = namer.resolve(&p("/web"));
        assert!(matches!(*web.borrow(), Addr::Bound { .. }));
        assert_eq!(namer.health(), NamerHealth::default());

        // The directory is swapped for a file: it cannot be listed.
        std::fs::rename(&root, parent.path().join("elsewhere")).unwrap();
        std::fs::write(&root, "not a directory").unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while namer.health().problem.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the failure is reported");
        let health = namer.health();
        assert!(health.problem.as_deref().unwrap().contains("serving the last good"), "{health:?}");
        assert!(health.read_failures >= 1);
        assert!(matches!(namer.lookup(&p("/web")), Lookup::Found(NameTree::Leaf(_))));
        assert!(matches!(*web.borrow(), Addr::Bound { .. }));
        assert_eq!(namer.names().unwrap(), vec![p("/web")]);

        // Readable again, without the file: now the name is gone for real.
        std::fs::remove_file(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        let mut web = web;
        wait_for(&mut web, |a| *a == Addr::Neg).await;
        assert_eq!(namer.health().problem, None);
    }

    #[test]
    fn what_a_scan_could_not_read_keeps_its_last_good_state() {
        let namer = FsNamer {
            root: PathBuf::from("/nowhere"),
            dns: Dns::from_system(),
            state: Mutex::new(FsState::default()),
            changes: watch::Sender::new(0),
            health: Mutex::new(NamerHealth::default()),
        };
        let p = |s: &str| s.parse::<Path>().unwrap();
        let one = || Addr::bound(["127.0.0.1:1".parse().unwrap()]);
        let first: BTreeMap<Path, Scanned> =
            [(p("/web"), Scanned::Addr(one())), (p("/api/v1"), Scanned::Addr(one())), (p("/db"), Scanned::Addr(one()))]
                .into_iter()
                .collect();
        namer.apply(first, &[]);
        let (web, api, db) = (namer.resolve(&p("/web")), namer.resolve(&p("/api/v1")), namer.resolve(&p("/db")));

        // web could not be read, the api directory could not be listed, db is gone.
        let second: BTreeMap<Path, Scanned> =
            [(p("/web"), Scanned::Unknown), (p("/new"), Scanned::Unknown)].into_iter().collect();
        namer.apply(second, &[p("/api")]);
        assert_eq!(*web.borrow(), one());
        assert_eq!(*api.borrow(), one());
        assert_eq!(*db.borrow(), Addr::Neg);
        assert_eq!(*namer.resolve(&p("/new")).borrow(), Addr::Pending);
        assert_eq!(namer.names().unwrap(), vec![p("/api/v1"), p("/new"), p("/web")]);
    }
}
