//! Balancing over one bound name's endpoints: power of two choices over peak-EWMA load, with
//! failure accrual taking failing endpoints out for a jittered, growing backoff.
//!
//! Each endpoint keeps its own small lock (load estimate and accrual state); nothing here is
//! shared between endpoints, so requests to different endpoints never contend.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use waymark_random::Backoff;

use crate::client::EndpointClient;

/// How requests are spread over a bound name's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadBalancerConfig {
    /// Power of two choices over peak-EWMA latency times outstanding requests. Linkerd 1's
    /// `p2c`, `ewma`, `aperture`, `heap` and `roundRobin` are accepted and mean this too.
    #[serde(alias = "p2c", alias = "ewma", alias = "aperture", alias = "heap", alias = "roundRobin")]
    P2cPeakEwma {
        /// How quickly the latency estimate forgets a slow response.
        #[serde(default = "default_decay_time_ms")]
        decay_time_ms: u64,
    },
}

/// Taking endpoints that keep failing out of the balancer for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FailureAccrualConfig {
    /// After `failures` failures in a row, the endpoint is out for a backoff that doubles on
    /// every failed probe, from `min_backoff_ms` up to `max_backoff_ms`, each drawn between
    /// half of that and all of it; then one probe request is let through. Linkerd 1's
    /// `io.l5d.consecutiveFailures`.
    #[serde(alias = "io.l5d.consecutiveFailures")]
    ConsecutiveFailures {
        /// Failures in a row that take an endpoint out.
        #[serde(default = "default_failures")]
        failures: u32,
        /// The first backoff.
        #[serde(default = "default_min_backoff_ms")]
        min_backoff_ms: u64,
        /// The longest backoff.
        #[serde(default = "default_max_backoff_ms")]
        max_backoff_ms: u64,
    },
    /// Never take endpoints out.
    None,
}

/// Settings every endpoint of a router shares.
#[derive(Debug, Clone)]
pub(crate) struct BalanceSettings {
    decay: Duration,
    accrual: Option<Accrual>,
}

#[derive(Debug, Clone, Copy)]
struct Accrual {
    failures: u32,
    backoff: Backoff,
}

/// One replica of a bound name: its address, weight, connection pool and health.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    weight: f64,
    pub(crate) client: EndpointClient,
    settings: Arc<BalanceSettings>,
    in_flight: AtomicUsize,
    state: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    /// Peak-EWMA latency estimate in nanoseconds; zero until the first response.
    rtt_ns: f64,
    rtt_stamp: Instant,
    consecutive_failures: u32,
    /// While `Some`, the endpoint is out until then (and, once past, until a probe succeeds).
    dead_until: Option<Instant>,
    backoffs: u32,
    probing: bool,
}

/// A request outstanding on an endpoint; the count drops when this does.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

/// The cost of a busy endpoint whose latency is not known yet: as if it took 1000 s.
const UNKNOWN_PENALTY_NS: f64 = 1e12;

/// The most random draws a pick makes while looking for endpoints that are in service.
const MAX_EFFORT: usize = 5;

fn default_decay_time_ms() -> u64 {
    10_000
}
fn default_failures() -> u32 {
    5
}
fn default_min_backoff_ms() -> u64 {
    5_000
}
fn default_max_backoff_ms() -> u64 {
    300_000
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        LoadBalancerConfig::P2cPeakEwma { decay_time_ms: default_decay_time_ms() }
    }
}

