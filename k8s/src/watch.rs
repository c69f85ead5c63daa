//! Watched sets of objects, published on a `tokio::sync::watch` channel.
//!
//! A background task runs kube's watcher (list, then watch from the list's resourceVersion,
//! resuming from the last one seen after a dropped connection, listing again after a 410) with
//! backoff, and publishes an [`ObjectSet`]: the objects, whether the first full list is done,
//! and the last failure. A re-list replaces the set in one step once it is complete, so
//! consumers never see a half-listed set; while the API server is unreachable the last good set
//! stays. The task ends when every receiver is gone.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::Instrument as _;

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
    /// The last failure, until an event shows the watch working again. The objects are the
    /// last good ones meanwhile.
    pub error: Option<WatchError>,
}

/// A failure of the watch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchError {
    /// What went wrong.
    pub message: String,
    /// When failures began.
    pub since: Instant,
}

impl<K> Clone for ObjectSet<K> {
    fn clone(&self) -> Self {
        ObjectSet { objects: self.objects.clone(), ready: self.ready, error: self.error.clone() }
    }
}

impl<K> Default for ObjectSet<K> {
    fn default() -> Self {
        ObjectSet { objects: Arc::new(BTreeMap::new()), ready: false, error: None }
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
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let (tx, rx) = watch::channel(ObjectSet::default());
    let span = tracing::info_span!(
        "k8s_watch",
        kind = %K::kind(&K::DynamicType::default()),
        labels = config.label_selector.as_deref().unwrap_or(""),
        fields = config.field_selector.as_deref().unwrap_or(""),
    );
    tokio::spawn(run(api, config, tx).instrument(span));
    rx
}

async fn run<K>(api: Api<K>, config: watcher::Config, tx: watch::Sender<ObjectSet<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // Objects of a list in progress; published together when it is done.
    let mut listing: Option<BTreeMap<ObjectKey, Arc<K>>> = None;
    loop {
        let event = tokio::select! {
            _ = tx.closed() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(object)) => {
                listing.get_or_insert_with(BTreeMap::new).insert(ObjectKey::of(&object), Arc::new(object));
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                tracing::debug!(objects = objects.len(), "listed");
                tx.send_modify(|set| {
                    set.objects = Arc::new(objects);
                    set.ready = true;
                    set.error = None;
                });
            }
            Ok(Event::Apply(object)) => {
                let key = ObjectKey::of(&object);
                tx.send_if_modified(|set| {
                    let unchanged = set.objects.get(&key).is_some_and(|old| {
                        old.resource_version().is_some() && old.resource_version() == object.resource_version()
                    });
                    if unchanged && set.error.is_none() {
                        return false;
                    }
                    Arc::make_mut(&mut set.objects).insert(key, Arc::new(object));
                    set.error = None;
                    true
                });
            }
            Ok(Event::Delete(object)) => {
                let key = ObjectKey::of(&object);
                tx.send_modify(|set| {
                    Arc::make_mut(&mut set.objects).remove(&key);
                    set.error = None;
                });
            }
            Err(error) => {
                tracing::warn!(error = %error, "watch failed; keeping the last objects and retrying");
                let message = error.to_string();
                tx.send_modify(|set| {
                    let since = set.error.as_ref().map_or_else(Instant::now, |e| e.since);
                    set.error = Some(WatchError { message, since });
                });
            }
        }
    }
}

/// Waits until the first full list is done, and returns the set then. Fails only if the
/// watch task is gone (its runtime shut down).
pub async fn wait_ready<K>(rx: &mut watch::Receiver<ObjectSet<K>>) -> Result<ObjectSet<K>, watch::error::RecvError> {
    rx.wait_for(|set| set.ready).await.map(|set| set.clone())
}
