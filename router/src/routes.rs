//! Bindings: for each (logical name, dtab override), the bound tree, kept current, with a
//! balancer for each bound name in it.
//!
//! A request finds its binding with one hash-map lookup under a sharded read lock. The first
//! request for a key subscribes to the resolver; later ones share that subscription. Bindings
//! idle for longer than the configured time are dropped, and with them their subscriptions;
//! requests in flight keep what they hold.
//!
//! Bindings with an override live in a pool of their own, capped by count and by the bytes of
//! their overrides, so that however many distinct overrides clients send, they never push out
//! the bindings plain traffic uses (which, while the namer is down, are the only routes the
//! router has). Beyond a pool's limits, bindings used only once go first, then the least
//! recently used.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use waymark_dtab::{APP_PROTOCOL_KEY, Addr, BoundLeaf, Dtab, NameTree, Path};
use waymark_interpreter::{BindState, Resolver};

use crate::balance::{self, BalanceSettings, Endpoint};
use crate::client::{ClientSettings, EndpointClient, EndpointProtocol};
use crate::context::ctx_dtab_value;
use crate::metrics::{ClientMetrics, EvictionLabels, Metrics, ServiceMetrics};
use crate::retry::{BudgetConfig, RetryBudget};
use crate::sync::{lock, read, write};

/// Limits on live bindings (Linkerd 1's `bindingCache`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingCacheConfig {
    /// The most live bindings of names without a dtab override; beyond it, those used only
    /// once go first, then the least recently used.
    #[serde(default = "default_max_bindings")]
    pub max_bindings: usize,
    /// The most live bindings with a dtab override (every distinct override is one), kept
    /// apart from the others so that they cannot push them out.
    #[serde(default = "default_max_override_bindings")]
    pub max_override_bindings: usize,
    /// The most bytes of override text all live override bindings hold together. A binding
    /// costs roughly six times its override in memory, so the default bounds them to tens of
    /// megabytes whatever clients send.
    #[serde(default = "default_max_override_total_bytes")]
    pub max_override_total_bytes: usize,
    /// Bindings unused for this long go.
    #[serde(default = "default_idle_ttl_secs")]
    pub idle_ttl_secs: u64,
}

/// What identifies a binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RouteKey {
    pub(crate) name: Path,
    pub(crate) local: Dtab,
}

/// One live binding.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) key: RouteKey,
    pub(crate) state: watch::Receiver<Arc<RouteState>>,
    pub(crate) metrics: Arc<ServiceMetrics>,
    pub(crate) budget: RetryBudget,
    /// `l5d-dst-service`, built once.
    pub(crate) dst_service: HeaderValue,
    /// `l5d-ctx-dtab` for the next hop, built once; `None` without an override.
    pub(crate) ctx_dtab: Option<HeaderValue>,
    last_used: AtomicU64,
    /// Requests that used this binding, counted up to 2: a binding used once is the first to
    /// go when its pool is full.
    uses: AtomicU32,
    /// The bytes of its override, charged to the override pool.
    cost: usize,
    /// For a binding with an override: what it counts against until it is gone.
    alive: Option<Arc<Alive>>,
    task: Option<JoinHandle<()>>,
}

