//! The watches behind the Kubernetes namers, shared by every binding and address set that
//! needs them and dropped when none does.
//!
//! - One watch of the Services of each namespace anyone names, keeping only what the namers
//!   use of each Service. Lookups answer from it: whether the service exists, carries the
//!   label value and has the port.
//! - Per service, once it exists, one watch of its EndpointSlices
//!   (`kubernetes.io/service-name=<service>`), and a task that keeps its address sets, one
//!   per port asked for, current.
//! - Per service, what its endpoints' pods are (service account, whether meshed), read once
//!   per pod: a pod's service account never changes.
//!
//! A service's watches live while a binding follows one of its lookups
//! ([`ServiceNamer::lookup_changes`](waymark_interpreter::ServiceNamer::lookup_changes)) or
//! an address set of it is watched, and for the idle period after the last lookup. Failures
//! keep the last good state: a watch that cannot reach the API server keeps its objects, a
//! pod that cannot be read keeps its endpoint out of the address set (rather than publish a
//! meshed pod as one that is not), and both are reported in the namer's health.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info_span, warn};
use waymark_dtab::Addr;
use waymark_interpreter::{Dns, DnsFailure, NamerHealth};
use waymark_k8s::watch::{ObjectSet, watch_mapped};
use waymark_random::Backoff;

use crate::model::{
    IdentityNaming, LoadBalancerIngress, PodInfo, PodRef, PodState, ServiceInfo, SliceInfo, addresses,
    load_balancer_addresses,
};
use crate::names::{PortRef, ServiceName};

/// The label the EndpointSlice controller puts on a service's slices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How many pod reads (GETs and LISTs) one namer runs at once.
const POD_READS: usize = 16;

/// The first delay before reading again a pod that could not be read; it doubles, with
/// jitter, up to [`POD_RETRY_MAX`].
const POD_RETRY_BASE: Duration = Duration::from_secs(1);

/// The longest delay between reads of a pod that could not be read.
const POD_RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a pod no endpoint refers to any more stays known, in case it comes back.
const POD_KEPT: Duration = Duration::from_secs(60);

/// What a namer makes of a service.
#[derive(Debug)]
pub(crate) enum Mode {
    /// `io.l5d.k8s`: the endpoints of its EndpointSlices.
    Endpoints(IdentityNaming),
    /// `io.l5d.k8s.external`: its load-balancer addresses.
    External {
        /// Resolves load-balancer host names.
        dns: Dns,
        /// How often they are resolved again.
        refresh: Duration,
    },
}

/// Every watch one namer holds.
pub(crate) struct Cluster {
    client: kube::Client,
    mode: Mode,
    idle_ttl: Duration,
    state: Mutex<ClusterState>,
    /// Moves whenever any lookup's answer may have changed.
    changes: watch::Sender<u64>,
    pod_reads: Arc<Semaphore>,
    /// Failures of watches and reads that are gone, so that the count never goes back.
    retired_failures: AtomicU64,
}

#[derive(Default)]
struct ClusterState {
    namespaces: HashMap<String, NamespaceEntry>,
    services: HashMap<ServiceKey, Arc<ServiceWatch>>,
}

