//! The interpreter: watched bindings and watched address sets, shared and evicted when idle.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{Instrument, debug, debug_span, warn};
use waymark_dtab::global::{self, InetTarget, strip_transformer_prefix};
use waymark_dtab::{
    Addr, Alternatives, BindOptions, BindOutcome, DEFAULT_MAX_DELEGATION_BYTES, DelegateError, DelegateLimits,
    DelegateTree, Dtab, Lookup, MountError, Name, NameTree, Namers, Path,
};

use crate::dns::{Dns, DnsFailure};
use crate::dtabs::DtabSource;
use crate::namers::{InvalidPrefix, NamerHealth, NamerKind, NamerStartError, ServiceNamer};
use crate::resolver::{BindState, Resolver};

/// Tuning for an [`Interpreter`].
#[derive(Debug, Clone, Copy)]
pub struct InterpreterOptions {
    /// The most lookups one chain of rewrites may take (Finagle's default is 100).
    pub max_depth: usize,
    /// How long a binding or address set is kept after its last watcher went away, so that a
    /// client that reconnects finds it warm.
    pub idle_ttl: Duration,
    /// How often host names of `/$/inet` ids are resolved again.
    pub dns_refresh: Duration,
    /// The most bindings with a per-request dtab (an override) kept at once. Past it, idle
    /// ones are dropped early, and when none is idle a new override fails to bind; bindings
    /// without an override are never affected.
    pub max_override_bindings: usize,
    /// The most bytes of override dtab text those bindings may hold in all, with the same
    /// consequences.
    pub max_override_bytes: usize,
    /// The largest delegation output, in bytes of namerd's JSON without addresses.
    pub max_delegation_bytes: usize,
}

/// Why an interpreter could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum FromConfigError {
    /// A namer's prefix is not a path.
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    /// A namer could not start.
    #[error(transparent)]
    Start(#[from] NamerStartError),
    /// Two namers' prefixes overlap.
    #[error("mounting the namers")]
    Mount(#[from] MountError),
}

/// Metrics of an interpreter.
#[derive(Debug, Clone)]
pub struct InterpreterMetrics {
    bind_seconds: Histogram,
    binds: Counter,
    active_bindings: Gauge,
    active_address_sets: Gauge,
    override_bindings: Gauge,
    override_bytes: Gauge,
    overrides_evicted: Counter,
    overrides_refused: Counter,
    namers: NamerHealthCollector,
}

/// Reports, at each scrape, whether each configured namer can read its source.
#[derive(Clone, Default)]
struct NamerHealthCollector {
    mounts: Arc<Vec<(Path, Arc<dyn ServiceNamer>)>>,
}

/// Binds names and resolves bound ids, keeping every result current as watches.
#[derive(Clone)]
pub struct Interpreter {
    inner: Arc<Inner>,
}

/// Changes of the names the enumerating namers know; see [`Interpreter::watch_bound_names`].
#[derive(Debug)]
pub struct NamesChanges {
    changes: Vec<watch::Receiver<u64>>,
}

impl NamesChanges {
    /// Waits for the next change (forever, when no namer can enumerate names).
    pub async fn changed(&mut self) {
        any_changed(&mut self.changes).await
    }
}

/// A view of an [`Interpreter`] for one namespace, as a [`Resolver`].
#[derive(Clone, Debug)]
pub struct NamespaceResolver {
    interpreter: Interpreter,
    namespace: Arc<str>,
}

struct Inner {
    dtabs: Arc<dyn DtabSource>,
    namers: Namers,
    mounts: Vec<(Path, Arc<dyn ServiceNamer>)>,
    dns: Dns,
    options: InterpreterOptions,
    metrics: InterpreterMetrics,
    bindings: Mutex<Bindings>,
    address_sets: Mutex<HashMap<Path, watch::Sender<Addr>>>,
    /// Permits for work whose size a client chooses (delegations, bindings with a large or
    /// client-given dtab), run on blocking threads: at most one per core at once.
    heavy: Semaphore,
}

/// Every binding kept current, and what the overrides among them hold.
#[derive(Default)]
struct Bindings {
    entries: HashMap<BindKey, BindingEntry>,
    override_count: usize,
    override_bytes: usize,
}

/// One binding: its watch, a way to stop it early, and the override bytes it holds.
struct BindingEntry {
    tx: watch::Sender<BindState>,
    stop: Arc<Notify>,
    override_bytes: usize,
}

/// One namer lookup a binding made.
struct Consulted {
    mount: Path,
    namer: Arc<dyn ServiceNamer>,
    path: Path,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    namespace: Arc<str>,
    path: Path,
    local: Dtab,
    alternatives: Alternatives,
}

impl Default for InterpreterOptions {
    fn default() -> Self {
        InterpreterOptions {
            max_depth: waymark_dtab::DEFAULT_MAX_DEPTH,
            idle_ttl: Duration::from_secs(60),
            dns_refresh: Duration::from_secs(5),
            max_override_bindings: 10_000,
            max_override_bytes: 32 * 1024 * 1024,
            max_delegation_bytes: DEFAULT_MAX_DELEGATION_BYTES,
        }
    }
}

impl Default for InterpreterMetrics {
    fn default() -> Self {
        InterpreterMetrics {
            bind_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            binds: Counter::default(),
            active_bindings: Gauge::default(),
            active_address_sets: Gauge::default(),
            override_bindings: Gauge::default(),
            override_bytes: Gauge::default(),
            overrides_evicted: Counter::default(),
            overrides_refused: Counter::default(),
            namers: NamerHealthCollector::default(),
        }
    }
}

impl InterpreterMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("bind_duration_seconds", "Time to bind a name once", self.bind_seconds.clone());
        registry.register("binds", "Bindings computed (first binds and re-binds)", self.binds.clone());
        registry.register("active_bindings", "Bindings kept current for watchers", self.active_bindings.clone());
        registry.register("active_address_sets", "Address sets kept current", self.active_address_sets.clone());
        registry.register(
            "override_bindings",
            "Bindings with a per-request dtab kept current",
            self.override_bindings.clone(),
        );
        registry.register(
            "override_binding_bytes",
            "Bytes of per-request dtab text held by bindings",
            self.override_bytes.clone(),
        );
        registry.register(
            "override_bindings_evicted",
            "Idle bindings with a per-request dtab dropped early to stay within the override limits",
            self.overrides_evicted.clone(),
        );
        registry.register(
            "override_bindings_refused",
            "Bindings with a per-request dtab refused because the override limits were reached",
            self.overrides_refused.clone(),
        );
        registry.register_collector(Box::new(self.namers.clone()));
    }
}

