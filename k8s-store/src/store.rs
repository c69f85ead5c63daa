//! The store: `DTab` objects in one Kubernetes namespace.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, info_span, warn};
use waymark_dtab::Dtab;
use waymark_k8s::DTab;
use waymark_k8s::watch::{ObjectKey, ObjectSet, watch_objects};
use waymark_store::kit::{WatchHub, canonical_text};
use waymark_store::{
    ChangeMeta, DtabStore, HistoryEntry, Namespace, ParseFailureMetrics, StoreError, StoreHealth, Version,
    VersionedDtab,
};

use crate::call::{Call, Failure};
use crate::history::{Histories, StoredRecord, deletion_version};
use crate::names::{NAMESPACE_ANNOTATION, namespace_of, object_name};

/// How long a store waits, after it sees a change, for the store that made it to record it
/// in history, before it records the change itself (without author or message): a change
/// made with `kubectl`, or by a store that stopped between its write and its record.
const RECORD_GRACE: Duration = Duration::from_secs(1);

/// How many times `put` tries against concurrent creates and deletes.
const PUT_ATTEMPTS: usize = 20;

/// How a [`K8sStore`] works.
#[derive(Clone)]
pub struct K8sStoreOptions {
    /// The client.
    pub client: kube::Client,
    /// The Kubernetes namespace holding the `DTab` objects and their histories.
    pub namespace: String,
    /// How many history entries each dtab namespace keeps.
    pub history_limit: usize,
    /// How long one request may take before it fails as unavailable.
    pub request_timeout: Duration,
    /// Where to count objects whose dentries do not parse.
    pub parse_failures: ParseFailureMetrics,
}

/// Dtabs kept as namerd's `DTab` objects (`l5d.io/v1alpha1`) in one Kubernetes namespace.
///
/// - The version is the object's `resourceVersion`. `update` is a merge patch carrying
///   `metadata.resourceVersion` (a 409 is [`StoreError::Conflict`]); `create` is a POST (409
///   is [`StoreError::Exists`]); `delete_at` is a DELETE with a `resourceVersion`
///   precondition. Object metadata others set (labels, `kubectl`'s annotations) stays.
/// - Reads (`get`, `list`, `history`) go to the API server, so a read right after a
///   successful write returns it (namerd's store served its watch cache, which could lag).
/// - Watches come from one list-and-watch of the objects: resumed from the last
///   resourceVersion after a dropped connection, listed again after a 410, the last good
///   state kept while the API server cannot be reached. A `DTab` edited into dentries that
///   do not parse keeps its last good dtab in service, and is counted.
/// - History lives in the cluster, one ConfigMap per namespace (see [`crate::history`]),
///   bounded, and records changes made with `kubectl` too.
/// - Every request has a timeout; a request that fails, or a watch that cannot reach the API
///   server, makes the store unavailable in [`DtabStore::health`] at once.
pub struct K8sStore {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    api: Api<DTab>,
    histories: Histories,
    call: Call,
    hub: WatchHub,
    health: Arc<Health>,
    parse_failures: ParseFailureMetrics,
    /// Objects whose dentries do not parse, by namespace, with their resourceVersion, so each
    /// bad version is counted once.
    broken: Mutex<BTreeMap<Namespace, String>>,
    /// Changes this store recorded itself, so that seeing them costs no request.
    recorded: Mutex<HashSet<RecordKey>>,
    pending: mpsc::UnboundedSender<Pending>,
}

/// (life, generation, deleted): what identifies a history record.
type RecordKey = (String, i64, bool);

/// A change seen in the watch, to record unless its maker does.
struct Pending {
    due: tokio::time::Instant,
    ns: Namespace,
    record: StoredRecord,
}

/// The store's health: from requests and from the watch.
struct Health {
    tx: watch::Sender<StoreHealth>,
    parts: Mutex<HealthParts>,
}

#[derive(Default)]
struct HealthParts {
    request: Option<String>,
    watch: Option<String>,
    synced: bool,
}

