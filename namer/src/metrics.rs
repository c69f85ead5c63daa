//! Metrics of the namer's APIs, in Prometheus' text format through prometheus-client.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Requests by API and outcome, and open watch streams.
#[derive(Debug, Clone, Default)]
pub struct ApiMetrics {
    http_requests: Family<HttpLabels, Counter>,
    grpc_requests: Family<GrpcLabels, Counter>,
    open_streams: Family<StreamLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    api: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: &'static str,
    code: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    interface: &'static str,
    api: &'static str,
}

/// Counts one open stream for as long as it lives.
#[derive(Debug)]
pub struct OpenStream {
    gauge: Gauge,
}

impl ApiMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("http_requests", "HTTP API requests by API and status", self.http_requests.clone());
        registry.register("grpc_requests", "gRPC API calls by method and status code", self.grpc_requests.clone());
        registry.register(
            "open_watch_streams",
            "Watch streams open now, by interface and API",
            self.open_streams.clone(),
        );
    }

    /// Counts an HTTP request to `api` answered with `status`.
    pub fn http_request(&self, api: &'static str, status: u16) {
        self.http_requests.get_or_create(&HttpLabels { api, status }).inc();
    }

    /// Counts a gRPC call to `method` that ended with `code`.
    pub fn grpc_request(&self, method: &'static str, code: tonic::Code) {
        self.grpc_requests.get_or_create(&GrpcLabels { method, code: code as i32 }).inc();
    }
}

impl OpenStream {
    /// Counts a stream of `api` on `interface` (`http` or `grpc`) as open until dropped.
    pub fn new(metrics: &ApiMetrics, interface: &'static str, api: &'static str) -> Self {
        let gauge = metrics.open_streams.get_or_create(&StreamLabels { interface, api }).clone();
        gauge.inc();
        OpenStream { gauge }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Connections of each server (`http`, `grpc`, `admin`): open, accepted, closed by a timeout,
/// refused while the connection limit was reached, and accept errors.
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    open: Family<ServerLabels, Gauge>,
    accepted: Family<ServerLabels, Counter>,
    limit_reached: Family<ServerLabels, Counter>,
    evicted: Family<ServerLabels, Counter>,
    timeouts: Family<ReasonLabels, Counter>,
    accept_errors: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    server: &'static str,
    reason: &'static str,
}

impl ServerMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("open_connections", "Connections open now, by server", self.open.clone());
        registry.register("connections", "Connections accepted, by server", self.accepted.clone());
        registry.register(
            "connection_limit_reached",
            "Times a server reached its connection limit and left new connections waiting",
            self.limit_reached.clone(),
        );
        registry.register(
            "connections_evicted",
            "Connections without a request in progress closed to make room for a new one at the limit",
            self.evicted.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Connections closed for a timeout, by server and reason (header_read, idle)",
            self.timeouts.clone(),
        );
        registry.register(
            "accept_errors",
            "Failures to accept a connection, by server and reason (out_of_file_descriptors, other)",
            self.accept_errors.clone(),
        );
    }

    pub(crate) fn opened(&self, server: &'static str) {
        self.accepted.get_or_create(&ServerLabels { server }).inc();
        self.open.get_or_create(&ServerLabels { server }).inc();
    }

    pub(crate) fn closed(&self, server: &'static str) {
        self.open.get_or_create(&ServerLabels { server }).dec();
    }

    pub(crate) fn limit_reached(&self, server: &'static str) {
        self.limit_reached.get_or_create(&ServerLabels { server }).inc();
    }

    pub(crate) fn evicted(&self, server: &'static str) {
        self.evicted.get_or_create(&ServerLabels { server }).inc();
    }

    pub(crate) fn timed_out(&self, server: &'static str, reason: &'static str) {
        self.timeouts.get_or_create(&ReasonLabels { server, reason }).inc();
    }

    pub(crate) fn accept_error(&self, server: &'static str, reason: &'static str) {
        self.accept_errors.get_or_create(&ReasonLabels { server, reason }).inc();
    }
}