impl Interpreter {
    /// An interpreter over `dtabs` with the given namers (each with its mount prefix, such as
    /// `/#/io.l5d.fs`), in order.
    pub fn new(
        dtabs: Arc<dyn DtabSource>,
        mounts: Vec<(Path, Arc<dyn ServiceNamer>)>,
        dns: Dns,
        options: InterpreterOptions,
    ) -> Result<Self, MountError> {
        let mut namers = Namers::new();
        for (prefix, namer) in &mounts {
            namers.mount(prefix.clone(), namer.clone())?;
        }
        let mut metrics = InterpreterMetrics::default();
        metrics.namers.mounts = Arc::new(mounts.clone());
        let inner = Inner {
            dtabs,
            namers,
            mounts,
            dns,
            options,
            metrics,
            bindings: Mutex::default(),
            address_sets: Mutex::default(),
            heavy: Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)),
        };
        Ok(Interpreter { inner: Arc::new(inner) })
    }

    /// Starts the configured namers, of whatever kinds the caller composes, and builds an
    /// interpreter over them.
    pub async fn from_config<K: NamerKind>(
        dtabs: Arc<dyn DtabSource>,
        namers: &[K],
        options: InterpreterOptions,
    ) -> Result<Self, FromConfigError> {
        let dns = Dns::from_system();
        let mut mounts = Vec::with_capacity(namers.len());
        for config in namers {
            mounts.push((config.mount()?, config.start(&dns).await?));
        }
        Ok(Interpreter::new(dtabs, mounts, dns, options)?)
    }

    /// The interpreter's metrics.
    pub fn metrics(&self) -> &InterpreterMetrics {
        &self.inner.metrics
    }

    /// A [`Resolver`] for one namespace, for a router: its bindings keep every usable
    /// alternative ([`Alternatives::Keep`]), so that the router can fall through, per request,
    /// to the next one when an alternative has no endpoints.
    pub fn namespace(&self, namespace: &str) -> NamespaceResolver {
        NamespaceResolver { interpreter: self.clone(), namespace: namespace.into() }
    }

    /// Watches the binding of `path` through the dtab of `namespace` followed by `local`,
    /// binding alternatives as Finagle does.
    pub fn bind(&self, namespace: &str, path: &Path, local: &Dtab) -> watch::Receiver<BindState> {
        self.bind_with_alternatives(namespace, path, local, Alternatives::First)
    }

    /// [`Interpreter::bind`], choosing how alternatives bind.
    pub fn bind_with_alternatives(
        &self,
        namespace: &str,
        path: &Path,
        local: &Dtab,
        alternatives: Alternatives,
    ) -> watch::Receiver<BindState> {
        let key = BindKey { namespace: namespace.into(), path: path.clone(), local: local.clone(), alternatives };
        let mut bindings = lock(&self.inner.bindings);
        if let Some(entry) = bindings.entries.get(&key) {
            return entry.tx.subscribe();
        }
        // An override is client-chosen: it is counted, and bounded by count and bytes.
        let override_bytes = if local.is_empty() { 0 } else { local.to_string().len().max(1) };
        if override_bytes > 0 && !self.inner.make_room_for_override(&mut bindings, override_bytes) {
            drop(bindings);
            self.inner.metrics.overrides_refused.inc();
            let options = &self.inner.options;
            warn!(
                max_override_bindings = options.max_override_bindings,
                max_override_bytes = options.max_override_bytes,
                "refusing to bind another dtab override: the override limits are reached and none is idle"
            );
            return refused(format!(
                "too many distinct dtab overrides are bound at once (at most {} bindings, {} bytes); try again later",
                options.max_override_bindings, options.max_override_bytes
            ));
        }
        let tx = watch::Sender::new(BindState::Pending);
        let rx = tx.subscribe();
        let stop = Arc::new(Notify::new());
        bindings.entries.insert(key.clone(), BindingEntry { tx: tx.clone(), stop: stop.clone(), override_bytes });
        if override_bytes > 0 {
            bindings.override_count += 1;
            bindings.override_bytes += override_bytes;
        }
        self.inner.count_bindings(&bindings);
        drop(bindings);
        let span = debug_span!("binding", ns = %key.namespace, path = %key.path, local = %key.local);
        tokio::spawn(keep_binding(self.inner.clone(), key, tx, stop).instrument(span));
        rx
    }

    /// Watches the address set of a concrete bound id. A transformer prefix (`/%/...` up to
    /// the first `#` or `$` label) is ignored, as namerd does.
    pub fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        let id = strip_transformer_prefix(id);
        let mut address_sets = lock(&self.inner.address_sets);
        if let Some(tx) = address_sets.get(&id) {
            return tx.subscribe();
        }
        let tx = watch::Sender::new(Addr::Pending);
        let rx = tx.subscribe();
        address_sets.insert(id.clone(), tx.clone());
        self.inner.metrics.active_address_sets.set(address_sets.len() as i64);
        drop(address_sets);
        let span = debug_span!("resolution", id = %id);
        tokio::spawn(keep_resolving(self.inner.clone(), id, tx).instrument(span));
        rx
    }

    /// The delegation tree for `path` through the namespace's current dtab followed by
    /// `local`, from the current state of the namers. Built on a blocking thread (at most one
    /// per core at once), within the delegation limits; [`DelegateError::Cancelled`] when it
    /// is not done within `timeout`, and the work stops then too, as it does when the caller
    /// drops this future.
    pub async fn delegate(
        &self,
        namespace: &str,
        path: &Path,
        local: &Dtab,
        timeout: Duration,
    ) -> Result<DelegateTree, DelegateError> {
        let base = self.inner.dtabs.watch(namespace).borrow().clone().unwrap_or_default();
        let dtab = base.concat(local);
        let limits = DelegateLimits {
            max_depth: self.inner.options.max_depth,
            max_output_bytes: self.inner.options.max_delegation_bytes,
        };
        let (inner, path) = (self.inner.clone(), path.clone());
        let cancel = CancelOnDrop::default();
        let flag = cancel.0.clone();
        let work = async move {
            let _permit = inner.heavy.acquire().await;
            let (inner, flag) = (inner.clone(), flag.clone());
            tokio::task::spawn_blocking(move || {
                waymark_dtab::delegate_within(&dtab, &inner.namers, &path, limits, Some(&flag))
            })
            .await
            .unwrap_or(Err(DelegateError::Cancelled))
        };
        let result = tokio::time::timeout(timeout, work).await.unwrap_or(Err(DelegateError::Cancelled));
        drop(cancel);
        result
    }

    /// The concrete names the enumerating namers know, as full ids (`/#/io.l5d.fs/web`).
    pub fn bound_names(&self) -> Vec<Path> {
        let mut names: Vec<Path> = self
            .inner
            .mounts
            .iter()
            .flat_map(|(mount, namer)| namer.names().unwrap_or_default().into_iter().map(move |n| mount.concat(&n)))
            .collect();
        names.sort();
        names
    }

    /// A subscription to changes of [`Interpreter::bound_names`]. Subscribe first, then read
    /// the names, so that no change falls between the two.
    pub fn watch_bound_names(&self) -> NamesChanges {
        let changes = self
            .inner
            .mounts
            .iter()
            .filter(|(_, n)| n.names().is_some())
            .map(|(_, n)| {
                let mut rx = n.changes();
                rx.mark_unchanged();
                rx
            })
            .collect();
        NamesChanges { changes }
    }

    /// The logical paths currently bound (watched, or idle but still kept) in `namespace`.
    pub fn active_paths(&self, namespace: &str) -> Vec<Path> {
        let bindings = lock(&self.inner.bindings);
        let paths: BTreeSet<Path> =
            bindings.entries.keys().filter(|k| &*k.namespace == namespace).map(|k| k.path.clone()).collect();
        paths.into_iter().collect()
    }

    /// Why each configured namer that cannot read its source now cannot, as
    /// `<mount>: <problem>`; empty when all can. Such a namer serves its last good state.
    pub fn namer_problems(&self) -> Vec<String> {
        self.inner
            .mounts
            .iter()
            .filter_map(|(mount, namer)| namer.health().problem.map(|problem| format!("namer {mount}: {problem}")))
            .collect()
    }

    /// What the namer mounted at `mount` (such as `/#/io.l5d.k8s`) holds, as JSON, when it
    /// shows its state.
    pub fn namer_state(&self, mount: &Path) -> Option<serde_json::Value> {
        self.inner.mounts.iter().find(|(m, _)| m == mount).and_then(|(_, namer)| namer.state_json())
    }

    /// The number of bindings and address sets kept current.
    pub fn active_counts(&self) -> (usize, usize) {
        (lock(&self.inner.bindings).entries.len(), lock(&self.inner.address_sets).len())
    }
}