impl Health {
    fn update(&self, change: impl FnOnce(&mut HealthParts)) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut parts);
        let last_error = parts.watch.clone().or_else(|| parts.request.clone());
        let next = StoreHealth {
            available: last_error.is_none(),
            synced: parts.synced,
            last_error: last_error.or_else(|| (!parts.synced).then(|| "listing DTab objects".to_string())),
        };
        self.tx.send_if_modified(|health| {
            let changed = *health != next;
            *health = next;
            changed
        });
    }
}

impl K8sStore {
    /// Starts the store: it lists and watches the objects in the background, so it does not
    /// wait for the API server; [`DtabStore::health`] says when it is synced. Must be called
    /// inside a tokio runtime.
    pub fn start(options: K8sStoreOptions) -> K8sStore {
        let K8sStoreOptions { client, namespace, history_limit, request_timeout, parse_failures } = options;
        let health = Arc::new(Health { tx: watch::Sender::new(StoreHealth::default()), parts: Mutex::default() });
        health.update(|_| {});
        let observed = health.clone();
        let call = Call {
            what: format!("the Kubernetes API server (namespace {namespace})").into(),
            timeout: request_timeout,
            observe: Arc::new(move |failure: Option<&str>| {
                observed.update(|parts| parts.request = failure.map(str::to_string));
            }),
        };
        let api: Api<DTab> = Api::namespaced(client.clone(), &namespace);
        let maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let (pending, pending_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            api: api.clone(),
            histories: Histories::new(maps, history_limit, call.clone()),
            call,
            hub: WatchHub::new(),
            health,
            parse_failures,
            broken: Mutex::default(),
            recorded: Mutex::default(),
            pending,
        });
        let objects = watch_objects(api, watcher::Config::default());
        let span = info_span!("k8s_dtab_store", ns = %namespace);
        let tasks = vec![
            tokio::spawn(sync(Arc::downgrade(&shared), objects).instrument(span.clone())),
            tokio::spawn(record_seen_changes(Arc::downgrade(&shared), pending_rx).instrument(span)),
        ];
        K8sStore { shared, tasks }
    }
}

impl std::fmt::Debug for K8sStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sStoreOptions")
            .field("namespace", &self.namespace)
            .field("history_limit", &self.history_limit)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for K8sStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for K8sStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sStore").field("namespace", &self.shared.api.namespace()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A version the API server would not take as a precondition: empty (no precondition at
/// all) or `0` (an unconditional update), or not text. Such a version was never given out,
/// so it is stale.
fn foreign(version: &Version) -> Option<&str> {
    version.as_text().filter(|v| !v.is_empty() && *v != "0")
}

/// Whether `object` holds namespace `ns`.
fn holds(object: &DTab, ns: &Namespace) -> bool {
    namespace_of(&object.name_any(), object.annotations().get(NAMESPACE_ANNOTATION).map(String::as_str)).as_ref()
        == Some(ns)
}

fn life(object: &DTab) -> (String, i64) {
    (object.metadata.uid.clone().unwrap_or_default(), object.metadata.generation.unwrap_or(0))
}

fn version_of(object: &DTab) -> Version {
    Version::from_bytes(object.resource_version().unwrap_or_default())
}

impl Shared {
    /// The merge patch that sets a dtab (and, if given, requires a version).
    fn patch(ns: &Namespace, canonical: &Dtab, expected: Option<&str>) -> serde_json::Value {
        let (name, annotated) = object_name(ns);
        let dentries = DTab::new(&name, canonical).dentries;
        let mut metadata = json!({});
        if let Some(expected) = expected {
            metadata["resourceVersion"] = json!(expected);
        }
        if annotated {
            metadata["annotations"] = json!({NAMESPACE_ANNOTATION: ns.as_str()});
        }
        json!({"metadata": metadata, "dentries": dentries})
    }

    async fn get_object(&self, ns: &Namespace) -> Result<Option<DTab>, StoreError> {
        let (name, _) = object_name(ns);
        let object = self.call.run(self.api.get_opt(&name)).await.map_err(|f| f.store(ns))?;
        Ok(object.filter(|o| holds(o, ns)))
    }

