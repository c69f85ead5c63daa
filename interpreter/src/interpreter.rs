//! The interpreter: watched bindings and watched address sets, shared and evicted when idle.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{Instrument, debug, debug_span, warn};
use waymark_dtab::global::{self, InetTarget, strip_transformer_prefix};
use waymark_dtab::{
    Addr, Alternatives, BindOptions, BindOutcome, DelegateError, DelegateTree, Dtab, Lookup, MountError, Name,
    NameTree, Namers, Path,
};

use crate::dns::{Dns, DnsFailure};
use crate::dtabs::DtabSource;
use crate::namers::{NamerConfig, ServiceNamer};
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
}

/// Metrics of an interpreter.
#[derive(Debug, Clone)]
pub struct InterpreterMetrics {
    bind_seconds: Histogram,
    binds: Counter,
    active_bindings: Gauge,
    active_address_sets: Gauge,
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
    bindings: Mutex<HashMap<BindKey, watch::Sender<BindState>>>,
    address_sets: Mutex<HashMap<Path, watch::Sender<Addr>>>,
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
        let inner = Inner {
            dtabs,
            namers,
            mounts,
            dns,
            options,
            metrics: InterpreterMetrics::default(),
            bindings: Mutex::default(),
            address_sets: Mutex::default(),
        };
        Ok(Interpreter { inner: Arc::new(inner) })
    }

    /// Starts the configured namers and builds an interpreter over them.
    pub async fn from_config(
        dtabs: Arc<dyn DtabSource>,
        namers: &[NamerConfig],
        options: InterpreterOptions,
    ) -> Result<Self, String> {
        let dns = Dns::from_system();
        let mut mounts = Vec::with_capacity(namers.len());
        for config in namers {
            mounts.push((config.mount()?, config.build(&dns).await?));
        }
        Interpreter::new(dtabs, mounts, dns, options).map_err(|e| e.to_string())
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
        if let Some(tx) = bindings.get(&key) {
            return tx.subscribe();
        }
        let tx = watch::Sender::new(BindState::Pending);
        let rx = tx.subscribe();
        bindings.insert(key.clone(), tx.clone());
        self.inner.metrics.active_bindings.set(bindings.len() as i64);
        drop(bindings);
        let span = debug_span!("binding", ns = %key.namespace, path = %key.path, local = %key.local);
        tokio::spawn(keep_binding(self.inner.clone(), key, tx).instrument(span));
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
    /// `local`, from the current state of the namers.
    pub fn delegate(&self, namespace: &str, path: &Path, local: &Dtab) -> Result<DelegateTree, DelegateError> {
        let base = self.inner.dtabs.watch(namespace).borrow().clone().unwrap_or_default();
        waymark_dtab::delegate(&base.concat(local), &self.inner.namers, path, self.inner.options.max_depth)
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
            bindings.keys().filter(|k| &*k.namespace == namespace).map(|k| k.path.clone()).collect();
        paths.into_iter().collect()
    }

    /// The number of bindings and address sets kept current.
    pub fn active_counts(&self) -> (usize, usize) {
        (lock(&self.inner.bindings).len(), lock(&self.inner.address_sets).len())
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
    /// Binds `path` through `dtab` once; also returns the namers whose changes could alter
    /// the result.
    fn bind_once(
        &self,
        dtab: &Dtab,
        path: &Path,
        alternatives: Alternatives,
    ) -> (BindState, Vec<Arc<dyn ServiceNamer>>) {
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
        let used: BTreeSet<&Path> = binding.lookups.iter().map(|l| &l.mount).collect();
        let namers = self.mounts.iter().filter(|(m, _)| used.contains(m)).map(|(_, n)| n.clone()).collect();
        (state, namers)
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

/// Keeps one binding current until nobody has watched it for the idle period.
async fn keep_binding(inner: Arc<Inner>, key: BindKey, tx: watch::Sender<BindState>) {
    loop {
        tokio::select! {
            () = rebind_on_change(&inner, &key, &tx) => {}
            () = idle(&tx, inner.options.idle_ttl) => {
                if inner.evict(&inner.bindings, &key, &inner.metrics.active_bindings) {
                    debug!("idle; dropped");
                    return;
                }
            }
        }
    }
}

async fn rebind_on_change(inner: &Inner, key: &BindKey, tx: &watch::Sender<BindState>) {
    let mut dtab = inner.dtabs.watch(&key.namespace);
    let mut dtab_open = true;
    loop {
        let base = dtab.borrow_and_update().clone().unwrap_or_default();
        let (state, namers) = inner.bind_once(&base.concat(&key.local), &key.path, key.alternatives);
        // Subscribe before publishing, so that a namer change racing with this binding is
        // not missed.
        let mut changes: Vec<watch::Receiver<u64>> = namers.iter().map(|n| n.changes()).collect();
        changes.iter_mut().for_each(|c| {
            c.mark_unchanged();
        });
        if let BindState::Failed(e) = &state {
            debug!(error = %e, "binding failed");
        }
        publish(tx, state);
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
            let mut changes = namer.changes();
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