impl std::fmt::Debug for Interpreter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interpreter").field("namers", &self.inner.namers).finish_non_exhaustive()
    }
}

impl Resolver for NamespaceResolver {
    fn bind(&self, path: &Path, local: &Dtab) -> watch::Receiver<BindState> {
        self.interpreter.bind_with_alternatives(&self.namespace, path, local, Alternatives::Keep)
    }

    fn resolve(&self, id: &Path) -> watch::Receiver<Addr> {
        self.interpreter.resolve(id)
    }
}

impl std::fmt::Debug for NamerHealthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.mounts.iter().map(|(mount, _)| mount)).finish()
    }
}

impl Collector for NamerHealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let labels = |mount: &Path| [("namer", mount.to_string())];
        let healths: Vec<(&Path, NamerHealth)> = self.mounts.iter().map(|(m, n)| (m, n.health())).collect();
        {
            let mut family = encoder.encode_descriptor(
                "namer_available",
                "1 while a namer can read its source; 0 while it cannot and serves its last good state",
                None,
                MetricType::Gauge,
            )?;
            for (mount, health) in &healths {
                ConstGauge::new(i64::from(health.problem.is_none())).encode(family.encode_family(&labels(mount))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "namer_read_failures",
            "Reads of a namer's source that failed (in part or whole)",
            None,
            MetricType::Counter,
        )?;
        for (mount, health) in &healths {
            ConstCounter::new(health.read_failures).encode(family.encode_family(&labels(mount))?)?;
        }
        Ok(())
    }
}