/// Override bindings that exist, whether in the table or evicted while requests still hold
/// them: what bounds their memory however many requests with new overrides arrive at once.
#[derive(Debug, Default)]
struct Alive {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

/// Too many override bindings exist to make another, for `name`.
#[derive(Debug)]
pub(crate) struct OverridesBusy {
    pub(crate) name: Path,
    pub(crate) count: usize,
    pub(crate) bytes: usize,
}

/// The current binding of a route.
#[derive(Debug)]
pub(crate) enum RouteState {
    Pending,
    Failed(Arc<str>),
    Bound { tree: Tree, shown: String },
}

/// A bound tree whose leaves are balancers.
#[derive(Debug)]
pub(crate) enum Tree {
    Leaf(Leaf),
    Alt(Vec<Tree>),
    Union(Vec<(f64, Tree)>),
    Neg,
    Fail,
    Empty,
}

/// A bound name in a tree: its balancer and its residual path.
#[derive(Debug)]
pub(crate) struct Leaf {
    pub(crate) concrete: Arc<Concrete>,
    /// `l5d-dst-residual`, when the residual is not empty.
    pub(crate) residual: Option<HeaderValue>,
}

/// A bound name's endpoints, shared by every route whose tree holds it.
#[derive(Debug)]
pub(crate) struct Concrete {
    pub(crate) id: Path,
    /// What the configuration (`client.destinations`) says its endpoints speak.
    pub(crate) protocol: Option<EndpointProtocol>,
    pub(crate) endpoints: watch::Receiver<Arc<Endpoints>>,
    pub(crate) metrics: Arc<ClientMetrics>,
    /// `l5d-dst-client`, built once.
    pub(crate) dst_client: HeaderValue,
    task: Option<JoinHandle<()>>,
}

/// A bound name's address set, as endpoints.
#[derive(Debug)]
pub(crate) enum Endpoints {
    Pending,
    Neg,
    Failed(Arc<str>),
    Bound(Vec<Arc<Endpoint>>),
}

/// The result of choosing a destination in a bound tree.
#[derive(Debug)]
pub(crate) enum Choice<'t> {
    Endpoint {
        leaf: &'t Leaf,
        endpoint: Arc<Endpoint>,
    },
    /// Some bound name the choice depends on is not resolved yet.
    Pending(&'t Concrete),
    /// Negative: nothing here (an enclosing alternative falls through).
    Neg,
    /// The tree says to fail (`!`).
    Fail,
    /// Bound, but without endpoints (falls through too); the reason is for error messages.
    NoEndpoints(String),
}

/// The binding table and what it needs to make new bindings.
pub(crate) struct Routes {
    /// Bindings without an override.
    plain: Pool,
    /// Bindings with one.
    overrides: Pool,
    overrides_alive: Arc<Alive>,
    hasher: std::collections::hash_map::RandomState,
    concretes: Mutex<HashMap<Path, Weak<Concrete>>>,
    resolver: Arc<dyn Resolver>,
    metrics: Arc<Metrics>,
    client: Arc<ClientSettings>,
    balance: Arc<BalanceSettings>,
    budget: BudgetConfig,
    idle_ttl: Duration,
    epoch: Instant,
}

/// Bindings of one kind, with their limits.
struct Pool {
    shards: Box<[Shard]>,
    live: AtomicUsize,
    bytes: AtomicUsize,
    max_count: usize,
    max_bytes: usize,
    /// Serialises evictions, so that concurrent inserts do not all scan the pool.
    evicting: Mutex<()>,
}

/// One lock's share of a pool.
type Shard = RwLock<HashMap<RouteKey, Arc<Route>>>;

const SHARDS: usize = 16;

fn default_max_bindings() -> usize {
    1_000
}
fn default_max_override_bindings() -> usize {
    1_000
}
fn default_max_override_total_bytes() -> usize {
    2 * 1024 * 1024
}
fn default_idle_ttl_secs() -> u64 {
    600
}

impl Default for BindingCacheConfig {
    fn default() -> Self {
        BindingCacheConfig {
            max_bindings: default_max_bindings(),
            max_override_bindings: default_max_override_bindings(),
            max_override_total_bytes: default_max_override_total_bytes(),
            idle_ttl_secs: default_idle_ttl_secs(),
        }
    }
}

impl BindingCacheConfig {
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        if self.max_bindings == 0 {
            out.push(format!("{at}.max_bindings: must be at least 1"));
        }
        if self.max_override_bindings == 0 {
            out.push(format!("{at}.max_override_bindings: must be at least 1"));
        }
        if self.max_override_total_bytes == 0 {
            out.push(format!("{at}.max_override_total_bytes: must be more than 0"));
        }
        if self.idle_ttl_secs == 0 {
            out.push(format!("{at}.idle_ttl_secs: must be more than 0"));
        }
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("live", &self.len()).finish_non_exhaustive()
    }
}

impl Pool {
    fn new(max_count: usize, max_bytes: usize) -> Self {
        Pool {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            live: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_count,
            max_bytes,
            evicting: Mutex::new(()),
        }
    }

