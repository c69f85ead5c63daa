//! Response classification, retry budgets and the service policy (timeouts, retries).
//!
//! A retry is only made when it is safe (the classifier or the failure says so, and the
//! request can be sent again) and when the logical name's budget allows it, so that retries
//! cannot multiply load on a service that is already failing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::context::L5D_SUCCESS_CLASS;
use serde::Deserialize;
use tokio::time::Instant;

/// Policy for requests by logical name (Linkerd 1's `service` section).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The most time a request may take to get response headers, retries included
    /// (Linkerd 1's `totalTimeoutMs`); unset means no limit.
    #[serde(default)]
    pub total_timeout_ms: Option<u64>,
    /// Retries.
    #[serde(default)]
    pub retries: RetriesConfig,
    /// Which responses are failures, and which failures may be retried.
    #[serde(default)]
    pub response_classifier: ClassifierConfig,
    /// Whether the caller's deadline (`l5d-ctx-deadline`, from an earlier router's total
    /// timeout) also bounds this hop: a request whose deadline has passed is answered with a
    /// 503 at once, and no attempt outlives it. Linkerd 1 only passes the deadline on; turn
    /// this off to do the same (for example across hosts whose clocks disagree).
    #[serde(default = "default_enforce_deadline")]
    pub enforce_deadline: bool,
}

/// Retry settings (Linkerd 1's `service.retries`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesConfig {
    /// How many retries the router may add on top of the requests it gets.
    #[serde(default)]
    pub budget: BudgetConfig,
    /// The most retries of one request, whatever the budget holds, so that one request
    /// cannot spend the whole budget against a failing service.
    #[serde(default = "default_max_per_request")]
    pub max_per_request: u32,
    /// Requests with a body of at most this many bytes (by `Content-Length`) are read whole
    /// before they are sent, so that they can be sent again; larger and chunked bodies stream
    /// and are never retried. Linkerd 1's `streamAfterContentLengthKB`; 0 turns this off.
    #[serde(default = "default_max_replay_body_bytes")]
    pub max_replay_body_bytes: u64,
}

/// A retry budget: retries may add `percent_can_retry` of the requests seen in the last
/// `ttl_secs`, plus `min_retries_per_sec` (Linkerd 1's defaults: 20% plus 10 a second).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries always allowed per second, whatever the traffic.
    #[serde(default = "default_min_retries_per_sec")]
    pub min_retries_per_sec: u32,
    /// The share of requests that may be retried, from 0 to 1.
    #[serde(default = "default_percent_can_retry")]
    pub percent_can_retry: f64,
    /// How long a request counts towards the budget.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
}

/// Response classifiers, named as in Linkerd 1 (whose names are accepted too).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClassifierConfig {
    /// 5xx are failures and are never retried. The default.
    #[default]
    #[serde(alias = "io.l5d.http.nonRetryable5XX", alias = "io.l5d.h2.nonRetryable5XX")]
    #[serde(rename = "non_retryable_5xx")]
    NonRetryable5xx,
    /// 5xx are failures, retried for GET, HEAD, OPTIONS and TRACE.
    #[serde(alias = "io.l5d.http.retryableRead5XX", alias = "io.l5d.h2.retryableRead5XX")]
    #[serde(rename = "retryable_read_5xx")]
    RetryableRead5xx,
    /// 5xx are failures, retried for the read methods and PUT and DELETE.
    #[serde(alias = "io.l5d.http.retryableIdempotent5XX", alias = "io.l5d.h2.retryableIdempotent5XX")]
    #[serde(rename = "retryable_idempotent_5xx")]
    RetryableIdempotent5xx,
    /// 5xx are failures, retried whatever the method.
    #[serde(alias = "io.l5d.http.retryableAll5XX", alias = "io.l5d.h2.retryableAll5XX")]
    #[serde(rename = "retryable_all_5xx")]
    RetryableAll5xx,
    /// Every response is a success.
    #[serde(alias = "io.l5d.http.allSuccessful", alias = "io.l5d.h2.allSuccessful")]
    AllSuccessful,
    /// gRPC: a non-zero `grpc-status` is a failure; the listed codes are retried
    /// (default 14, UNAVAILABLE, as Linkerd 1's `io.l5d.h2.grpc.default`).
    #[serde(alias = "io.l5d.h2.grpc.default", alias = "io.l5d.h2.grpc.retryableStatusCodes")]
    Grpc {
        /// gRPC status codes that may be retried.
        #[serde(default = "default_grpc_retryable")]
        retryable_status_codes: Vec<u32>,
    },
}