/// Sets its flag when dropped: tells blocking work that its caller is gone.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A binding that is not kept: its one state is `Failed(why)`. The sender stays open while
/// anyone holds a receiver, so that watchers wait for a change rather than see a closed
/// channel and ask again at once.
fn refused(why: String) -> watch::Receiver<BindState> {
    let (tx, rx) = watch::channel(BindState::Failed(why.into()));
    tokio::spawn(async move { tx.closed().await });
    rx
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes `value` unless it equals the current one.
fn publish<T: PartialEq>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|current| {
        if *current == value {
            return false;
        }
        *current = value;
        true
    });
}

/// Resolves once the watch has had no receivers for `ttl`.
async fn idle<T>(tx: &watch::Sender<T>, ttl: Duration) {
    loop {
        tx.closed().await;
        tokio::time::sleep(ttl).await;
        if tx.receiver_count() == 0 {
            return;
        }
    }
}

/// Waits until any of `changes` moves. Receivers whose sender is gone are dropped from the
/// set, so that a closed channel cannot make this spin.
async fn any_changed(changes: &mut Vec<watch::Receiver<u64>>) {
    loop {
        if changes.is_empty() {
            return future::pending().await;
        }
        let waits = changes.iter_mut().map(|rx| Box::pin(rx.changed()));
        let (result, index, _) = future::select_all(waits).await;
        if result.is_ok() {
            return;
        }
        changes.swap_remove(index);
    }
}

