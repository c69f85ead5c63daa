//! The store as the interpreter's source of namespace dtabs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::watch;
use tracing::{Instrument, debug_span};
use waymark_dtab::Dtab;
use waymark_interpreter::DtabSource;
use waymark_store::{DtabStore, Namespace, VersionedDtab};

/// Forwards the store's namespace watches, without versions, to the interpreter.
///
/// One channel and one forwarding task per namespace that someone is watching: when the last
/// receiver of a namespace goes (its bindings were dropped as idle), the task ends and the
/// entry goes with it, so that clients naming ever new namespaces cannot grow this without
/// bound. A name that is not a valid namespace never exists, which binds like the empty dtab,
/// and takes no entry at all.
pub struct StoreDtabs {
    store: Arc<dyn DtabStore>,
    watches: Arc<Mutex<HashMap<Namespace, watch::Sender<Option<Dtab>>>>>,
}

type Watches = Mutex<HashMap<Namespace, watch::Sender<Option<Dtab>>>>;

impl StoreDtabs {
    /// A source over `store`.
    pub fn new(store: Arc<dyn DtabStore>) -> Self {
        StoreDtabs { store, watches: Arc::default() }
    }

    /// How many namespaces are being forwarded now.
    pub fn forwarded(&self) -> usize {
        lock(&self.watches).len()
    }
}

fn lock(watches: &Watches) -> MutexGuard<'_, HashMap<Namespace, watch::Sender<Option<Dtab>>>> {
    watches.lock().unwrap_or_else(|e| e.into_inner())
}

impl DtabSource for StoreDtabs {
    fn watch(&self, ns: &str) -> watch::Receiver<Option<Dtab>> {
        let Ok(namespace) = ns.parse::<Namespace>() else { return watch::channel(None).1 };
        let mut watches = lock(&self.watches);
        if let Some(tx) = watches.get(&namespace) {
            return tx.subscribe();
        }
        let mut versioned = self.store.watch(&namespace);
        let tx = watch::Sender::new(versioned.borrow_and_update().as_ref().map(|v| v.dtab.clone()));
        let rx = tx.subscribe();
        watches.insert(namespace.clone(), tx.clone());
        let span = debug_span!("namespace_dtab", ns = %namespace);
        tokio::spawn(forward(Arc::downgrade(&self.watches), namespace, versioned, tx).instrument(span));
        rx
    }
}

/// Forwards one namespace's dtab until nobody watches it, then removes its entry. The check
/// and the removal happen under the map's lock, which subscribing also takes, so a watcher
/// that arrives meanwhile keeps the forwarding alive.
async fn forward(
    watches: Weak<Watches>,
    namespace: Namespace,
    mut versioned: watch::Receiver<Option<VersionedDtab>>,
    tx: watch::Sender<Option<Dtab>>,
) {
    let mut store_open = true;
    loop {
        tokio::select! {
            changed = versioned.changed(), if store_open => {
                if changed.is_err() {
                    store_open = false;
                    continue;
                }
                let dtab = versioned.borrow_and_update().as_ref().map(|v| v.dtab.clone());
                tx.send_if_modified(|current| {
                    let changed = *current != dtab;
                    *current = dtab;
                    changed
                });
            }
            () = tx.closed() => {
                let Some(watches) = watches.upgrade() else { return };
                let mut watches = lock(&watches);
                if tx.receiver_count() == 0 {
                    watches.remove(&namespace);
                    return;
                }
            }
        }
    }
}

impl std::fmt::Debug for StoreDtabs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreDtabs").field("forwarded", &self.forwarded()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use waymark_store::{ChangeMeta, MemoryStore};

    use super::*;

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..1_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never happened");
    }

    #[tokio::test(start_paused = true)]
    async fn namespaces_nobody_watches_any_more_are_forgotten() {
        let source = StoreDtabs::new(Arc::new(MemoryStore::new()));
        for i in 0..1_000 {
            drop(source.watch(&format!("random-{i}")));
        }
        drop(source.watch("not a namespace"));
        until("every entry going", || source.forwarded() == 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_namespace_keeps_forwarding_while_others_come_and_go() {
        let store = Arc::new(MemoryStore::new());
        let source = StoreDtabs::new(store.clone());
        let mut kept = source.watch("web");
        let second = source.watch("web");
        drop(second);
        for i in 0..100 {
            drop(source.watch(&format!("other-{i}")));
        }
        until("the others going", || source.forwarded() == 1).await;
        let ns: Namespace = "web".parse().unwrap();
        store.create(&ns, &"/svc=>/#/io.l5d.fs".parse().unwrap(), &ChangeMeta::default()).await.unwrap();
        kept.changed().await.unwrap();
        assert_eq!(kept.borrow().as_ref().map(ToString::to_string).as_deref(), Some("/svc=>/#/io.l5d.fs"));
        let again = source.watch("web");
        assert_eq!(*again.borrow(), *kept.borrow());
        drop((kept, again));
        until("web going", || source.forwarded() == 0).await;
    }
}