/// How a response (or a failure) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Success,
    Failure { retryable: bool },
}

impl Class {
    /// The verdict of a router further down the path, from its `l5d-success-class`: more
    /// than 0 is a success, anything else (a value that is not a number too) a failure.
    pub(crate) fn from_success_class(headers: &HeaderMap) -> Option<Class> {
        let value = headers.get(&L5D_SUCCESS_CLASS)?;
        let success = value.to_str().ok().and_then(|v| v.trim().parse::<f64>().ok()).is_some_and(|v| v > 0.0);
        Some(if success { Class::Success } else { Class::Failure { retryable: false } })
    }

    /// This verdict as `l5d-success-class` writes it.
    pub(crate) fn success_class_value(self) -> HeaderValue {
        HeaderValue::from_static(if self == Class::Success { "1.0" } else { "0.0" })
    }
}

/// A retry budget over a sliding window of one-second slots; lock-free, because every
/// request to a logical name deposits into it.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    slots: Box<[Slot]>,
    /// Retries always available over the window.
    reserve: f64,
    percent: f64,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicI64,
    retries: AtomicI64,
}

fn default_min_retries_per_sec() -> u32 {
    10
}
fn default_percent_can_retry() -> f64 {
    0.2
}
fn default_ttl_secs() -> u64 {
    10
}
fn default_max_per_request() -> u32 {
    10
}
fn default_max_replay_body_bytes() -> u64 {
    5 * 1024
}
fn default_enforce_deadline() -> bool {
    true
}
fn default_grpc_retryable() -> Vec<u32> {
    vec![14]
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            total_timeout_ms: None,
            retries: RetriesConfig::default(),
            response_classifier: ClassifierConfig::default(),
            enforce_deadline: default_enforce_deadline(),
        }
    }
}

impl Default for RetriesConfig {
    fn default() -> Self {
        RetriesConfig {
            budget: BudgetConfig::default(),
            max_per_request: default_max_per_request(),
            max_replay_body_bytes: default_max_replay_body_bytes(),
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            min_retries_per_sec: default_min_retries_per_sec(),
            percent_can_retry: default_percent_can_retry(),
            ttl_secs: default_ttl_secs(),
        }
    }
}

impl ServiceConfig {
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        if self.total_timeout_ms == Some(0) {
            out.push(format!("{at}.total_timeout_ms: must be more than 0 (or left out)"));
        }
        let budget = &self.retries.budget;
        if !(0.0..=1.0).contains(&budget.percent_can_retry) {
            out.push(format!("{at}.retries.budget.percent_can_retry: must be between 0 and 1"));
        }
        if !(1..=3600).contains(&budget.ttl_secs) {
            out.push(format!("{at}.retries.budget.ttl_secs: must be between 1 and 3600"));
        }
    }
}

/// Methods whose requests may be sent twice without a different effect (RFC 9110, 9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// The `grpc-status` in `headers`, when there is one.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

impl ClassifierConfig {
    /// Classifies a response from its status and headers (for gRPC, trailers-only responses
    /// carry the status in the headers; a status in trailers is classified by
    /// [`ClassifierConfig::classify_trailers`]).
    pub(crate) fn classify(&self, method: &Method, status: StatusCode, headers: &HeaderMap) -> Class {
        let server_error = status.is_server_error();
        let failure = |retryable: bool| if server_error { Class::Failure { retryable } } else { Class::Success };
        match self {
            ClassifierConfig::NonRetryable5xx => failure(false),
            ClassifierConfig::RetryableRead5xx => failure(is_read(method)),
            ClassifierConfig::RetryableIdempotent5xx => failure(is_idempotent(method)),
            ClassifierConfig::RetryableAll5xx => failure(true),
            ClassifierConfig::AllSuccessful => Class::Success,
            ClassifierConfig::Grpc { .. } => match grpc_status(headers) {
                Some(_) => self.classify_trailers(headers),
                None => failure(false),
            },
        }
    }