impl Inner {
    /// Binds `path` through `dtab` once; also returns the namer lookups it made, whose
    /// changes could alter the result.
    fn bind_once(&self, dtab: &Dtab, path: &Path, alternatives: Alternatives) -> (BindState, Vec<Consulted>) {
        let started = Instant::now();
        let binding = waymark_dtab::bind_path(
            dtab,
            &self.namers,
            path,
            BindOptions { max_depth: self.options.max_depth, alternatives },
        );
        self.metrics.bind_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.binds.inc();
        let state = match binding.outcome {
            BindOutcome::Bound(tree) => BindState::Bound(Arc::new(tree)),
            BindOutcome::Pending => BindState::Pending,
            BindOutcome::Failed(e) => BindState::Failed(e.to_string().into()),
        };
        let consulted = binding
            .lookups
            .into_iter()
            .filter_map(|lookup| {
                let (mount, namer) = self.mounts.iter().find(|(m, _)| *m == lookup.mount)?;
                Some(Consulted { mount: mount.clone(), namer: namer.clone(), path: lookup.path })
            })
            .collect();
        (state, consulted)
    }

    /// Binds on a blocking thread when the work may be large: the dtab holds a client's
    /// override or many dentries, or the last binding of this name was slow.
    async fn bind_off_thread_if_large(
        self: &Arc<Self>,
        dtab: Dtab,
        key: &BindKey,
        last_took: Duration,
    ) -> (BindState, Vec<Consulted>, Duration) {
        const LARGE_DTAB: usize = 64;
        const SLOW_BIND: Duration = Duration::from_millis(1);
        let started = Instant::now();
        if key.local.is_empty() && dtab.len() <= LARGE_DTAB && last_took < SLOW_BIND {
            let (state, consulted) = self.bind_once(&dtab, &key.path, key.alternatives);
            return (state, consulted, started.elapsed());
        }
        let _permit = self.heavy.acquire().await;
        let (inner, path, alternatives) = (self.clone(), key.path.clone(), key.alternatives);
        let (state, consulted) = tokio::task::spawn_blocking(move || inner.bind_once(&dtab, &path, alternatives))
            .await
            .unwrap_or_else(|e| (BindState::Failed(format!("binding failed: {e}").into()), Vec::new()));
        (state, consulted, started.elapsed())
    }

    /// Makes room for a new override binding of `bytes`, dropping idle override bindings if
    /// the limits require it; false when that is not enough.
    fn make_room_for_override(&self, bindings: &mut Bindings, bytes: usize) -> bool {
        let (max_count, max_bytes) = (self.options.max_override_bindings, self.options.max_override_bytes);
        let fits = |b: &Bindings| b.override_count < max_count && b.override_bytes + bytes <= max_bytes;
        if fits(bindings) {
            return true;
        }
        // Drop idle overrides down to nine tenths of each limit, so that the scan is rare.
        let (count_goal, bytes_goal) = (max_count / 10 * 9, max_bytes / 10 * 9);
        let idle: Vec<BindKey> = bindings
            .entries
            .iter()
            .filter(|(_, e)| e.override_bytes > 0 && e.tx.receiver_count() == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            if bindings.override_count <= count_goal && bindings.override_bytes + bytes <= bytes_goal {
                break;
            }
            if let Some(entry) = bindings.entries.remove(&key) {
                bindings.override_count -= 1;
                bindings.override_bytes -= entry.override_bytes;
                entry.stop.notify_one();
                self.metrics.overrides_evicted.inc();
            }
        }
        self.count_bindings(bindings);
        fits(bindings)
    }

