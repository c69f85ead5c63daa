//! How requests and their attempts ended: the one place that turns an outcome into metrics
//! (by logical and by bound name) and into an endpoint's health (its latency estimate and
//! failure accrual).

use std::time::Duration;

use http::StatusCode;

use crate::balance::Endpoint;
use crate::metrics::{ClientMetrics, ServiceMetrics};
use crate::retry::Class;

/// How one attempt at an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEnd {
    /// The endpoint answered; the answer counts as `class`.
    Answered { status: StatusCode, class: Class },
    /// The endpoint answered a gRPC call whose status is still to come in the trailers: its
    /// health counts the answer now, the metrics count the call when the trailers arrive
    /// ([`trailers_arrived`]).
    AwaitingTrailers { class: Class },
    /// No answer: the connection failed or broke.
    Failed,
    /// No answer within the attempt's time.
    TimedOut,
}

/// Records one attempt at `endpoint` of the bound name whose metrics are `client`.
pub(crate) fn attempt_ended(endpoint: &Endpoint, client: &ClientMetrics, end: AttemptEnd, latency: Duration) {
    let failed = Class::Failure { retryable: true };
    match end {
        AttemptEnd::Answered { status, class } => {
            endpoint.observe_rtt(latency);
            health(endpoint, class);
            client.record(status, class, latency);
        }
        AttemptEnd::AwaitingTrailers { class } => {
            endpoint.observe_rtt(latency);
            health(endpoint, class);
        }
        AttemptEnd::Failed => {
            endpoint.record_failure();
            client.record(StatusCode::BAD_GATEWAY, failed, latency);
        }
        AttemptEnd::TimedOut => {
            endpoint.record_failure();
            client.record(StatusCode::SERVICE_UNAVAILABLE, failed, latency);
        }
    }
}

/// A gRPC call's trailers arrived (or never will): counts the attempt for its bound name, and
/// the request for its logical name when `service` is given.
pub(crate) fn trailers_arrived(
    client: &ClientMetrics,
    class: Class,
    attempt_latency: Duration,
    service: Option<(&ServiceMetrics, Class, Duration)>,
) {
    client.record(StatusCode::OK, class, attempt_latency);
    if let Some((service, verdict, latency)) = service {
        service.record(StatusCode::OK, verdict, latency);
    }
}

/// Records a request for its logical name: answered with `status`, counted as `class`.
pub(crate) fn request_ended(service: &ServiceMetrics, status: StatusCode, class: Class, latency: Duration) {
    service.record(status, class, latency);
}

fn health(endpoint: &Endpoint, class: Class) {
    match class {
        Class::Success => endpoint.record_success(),
        Class::Failure { .. } => endpoint.record_failure(),
    }
}