/// The Services of one namespace, watched for as long as one of its services is.
struct NamespaceEntry {
    services: watch::Receiver<ObjectSet<ServiceInfo>>,
    users: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ServiceKey {
    namespace: String,
    name: String,
}

/// One service's watches and address sets.
pub(crate) struct ServiceWatch {
    key: ServiceKey,
    /// The namespace's Services.
    services: watch::Receiver<ObjectSet<ServiceInfo>>,
    /// Moves whenever a lookup of this service may answer differently; receivers are the
    /// bindings that follow such a lookup.
    changes: watch::Sender<u64>,
    /// Wakes the service's task: an address set was added.
    wake: Notify,
    state: Mutex<WatchState>,
}

struct WatchState {
    last_lookup: Instant,
    /// What lookups were last told: whether the namespace was listed, and the service.
    seen: Option<(bool, Option<Arc<ServiceInfo>>)>,
    slices: Option<watch::Receiver<ObjectSet<SliceInfo>>>,
    pods: BTreeMap<String, PodEntry>,
    addrs: BTreeMap<PortRef, watch::Sender<Addr>>,
    /// Load-balancer host names and their addresses (external mode).
    resolved: BTreeMap<String, Vec<IpAddr>>,
    /// When the host names were last resolved (external mode).
    resolved_at: Option<(Instant, Vec<String>)>,
    /// Why the last resolution failed, while it does.
    dns_problem: Option<String>,
    failures: u64,
}

/// What is known of one pod.
#[derive(Debug, Clone)]
enum PodEntry {
    Reading,
    Known { info: PodInfo, seen: Instant },
    Gone { uid: Option<String>, seen: Instant },
    Failed { uid: Option<String>, message: String, retry_at: Instant, attempts: u32 },
}

/// What a lookup finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The namespace has not been listed yet.
    Pending,
    /// No such service, label value or port.
    Neg,
    /// The service has the port.
    Bound,
}

/// The outcome of reading some pods: name, the uid asked for, and what was found.
type PodReads = Vec<(String, Option<String>, Result<Option<PodInfo>, String>)>;

/// The outcome of resolving load-balancer host names: the names, and each one's answer.
type Resolutions = (Vec<String>, Vec<(String, Result<Vec<IpAddr>, DnsFailure>)>);

