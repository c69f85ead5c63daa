//! The one random source and the one backoff that every part of Waymark uses: the router's
//! balancer, trace ids, union weights, failure accrual and reconnects to the namer, the namer's
//! `resolve`, and the etcd store's reconnects.
//!
//! A crate of its own, without dependencies, so that the router and the stores can share it
//! without either pulling in the other (or anything at all): the router must never link the
//! store, and neither belongs in the pure `dtab` crate.
//!
//! The generator is xorshift64*, one per thread: balancing draws two numbers per request, and a
//! cryptographic generator (or a shared, locked one) would be wasted work there. Each thread
//! starts from the standard library's per-process random hash keys; a test makes its draws
//! repeatable with [`seed`].

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays between attempts: doubling from `base` up to `max`, each drawn at random between
/// half of that and all of it ("equal jitter"), so that many processes that failed together
/// do not try again together, and none waits less than half the doubling delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

/// A [`Backoff`] with a count of the failures so far.
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    failures: u32,
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(fresh_seed());
}

fn fresh_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9E37_79B9_7F4A_7C15);
    // xorshift must never start from zero.
    hasher.finish() | 1
}

/// Makes this thread's draws repeatable from now on: for tests.
pub fn seed(seed: u64) {
    // Mixed, so that small seeds (0, 1, 2) do not start from nearly-zero states.
    let mixed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    STATE.with(|state| state.set(mixed | 1));
}

/// A uniformly distributed 64-bit number.
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A number in `0..n`; `n` must not be zero.
pub fn below(n: usize) -> usize {
    // Multiply-shift: unbiased enough for balancing, and without a division.
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

/// A number in `[0, 1)`.
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Backoff {
    /// Doubling from `base` up to `max` (a `max` below `base` is taken as `base`).
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max: max.max(base) }
    }

    /// The ceiling of the delay before attempt `n` after `n` failures in a row (counted from
    /// zero): `base * 2^n`, at most `max`.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.base.saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX)).min(self.max)
    }

    /// The delay after `n` failures in a row (counted from zero): uniformly between half the
    /// ceiling and the ceiling.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n);
        ceiling / 2 + (ceiling - ceiling / 2).mul_f64(unit())
    }

    /// A counter of failures over this backoff.
    pub fn attempts(self) -> Attempts {
        Attempts { backoff: self, failures: 0 }
    }
}

impl Attempts {
    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// After a success: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_range_cover_it_and_repeat_from_a_seed() {
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[below(7)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
        for _ in 0..1000 {
            assert!((0.0..1.0).contains(&unit()));
        }
        seed(42);
        let first: Vec<u64> = (0..5).map(|_| next_u64()).collect();
        seed(42);
        assert_eq!(first, (0..5).map(|_| next_u64()).collect::<Vec<_>>());
        seed(43);
        assert_ne!(first, (0..5).map(|_| next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn delays_double_up_to_the_maximum_with_jitter_in_the_upper_half() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(4), Duration::from_millis(1000));
        assert_eq!(backoff.ceiling(1000), Duration::from_millis(1000), "no overflow");
        let mut distinct = std::collections::HashSet::new();
        for n in 0..8 {
            for _ in 0..200 {
                let delay = backoff.delay(n);
                assert!(delay >= backoff.ceiling(n) / 2 && delay <= backoff.ceiling(n), "{n}: {delay:?}");
                distinct.insert(delay);
            }
        }
        assert!(distinct.len() > 1000, "jittered: {}", distinct.len());
        let mut attempts = backoff.attempts();
        assert!(attempts.next_delay() <= Duration::from_millis(100));
        assert!(attempts.next_delay() >= Duration::from_millis(100));
        assert_eq!(attempts.failures(), 2);
        attempts.reset();
        assert!(attempts.next_delay() <= Duration::from_millis(100));
    }
}