    fn over_limits(&self) -> bool {
        self.live.load(Ordering::Relaxed) > self.max_count || self.bytes.load(Ordering::Relaxed) > self.max_bytes
    }

    /// Removes every binding `doomed` says should go. Returns how many went.
    fn remove_where(&self, mut doomed: impl FnMut(&Route) -> bool) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut map = write(shard);
            map.retain(|_, route| {
                let keep = !doomed(route);
                if !keep {
                    evicted += 1;
                    self.bytes.fetch_sub(route.cost, Ordering::Relaxed);
                }
                keep
            });
        }
        self.live.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }

    /// Brings the pool back within its limits, with room to spare (a tenth of each), so that
    /// the next inserts do not each scan it again: bindings used once go first, then the
    /// least recently used. Returns how many went.
    fn evict_to_fit(&self) -> usize {
        let Ok(_one_at_a_time) = self.evicting.try_lock() else { return 0 };
        if !self.over_limits() {
            return 0;
        }
        let mut ranked: Vec<(bool, u64, usize, *const Route)> = Vec::with_capacity(self.live.load(Ordering::Relaxed));
        for shard in self.shards.iter() {
            let map = read(shard);
            ranked.extend(map.values().map(|r| {
                (r.uses.load(Ordering::Relaxed) >= 2, r.last_used.load(Ordering::Relaxed), r.cost, Arc::as_ptr(r))
            }));
        }
        ranked.sort_unstable_by_key(|(reused, last_used, _, _)| (*reused, *last_used));
        let (count_goal, bytes_goal) = (self.max_count - self.max_count / 10, self.max_bytes - self.max_bytes / 10);
        let (mut count, mut bytes) = (ranked.len(), ranked.iter().map(|r| r.2).sum::<usize>());
        let mut doomed = std::collections::HashSet::new();
        for (_, _, cost, route) in ranked {
            if count <= count_goal && bytes <= bytes_goal {
                break;
            }
            doomed.insert(route);
            count -= 1;
            bytes -= cost;
        }
        // Pointers only identify the bindings seen above; a binding made since is not among them.
        self.remove_where(|route| doomed.contains(&(route as *const Route)))
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(alive) = &self.alive {
            alive.count.fetch_sub(1, Ordering::Relaxed);
            alive.bytes.fetch_sub(self.cost, Ordering::Relaxed);
        }
    }
}

impl Drop for Concrete {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

impl Routes {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        resolver: Arc<dyn Resolver>,
        metrics: Arc<Metrics>,
        client: Arc<ClientSettings>,
        balance: Arc<BalanceSettings>,
        budget: BudgetConfig,
        cache: &BindingCacheConfig,
    ) -> Arc<Self> {
        Arc::new(Routes {
            plain: Pool::new(cache.max_bindings, usize::MAX),
            overrides: Pool::new(cache.max_override_bindings, cache.max_override_total_bytes),
            overrides_alive: Arc::default(),
            hasher: Default::default(),
            concretes: Mutex::new(HashMap::new()),
            resolver,
            metrics,
            client,
            balance,
            budget,
            idle_ttl: Duration::from_secs(cache.idle_ttl_secs),
            epoch: Instant::now(),
        })
    }

    fn now_secs(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_secs()
    }

    fn pool(&self, key: &RouteKey) -> &Pool {
        if key.local.is_empty() { &self.plain } else { &self.overrides }
    }

