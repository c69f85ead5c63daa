//! Prometheus metrics: an instrumented decorator for any [`DtabStore`], and the counts of
//! backing records that failed to parse.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use waymark_dtab::Dtab;

use crate::error::StoreError;
use crate::namespace::Namespace;
use crate::store::{
    ChangeMeta, DtabStore, HistoryEntry, HistoryPage, HistorySlice, StoreHealth, Version, VersionedDtab,
};

/// The store's metrics. Cloning shares the underlying series.
///
/// [`StoreMetrics::register`] adds, under the registry's own prefix:
/// `store_operations_total{op,outcome}`, `store_operation_duration_seconds{op}`,
/// `store_available`, `store_synced`, `store_parse_failures_total` and `store_invalid_entries`.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    operations: Family<OperationLabels, Counter>,
    durations: Family<OpLabel, Histogram>,
    available: Gauge,
    synced: Gauge,
    parse: ParseFailureMetrics,
}

/// Counts of backing records (dtab files, etcd keys) edited into something that does not
/// parse. Such a record keeps its last good dtab in service; these tell an operator to look.
#[derive(Debug, Clone, Default)]
pub struct ParseFailureMetrics {
    failures: Counter,
    invalid: Gauge,
}

/// A [`DtabStore`] that records every operation in [`StoreMetrics`] and passes it on.
pub struct InstrumentedStore {
    inner: Arc<dyn DtabStore>,
    metrics: StoreMetrics,
    health_task: Option<JoinHandle<()>>,
}

/// A store operation, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Op {
    list,
    get,
    create,
    put,
    update,
    delete,
    history,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    op: Op,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabel {
    op: Op,
}

impl StoreMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        StoreMetrics {
            operations: Family::default(),
            // From 100 µs to about 6.5 s: memory stores answer in microseconds, etcd under
            // load in tens of milliseconds, and anything slower is an outage.
            durations: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 17))),
            available: Gauge::default(),
            synced: Gauge::default(),
            parse: ParseFailureMetrics::default(),
        }
    }

    /// Adds every series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("store_operations", "Store operations by operation and outcome", self.operations.clone());
        registry.register_with_unit(
            "store_operation_duration",
            "Time taken by store operations",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register("store_available", "1 while the backing store answers, else 0", self.available.clone());
        registry.register("store_synced", "1 once the first full read of the store is done", self.synced.clone());
        registry.register(
            "store_parse_failures",
            "Backing records (dtab files, etcd keys) found not to parse, once per distinct content",
            self.parse.failures.clone(),
        );
        registry.register(
            "store_invalid_entries",
            "Backing records that do not parse right now; each keeps its last good dtab in service",
            self.parse.invalid.clone(),
        );
    }

    /// The parse-failure counts, to hand to a file or etcd store.
    pub fn parse_failures(&self) -> &ParseFailureMetrics {
        &self.parse
    }

    fn observe_health(&self, health: &StoreHealth) {
        self.available.set(i64::from(health.available));
        self.synced.set(i64::from(health.synced));
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics::new()
    }
}

impl ParseFailureMetrics {
    /// How many distinct unparsable contents have been seen.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }

    /// How many records do not parse right now.
    pub fn invalid(&self) -> i64 {
        self.invalid.get()
    }

    /// Counts one value of the backing data that does not parse (once per bad value).
    pub fn record_failure(&self) {
        self.failures.inc();
    }

    /// Sets how many namespaces' backing data does not parse now.
    pub fn set_invalid(&self, n: usize) {
        self.invalid.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl InstrumentedStore {
    /// Wraps `inner`. Called inside a tokio runtime, it also follows the store's health in the
    /// `store_available` and `store_synced` gauges.
    pub fn new(inner: Arc<dyn DtabStore>, metrics: StoreMetrics) -> Self {
        let mut health = inner.health();
        metrics.observe_health(&health.borrow_and_update());
        let health_task = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let metrics = metrics.clone();
            runtime.spawn(
                async move {
                    // Ends when the store, and with it the health sender, is dropped.
                    while health.changed().await.is_ok() {
                        metrics.observe_health(&health.borrow_and_update());
                    }
                }
                .instrument(tracing::debug_span!("store_health_metrics")),
            )
        });
        InstrumentedStore { inner, metrics, health_task }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn DtabStore> {
        &self.inner
    }

    async fn observe<T>(&self, op: Op, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics.durations.get_or_create(&OpLabel { op }).observe(start.elapsed().as_secs_f64());
        self.metrics.operations.get_or_create(&OperationLabels { op, outcome }).inc();
        result
    }
}

impl std::fmt::Debug for InstrumentedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedStore").finish_non_exhaustive()
    }
}