impl Cluster {
    pub(crate) fn new(client: kube::Client, mode: Mode, idle_ttl: Duration) -> Arc<Self> {
        Arc::new(Cluster {
            client,
            mode,
            idle_ttl,
            state: Mutex::default(),
            changes: watch::Sender::new(0),
            pod_reads: Arc::new(Semaphore::new(POD_READS)),
            retired_failures: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Answers a lookup of `name` from the current state, starting its watches if needed.
    pub(crate) fn lookup(self: &Arc<Self>, name: &ServiceName, label_key: Option<&str>) -> Answer {
        let watch = {
            let mut state = self.lock();
            let watch = self.service(&mut state, &name.namespace, &name.service);
            watch.state().last_lookup = Instant::now();
            watch
        };
        let services = watch.services.borrow();
        if !services.ready {
            return Answer::Pending;
        }
        let Some(info) = services.get(Some(&name.namespace), &name.service) else { return Answer::Neg };
        if let (Some(key), Some(value)) = (label_key, &name.label)
            && info.labels.get(key) != Some(value)
        {
            return Answer::Neg;
        }
        if info.port(&name.port).is_none() {
            return Answer::Neg;
        }
        Answer::Bound
    }

    /// A receiver that moves when a lookup of `name`'s service may answer differently.
    pub(crate) fn lookup_changes(self: &Arc<Self>, name: &ServiceName) -> watch::Receiver<u64> {
        let mut state = self.lock();
        self.service(&mut state, &name.namespace, &name.service).changes.subscribe()
    }

    /// The address set of a port of a service.
    pub(crate) fn addresses(self: &Arc<Self>, name: &ServiceName) -> watch::Receiver<Addr> {
        let mut state = self.lock();
        let watch = self.service(&mut state, &name.namespace, &name.service);
        let mut watch_state = watch.state();
        if let Some(tx) = watch_state.addrs.get(&name.port) {
            return tx.subscribe();
        }
        let (addr, _) = watch.compute(self, &mut watch_state, &name.port, &Addr::Pending);
        let tx = watch::Sender::new(addr);
        let rx = tx.subscribe();
        watch_state.addrs.insert(name.port.clone(), tx);
        drop(watch_state);
        // The task reads the pods this port's endpoints need.
        watch.wake.notify_one();
        rx
    }

    /// The service's watch, started if there is none. Called with the cluster's lock held, so
    /// that a watch is never retired between being found and being used.
    fn service(self: &Arc<Self>, state: &mut ClusterState, namespace: &str, name: &str) -> Arc<ServiceWatch> {
        let key = ServiceKey { namespace: namespace.to_string(), name: name.to_string() };
        if let Some(watch) = state.services.get(&key) {
            return watch.clone();
        }
        let entry = state.namespaces.entry(namespace.to_string()).or_insert_with(|| {
            debug!(ns = namespace, "watching the namespace's services");
            let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
            NamespaceEntry { services: watch_mapped(api, watcher::Config::default(), ServiceInfo::from), users: 0 }
        });
        entry.users += 1;
        let watch = Arc::new(ServiceWatch {
            key: key.clone(),
            services: entry.services.clone(),
            changes: watch::Sender::new(0),
            wake: Notify::new(),
            state: Mutex::new(WatchState {
                last_lookup: Instant::now(),
                seen: None,
                slices: None,
                pods: BTreeMap::new(),
                addrs: BTreeMap::new(),
                resolved: BTreeMap::new(),
                resolved_at: None,
                dns_problem: None,
                failures: 0,
            }),
        });
        state.services.insert(key, watch.clone());
        let span = info_span!("k8s_service", ns = namespace, svc = name);
        tokio::spawn(keep_service(Arc::downgrade(self), watch.clone()).instrument(span));
        watch
    }

    /// Removes a service's watch if it is still idle; false if it is wanted again.
    fn retire(&self, watch: &ServiceWatch) -> bool {
        let mut state = self.lock();
        if !watch.is_idle(self.idle_ttl) {
            return false;
        }
        state.services.remove(&watch.key);
        let read_failures = watch.state().failures;
        let failures = read_failures + watch.slice_failures();
        self.retired_failures.fetch_add(failures, Ordering::Relaxed);
        if let Some(entry) = state.namespaces.get_mut(&watch.key.namespace) {
            entry.users -= 1;
            if entry.users == 0 {
                let failures = entry.services.borrow().failures;
                self.retired_failures.fetch_add(failures, Ordering::Relaxed);
                state.namespaces.remove(&watch.key.namespace);
            }
        }
        true
    }

    /// Whether the namer can read what it watches; it serves the last good state meanwhile.
    pub(crate) fn health(&self) -> NamerHealth {
        let state = self.lock();
        let mut problems = Vec::new();
        let mut failures = self.retired_failures.load(Ordering::Relaxed);
        let mut namespaces: Vec<(&String, &NamespaceEntry)> = state.namespaces.iter().collect();
        namespaces.sort_by_key(|(ns, _)| *ns);
        for (namespace, entry) in namespaces {
            let set = entry.services.borrow();
            failures += set.failures;
            if let Some(error) = &set.error {
                problems.push(format!("cannot watch the services of namespace {namespace}: {}", error.message));
            }
        }
        let mut services: Vec<&Arc<ServiceWatch>> = state.services.values().collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        for watch in services {
            failures += watch.slice_failures();
            let watch_state = watch.state();
            failures += watch_state.failures;
            let ServiceKey { namespace, name } = &watch.key;
            if let Some(error) = watch_state.slices.as_ref().and_then(|s| s.borrow().error.clone()) {
                problems.push(format!("cannot watch the EndpointSlices of {namespace}/{name}: {}", error.message));
            }
            for (pod, entry) in &watch_state.pods {
                if let PodEntry::Failed { message, .. } = entry {
                    problems.push(format!("cannot read pod {namespace}/{pod}: {message}"));
                }
            }
            if let Some(problem) = &watch_state.dns_problem {
                problems.push(format!("cannot resolve the load balancer of {namespace}/{name}: {problem}"));
            }
        }
        let problem = match problems.len() {
            0 => None,
            1 => Some(format!("{}; serving the last good state", problems[0])),
            n => Some(format!("{} (and {} more); serving the last good state", problems[0], n - 1)),
        };
        NamerHealth { problem, read_failures: failures }
    }

    /// What the namer holds, for its admin page.
    pub(crate) fn state_json(&self) -> Value {
        let state = self.lock();
        let namespaces: serde_json::Map<String, Value> = state
            .namespaces
            .iter()
            .map(|(namespace, entry)| {
                let set = entry.services.borrow();
                let value = json!({
                    "listed": set.ready,
                    "services": set.len(),
                    "error": set.error.as_ref().map(|e| e.message.clone()),
                    "failures": set.failures,
                });
                (namespace.clone(), value)
            })
            .collect();
        let services: serde_json::Map<String, Value> = state
            .services
            .values()
            .map(|watch| (format!("{}/{}", watch.key.namespace, watch.key.name), watch.state_json(&self.mode)))
            .collect();
        json!({"namespaces": namespaces, "services": services})
    }
}

impl ServiceWatch {
    fn state(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slice_failures(&self) -> u64 {
        self.state().slices.as_ref().map_or(0, |s| s.borrow().failures)
    }

    /// Nobody follows a lookup of it or watches an address set, and nobody has looked it up
    /// for the idle period.
    fn is_idle(&self, ttl: Duration) -> bool {
        let state = self.state();
        self.changes.receiver_count() == 0
            && state.addrs.values().all(|tx| tx.receiver_count() == 0)
            && state.last_lookup.elapsed() >= ttl
    }

    /// Takes in the namespace's current Services: tells the bindings that follow this
    /// service when what lookups see of it changed, and starts watching its EndpointSlices
    /// once it exists.
    fn refresh(&self, cluster: &Cluster, services: &mut watch::Receiver<ObjectSet<ServiceInfo>>) {
        let now = {
            let set = services.borrow_and_update();
            (set.ready, set.get(Some(&self.key.namespace), &self.key.name).cloned())
        };
        let mut state = self.state();
        if state.seen.as_ref() != Some(&now) {
            let first = state.seen.is_none();
            state.seen = Some(now.clone());
            if !first || now.0 {
                self.changes.send_modify(|n| *n += 1);
                cluster.changes.send_modify(|n| *n += 1);
            }
        }
        if now.1.is_some() && state.slices.is_none() && matches!(cluster.mode, Mode::Endpoints(_)) {
            debug!("the service exists; watching its EndpointSlices");
            let api: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &self.key.namespace);
            let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={}", self.key.name));
            state.slices = Some(watch_mapped(api, config, SliceInfo::from));
        }
    }

    /// The address set of `port` from the current state, and the pods it waits for.
    fn compute(
        &self,
        cluster: &Cluster,
        state: &mut WatchState,
        port: &PortRef,
        current: &Addr,
    ) -> (Addr, Vec<PodRef>) {
        let services = self.services.borrow();
        if !services.ready {
            return (Addr::Pending, Vec::new());
        }
        let Some(info) = services.get(Some(&self.key.namespace), &self.key.name) else {
            return (Addr::Neg, Vec::new());
        };
        let Some(service_port) = info.port(port) else { return (Addr::Neg, Vec::new()) };
        match &cluster.mode {
            Mode::External { .. } => {
                let hostnames = info.load_balancer.iter().any(|i| matches!(i, LoadBalancerIngress::Hostname(_)));
                if hostnames && state.resolved_at.is_none() && current.is_pending() {
                    return (Addr::Pending, Vec::new());
                }
                let found = load_balancer_addresses(info, service_port, &state.resolved);
                (Addr::Bound { addrs: found, meta: Default::default() }, Vec::new())
            }
            Mode::Endpoints(naming) => {
                let Some(slices) = &state.slices else { return (Addr::Pending, Vec::new()) };
                let slices = slices.borrow();
                if !slices.ready {
                    return (Addr::Pending, Vec::new());
                }
                let pods = &state.pods;
                let pod_state = |pod: &PodRef| match pods.get(&pod.name) {
                    Some(PodEntry::Known { info, .. }) if same_pod(&info.uid, &pod.uid) => PodState::Known(info),
                    Some(PodEntry::Gone { uid, .. }) if same_pod(uid, &pod.uid) => PodState::Gone,
                    _ => PodState::Unknown,
                };
                let (found, waiting) = addresses(
                    service_port,
                    slices.objects.values().map(|s| &**s),
                    pod_state,
                    naming,
                    &self.key.namespace,
                );
                // The first answer waits for the pods being read for the first time, so that
                // it does not go out with only some of its endpoints.
                let first_reads = waiting.iter().any(|p| !matches!(pods.get(&p.name), Some(PodEntry::Failed { .. })));
                if first_reads && current.is_pending() {
                    return (Addr::Pending, waiting.into_iter().collect());
                }
                (Addr::Bound { addrs: found, meta: Default::default() }, waiting.into_iter().collect())
            }
        }
    }

    /// Recomputes every address set; returns the pods to read now.
    fn recompute(&self, cluster: &Cluster) -> Vec<PodRef> {
        let mut state = self.state();
        state.addrs.retain(|_, tx| tx.receiver_count() > 0);
        let ports: Vec<PortRef> = state.addrs.keys().cloned().collect();
        for port in ports {
            let current = state.addrs[&port].borrow().clone();
            let (addr, _) = self.compute(cluster, &mut state, &port, &current);
            if let Some(tx) = state.addrs.get(&port) {
                tx.send_if_modified(|a| {
                    if *a == addr {
                        return false;
                    }
                    *a = addr;
                    true
                });
            }
        }
        self.pods_to_read(&mut state)
    }

    /// Every pod an endpoint refers to whose details are not known, not being read and not
    /// waiting for a retry; they are marked as being read. Pods nobody refers to any more
    /// are forgotten after a while.
    fn pods_to_read(&self, state: &mut WatchState) -> Vec<PodRef> {
        let Some(slices) = &state.slices else { return Vec::new() };
        let referenced: BTreeSet<PodRef> = slices
            .borrow()
            .objects
            .values()
            .flat_map(|s| s.endpoints.iter().filter_map(|e| e.pod.clone()).collect::<Vec<_>>())
            .collect();
        let now = Instant::now();
        let names: BTreeSet<&str> = referenced.iter().map(|p| p.name.as_str()).collect();
        state.pods.retain(|name, entry| match entry {
            PodEntry::Reading => true,
            PodEntry::Known { seen, .. } | PodEntry::Gone { seen, .. } => {
                names.contains(name.as_str()) || now.duration_since(*seen) < POD_KEPT
            }
            PodEntry::Failed { .. } => names.contains(name.as_str()),
        });
        let mut to_read = Vec::new();
        for pod in referenced {
            let read = match state.pods.get_mut(&pod.name) {
                None => true,
                Some(PodEntry::Reading) => false,
                Some(PodEntry::Known { info, seen }) => {
                    *seen = now;
                    !same_pod(&info.uid, &pod.uid)
                }
                Some(PodEntry::Gone { uid, seen }) => {
                    *seen = now;
                    !same_pod(uid, &pod.uid)
                }
                Some(PodEntry::Failed { uid, retry_at, .. }) => !same_pod(uid, &pod.uid) || *retry_at <= now,
            };
            if read {
                state.pods.insert(pod.name.clone(), PodEntry::Reading);
                to_read.push(pod);
            }
        }
        to_read
    }

    /// Records what reading pods found.
    fn record_reads(&self, reads: PodReads) {
        let mut state = self.state();
        let now = Instant::now();
        for (name, uid, result) in reads {
            let attempts = match state.pods.get(&name) {
                Some(PodEntry::Failed { attempts, .. }) => *attempts,
                _ => 0,
            };
            let entry = match result {
                Ok(Some(info)) if same_pod(&info.uid, &uid) => PodEntry::Known { info, seen: now },
                // Another pod of the same name: the one the endpoint names is gone.
                Ok(Some(_)) | Ok(None) => PodEntry::Gone { uid, seen: now },
                Err(message) => {
                    state.failures += 1;
                    let retry_in = Backoff::new(POD_RETRY_BASE, POD_RETRY_MAX).delay(attempts);
                    warn!(pod = %name, error = %message, "cannot read the pod; its endpoint waits");
                    PodEntry::Failed { uid, message, retry_at: now + retry_in, attempts: attempts + 1 }
                }
            };
            state.pods.insert(name, entry);
        }
    }

    /// The earliest retry of a pod read that failed.
    fn next_retry(&self) -> Option<Instant> {
        self.state()
            .pods
            .values()
            .filter_map(|e| match e {
                PodEntry::Failed { retry_at, .. } => Some(*retry_at),
                _ => None,
            })
            .min()
    }

    /// The load-balancer host names to resolve now, if it is time (external mode).
    fn hostnames_due(&self, refresh: Duration) -> Option<Vec<String>> {
        let hostnames: Vec<String> = {
            let services = self.services.borrow();
            let info = services.get(Some(&self.key.namespace), &self.key.name)?;
            info.load_balancer
                .iter()
                .filter_map(|i| match i {
                    LoadBalancerIngress::Hostname(h) => Some(h.clone()),
                    LoadBalancerIngress::Ip(_) => None,
                })
                .collect()
        };
        if hostnames.is_empty() {
            return None;
        }
        match &self.state().resolved_at {
            Some((at, names)) if *names == hostnames && at.elapsed() < refresh => None,
            _ => Some(hostnames),
        }
    }

    /// Records resolved host names; a lookup that failed keeps the host's last addresses.
    fn record_resolution(&self, hostnames: Vec<String>, results: Vec<(String, Result<Vec<IpAddr>, DnsFailure>)>) {
        let mut state = self.state();
        let mut problem = None;
        for (host, result) in results {
            match result {
                Ok(ips) => {
                    state.resolved.insert(host, ips);
                }
                Err(DnsFailure::NoSuchHost(_)) => {
                    state.resolved.remove(&host);
                }
                Err(e @ DnsFailure::Failed { .. }) => {
                    state.failures += 1;
                    problem = Some(e.to_string());
                }
            }
        }
        state.resolved.retain(|host, _| hostnames.contains(host));
        state.dns_problem = problem;
        state.resolved_at = Some((Instant::now(), hostnames));
    }

    fn state_json(&self, mode: &Mode) -> Value {
        let services = self.services.borrow();
        let service = services.get(Some(&self.key.namespace), &self.key.name).map(|info| {
            json!({
                "labels": info.labels,
                "ports": info.ports.iter().map(|p| json!({
                    "name": p.name,
                    "port": p.port,
                    "targetPort": match &p.target {
                        crate::model::TargetPort::Number(n) => json!(n),
                        crate::model::TargetPort::Name(name) => json!(name),
                    },
                    "protocol": if p.tcp { "TCP" } else { "other" },
                    "appProtocol": p.app_protocol,
                })).collect::<Vec<_>>(),
            })
        });
        let state = self.state();
        let slices = state.slices.as_ref().map(|s| {
            let set = s.borrow();
            json!({
                "listed": set.ready,
                "slices": set.len(),
                "endpoints": set.objects.values().map(|s| s.endpoints.len()).sum::<usize>(),
                "error": set.error.as_ref().map(|e| e.message.clone()),
                "failures": set.failures,
            })
        });
        let addresses: serde_json::Map<String, Value> = state
            .addrs
            .iter()
            .map(|(port, tx)| (port.to_string(), serde_json::to_value(&*tx.borrow()).unwrap_or(Value::Null)))
            .collect();
        let mut pods = json!({});
        if matches!(mode, Mode::Endpoints(_)) {
            let count = |f: fn(&PodEntry) -> bool| state.pods.values().filter(|e| f(e)).count();
            let failed: Vec<Value> = state
                .pods
                .iter()
                .filter_map(|(name, e)| match e {
                    PodEntry::Failed { message, attempts, .. } => {
                        Some(json!({"pod": name, "error": message, "attempts": attempts}))
                    }
                    _ => None,
                })
                .collect();
            pods = json!({
                "known": count(|e| matches!(e, PodEntry::Known { .. })),
                "gone": count(|e| matches!(e, PodEntry::Gone { .. })),
                "reading": count(|e| matches!(e, PodEntry::Reading)),
                "failed": failed,
            });
        }
        json!({
            "service": service,
            "endpointSlices": slices,
            "addresses": addresses,
            "pods": pods,
            "loadBalancerHosts": state.resolved.iter().map(|(h, ips)| (h.clone(), json!(ips))).collect::<serde_json::Map<_, _>>(),
            "bindings": self.changes.receiver_count(),
            "idleForMs": u64::try_from(state.last_lookup.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

fn same_pod(known: &Option<String>, wanted: &Option<String>) -> bool {
    match (known, wanted) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Keeps one service's address sets current until it is idle.
async fn keep_service(cluster: Weak<Cluster>, watch: Arc<ServiceWatch>) {
    let mut services = watch.services.clone();
    let mut slices: Option<watch::Receiver<ObjectSet<SliceInfo>>> = None;
    let mut reads: JoinSet<PodReads> = JoinSet::new();
    let mut resolving: JoinSet<Resolutions> = JoinSet::new();
    let idle_ttl = match cluster.upgrade() {
        Some(c) => c.idle_ttl,
        None => return,
    };
    let mut idle_checks = tokio::time::interval((idle_ttl / 2).max(Duration::from_millis(100)));
    idle_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retry = {
            let Some(cluster) = cluster.upgrade() else { return };
            watch.refresh(&cluster, &mut services);
            if slices.is_none()
                && let Some(rx) = &watch.state().slices
            {
                slices = Some(rx.clone());
            }
            if let Some(rx) = &mut slices {
                rx.mark_unchanged();
            }
            let to_read = watch.recompute(&cluster);
            if !to_read.is_empty() {
                let selector = services
                    .borrow()
                    .get(Some(&watch.key.namespace), &watch.key.name)
                    .and_then(|info| info.selector_text());
                let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &watch.key.namespace);
                reads.spawn(read_pods(api, selector, to_read, cluster.pod_reads.clone()));
            }
            if let Mode::External { dns, refresh } = &cluster.mode
                && resolving.is_empty()
                && let Some(hostnames) = watch.hostnames_due(*refresh)
            {
                let dns = dns.clone();
                resolving.spawn(async move {
                    let mut results = Vec::new();
                    for host in &hostnames {
                        results.push((host.clone(), dns.resolve(host).await));
                    }
                    (hostnames, results)
                });
            }
            watch.next_retry()
        };
        let retry_sleep = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let slices_changed = async {
            match &mut slices {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = services.changed() => if changed.is_err() { return },
            () = slices_changed => {}
            Some(done) = reads.join_next(), if !reads.is_empty() => {
                if let Ok(done) = done {
                    watch.record_reads(done);
                }
            }
            Some(done) = resolving.join_next(), if !resolving.is_empty() => {
                if let Ok((hostnames, results)) = done {
                    watch.record_resolution(hostnames, results);
                }
            }
            () = watch.wake.notified() => {}
            () = retry_sleep => {}
            _ = idle_checks.tick() => {
                let Some(cluster) = cluster.upgrade() else { return };
                if watch.is_idle(idle_ttl) && cluster.retire(&watch) {
                    debug!("idle; no longer watched");
                    return;
                }
            }
        }
    }
}

/// Reads the pods endpoints refer to: with one list by the Service's selector when several
/// are needed, and one GET for each the list did not have.
async fn read_pods(api: Api<Pod>, selector: Option<String>, pods: Vec<PodRef>, permits: Arc<Semaphore>) -> PodReads {
    let mut found: HashMap<String, PodInfo> = HashMap::new();
    if let (Some(selector), true) = (selector, pods.len() > 1)
        && let Ok(_permit) = permits.acquire().await
    {
        let mut params = ListParams::default().labels(&selector).limit(500);
        loop {
            match api.list(&params).await {
                Ok(list) => {
                    for pod in list.items {
                        if let Some(name) = pod.metadata.name.clone() {
                            found.insert(name, PodInfo::from(pod));
                        }
                    }
                    match list.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => params = params.continue_token(&token),
                        None => break,
                    }
                }
                // The GETs below try again, one by one.
                Err(error) => {
                    debug!(%error, "listing the service's pods failed");
                    break;
                }
            }
        }
    }
    let mut reads = Vec::with_capacity(pods.len());
    for pod in pods {
        let result = match found.remove(&pod.name) {
            Some(info) => Ok(Some(info)),
            None => {
                let _permit = permits.acquire().await;
                api.get_opt(&pod.name).await.map(|p| p.map(PodInfo::from)).map_err(|e| e.to_string())
            }
        };
        reads.push((pod.name, pod.uid, result));
    }
    reads
}