    /// The binding for `key`, made on first use. A new binding with an override is refused
    /// while override bindings twice the pool's limits exist (those evicted but still used by
    /// requests in flight count too).
    pub(crate) fn get(self: &Arc<Self>, key: RouteKey) -> Result<Arc<Route>, OverridesBusy> {
        let now = self.now_secs();
        let pool = self.pool(&key);
        let shard = &pool.shards[self.hasher.hash_one(&key) as usize % SHARDS];
        if let Some(route) = read(shard).get(&key) {
            route.last_used.store(now, Ordering::Relaxed);
            if route.uses.load(Ordering::Relaxed) < 2 {
                route.uses.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(route.clone());
        }
        if !key.local.is_empty() {
            let alive = &self.overrides_alive;
            let (count, bytes) = (alive.count.load(Ordering::Relaxed), alive.bytes.load(Ordering::Relaxed));
            if count >= pool.max_count.saturating_mul(2) || bytes >= pool.max_bytes.saturating_mul(2) {
                return Err(OverridesBusy { name: key.name, count, bytes });
            }
        }
        // Made outside the lock: subscribing may take the resolver's own locks.
        let made = self.make_route(key.clone(), now);
        let (route, inserted) = {
            let mut map = write(shard);
            match map.get(&key) {
                Some(existing) => (existing.clone(), false),
                None => {
                    map.insert(key, made.clone());
                    (made, true)
                }
            }
        };
        if inserted {
            pool.live.fetch_add(1, Ordering::Relaxed);
            pool.bytes.fetch_add(route.cost, Ordering::Relaxed);
            if pool.over_limits() {
                let evicted = pool.evict_to_fit();
                self.metrics
                    .binding_evictions
                    .get_or_create(&EvictionLabels { reason: "limit" })
                    .inc_by(evicted as u64);
                if evicted > 0 {
                    tracing::debug!(evicted, "bindings over the limit evicted");
                }
            }
            self.update_gauges();
        }
        Ok(route)
    }

    fn update_gauges(&self) {
        self.metrics.bindings.set(self.len() as i64);
        self.metrics.override_bindings.set(self.overrides.live.load(Ordering::Relaxed) as i64);
        self.metrics.override_binding_bytes.set(self.overrides.bytes.load(Ordering::Relaxed) as i64);
    }

    fn make_route(self: &Arc<Self>, key: RouteKey, now: u64) -> Arc<Route> {
        let name = key.name.to_string();
        let mut bind = self.resolver.bind(&key.name, &key.local);
        let initial = self.route_state(&bind.borrow_and_update());
        let (tx, state) = watch::channel(Arc::new(initial));
        let routes = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while bind.changed().await.is_ok() {
                let Some(routes) = routes.upgrade() else { return };
                let next = routes.route_state(&bind.borrow_and_update());
                drop(routes);
                if tx.send(Arc::new(next)).is_err() {
                    return;
                }
            }
        });
        let cost = if key.local.is_empty() { 0 } else { key.local.to_string().len() + name.len() };
        let alive = (!key.local.is_empty()).then(|| {
            let alive = self.overrides_alive.clone();
            alive.count.fetch_add(1, Ordering::Relaxed);
            alive.bytes.fetch_add(cost, Ordering::Relaxed);
            alive
        });
        Arc::new(Route {
            metrics: self.metrics.service(&name),
            budget: RetryBudget::new(&self.budget),
            dst_service: header_value(&name),
            ctx_dtab: ctx_dtab_value(&key.local),
            key,
            state,
            last_used: AtomicU64::new(now),
            uses: AtomicU32::new(1),
            cost,
            alive,
            task: Some(task),
        })
    }

    fn route_state(&self, state: &BindState) -> RouteState {
        match state {
            BindState::Pending => RouteState::Pending,
            BindState::Failed(why) => RouteState::Failed(why.clone()),
            BindState::Bound(tree) => RouteState::Bound { tree: self.tree(tree), shown: tree.to_string() },
        }
    }

    fn tree(&self, tree: &NameTree<BoundLeaf>) -> Tree {
        match tree {
            NameTree::Leaf(leaf) => {
                let residual = leaf.name.residual();
                Tree::Leaf(Leaf {
                    concrete: self.concrete(leaf.name.id()),
                    residual: (!residual.is_empty()).then(|| header_value(&residual.to_string())),
                })
            }
            NameTree::Alt(trees) => Tree::Alt(trees.iter().map(|t| self.tree(t)).collect()),
            NameTree::Union(branches) => {
                Tree::Union(branches.iter().map(|w| (w.weight.get(), self.tree(&w.tree))).collect())
            }
            NameTree::Neg => Tree::Neg,
            NameTree::Fail => Tree::Fail,
            NameTree::Empty => Tree::Empty,
        }
    }

    /// The balancer for bound id `id`, shared while any route holds it.
    fn concrete(&self, id: &Path) -> Arc<Concrete> {
        let mut concretes = lock(&self.concretes);
        if let Some(live) = concretes.get(id).and_then(Weak::upgrade) {
            return live;
        }
        let name = id.to_string();
        let metrics = self.metrics.client(&name);
        let mut addr = self.resolver.resolve(id);
        let initial = self.endpoints(&addr.borrow_and_update(), &[], &metrics);
        let (tx, endpoints) = watch::channel(Arc::new(initial));
        let (client, balance) = (self.client.clone(), self.balance.clone());
        let task_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            while addr.changed().await.is_ok() {
                let previous = tx.borrow().clone();
                let current: &[Arc<Endpoint>] = match &*previous {
                    Endpoints::Bound(list) => list,
                    _ => &[],
                };
                let next = build_endpoints(&addr.borrow_and_update(), current, &client, &balance, &task_metrics);
                if tx.send(Arc::new(next)).is_err() {
                    return;
                }
            }
        });
        let concrete = Arc::new(Concrete {
            id: id.clone(),
            protocol: self.client.destination_protocol(id),
            endpoints,
            dst_client: header_value(&name),
            metrics,
            task: Some(task),
        });
        concretes.retain(|_, w| w.strong_count() > 0);
        concretes.insert(id.clone(), Arc::downgrade(&concrete));
        concrete
    }

    fn endpoints(&self, addr: &Addr, current: &[Arc<Endpoint>], metrics: &ClientMetrics) -> Endpoints {
        build_endpoints(addr, current, &self.client, &self.balance, metrics)
    }

    /// Drops bindings unused for longer than the idle time. Returns how many went.
    pub(crate) fn evict_idle(&self) -> usize {
        let (now, ttl) = (self.now_secs(), self.idle_ttl.as_secs());
        let idle = |route: &Route| now.saturating_sub(route.last_used.load(Ordering::Relaxed)) > ttl;
        let evicted = self.plain.remove_where(idle) + self.overrides.remove_where(idle);
        if evicted > 0 {
            self.metrics.binding_evictions.get_or_create(&EvictionLabels { reason: "idle" }).inc_by(evicted as u64);
            self.update_gauges();
            tracing::debug!(evicted, live = self.len(), "idle bindings evicted");
        }
        evicted
    }

    /// The metrics the bindings are counted in.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How many bindings are live.
    pub(crate) fn len(&self) -> usize {
        self.plain.live.load(Ordering::Relaxed) + self.overrides.live.load(Ordering::Relaxed)
    }

    /// Evicts idle bindings periodically, until the table is dropped.
    pub(crate) fn spawn_evictor(self: &Arc<Self>) -> JoinHandle<()> {
        let routes = Arc::downgrade(self);
        let period = (self.idle_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(routes) = routes.upgrade() else { return };
                routes.evict_idle();
            }
        })
    }
}