    /// Classifies a gRPC call by the `grpc-status` in its trailers.
    pub(crate) fn classify_trailers(&self, trailers: &HeaderMap) -> Class {
        match grpc_status(trailers) {
            Some(0) | None => Class::Success,
            Some(code) => {
                let retryable = match self {
                    ClassifierConfig::Grpc { retryable_status_codes } => retryable_status_codes.contains(&code),
                    _ => false,
                };
                Class::Failure { retryable }
            }
        }
    }
}

impl RetryBudget {
    pub(crate) fn new(config: &BudgetConfig) -> Self {
        let ttl = config.ttl_secs.max(1);
        RetryBudget {
            slots: (0..ttl).map(|_| Slot::default()).collect(),
            reserve: f64::from(config.min_retries_per_sec) * ttl as f64,
            percent: config.percent_can_retry,
            epoch: Instant::now(),
        }
    }

    fn second(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_secs()
    }

    /// The slot for `second`, cleared if it last held an older second. Races between two
    /// clearers can lose a count or two; a budget does not need to be exact.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % self.slots.len() as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != second && slot.second.compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a request towards the budget.
    pub(crate) fn deposit(&self) {
        self.slot(self.second()).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one left.
    pub(crate) fn try_withdraw(&self) -> bool {
        let now = self.second();
        let window = self.slots.len() as u64;
        let (mut requests, mut retries) = (0i64, 0i64);
        for slot in self.slots.iter() {
            let second = slot.second.load(Ordering::Relaxed);
            if now.saturating_sub(second) < window && second <= now {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.reserve + self.percent * requests as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The per-attempt and total time limits of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub(crate) total: Option<Instant>,
    pub(crate) per_try: Option<Duration>,
}

impl Deadlines {
    /// When the next attempt must have its response headers.
    pub(crate) fn attempt_deadline(&self) -> Option<Instant> {
        let per_try = self.per_try.map(|d| Instant::now() + d);
        match (self.total, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_allows_the_reserve_plus_a_share_of_requests_and_refills_over_time() {
        let budget = RetryBudget::new(&BudgetConfig { min_retries_per_sec: 1, percent_can_retry: 0.2, ttl_secs: 10 });
        // The reserve: 1 a second over a 10 s window.
        let reserve = (0..100).take_while(|_| budget.try_withdraw()).count();
        assert_eq!(reserve, 10);
        for _ in 0..100 {
            budget.deposit();
        }
        let more = (0..100).take_while(|_| budget.try_withdraw()).count();
        assert_eq!(more, 20, "20% of 100 requests");
        tokio::time::advance(Duration::from_secs(11)).await;
        let refilled = (0..100).take_while(|_| budget.try_withdraw()).count();
        assert_eq!(refilled, 10, "after the window, only the reserve is back");
    }

    #[test]
    fn classifiers_follow_linkerd() {
        let h = HeaderMap::new();
        let s = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            ClassifierConfig::NonRetryable5xx.classify(&Method::GET, s, &h),
            Class::Failure { retryable: false }
        );
        assert_eq!(
            ClassifierConfig::RetryableRead5xx.classify(&Method::GET, s, &h),
            Class::Failure { retryable: true }
        );
        assert_eq!(
            ClassifierConfig::RetryableRead5xx.classify(&Method::PUT, s, &h),
            Class::Failure { retryable: false }
        );
        assert_eq!(
            ClassifierConfig::RetryableIdempotent5xx.classify(&Method::PUT, s, &h),
            Class::Failure { retryable: true }
        );
        assert_eq!(
            ClassifierConfig::RetryableAll5xx.classify(&Method::POST, s, &h),
            Class::Failure { retryable: true }
        );
        assert_eq!(ClassifierConfig::AllSuccessful.classify(&Method::GET, s, &h), Class::Success);
        assert_eq!(ClassifierConfig::RetryableAll5xx.classify(&Method::GET, StatusCode::OK, &h), Class::Success);
        let grpc = ClassifierConfig::Grpc { retryable_status_codes: vec![14] };
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc.classify(&Method::POST, StatusCode::OK, &t), Class::Failure { retryable: true });
        t.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc.classify_trailers(&t), Class::Failure { retryable: false });
        t.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc.classify_trailers(&t), Class::Success);
    }
}
