//! The watch channels of one store instance: one per namespace under watch, and one for the
//! namespace list. Backends feed it; [`crate::DtabStore::watch`] reads from it.
//!
//! Channels of namespaces that are absent and unwatched are swept away, so that watching ever
//! new names cannot grow the map without bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::namespace::Namespace;
use crate::store::VersionedDtab;

/// The current value of every namespace in service, with a watch channel for each namespace
/// that has a value or a receiver.
///
/// Backends change it through [`WatchHub::lock`], so that reading the backing data and
/// publishing what was read can happen under one lock and never publish an older state after
/// a newer one.
#[derive(Debug)]
pub struct WatchHub {
    state: Mutex<HubState>,
}

#[derive(Debug)]
struct HubState {
    namespaces: BTreeMap<Namespace, watch::Sender<Option<VersionedDtab>>>,
    list: watch::Sender<Arc<Vec<Namespace>>>,
    /// The map size at which channels nobody watches any more are swept out.
    sweep_at: usize,
}

/// The smallest map size worth sweeping.
const MIN_SWEEP: usize = 64;

/// Exclusive access to a [`WatchHub`].
pub struct HubGuard<'a>(MutexGuard<'a, HubState>);

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub::new()
    }
}

impl WatchHub {
    /// A hub with no namespaces.
    pub fn new() -> Self {
        let (list, _) = watch::channel(Arc::new(Vec::new()));
        WatchHub { state: Mutex::new(HubState { namespaces: BTreeMap::new(), list, sweep_at: MIN_SWEEP }) }
    }

    /// Exclusive access, to read the backing data and publish what was read in one step.
    pub fn lock(&self) -> HubGuard<'_> {
        // A panic while publishing leaves the map consistent (every step is a whole-value
        // replacement), so a poisoned lock is still safe to use.
        HubGuard(self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A watch of `ns`'s value; `None` while it does not exist.
    pub fn subscribe(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        let mut guard = self.lock();
        let state = &mut guard.0;
        // Watches of absent namespaces that were dropped leave channels behind; sweeping them
        // whenever the map has doubled keeps the cost constant per call.
        if state.namespaces.len() >= state.sweep_at {
            state.namespaces.retain(|_, tx| tx.borrow().is_some() || tx.receiver_count() > 0);
            state.sweep_at = (state.namespaces.len() * 2).max(MIN_SWEEP);
        }
        state.namespaces.entry(ns.clone()).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// A watch of the sorted set of namespaces that have a value.
    pub fn subscribe_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.lock().0.list.subscribe()
    }
}

impl HubGuard<'_> {
    /// The value currently published for `ns`.
    pub fn get(&self, ns: &Namespace) -> Option<VersionedDtab> {
        self.0.namespaces.get(ns).and_then(|tx| tx.borrow().clone())
    }

    /// The namespaces that currently have a value.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.0.list.borrow().as_ref().clone()
    }

    /// Publishes `value` for `ns`; watchers wake only if it differs from the current one.
    /// Returns whether it did.
    pub fn set(&mut self, ns: &Namespace, value: Option<VersionedDtab>) -> bool {
        let changed = self.set_quietly(ns, value);
        if changed {
            self.publish_list();
        }
        changed
    }

    /// Publishes a complete state: every namespace in `values` with its value, every other
    /// one as absent. Used after a full read of the backing data.
    pub fn replace_all(&mut self, values: BTreeMap<Namespace, VersionedDtab>) {
        let gone: Vec<Namespace> = self.0.namespaces.keys().filter(|ns| !values.contains_key(*ns)).cloned().collect();
        let mut changed = false;
        for ns in gone {
            changed |= self.set_quietly(&ns, None);
        }
        for (ns, value) in values {
            changed |= self.set_quietly(&ns, Some(value));
        }
        if changed {
            self.publish_list();
        }
    }

    fn set_quietly(&mut self, ns: &Namespace, value: Option<VersionedDtab>) -> bool {
        let state = &mut self.0;
        let changed = match state.namespaces.get(ns) {
            Some(tx) => tx.send_if_modified(|current| {
                if *current == value {
                    return false;
                }
                *current = value.clone();
                true
            }),
            None if value.is_none() => false,
            None => {
                state.namespaces.insert(ns.clone(), watch::channel(value).0);
                true
            }
        };
        // Forget absent namespaces nobody watches, so that watching random names cannot grow
        // the map without bound.
        let unwatched_absence =
            state.namespaces.get(ns).is_some_and(|tx| tx.borrow().is_none() && tx.receiver_count() == 0);
        if unwatched_absence {
            state.namespaces.remove(ns);
        }
        changed
    }

    fn publish_list(&mut self) {
        let state = &mut self.0;
        let names: Vec<Namespace> =
            state.namespaces.iter().filter(|(_, tx)| tx.borrow().is_some()).map(|(ns, _)| ns.clone()).collect();
        state.list.send_if_modified(|current| {
            if **current == names {
                return false;
            }
            *current = Arc::new(names);
            true
        });
    }
}