    /// What a foreign version is stale against: a namespace that exists.
    async fn stale(&self, ns: &Namespace) -> StoreError {
        match self.get_object(ns).await {
            Ok(Some(_)) => StoreError::Conflict,
            Ok(None) => StoreError::NotFound(ns.clone()),
            Err(e) => e,
        }
    }

    async fn create_object(&self, ns: &Namespace, canonical: &Dtab) -> Result<DTab, Failure> {
        let (name, annotated) = object_name(ns);
        let mut object = DTab::new(&name, canonical);
        if annotated {
            object.annotations_mut().insert(NAMESPACE_ANNOTATION.to_string(), ns.to_string());
        }
        self.call.run(self.api.create(&Default::default(), &object)).await
    }

    async fn patch_object(&self, ns: &Namespace, canonical: &Dtab, expected: Option<&str>) -> Result<DTab, Failure> {
        let (name, _) = object_name(ns);
        let patch = Patch::Merge(Shared::patch(ns, canonical, expected));
        self.call.run(self.api.patch(&name, &PatchParams::default(), &patch)).await
    }

    /// Records a write this store made, with who and why. A failure leaves the record to the
    /// stores that see the change (without who and why): the write itself is done.
    async fn record(&self, ns: &Namespace, record: StoredRecord) {
        let key = (record.life.clone(), record.generation, record.deleted);
        match self.histories.append(ns, record).await {
            Ok(()) => {
                let mut recorded = lock(&self.recorded);
                if recorded.len() >= 10_000 {
                    recorded.clear();
                }
                recorded.insert(key);
            }
            Err(error) => {
                warn!(namespace = %ns, %error, "could not record the change in history; it will be recorded without its author")
            }
        }
    }

    async fn record_write(&self, ns: &Namespace, object: &DTab, text: &str, meta: &ChangeMeta) -> Version {
        let version = version_of(object);
        let (uid, generation) = life(object);
        self.record(ns, StoredRecord::new(&uid, generation, &version, Some(text), meta)).await;
        version
    }

    async fn delete_object(
        &self,
        ns: &Namespace,
        object: &DTab,
        expected: &str,
        meta: &ChangeMeta,
    ) -> Result<(), Failure> {
        let (uid, generation) = life(object);
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: Some(expected.to_string()) }),
            ..DeleteParams::default()
        };
        self.call.run(self.api.delete(&object.name_any(), &params)).await?;
        self.record(ns, StoredRecord::new(&uid, generation, &deletion_version(&uid), None, meta)).await;
        Ok(())
    }

    /// Publishes a complete list of objects: every namespace that parses, and the last good
    /// dtab of one that does not.
    fn publish(&self, objects: &BTreeMap<ObjectKey, Arc<DTab>>) {
        let mut hub = self.hub.lock();
        let mut broken = lock(&self.broken);
        let mut values = BTreeMap::new();
        let mut present = HashSet::new();
        for object in objects.values() {
            let Some(ns) =
                namespace_of(&object.name_any(), object.annotations().get(NAMESPACE_ANNOTATION).map(String::as_str))
            else {
                debug!(name = %object.name_any(), "a DTab whose name is no dtab namespace; ignored");
                continue;
            };
            present.insert(ns.clone());
            match object.to_dtab() {
                Ok(dtab) => {
                    broken.remove(&ns);
                    values.insert(ns, VersionedDtab { version: version_of(object), dtab });
                }
                Err(error) => {
                    let rv = object.resource_version().unwrap_or_default();
                    if broken.insert(ns.clone(), rv.clone()) != Some(rv) {
                        warn!(namespace = %ns, error = %error, "a DTab's dentries do not parse; its last good dtab stays in service");
                        self.parse_failures.record_failure();
                    }
                    if let Some(last) = hub.get(&ns) {
                        values.insert(ns, last);
                    }
                }
            }
        }
        broken.retain(|ns, _| present.contains(ns));
        self.parse_failures.set_invalid(broken.len());
        drop(broken);
        hub.replace_all(values);
    }

    /// Queues the changes between two lists for recording, in case their makers do not.
    fn notice(&self, before: &BTreeMap<ObjectKey, Arc<DTab>>, after: &BTreeMap<ObjectKey, Arc<DTab>>) {
        let due = tokio::time::Instant::now() + RECORD_GRACE;
        let ns_of =
            |o: &DTab| namespace_of(&o.name_any(), o.annotations().get(NAMESPACE_ANNOTATION).map(String::as_str));
        for (key, object) in after {
            let old = before.get(key);
            if old.is_some_and(|old| life(old) == life(object)) {
                continue;
            }
            let (Some(ns), Ok(dtab)) = (ns_of(object), object.to_dtab()) else { continue };
            let Ok((text, _)) = canonical_text(&dtab) else { continue };
            let (uid, generation) = life(object);
            let record = StoredRecord::new(&uid, generation, &version_of(object), Some(&text), &ChangeMeta::default());
            let _ = self.pending.send(Pending { due, ns, record });
        }
        for (key, old) in before {
            if after.get(key).is_some_and(|now| now.metadata.uid == old.metadata.uid) {
                continue;
            }
            let Some(ns) = ns_of(old) else { continue };
            let (uid, generation) = life(old);
            let record = StoredRecord::new(&uid, generation, &deletion_version(&uid), None, &ChangeMeta::default());
            let _ = self.pending.send(Pending { due, ns, record });
        }
    }
}