    fn count_bindings(&self, bindings: &Bindings) {
        self.metrics.active_bindings.set(bindings.entries.len() as i64);
        self.metrics.override_bindings.set(bindings.override_count as i64);
        self.metrics.override_bytes.set(bindings.override_bytes as i64);
    }

    /// Removes an idle binding if it is still unwatched; false if someone subscribed meanwhile.
    fn evict_binding(&self, key: &BindKey) -> bool {
        let mut bindings = lock(&self.bindings);
        match bindings.entries.get(key) {
            Some(entry) if entry.tx.receiver_count() > 0 => false,
            Some(_) => {
                if let Some(entry) = bindings.entries.remove(key)
                    && entry.override_bytes > 0
                {
                    bindings.override_count -= 1;
                    bindings.override_bytes -= entry.override_bytes;
                }
                self.count_bindings(&bindings);
                true
            }
            None => true,
        }
    }

    fn mount_for(&self, id: &Path) -> Option<(&Path, &Arc<dyn ServiceNamer>)> {
        self.mounts.iter().find(|(m, _)| id.starts_with(m)).map(|(m, n)| (m, n))
    }

    /// Removes an idle entry if it is still unwatched; false if someone subscribed meanwhile.
    fn evict<K: Eq + std::hash::Hash, T>(
        &self,
        map: &Mutex<HashMap<K, watch::Sender<T>>>,
        key: &K,
        gauge: &Gauge,
    ) -> bool {
        let mut entries = lock(map);
        match entries.get(key) {
            Some(tx) if tx.receiver_count() > 0 => false,
            _ => {
                entries.remove(key);
                gauge.set(entries.len() as i64);
                true
            }
        }
    }
}

/// Keeps one binding current until nobody has watched it for the idle period, or until it is
/// dropped early to make room for other overrides.
async fn keep_binding(inner: Arc<Inner>, key: BindKey, tx: watch::Sender<BindState>, stop: Arc<Notify>) {
    loop {
        tokio::select! {
            () = rebind_on_change(&inner, &key, &tx) => {}
            () = stop.notified() => {
                debug!("dropped to make room for other overrides");
                return;
            }
            () = idle(&tx, inner.options.idle_ttl) => {
                if inner.evict_binding(&key) {
                    debug!("idle; dropped");
                    return;
                }
            }
        }
    }
}

async fn rebind_on_change(inner: &Arc<Inner>, key: &BindKey, tx: &watch::Sender<BindState>) {
    let mut dtab = inner.dtabs.watch(&key.namespace);
    let mut dtab_open = true;
    let mut last_took = Duration::ZERO;
    loop {
        // Every namer's changes are watched from before binding: a lookup answers from the
        // state at that moment, and the per-lookup watches below begin only after it.
        let before: Vec<(Path, watch::Receiver<u64>)> = inner
            .mounts
            .iter()
            .map(|(mount, namer)| {
                let mut rx = namer.changes();
                rx.mark_unchanged();
                (mount.clone(), rx)
            })
            .collect();
        let base = dtab.borrow_and_update().clone().unwrap_or_default();
        let (state, consulted, took) = inner.bind_off_thread_if_large(base.concat(&key.local), key, last_took).await;
        last_took = took;
        // From now on, follow exactly the lookups this binding made.
        let mut changes: Vec<watch::Receiver<u64>> = consulted
            .iter()
            .map(|c| {
                let mut rx = c.namer.lookup_changes(&c.path);
                rx.mark_unchanged();
                rx
            })
            .collect();
        let raced = before
            .iter()
            .any(|(mount, rx)| consulted.iter().any(|c| c.mount == *mount) && rx.has_changed().unwrap_or(false));
        if let BindState::Failed(e) = &state {
            debug!(error = %e, "binding failed");
        }
        publish(tx, state);
        if raced {
            // A namer this binding consulted changed while it was binding: bind again now.
            continue;
        }
        let dtab_changed = if dtab_open { Either::Left(dtab.changed()) } else { Either::Right(future::pending()) };
        tokio::select! {
            changed = dtab_changed => dtab_open = changed.is_ok(),
            () = any_changed(&mut changes) => {}
        }
    }
}

