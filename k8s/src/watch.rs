//! Watched sets of objects, published on a `tokio::sync::watch` channel.
//!
//! A background task lists the objects, then watches from the list's resourceVersion,
//! resuming from the last resourceVersion it saw (an event's or a bookmark's) after a dropped
//! connection, and listing again only after a 410. It publishes an [`ObjectSet`]: the objects
//! (or what a mapping function keeps of them), whether the first full list is done, and the
//! current failure. A re-list replaces the set in one step once it is complete, so consumers
//! never see a half-listed set; while the API server is unreachable the last good set stays.
//! The failure clears as soon as a list completes or a watch is open again, so that "could
//! not look" lasts exactly as long as it is true. The task ends when every receiver is gone.
//!
//! This is kube's watcher state machine (list pages, or a streaming list with
//! `sendInitialEvents`), written out so that a watch that opens again is seen even when no
//! object changed meanwhile: kube's own watcher reports failures but not recoveries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{ListParams, VersionMatch, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, InitialListStrategy, ListSemantic};
use kube::{Api, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::Instrument as _;
use waymark_random::{Attempts, Backoff};

/// The first delay after a failure, doubling (with jitter) up to [`RETRY_MAX`], as kube's
/// default; back to the start after a success.
const RETRY_BASE: Duration = Duration::from_millis(800);

/// The longest delay between attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where an object is: namespace (for namespaced kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace, if the kind is namespaced.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// What a watch sees at one moment.
#[derive(Debug)]
pub struct ObjectSet<K> {
    /// The objects, by namespace and name.
    pub objects: Arc<BTreeMap<ObjectKey, Arc<K>>>,
    /// Whether the first full list is done: before it, an absent object may just not be
    /// listed yet.
    pub ready: bool,
    /// The current failure, until a list completes or a watch opens again. The objects are
    /// the last good ones meanwhile.
    pub error: Option<WatchError>,
    /// How many times the watch has failed since it started.
    pub failures: u64,
}

/// A failure of the watch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchError {
    /// What went wrong.
    pub message: String,
    /// When failures began.
    pub since: Instant,
}

/// The state the task keeps besides what it publishes.
struct Watcher<K, T, F> {
    api: Api<K>,
    config: watcher::Config,
    map: F,
    tx: watch::Sender<ObjectSet<T>>,
    backoff: Attempts,
}

/// Why a watch ended.
enum WatchEnd {
    /// The stream ended (its timeout, or the server closed it): watch again at once.
    Closed,
    /// The resourceVersion is too old (410): list again.
    Expired,
    /// A failure: watch again after a delay.
    Failed,
    /// Nobody watches any more.
    Unwatched,
}

impl<K> Clone for ObjectSet<K> {
    fn clone(&self) -> Self {
        ObjectSet {
            objects: self.objects.clone(),
            ready: self.ready,
            error: self.error.clone(),
            failures: self.failures,
        }
    }
}

impl<K> Default for ObjectSet<K> {
    fn default() -> Self {
        ObjectSet { objects: Arc::new(BTreeMap::new()), ready: false, error: None, failures: 0 }
    }
}

impl<K> ObjectSet<K> {
    /// The object with this namespace and name.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<&Arc<K>> {
        self.objects.get(&ObjectKey { namespace: namespace.map(str::to_string), name: name.to_string() })
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

impl ObjectKey {
    /// The key of an object.
    pub fn of<K: Resource>(object: &K) -> ObjectKey {
        ObjectKey { namespace: object.namespace(), name: object.name_any() }
    }
}

/// Watches the objects `api` and `config` select, in a background task that lives as long as
/// a receiver does.
pub fn watch_objects<K>(api: Api<K>, config: watcher::Config) -> watch::Receiver<ObjectSet<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + PartialEq + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watch_mapped(api, config, |object| object)
}