impl Default for FailureAccrualConfig {
    fn default() -> Self {
        FailureAccrualConfig::ConsecutiveFailures {
            failures: default_failures(),
            min_backoff_ms: default_min_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

impl LoadBalancerConfig {
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        let LoadBalancerConfig::P2cPeakEwma { decay_time_ms, .. } = self;
        if *decay_time_ms == 0 {
            out.push(format!("{at}.decay_time_ms: must be more than 0"));
        }
    }
}

impl FailureAccrualConfig {
    pub(crate) fn problems(&self, at: &str, out: &mut Vec<String>) {
        if let FailureAccrualConfig::ConsecutiveFailures { failures, min_backoff_ms, max_backoff_ms } = self {
            if *failures == 0 {
                out.push(format!("{at}.failures: must be at least 1"));
            }
            if min_backoff_ms > max_backoff_ms {
                out.push(format!(
                    "{at}: min_backoff_ms ({min_backoff_ms}) is more than max_backoff_ms ({max_backoff_ms})"
                ));
            }
        }
    }
}

impl BalanceSettings {
    pub(crate) fn new(lb: &LoadBalancerConfig, accrual: &FailureAccrualConfig) -> Self {
        let LoadBalancerConfig::P2cPeakEwma { decay_time_ms } = lb;
        let accrual = match accrual {
            FailureAccrualConfig::ConsecutiveFailures { failures, min_backoff_ms, max_backoff_ms } => Some(Accrual {
                failures: *failures,
                backoff: Backoff::new(Duration::from_millis(*min_backoff_ms), Duration::from_millis(*max_backoff_ms)),
            }),
            FailureAccrualConfig::None => None,
        };
        BalanceSettings { decay: Duration::from_millis(*decay_time_ms), accrual }
    }
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, weight: f64, client: EndpointClient, settings: Arc<BalanceSettings>) -> Self {
        Endpoint {
            addr,
            weight,
            client,
            settings,
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(Health {
                rtt_ns: 0.0,
                rtt_stamp: Instant::now(),
                consecutive_failures: 0,
                dead_until: None,
                backoffs: 0,
                probing: false,
            }),
        }
    }

    pub(crate) fn weight(&self) -> f64 {
        self.weight
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        crate::sync::lock(&self.state)
    }

    /// Marks a request as outstanding until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The balancer's cost of sending one more request here: latency times load, per weight.
    /// As in Finagle, an endpoint that has not answered yet costs nothing while idle, so that
    /// new endpoints are tried at once, and a penalty while its first request is out, so that
    /// they are not flooded before their latency is known.
    fn cost(&self) -> f64 {
        let rtt = self.health().rtt_ns;
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let cost = match (rtt == 0.0, in_flight) {
            (true, 0) => 0.0,
            (true, _) => UNKNOWN_PENALTY_NS,
            (false, n) => rtt * (n + 1) as f64,
        };
        cost / self.weight.max(f64::MIN_POSITIVE)
    }

    /// Records the time a response took to arrive: a slower sample replaces the estimate at
    /// once (the "peak"), a faster one is averaged in with a weight that grows with the time
    /// since the last sample.
    pub(crate) fn observe_rtt(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        let mut health = self.health();
        if sample > health.rtt_ns {
            health.rtt_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(health.rtt_stamp).as_secs_f64();
            let w = (-elapsed / self.settings.decay.as_secs_f64()).exp();
            health.rtt_ns = health.rtt_ns * w + sample * (1.0 - w);
        }
        health.rtt_stamp = now;
    }

    /// A request succeeded: the endpoint is healthy again.
    pub(crate) fn record_success(&self) {
        let mut health = self.health();
        if health.consecutive_failures != 0 || health.dead_until.is_some() {
            health.consecutive_failures = 0;
            health.dead_until = None;
            health.backoffs = 0;
            health.probing = false;
        }
    }

    /// A request failed; enough failures in a row (or a failed probe) take the endpoint out.
    pub(crate) fn record_failure(&self) {
        let Some(accrual) = self.settings.accrual else { return };
        let now = Instant::now();
        let mut health = self.health();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        if health.probing || (health.dead_until.is_none() && health.consecutive_failures >= accrual.failures) {
            let backoff = accrual.backoff.delay(health.backoffs);
            health.dead_until = Some(now + backoff);
            health.backoffs = health.backoffs.saturating_add(1);
            health.probing = false;
            tracing::info!(endpoint = %self.addr, backoff_ms = backoff.as_millis() as u64, "endpoint marked dead");
        }
    }

    /// True when the endpoint may take a request now. Past its backoff, a dead endpoint takes
    /// exactly one probe: the first caller to see it claims the probe.
    fn claim(&self, now: Instant) -> bool {
        let mut health = self.health();
        match health.dead_until {
            None => true,
            Some(until) if now >= until && !health.probing => {
                health.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// True when the endpoint is in service (not waiting out a backoff).
    #[cfg(test)]
    pub(crate) fn is_available(&self) -> bool {
        let health = self.health();
        match health.dead_until {
            None => true,
            Some(until) => Instant::now() >= until && !health.probing,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks an endpoint by power of two choices: two distinct random endpoints in service, the
/// cheaper wins. Endpoints out of service are skipped (a few draws at most); when every
/// endpoint is out, one is used anyway, because failing open beats refusing all traffic.
pub(crate) fn pick(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    let now = Instant::now();
    match endpoints.len() {
        0 => None,
        1 => {
            endpoints[0].claim(now);
            Some(&endpoints[0])
        }
        n => {
            for _ in 0..MAX_EFFORT {
                let a = waymark_random::below(n);
                let b = (a + 1 + waymark_random::below(n - 1)) % n;
                let (a, b) = (&endpoints[a], &endpoints[b]);
                let (a_cost, b_cost) = (a.cost(), b.cost());
                let (first, second) = if a_cost <= b_cost { (a, b) } else { (b, a) };
                if first.claim(now) {
                    return Some(first);
                }
                if second.claim(now) {
                    return Some(second);
                }
            }
            // Unlucky draws, or most endpoints out: look at every one before failing open.
            endpoints.iter().find(|e| e.claim(now)).or_else(|| endpoints.get(waymark_random::below(n)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::test_client;

    fn settings(failures: u32) -> Arc<BalanceSettings> {
        Arc::new(BalanceSettings::new(
            &LoadBalancerConfig::default(),
            &FailureAccrualConfig::ConsecutiveFailures { failures, min_backoff_ms: 1000, max_backoff_ms: 8000 },
        ))
    }

    fn endpoint(port: u16, settings: &Arc<BalanceSettings>) -> Arc<Endpoint> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Arc::new(Endpoint::new(addr, 1.0, test_client(addr), settings.clone()))
    }

    #[tokio::test(start_paused = true)]
    async fn accrual_takes_an_endpoint_out_and_probes_it_back_with_growing_backoff() {
        let s = settings(3);
        let e = endpoint(1, &s);
        e.record_failure();
        e.record_failure();
        assert!(e.is_available());
        e.record_failure();
        assert!(!e.is_available(), "three failures in a row take it out");
        // The first backoff lies in [0.5 s, 1 s] (min_backoff_ms is 1000).
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!e.is_available());
        tokio::time::advance(Duration::from_millis(501)).await;
        assert!(e.claim(Instant::now()), "after the first backoff one probe is let through");
        assert!(!e.claim(Instant::now()), "only one probe at a time");
        e.record_failure();
        // The second lies in [1 s, 2 s].
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!e.is_available());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(e.claim(Instant::now()));
        e.record_success();
        assert!(e.is_available());
        e.record_failure();
        assert!(e.is_available(), "a success resets the count");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_dead_and_loaded_endpoints() {
        let s = settings(1);
        let (a, b, c) = (endpoint(1, &s), endpoint(2, &s), endpoint(3, &s));
        b.record_failure();
        let set = vec![a.clone(), b.clone(), c.clone()];
        let _load: Vec<InFlight> = (0..10).map(|_| c.start()).collect();
        let mut hits = [0usize; 3];
        for _ in 0..300 {
            let picked = pick(&set).unwrap();
            hits[usize::from(picked.addr.port() - 1)] += 1;
        }
        assert_eq!(hits[1], 0, "the dead endpoint is skipped: {hits:?}");
        // The loaded endpoint only wins when drawn with the dead one: a third of the draws.
        assert!(hits[0] > 160 && hits[2] < 140, "the loaded endpoint is avoided: {hits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let s = settings(5);
        let e = endpoint(1, &s);
        e.observe_rtt(Duration::from_millis(100));
        assert_eq!(e.health().rtt_ns, 100e6);
        tokio::time::advance(Duration::from_secs(10)).await;
        e.observe_rtt(Duration::from_millis(10));
        let rtt = e.health().rtt_ns;
        assert!(rtt > 10e6 && rtt < 50e6, "{rtt}");
        e.observe_rtt(Duration::from_millis(500));
        assert_eq!(e.health().rtt_ns, 500e6);
    }

    #[test]
    fn all_dead_fails_open() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let s = settings(1);
            let set = vec![endpoint(1, &s), endpoint(2, &s)];
            set.iter().for_each(|e| e.record_failure());
            assert!(pick(&set).is_some());
        });
    }
}