/// Endpoints for `addr`, keeping the existing endpoint (its pool, load and health) for every
/// address that stays.
fn build_endpoints(
    addr: &Addr,
    current: &[Arc<Endpoint>],
    client: &Arc<ClientSettings>,
    balance: &Arc<BalanceSettings>,
    metrics: &ClientMetrics,
) -> Endpoints {
    let endpoints = match addr {
        Addr::Pending => Endpoints::Pending,
        Addr::Neg => Endpoints::Neg,
        Addr::Failed { cause } => Endpoints::Failed(cause.as_str().into()),
        Addr::Bound { addrs, .. } => {
            let mut list: Vec<Arc<Endpoint>> = Vec::with_capacity(addrs.len());
            for address in addrs {
                let sa: SocketAddr = address.socket_addr();
                let weight = address.weight();
                let protocol = address
                    .meta
                    .get(APP_PROTOCOL_KEY)
                    .and_then(|v| v.as_str())
                    .and_then(EndpointProtocol::from_app_protocol);
                if let Some(existing) =
                    current.iter().find(|e| e.addr == sa && e.weight() == weight && e.client.protocol() == protocol)
                {
                    list.push(existing.clone());
                } else if !list.iter().any(|e| e.addr == sa) {
                    let client = EndpointClient::new(sa, protocol, client.clone(), metrics.connections.clone());
                    list.push(Arc::new(Endpoint::new(sa, weight, client, balance.clone())));
                }
            }
            Endpoints::Bound(list)
        }
    };
    let count = match &endpoints {
        Endpoints::Bound(list) => list.len(),
        _ => 0,
    };
    metrics.endpoints.set(count as i64);
    endpoints
}