/// Watches the objects `api` and `config` select, keeping only what `map` makes of each: a
/// consumer that needs a few fields of a large object holds those, not the object. A change
/// that leaves the mapped value as it was is not published.
pub fn watch_mapped<K, T, F>(api: Api<K>, config: watcher::Config, map: F) -> watch::Receiver<ObjectSet<T>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
    T: PartialEq + Send + Sync + 'static,
    F: Fn(K) -> T + Send + 'static,
{
    let (tx, rx) = watch::channel(ObjectSet::default());
    let span = tracing::info_span!(
        "k8s_watch",
        kind = %K::kind(&K::DynamicType::default()),
        ns = api.namespace().unwrap_or(""),
        labels = config.label_selector.as_deref().unwrap_or(""),
        fields = config.field_selector.as_deref().unwrap_or(""),
    );
    let watcher = Watcher { api, config, map, tx, backoff: Backoff::new(RETRY_BASE, RETRY_MAX).attempts() };
    tokio::spawn(watcher.run().instrument(span));
    rx
}

impl<K, T, F> Watcher<K, T, F>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
    T: PartialEq + Send + Sync + 'static,
    F: Fn(K) -> T + Send + 'static,
{
    async fn run(mut self) {
        'list: loop {
            let listed = match self.config.initial_list_strategy {
                InitialListStrategy::ListWatch => self.list().await.map(|rv| (rv, None)),
                InitialListStrategy::StreamingList => self.streaming_list().await,
            };
            let (mut resource_version, mut open) = match listed {
                Ok(listed) => listed,
                Err(error) => {
                    if !self.fail(error).await {
                        return;
                    }
                    continue 'list;
                }
            };
            loop {
                let stream = match open.take() {
                    Some(stream) => Ok(stream),
                    None => self.api.watch(&self.watch_params(false), &resource_version).await.map(|s| s.boxed()),
                };
                let end = match stream {
                    Ok(stream) => {
                        self.recovered();
                        self.follow(stream, &mut resource_version).await
                    }
                    Err(kube::Error::Api(status)) if status.code == 410 => WatchEnd::Expired,
                    Err(error) => {
                        self.report(error.to_string());
                        WatchEnd::Failed
                    }
                };
                match end {
                    WatchEnd::Closed => {}
                    WatchEnd::Expired => {
                        tracing::debug!(resource_version, "resourceVersion expired; listing again");
                        continue 'list;
                    }
                    WatchEnd::Failed => {
                        if !self.pause().await {
                            return;
                        }
                    }
                    WatchEnd::Unwatched => return,
                }
            }
        }
    }

    /// Lists every page and publishes the complete set; returns the list's resourceVersion.
    async fn list(&mut self) -> Result<String, String> {
        let mut params = ListParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            limit: self.config.page_size,
            ..ListParams::default()
        };
        if self.config.list_semantic == ListSemantic::Any {
            params.resource_version = Some("0".into());
            params.version_match = Some(VersionMatch::NotOlderThan);
        }
        let mut objects = BTreeMap::new();
        loop {
            let page = tokio::select! {
                () = self.tx.closed() => return Err(String::new()),
                page = self.api.list(&params) => page.map_err(|e| e.to_string())?,
            };
            let resource_version = page.metadata.resource_version.filter(|rv| !rv.is_empty());
            let continue_token = page.metadata.continue_.filter(|c| !c.is_empty());
            for object in page.items {
                objects.insert(ObjectKey::of(&object), Arc::new((self.map)(object)));
            }
            match (continue_token, resource_version) {
                (Some(token), _) => {
                    params.continue_token = Some(token);
                    // Later pages come from the first page's snapshot.
                    params.resource_version = None;
                    params.version_match = None;
                }
                (None, Some(resource_version)) => {
                    tracing::debug!(objects = objects.len(), "listed");
                    self.publish_all(objects);
                    return Ok(resource_version);
                }
                (None, None) => return Err("the list has no resourceVersion".into()),
            }
        }
    }

    /// A watch with `sendInitialEvents`: the objects arrive as events up to a bookmark that
    /// marks their end; then it goes on as a normal watch.
    async fn streaming_list(&mut self) -> Result<(String, Option<EventStream<K>>), String> {
        let mut stream = self.api.watch(&self.watch_params(true), "0").await.map_err(|e| e.to_string())?.boxed();
        let mut objects = BTreeMap::new();
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => return Err(String::new()),
                event = stream.next() => event,
            };
            match event {
                Some(Ok(WatchEvent::Added(object) | WatchEvent::Modified(object))) => {
                    objects.insert(ObjectKey::of(&object), Arc::new((self.map)(object)));
                }
                Some(Ok(WatchEvent::Deleted(object))) => {
                    objects.remove(&ObjectKey::of(&object));
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                    if bookmark.metadata.annotations.contains_key("k8s.io/initial-events-end") {
                        self.publish_all(objects);
                        return Ok((bookmark.metadata.resource_version, Some(stream)));
                    }
                }
                Some(Ok(WatchEvent::Error(status))) => return Err(status.message.clone()),
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the watch ended before its initial events did".into()),
            }
        }
    }

    /// Applies events until the stream ends or fails.
    async fn follow(&mut self, mut stream: EventStream<K>, resource_version: &mut String) -> WatchEnd {
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => return WatchEnd::Unwatched,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(WatchEvent::Added(object) | WatchEvent::Modified(object))) => {
                    *resource_version = object.resource_version().unwrap_or_default();
                    let key = ObjectKey::of(&object);
                    let value = (self.map)(object);
                    self.tx.send_if_modified(|set| {
                        if set.objects.get(&key).is_some_and(|old| **old == value) {
                            return false;
                        }
                        Arc::make_mut(&mut set.objects).insert(key, Arc::new(value));
                        true
                    });
                }
                Some(Ok(WatchEvent::Deleted(object))) => {
                    *resource_version = object.resource_version().unwrap_or_default();
                    let key = ObjectKey::of(&object);
                    self.tx.send_if_modified(|set| Arc::make_mut(&mut set.objects).remove(&key).is_some());
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => *resource_version = bookmark.metadata.resource_version,
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => return WatchEnd::Expired,
                Some(Ok(WatchEvent::Error(status))) => {
                    self.report(format!("watch error {}: {}", status.code, status.message));
                    return WatchEnd::Failed;
                }
                Some(Err(error)) => {
                    self.report(error.to_string());
                    return WatchEnd::Failed;
                }
                None => return WatchEnd::Closed,
            }
            if resource_version.is_empty() {
                self.report("an event without a resourceVersion".into());
                return WatchEnd::Expired;
            }
        }
    }

    fn watch_params(&self, initial_events: bool) -> WatchParams {
        WatchParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            timeout: self.config.timeout,
            bookmarks: self.config.bookmarks || initial_events,
            send_initial_events: initial_events,
        }
    }

    fn publish_all(&mut self, objects: BTreeMap<ObjectKey, Arc<T>>) {
        self.backoff.reset();
        self.tx.send_modify(|set| {
            set.objects = Arc::new(objects);
            set.ready = true;
            set.error = None;
        });
    }

    /// The watch works again: clear the failure.
    fn recovered(&mut self) {
        self.backoff.reset();
        self.tx.send_if_modified(|set| {
            if let Some(error) = set.error.take() {
                tracing::info!(failing_for = ?error.since.elapsed(), "watching again");
                return true;
            }
            false
        });
    }

    fn report(&self, message: String) {
        tracing::warn!(error = %message, "watch failed; keeping the last objects and retrying");
        self.tx.send_modify(|set| {
            let since = set.error.as_ref().map_or_else(Instant::now, |e| e.since);
            set.error = Some(WatchError { message, since });
            set.failures += 1;
        });
    }

    /// Reports a failure (unless it is the end of watching) and waits before the next try;
    /// false when nobody watches any more.
    async fn fail(&mut self, message: String) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        self.report(message);
        self.pause().await
    }

    /// Waits before the next try; false when nobody watches any more.
    async fn pause(&mut self) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            () = self.tx.closed() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

type EventStream<K> = futures::stream::BoxStream<'static, Result<WatchEvent<K>, kube::Error>>;

/// Waits until the first full list is done, and returns the set then. Fails only if the
/// watch task is gone (its runtime shut down).
pub async fn wait_ready<K>(rx: &mut watch::Receiver<ObjectSet<K>>) -> Result<ObjectSet<K>, watch::error::RecvError> {
    rx.wait_for(|set| set.ready).await.map(|set| set.clone())
}