impl std::fmt::Debug for HubGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubGuard").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Version;

    fn ns(s: &str) -> Namespace {
        s.parse().unwrap()
    }

    fn value(v: u64, dtab: &str) -> VersionedDtab {
        VersionedDtab { version: Version::from_counter(v), dtab: dtab.parse().unwrap() }
    }

    #[test]
    fn watchers_see_changes_and_not_repeats() {
        let hub = WatchHub::new();
        let mut rx = hub.subscribe(&ns("a"));
        let mut list = hub.subscribe_list();
        assert_eq!(*rx.borrow_and_update(), None);

        assert!(hub.lock().set(&ns("a"), Some(value(1, "/a=>/b"))));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().clone(), Some(value(1, "/a=>/b")));
        assert_eq!(**list.borrow_and_update(), vec![ns("a")]);

        assert!(!hub.lock().set(&ns("a"), Some(value(1, "/a=>/b"))));
        assert!(!rx.has_changed().unwrap());
        assert!(!list.has_changed().unwrap());

        assert!(hub.lock().set(&ns("a"), None));
        assert_eq!(*rx.borrow_and_update(), None);
        assert!(list.borrow_and_update().is_empty());
    }

    #[test]
    fn replace_all_removes_what_is_missing_and_keeps_the_list_sorted() {
        let hub = WatchHub::new();
        let rx_gone = hub.subscribe(&ns("gone"));
        hub.lock().set(&ns("gone"), Some(value(1, "/x=>/y")));
        let all = [(ns("b"), value(1, "/b=>/c")), (ns("a"), value(2, "/a=>/c"))].into_iter().collect();
        hub.lock().replace_all(all);
        assert_eq!(*rx_gone.borrow(), None);
        assert_eq!(hub.lock().namespaces(), vec![ns("a"), ns("b")]);
        assert_eq!(hub.lock().get(&ns("a")), Some(value(2, "/a=>/c")));
    }

    #[test]
    fn abandoned_watches_of_absent_namespaces_are_swept() {
        let hub = WatchHub::new();
        hub.lock().set(&ns("kept"), Some(value(1, "/a=>/b")));
        let held = hub.subscribe(&ns("held"));
        for i in 0..10 * MIN_SWEEP {
            drop(hub.subscribe(&ns(&format!("random-{i}"))));
        }
        let state = hub.lock();
        assert!(state.0.namespaces.len() <= 2 * MIN_SWEEP, "{}", state.0.namespaces.len());
        assert!(state.0.namespaces.contains_key(&ns("kept")) && state.0.namespaces.contains_key(&ns("held")));
        drop(held);
    }

    #[test]
    fn absent_namespaces_without_watchers_are_forgotten() {
        let hub = WatchHub::new();
        drop(hub.subscribe(&ns("never")));
        hub.lock().set(&ns("other"), None);
        hub.lock().set(&ns("never"), None);
        assert!(hub.lock().0.namespaces.is_empty());
    }
}