impl Drop for InstrumentedStore {
    fn drop(&mut self) {
        if let Some(task) = &self.health_task {
            task.abort();
        }
    }
}

#[async_trait]
impl DtabStore for InstrumentedStore {
    async fn list(&self) -> Result<Vec<Namespace>, StoreError> {
        self.observe(Op::list, self.inner.list()).await
    }

    async fn get(&self, ns: &Namespace) -> Result<VersionedDtab, StoreError> {
        self.observe(Op::get, self.inner.get(ns)).await
    }

    async fn create(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        self.observe(Op::create, self.inner.create(ns, dtab, meta)).await
    }

    async fn put(&self, ns: &Namespace, dtab: &Dtab, meta: &ChangeMeta) -> Result<Version, StoreError> {
        self.observe(Op::put, self.inner.put(ns, dtab, meta)).await
    }

    async fn update(
        &self,
        ns: &Namespace,
        dtab: &Dtab,
        expected: &Version,
        meta: &ChangeMeta,
    ) -> Result<Version, StoreError> {
        self.observe(Op::update, self.inner.update(ns, dtab, expected, meta)).await
    }

    async fn delete(&self, ns: &Namespace, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.observe(Op::delete, self.inner.delete(ns, meta)).await
    }

    async fn delete_at(&self, ns: &Namespace, expected: &Version, meta: &ChangeMeta) -> Result<(), StoreError> {
        self.observe(Op::delete, self.inner.delete_at(ns, expected, meta)).await
    }

    async fn history(&self, ns: &Namespace) -> Result<Vec<HistoryEntry>, StoreError> {
        self.observe(Op::history, self.inner.history(ns)).await
    }

    async fn history_page(&self, ns: &Namespace, page: &HistoryPage) -> Result<HistorySlice, StoreError> {
        self.observe(Op::history, self.inner.history_page(ns, page)).await
    }

    fn watch(&self, ns: &Namespace) -> watch::Receiver<Option<VersionedDtab>> {
        self.inner.watch(ns)
    }

    fn watch_list(&self) -> watch::Receiver<Arc<Vec<Namespace>>> {
        self.inner.watch_list()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::memory::MemoryStore;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test(start_paused = true)]
    async fn operations_are_counted_by_op_and_outcome() {
        let metrics = StoreMetrics::new();
        let mut registry = Registry::with_prefix("waymark");
        metrics.register(&mut registry);
        let store = InstrumentedStore::new(Arc::new(MemoryStore::new()), metrics);
        let ns: Namespace = "web".parse().unwrap();
        let dtab: Dtab = "/a=>/b".parse().unwrap();

        store.create(&ns, &dtab, &ChangeMeta::default()).await.unwrap();
        assert_eq!(store.create(&ns, &dtab, &ChangeMeta::default()).await, Err(StoreError::Exists));
        store.get(&ns).await.unwrap();

        let text = scrape(&registry);
        assert!(text.contains(r#"waymark_store_operations_total{op="create",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"waymark_store_operations_total{op="create",outcome="exists"} 1"#), "{text}");
        assert!(text.contains(r#"waymark_store_operations_total{op="get",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"waymark_store_operation_duration_seconds_count{op="create"} 2"#), "{text}");
        assert!(text.contains("waymark_store_available 1"), "{text}");
        assert!(text.contains("waymark_store_synced 1"), "{text}");
        assert!(text.contains("waymark_store_parse_failures_total 0"), "{text}");
    }
}
