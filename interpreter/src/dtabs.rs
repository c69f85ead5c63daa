//! Where namespace dtabs come from: a store (in the namer service) or fixed configuration
//! (a standalone router).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use waymark_dtab::Dtab;

/// A source of namespace dtabs, as watches.
pub trait DtabSource: Send + Sync + 'static {
    /// Watches the dtab of namespace `ns`: `None` while the namespace does not exist, which
    /// binds like the empty dtab.
    fn watch(&self, ns: &str) -> watch::Receiver<Option<Dtab>>;
}

/// Dtabs held in memory and changed by calling [`FixedDtabs::set`]; for standalone routers
/// and tests.
#[derive(Debug, Default)]
pub struct FixedDtabs {
    namespaces: Mutex<HashMap<String, watch::Sender<Option<Dtab>>>>,
}

impl FixedDtabs {
    /// No namespaces.
    pub fn new() -> Self {
        FixedDtabs::default()
    }

    /// One namespace with `dtab`.
    pub fn with(ns: &str, dtab: Dtab) -> Self {
        let dtabs = FixedDtabs::new();
        dtabs.set(ns, Some(dtab));
        dtabs
    }

    /// Sets (or, with `None`, removes) the dtab of `ns`; watchers see the change.
    pub fn set(&self, ns: &str, dtab: Option<Dtab>) {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        match namespaces.get(ns) {
            Some(tx) => {
                tx.send_if_modified(|current| {
                    let changed = *current != dtab;
                    *current = dtab;
                    changed
                });
            }
            None => {
                namespaces.insert(ns.to_string(), watch::Sender::new(dtab));
            }
        }
    }
}

impl DtabSource for FixedDtabs {
    fn watch(&self, ns: &str) -> watch::Receiver<Option<Dtab>> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        namespaces.entry(ns.to_string()).or_insert_with(|| watch::Sender::new(None)).subscribe()
    }
}