/// Follows the watched objects into the hub and health, and notices changes for history.
async fn sync(shared: Weak<Shared>, mut objects: watch::Receiver<ObjectSet<DTab>>) {
    let mut previous: Option<Arc<BTreeMap<ObjectKey, Arc<DTab>>>> = None;
    loop {
        {
            let set = objects.borrow_and_update().clone();
            let Some(shared) = shared.upgrade() else { return };
            let error = set.error.as_ref().map(|e| {
                if e.message.contains("404") || e.message.contains("not found") {
                    format!("{} (is the DTab CRD installed? kubectl apply -f deploy/crds/dtabs.l5d.io.yaml)", e.message)
                } else {
                    e.message.clone()
                }
            });
            if set.ready && !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &set.objects)) {
                shared.publish(&set.objects);
                if let Some(before) = &previous {
                    shared.notice(before, &set.objects);
                }
                previous = Some(set.objects.clone());
            }
            shared.health.update(|parts| {
                parts.watch = error;
                parts.synced |= set.ready;
            });
        }
        if objects.changed().await.is_err() {
            return;
        }
    }
}

/// Records, after the grace period, the changes nobody recorded.
async fn record_seen_changes(shared: Weak<Shared>, mut pending: mpsc::UnboundedReceiver<Pending>) {
    while let Some(Pending { due, ns, record }) = pending.recv().await {
        tokio::time::sleep_until(due).await;
        let Some(shared) = shared.upgrade() else { return };
        let key = (record.life.clone(), record.generation, record.deleted);
        if lock(&shared.recorded).contains(&key) {
            continue;
        }
        match shared.histories.has(&ns, &key.0, key.1, key.2).await {
            Ok(true) => {}
            Ok(false) => {
                debug!(namespace = %ns, generation = key.1, deleted = key.2, "recording a change made outside the store");
                if let Err(error) = shared.histories.append(&ns, record).await {
                    warn!(namespace = %ns, %error, "could not record a change made outside the store");
                }
            }
            Err(error) => {
                warn!(namespace = %ns, %error, "could not check the history for a change made outside the store")
            }
        }
    }
}