impl Tree {
    /// Chooses an endpoint: union branches by weight (skipping branches that cannot take the
    /// request when another can), alternatives in order (falling through negative branches and
    /// branches without endpoints), then the leaf's balancer.
    pub(crate) fn choose(&self) -> Choice<'_> {
        match self {
            Tree::Leaf(leaf) => {
                let endpoints = leaf.concrete.endpoints.borrow();
                match &**endpoints {
                    Endpoints::Pending => Choice::Pending(&leaf.concrete),
                    Endpoints::Neg => Choice::Neg,
                    Endpoints::Failed(why) => Choice::NoEndpoints(format!("{}: {why}", leaf.concrete.id)),
                    Endpoints::Bound(list) => match balance::pick(list) {
                        Some(endpoint) => Choice::Endpoint { leaf, endpoint: endpoint.clone() },
                        None => Choice::NoEndpoints(format!("{} has no endpoints", leaf.concrete.id)),
                    },
                }
            }
            Tree::Alt(trees) => {
                let mut last = Choice::Neg;
                for tree in trees {
                    match tree.choose() {
                        Choice::Neg => {}
                        no @ Choice::NoEndpoints(_) => last = no,
                        decided => return decided,
                    }
                }
                last
            }
            Tree::Union(branches) => choose_weighted(branches),
            Tree::Neg => Choice::Neg,
            Tree::Fail => Choice::Fail,
            Tree::Empty => Choice::NoEndpoints("the name is bound to the empty set ($)".to_string()),
        }
    }
}

