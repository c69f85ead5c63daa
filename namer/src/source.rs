//! The store as the interpreter's source of namespace dtabs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{Instrument, debug_span};
use waymark_dtab::Dtab;
use waymark_interpreter::DtabSource;
use waymark_store::{DtabStore, Namespace};

/// Forwards the store's namespace watches, without versions, to the interpreter. One
/// forwarding task per namespace that anyone binds in; a name that is not a valid namespace
/// never exists, which binds like the empty dtab.
pub struct StoreDtabs {
    store: Arc<dyn DtabStore>,
    watches: Mutex<HashMap<String, watch::Receiver<Option<Dtab>>>>,
}

impl StoreDtabs {
    /// A source over `store`.
    pub fn new(store: Arc<dyn DtabStore>) -> Self {
        StoreDtabs { store, watches: Mutex::default() }
    }
}

impl DtabSource for StoreDtabs {
    fn watch(&self, ns: &str) -> watch::Receiver<Option<Dtab>> {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = watches.get(ns) {
            return rx.clone();
        }
        let rx = match ns.parse::<Namespace>() {
            Ok(namespace) => {
                let mut versioned = self.store.watch(&namespace);
                let (tx, rx) = watch::channel(versioned.borrow_and_update().as_ref().map(|v| v.dtab.clone()));
                let forward = async move {
                    while versioned.changed().await.is_ok() {
                        let dtab = versioned.borrow_and_update().as_ref().map(|v| v.dtab.clone());
                        tx.send_if_modified(|current| {
                            let changed = *current != dtab;
                            *current = dtab;
                            changed
                        });
                    }
                };
                tokio::spawn(forward.instrument(debug_span!("namespace_dtab", ns = %namespace)));
                rx
            }
            Err(_) => watch::channel(None).1,
        };
        watches.insert(ns.to_string(), rx.clone());
        rx
    }
}

impl std::fmt::Debug for StoreDtabs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreDtabs").finish_non_exhaustive()
    }
}