#[async_trait]
impl DtabStore for K8sStore {
    async fn list(&self) -> Result<Vec<Namespace>, StoreError> {
        let s = &self.shared;
        let mut params = ListParams::default().limit(500);
        let mut namespaces = Vec::new();
        loop {
            let page = s.call.run(s.api.list(&params)).await.map_err(|f| match f {
                Failure::Invalid(why) => StoreError::Invalid(why),
                Failure::Unavailable(why) => StoreError::Unavailable(why),
                Failure::NotFound | Failure::Conflict | Failure::Exists => StoreError::Unavailable(
                    "the API server does not serve DTab objects: is the DTab CRD installed?".to_string(),
                ),
            })?;
            namespaces.extend(page.items.iter().filter_map(|o| {
                namespace_of(&o.name_any(), o.annotations().get(NAMESPACE_ANNOTATION).map(String::as_str))
            }));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        namespaces.sort();
        namespaces.dedup();
        Ok(namespaces)
    }

    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError> {
        let object = self.shared.get_object(ns).await?.ok_or_else(|| StoreError::NotFound(ns.clone()))?;
        let dtab = object
            .to_dtab()
            .map_err(|e| StoreError::Invalid(format!("{e}: {}; its last good dtab stays in service", e.source)))?;
        Ok(VersionedDtab { version: version_of(&object), dtab })
    }

    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        let (text, canonical) = canonical_text(dtab)?;
        let object = self.shared.create_object(ns, &canonical).await.map_err(|f| match f {
            Failure::Conflict => StoreError::Exists,
            other => other.store(ns),
        })?;
        Ok(self.shared.record_write(ns, &object, &text, meta).await)
    }

    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        let (text, canonical) = canonical_text(dtab)?;
        let s = &self.shared;
        for _ in 0..PUT_ATTEMPTS {
            let written = match s.patch_object(ns, &canonical, None).await {
                Err(Failure::NotFound) => match s.create_object(ns, &canonical).await {
                    // Created by someone else meanwhile: patch it.
                    Err(Failure::Exists | Failure::Conflict) => continue,
                    other => other,
                },
                other => other,
            };
            let object = written.map_err(|f| f.store(ns))?;
            return Ok(s.record_write(ns, &object, &text, meta).await);
        }
        Err(StoreError::Unavailable(format!("namespace {ns} was created and deleted under every attempt to write it")))
    }

    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        let (text, canonical) = canonical_text(dtab)?;
        let s = &self.shared;
        let Some(expected) = foreign(expected) else { return Err(s.stale(ns).await) };
        let object = match s.patch_object(ns, &canonical, Some(expected)).await {
            Ok(object) => object,
            // A version the API server cannot even read was never one of its own.
            Err(Failure::Invalid(_)) => return Err(s.stale(ns).await),
            Err(f) => return Err(f.store(ns)),
        };
        Ok(s.record_write(ns, &object, &text, meta).await)
    }

    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError> {
        let s = &self.shared;
        for _ in 0..PUT_ATTEMPTS {
            let object = s.get_object(ns).await?.ok_or_else(|| StoreError::NotFound(ns.clone()))?;
            let current = object.resource_version().unwrap_or_default();
            match s.delete_object(ns, &object, &current, meta).await {
                Ok(()) => return Ok(()),
                // Changed since it was read: delete what it is now.
                Err(Failure::Conflict) => continue,
                Err(f) => return Err(f.store(ns)),
            }
        }
        Err(StoreError::Unavailable(format!("namespace {ns} changed under every attempt to delete it")))
    }

    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError> {
        let s = &self.shared;
        let Some(expected) = foreign(expected) else { return Err(s.stale(ns).await) };
        let object = s.get_object(ns).await?.ok_or_else(|| StoreError::NotFound(ns.clone()))?;
        if object.resource_version().as_deref() != Some(expected) {
            return Err(StoreError::Conflict);
        }
        s.delete_object(ns, &object, expected, meta).await.map_err(|f| f.store(ns))
    }

    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError> {
        let s = &self.shared;
        match s.histories.entries(ns).await? {
            Some(entries) if !entries.is_empty() => Ok(entries),
            _ => match s.get_object(ns).await? {
                Some(_) => Ok(Vec::new()),
                None => Err(StoreError::NotFound(ns.clone())),
            },
        }
    }

    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        self.shared.hub.subscribe(ns)
    }

    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.shared.hub.subscribe_list()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.tx.subscribe()
    }
}