/// Keeps one address set current until nobody has watched it for the idle period.
async fn keep_resolving(inner: Arc<Inner>, id: Path, tx: watch::Sender<Addr>) {
    loop {
        tokio::select! {
            () = resolve_on_change(&inner, &id, &tx) => {}
            () = idle(&tx, inner.options.idle_ttl) => {
                if inner.evict(&inner.address_sets, &id, &inner.metrics.active_address_sets) {
                    debug!("idle; dropped");
                    return;
                }
            }
        }
    }
}

/// What a namer's tree-level answer about an id means for its address set.
enum Concrete {
    /// Bound: follow this id's address set.
    Bound(Path),
    /// A final answer.
    Addr(Addr),
}

fn concrete(id: &Path, lookup: Lookup) -> Concrete {
    match lookup {
        Lookup::Found(NameTree::Leaf(Name::Bound(b))) => Concrete::Bound(b.id().clone()),
        Lookup::Found(NameTree::Neg) => Concrete::Addr(Addr::Neg),
        Lookup::Found(NameTree::Empty) => Concrete::Addr(Addr::bound([])),
        Lookup::Found(NameTree::Fail) => Concrete::Addr(Addr::Failed { cause: format!("{id} is a failing name") }),
        Lookup::Found(_) => Concrete::Addr(Addr::Failed { cause: format!("{id} is not a concrete bound id") }),
        Lookup::Pending => Concrete::Addr(Addr::Pending),
        Lookup::Failed(cause) => Concrete::Addr(Addr::Failed { cause }),
    }
}

async fn resolve_on_change(inner: &Inner, id: &Path, tx: &watch::Sender<Addr>) {
    if let Some((mount, namer)) = inner.mount_for(id) {
        let relative = id.drop(mount.len());
        loop {
            let mut changes = namer.lookup_changes(&relative);
            changes.mark_unchanged();
            match concrete(id, namer.lookup(&relative)) {
                Concrete::Addr(addr) => {
                    publish(tx, addr);
                    if changes.changed().await.is_err() {
                        return future::pending().await;
                    }
                }
                Concrete::Bound(bound_id) => {
                    let mut addrs = namer.resolve(&bound_id);
                    loop {
                        publish(tx, addrs.borrow_and_update().clone());
                        tokio::select! {
                            changed = addrs.changed() => if changed.is_err() { break },
                            changed = changes.changed() => {
                                if changed.is_err() { return future::pending().await }
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    match concrete(id, global::lookup(id)) {
        Concrete::Addr(addr) => {
            publish(tx, addr);
            future::pending().await
        }
        Concrete::Bound(bound_id) => match InetTarget::from_id(&bound_id) {
            Some(target) => resolve_inet(inner, &target, tx).await,
            None => {
                publish(tx, Addr::Failed { cause: format!("no namer resolves {bound_id}") });
                future::pending().await
            }
        },
    }
}

/// Resolves an inet target, again every refresh period unless it is `fixedinet`. A failed
/// lookup keeps the last good answer: a DNS hiccup must not empty a working address set.
async fn resolve_inet(inner: &Inner, target: &InetTarget, tx: &watch::Sender<Addr>) {
    if let Some(ip) = target.literal_ip() {
        publish(tx, Addr::bound([std::net::SocketAddr::new(ip, target.port)]));
        return future::pending().await;
    }
    let host = target.host.clone().unwrap_or_default();
    loop {
        match inner.dns.resolve(&host).await {
            Ok(ips) => publish(tx, Addr::bound(ips.into_iter().map(|ip| std::net::SocketAddr::new(ip, target.port)))),
            Err(DnsFailure::NoSuchHost(_)) => publish(tx, Addr::Neg),
            Err(e @ DnsFailure::Failed { .. }) => {
                warn!(error = %e, "DNS lookup failed");
                if !matches!(*tx.borrow(), Addr::Bound { .. }) {
                    publish(tx, Addr::Failed { cause: e.to_string() });
                }
            }
        }
        if target.fixed && matches!(*tx.borrow(), Addr::Bound { .. }) {
            return future::pending().await;
        }
        tokio::time::sleep(inner.options.dns_refresh).await;
    }
}
