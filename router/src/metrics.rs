//! Prometheus metrics, by logical name (`service`) and by concrete, bound name (`client`).
//!
//! Series for a name exist while some binding uses the name and are removed after, so that
//! names that come and go (random `Host` headers, per-request overrides) cannot grow the
//! registry without bound. Request paths hold pre-resolved handles: recording is a few
//! atomic increments, never a label lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::conn::ConnectionMetricFamilies;
use crate::retry::Class;
use crate::sync::lock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub(crate) service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceResponseLabels {
    pub(crate) service: String,
    pub(crate) status_class: &'static str,
    pub(crate) classification: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClientLabels {
    pub(crate) client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClientResponseLabels {
    pub(crate) client: String,
    pub(crate) status_class: &'static str,
    pub(crate) classification: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub(crate) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    pub(crate) listener: String,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EvictionLabels {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StreamLabels {
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DtabLabels {
    pub(crate) namespace: String,
    pub(crate) version: String,
}

#[derive(Clone, Debug)]
pub(crate) struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        // 0.5 ms to about 16 s.
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const CLASSIFICATIONS: [&str; 2] = ["success", "failure"];

/// Every metric family of a router.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    service_requests: Family<ServiceLabels, Counter>,
    service_responses: Family<ServiceResponseLabels, Counter>,
    service_latency: Family<ServiceLabels, Histogram, LatencyHistogram>,
    service_retries: Family<ServiceLabels, Counter>,
    service_budget_exhausted: Family<ServiceLabels, Counter>,
    client_requests: Family<ClientLabels, Counter>,
    client_responses: Family<ClientResponseLabels, Counter>,
    client_latency: Family<ClientLabels, Histogram, LatencyHistogram>,
    client_connections: Family<ClientLabels, Gauge>,
    client_endpoints: Family<ClientLabels, Gauge>,
    pub(crate) connections: ConnectionMetricFamilies,
    pub(crate) refused_requests: Family<RefusedLabels, Counter>,
    pub(crate) bindings: Gauge,
    pub(crate) override_bindings: Gauge,
    pub(crate) override_binding_bytes: Gauge,
    pub(crate) binding_evictions: Family<EvictionLabels, Counter>,
    pub(crate) namer_connected: Gauge,
    pub(crate) namer_streams: Family<StreamLabels, Gauge>,
    pub(crate) namer_reconnects: Counter,
    pub(crate) dtab_version: Family<DtabLabels, Gauge>,
    services: Mutex<HashMap<String, Weak<ServiceMetrics>>>,
    clients: Mutex<HashMap<String, Weak<ClientMetrics>>>,
}

/// Handles for one logical name.
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    name: String,
    pub(crate) requests: Counter,
    responses: [[Counter; 2]; 5],
    latency: Histogram,
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    owner: Arc<Metrics>,
}

/// Handles for one concrete name.
#[derive(Debug)]
pub(crate) struct ClientMetrics {
    name: String,
    pub(crate) requests: Counter,
    responses: [[Counter; 2]; 5],
    latency: Histogram,
    pub(crate) connections: Gauge,
    pub(crate) endpoints: Gauge,
    owner: Arc<Metrics>,
}

fn class_index(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

fn class_column(class: Class) -> usize {
    match class {
        Class::Success => 0,
        Class::Failure { .. } => 1,
    }
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("router");
        let service_requests = Family::default();
        let service_responses = Family::default();
        let service_latency = Family::new_with_constructor(LatencyHistogram);
        let service_retries = Family::default();
        let service_budget_exhausted = Family::default();
        let client_requests = Family::default();
        let client_responses = Family::default();
        let client_latency = Family::new_with_constructor(LatencyHistogram);
        let client_connections = Family::default();
        let client_endpoints = Family::default();
        let connections = ConnectionMetricFamilies::default();
        let refused_requests = Family::default();
        let bindings = Gauge::default();
        let override_bindings = Gauge::default();
        let override_binding_bytes = Gauge::default();
        let binding_evictions = Family::default();
        let namer_connected = Gauge::default();
        let namer_streams = Family::default();
        let namer_reconnects = Counter::default();
        let dtab_version = Family::default();
        let r = &mut registry;
        r.register("service_requests", "Requests by logical name", service_requests.clone());
        r.register(
            "service_responses",
            "Responses by logical name, status class and classification",
            service_responses.clone(),
        );
        r.register(
            "service_request_latency_seconds",
            "Time to response headers by logical name, retries included",
            service_latency.clone(),
        );
        r.register("service_retries", "Retries by logical name", service_retries.clone());
        r.register(
            "service_retry_budget_exhausted",
            "Retries refused by the retry budget, by logical name",
            service_budget_exhausted.clone(),
        );
        r.register("client_requests", "Request attempts by concrete name", client_requests.clone());
        r.register(
            "client_responses",
            "Attempt outcomes by concrete name, status class and classification",
            client_responses.clone(),
        );
        r.register(
            "client_request_latency_seconds",
            "Time to response headers of one attempt, by concrete name",
            client_latency.clone(),
        );
        r.register("client_connections", "Open connections to endpoints, by concrete name", client_connections.clone());
        r.register("client_endpoints", "Endpoints known, by concrete name", client_endpoints.clone());
        connections.register(r);
        r.register(
            "refused_requests",
            "Requests refused before they had a logical name or binding, by listener and reason",
            refused_requests.clone(),
        );
        r.register("bindings", "Live bindings of (logical name, dtab override)", bindings.clone());
        r.register("override_bindings", "Live bindings with a dtab override", override_bindings.clone());
        r.register(
            "override_binding_bytes",
            "Bytes of override text held by live bindings with a dtab override",
            override_binding_bytes.clone(),
        );
        r.register(
            "binding_evictions",
            "Bindings dropped, by reason (idle: unused for idle_ttl_secs; limit: over a binding_cache limit)",
            binding_evictions.clone(),
        );
        r.register("namer_connected", "1 while the namer is reachable", namer_connected.clone());
        r.register("namer_streams", "Open streams to the namer, by kind", namer_streams.clone());
        r.register("namer_reconnects", "Times a namer stream was opened again after failing", namer_reconnects.clone());
        r.register("dtab_version", "1 for the namespace's dtab version in use", dtab_version.clone());
        Arc::new(Metrics {
            registry,
            service_requests,
            service_responses,
            service_latency,
            service_retries,
            service_budget_exhausted,
            client_requests,
            client_responses,
            client_latency,
            client_connections,
            client_endpoints,
            connections,
            refused_requests,
            bindings,
            override_bindings,
            override_binding_bytes,
            binding_evictions,
            namer_connected,
            namer_streams,
            namer_reconnects,
            dtab_version,
            services: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handles for logical name `name` (shared by every binding of that name).
    pub(crate) fn service(self: &Arc<Self>, name: &str) -> Arc<ServiceMetrics> {
        let mut services = lock(&self.services);
        if let Some(live) = services.get(name).and_then(Weak::upgrade) {
            return live;
        }
        let labels = ServiceLabels { service: name.to_string() };
        let responses = std::array::from_fn(|c| {
            std::array::from_fn(|k| {
                self.service_responses.get_or_create_owned(&ServiceResponseLabels {
                    service: name.to_string(),
                    status_class: STATUS_CLASSES[c],
                    classification: CLASSIFICATIONS[k],
                })
            })
        });
        let metrics = Arc::new(ServiceMetrics {
            name: name.to_string(),
            requests: self.service_requests.get_or_create_owned(&labels),
            responses,
            latency: self.service_latency.get_or_create_owned(&labels),
            retries: self.service_retries.get_or_create_owned(&labels),
            budget_exhausted: self.service_budget_exhausted.get_or_create_owned(&labels),
            owner: self.clone(),
        });
        services.retain(|_, weak| weak.strong_count() > 0);
        services.insert(name.to_string(), Arc::downgrade(&metrics));
        metrics
    }

    /// The handles for concrete name `name`.
    pub(crate) fn client(self: &Arc<Self>, name: &str) -> Arc<ClientMetrics> {
        let mut clients = lock(&self.clients);
        if let Some(live) = clients.get(name).and_then(Weak::upgrade) {
            return live;
        }
        let labels = ClientLabels { client: name.to_string() };
        let responses = std::array::from_fn(|c| {
            std::array::from_fn(|k| {
                self.client_responses.get_or_create_owned(&ClientResponseLabels {
                    client: name.to_string(),
                    status_class: STATUS_CLASSES[c],
                    classification: CLASSIFICATIONS[k],
                })
            })
        });
        let metrics = Arc::new(ClientMetrics {
            name: name.to_string(),
            requests: self.client_requests.get_or_create_owned(&labels),
            responses,
            latency: self.client_latency.get_or_create_owned(&labels),
            connections: self.client_connections.get_or_create_owned(&labels),
            endpoints: self.client_endpoints.get_or_create_owned(&labels),
            owner: self.clone(),
        });
        clients.retain(|_, weak| weak.strong_count() > 0);
        clients.insert(name.to_string(), Arc::downgrade(&metrics));
        metrics
    }
}

impl ServiceMetrics {
    pub(crate) fn record(&self, status: StatusCode, class: Class, latency: Duration) {
        self.responses[class_index(status)][class_column(class)].inc();
        self.latency.observe(latency.as_secs_f64());
    }
}

impl ClientMetrics {
    pub(crate) fn record(&self, status: StatusCode, class: Class, latency: Duration) {
        self.responses[class_index(status)][class_column(class)].inc();
        self.latency.observe(latency.as_secs_f64());
    }
}

impl Drop for ServiceMetrics {
    fn drop(&mut self) {
        let mut services = lock(&self.owner.services);
        // A new binding of the same name may have taken over these series already.
        if services.get(&self.name).is_some_and(|w| w.strong_count() > 0) {
            return;
        }
        services.remove(&self.name);
        let owner = &self.owner;
        let labels = ServiceLabels { service: std::mem::take(&mut self.name) };
        owner.service_requests.remove(&labels);
        owner.service_latency.remove(&labels);
        owner.service_retries.remove(&labels);
        owner.service_budget_exhausted.remove(&labels);
        for status_class in STATUS_CLASSES {
            for classification in CLASSIFICATIONS {
                owner.service_responses.remove(&ServiceResponseLabels {
                    service: labels.service.clone(),
                    status_class,
                    classification,
                });
            }
        }
    }
}

impl Drop for ClientMetrics {
    fn drop(&mut self) {
        let mut clients = lock(&self.owner.clients);
        if clients.get(&self.name).is_some_and(|w| w.strong_count() > 0) {
            return;
        }
        clients.remove(&self.name);
        let owner = &self.owner;
        let labels = ClientLabels { client: std::mem::take(&mut self.name) };
        owner.client_requests.remove(&labels);
        owner.client_latency.remove(&labels);
        owner.client_connections.remove(&labels);
        owner.client_endpoints.remove(&labels);
        for status_class in STATUS_CLASSES {
            for classification in CLASSIFICATIONS {
                owner.client_responses.remove(&ClientResponseLabels {
                    client: labels.client.clone(),
                    status_class,
                    classification,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_live_while_a_binding_holds_them() {
        let metrics = Metrics::new();
        let a = metrics.service("/svc/web");
        let b = metrics.service("/svc/web");
        a.requests.inc();
        b.requests.inc();
        a.record(StatusCode::BAD_GATEWAY, Class::Failure { retryable: false }, Duration::from_millis(3));
        let text = metrics.encode();
        assert!(text.contains(r#"router_service_requests_total{service="/svc/web"} 2"#), "{text}");
        assert!(
            text.contains(
                r#"router_service_responses_total{service="/svc/web",status_class="5xx",classification="failure"} 1"#
            ),
            "{text}"
        );
        drop(a);
        assert!(metrics.encode().contains("/svc/web"));
        drop(b);
        assert!(!metrics.encode().contains("/svc/web"), "{}", metrics.encode());
    }
}