/// Picks union branches by weight until one can take the request.
fn choose_weighted(branches: &[(f64, Tree)]) -> Choice<'_> {
    // Branches tried and found unusable; unions with more than 64 branches are only
    // retried among their first 64.
    let mut excluded: u64 = 0;
    let mut last = Choice::Neg;
    let mut pending = None;
    for _ in 0..branches.len() {
        let total: f64 = branches
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= 64 || excluded & (1 << i) == 0)
            .map(|(_, (w, _))| *w)
            .sum();
        let index = if total > 0.0 {
            let mut point = waymark_random::unit() * total;
            let mut chosen = None;
            for (i, (w, _)) in branches.iter().enumerate() {
                if i < 64 && excluded & (1 << i) != 0 {
                    continue;
                }
                chosen = Some(i);
                if point < *w {
                    break;
                }
                point -= w;
            }
            chosen
        } else {
            // All remaining weights are zero: they share equally.
            (0..branches.len()).find(|i| *i >= 64 || excluded & (1 << i) == 0)
        };
        let Some(index) = index else { break };
        match branches[index].1.choose() {
            chosen @ Choice::Endpoint { .. } => return chosen,
            Choice::Pending(c) => pending = pending.or(Some(c)),
            Choice::Fail => {}
            other => last = other,
        }
        if index >= 64 {
            break;
        }
        excluded |= 1 << index;
    }
    match pending {
        Some(c) => Choice::Pending(c),
        None => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{FailureAccrualConfig, LoadBalancerConfig};
    use crate::client::ClientConfig;

    /// Binds every name to nothing: these tests are about the table, not the trees.
    struct Nothing;

    impl Resolver for Nothing {
        fn bind(&self, _path: &Path, _local: &Dtab) -> watch::Receiver<BindState> {
            watch::channel(BindState::Bound(Arc::new(NameTree::Neg))).1
        }

        fn resolve(&self, _id: &Path) -> watch::Receiver<Addr> {
            watch::channel(Addr::Neg).1
        }
    }

    fn table(max_bindings: usize, idle_ttl_secs: u64) -> Arc<Routes> {
        Routes::new(
            Arc::new(Nothing),
            Metrics::new(),
            Arc::new(ClientSettings::new(&ClientConfig::default()).unwrap()),
            Arc::new(BalanceSettings::new(&LoadBalancerConfig::default(), &FailureAccrualConfig::default())),
            BudgetConfig::default(),
            &BindingCacheConfig { max_bindings, idle_ttl_secs, ..BindingCacheConfig::default() },
        )
    }

    fn key(name: &str) -> RouteKey {
        RouteKey { name: name.parse().unwrap(), local: Dtab::empty() }
    }

    fn with_override(name: &str, dtab: &str) -> RouteKey {
        RouteKey { name: name.parse().unwrap(), local: dtab.parse().unwrap() }
    }

    fn overrides_table(max_count: usize, max_bytes: usize) -> Arc<Routes> {
        let cache = BindingCacheConfig {
            max_bindings: 10,
            max_override_bindings: max_count,
            max_override_total_bytes: max_bytes,
            idle_ttl_secs: 600,
        };
        Routes::new(
            Arc::new(Nothing),
            Metrics::new(),
            Arc::new(ClientSettings::new(&ClientConfig::default()).unwrap()),
            Arc::new(BalanceSettings::new(&LoadBalancerConfig::default(), &FailureAccrualConfig::default())),
            BudgetConfig::default(),
            &cache,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn overrides_never_push_out_the_bindings_of_plain_traffic() {
        let routes = overrides_table(20, usize::MAX);
        let web = routes.get(key("/svc/web")).unwrap();
        for i in 0..1_500 {
            routes.get(with_override("/svc/web", &format!("/x{i} => /y"))).unwrap();
        }
        assert!(Arc::ptr_eq(&web, &routes.get(key("/svc/web")).unwrap()), "the plain binding is the same one");
        assert!(routes.overrides.live.load(Ordering::Relaxed) <= 20);
        assert_eq!(routes.plain.live.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn override_bindings_are_bounded_by_bytes_too() {
        let routes = overrides_table(1_000, 64 * 1024);
        let big = "a".repeat(7_000);
        for i in 0..200 {
            routes.get(with_override("/svc/web", &format!("/x{i} => /{big}"))).unwrap();
            assert!(routes.overrides.bytes.load(Ordering::Relaxed) <= 64 * 1024 + 7_100, "step {i}");
        }
        let live = routes.overrides.live.load(Ordering::Relaxed);
        assert!((5..=10).contains(&live), "about 64 KiB of 7 KB overrides: {live}");
        let text = routes.metrics.encode();
        assert!(text.contains(&format!("router_override_bindings {live}")), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_binding_in_use_outlives_newer_ones_used_once() {
        let routes = table(10, 600);
        let hot = routes.get(key("/svc/hot")).unwrap();
        routes.get(key("/svc/hot")).unwrap();
        for i in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            routes.get(key(&format!("/svc/once-{i}"))).unwrap();
        }
        assert!(Arc::ptr_eq(&hot, &routes.get(key("/svc/hot")).unwrap()), "used twice, kept over 100 names used once");
    }

    #[tokio::test(start_paused = true)]
    async fn new_overrides_are_refused_while_twice_the_limit_is_held_by_requests() {
        let routes = overrides_table(10, usize::MAX / 4);
        // Requests in flight hold their bindings, evicted or not.
        let held: Vec<_> =
            (0..20).map(|i| routes.get(with_override("/svc/web", &format!("/x{i} => /y"))).unwrap()).collect();
        assert!(routes.overrides.live.load(Ordering::Relaxed) <= 10);
        assert!(routes.get(with_override("/svc/web", "/x99 => /y")).is_err(), "twenty exist: no more");
        assert!(routes.get(key("/svc/web")).is_ok(), "plain traffic is never refused");
        assert!(routes.get(with_override("/svc/web", "/x19 => /y")).is_ok(), "a binding in the table is still served");
        drop(held);
        assert!(routes.get(with_override("/svc/web", "/x99 => /y")).is_ok(), "the requests are done");
    }

    #[tokio::test(start_paused = true)]
    async fn bindings_idle_past_the_ttl_go_and_used_ones_stay() {
        let routes = table(100, 10);
        let a = routes.get(key("/svc/a")).unwrap();
        routes.get(key("/svc/b")).unwrap();
        assert_eq!(routes.evict_idle(), 0, "fresh bindings stay");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(Arc::ptr_eq(&a, &routes.get(key("/svc/a")).unwrap()), "a second request shares the binding");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(routes.evict_idle(), 1, "b was idle for 11 s");
        assert_eq!(routes.len(), 1);
        assert!(Arc::ptr_eq(&a, &routes.get(key("/svc/a")).unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_cap_the_least_recently_used_go() {
        let routes = table(10, 600);
        let first = routes.get(key("/svc/0")).unwrap();
        for i in 1..=10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            routes.get(key(&format!("/svc/{i}"))).unwrap();
        }
        assert!(routes.len() <= 10, "{}", routes.len());
        let again = routes.get(key("/svc/0")).unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "the oldest binding was dropped and made anew");
    }

    /// A leaf whose bound name has `endpoints` endpoints (ports from `port`).
    fn leaf(port: u16, endpoints: usize) -> Tree {
        let settings = Arc::new(BalanceSettings::new(&LoadBalancerConfig::default(), &FailureAccrualConfig::default()));
        let list = (0..endpoints)
            .map(|i| {
                let addr: SocketAddr = ([127, 0, 0, 1], port + i as u16).into();
                Arc::new(Endpoint::new(addr, 1.0, crate::client::tests::test_client(addr), settings.clone()))
            })
            .collect();
        let id: Path = format!("/$/inet/127.0.0.1/{port}").parse().unwrap();
        let metrics = Metrics::new().client(&id.to_string());
        Tree::Leaf(Leaf {
            concrete: Arc::new(Concrete {
                id,
                protocol: None,
                endpoints: watch::channel(Arc::new(Endpoints::Bound(list))).1,
                metrics,
                dst_client: HeaderValue::from_static("-"),
                task: None,
            }),
            residual: None,
        })
    }

    /// How often each branch's leaf is chosen in `draws` choices (by the leaf's port).
    fn shares(branches: &[(f64, Tree)], draws: usize) -> HashMap<u16, usize> {
        let mut counts = HashMap::new();
        for _ in 0..draws {
            match choose_weighted(branches) {
                Choice::Endpoint { endpoint, .. } => *counts.entry(endpoint.addr.port()).or_insert(0) += 1,
                other => panic!("{other:?}"),
            }
        }
        counts
    }

    #[test]
    fn union_branches_are_chosen_by_weight() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        waymark_random::seed(7);
        let counts = shares(&[(3.0, leaf(1000, 1)), (1.0, leaf(2000, 1))], 8_000);
        let (a, b) = (counts[&1000], counts[&2000]);
        assert!((5_700..=6_300).contains(&a) && a + b == 8_000, "3:1 expected, got {a}:{b}");
        // Zero weights all round share alike.
        let counts = shares(&[(0.0, leaf(1000, 1)), (0.0, leaf(2000, 1))], 100);
        assert_eq!(counts.len(), 1, "the first of equals: {counts:?}");
    }

    #[test]
    fn union_branches_that_cannot_take_the_request_are_passed_over() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        waymark_random::seed(11);
        // The heavy branch has no endpoints, or is negative, or says fail: the light one takes
        // every request.
        for heavy in [leaf(1000, 0), Tree::Neg, Tree::Fail, Tree::Empty] {
            let counts = shares(&[(99.0, heavy), (1.0, leaf(2000, 1))], 200);
            assert_eq!(counts.get(&2000), Some(&200), "{counts:?}");
        }
        // Nothing usable at all: the reason of the last branch tried.
        assert!(matches!(
            choose_weighted(&[(1.0, leaf(1000, 0)), (1.0, Tree::Neg)]),
            Choice::NoEndpoints(_) | Choice::Neg
        ));
        // A union of failures is negative, as the dtab crate simplifies it.
        assert!(matches!(choose_weighted(&[(1.0, Tree::Fail)]), Choice::Neg));
    }
}
