//! A small, fast, thread-local random number generator for load balancing and jitter.
//!
//! Balancing draws two random numbers per request; a cryptographic generator would be wasted
//! work there, and a shared one would need a lock. This is xorshift64*, seeded per thread
//! from the standard library's per-process random hash keys.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9E37_79B9_7F4A_7C15);
    // xorshift must never start from zero.
    hasher.finish() | 1
}

/// A uniformly distributed 64-bit number.
pub(crate) fn next_u64() -> u64 {
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
pub(crate) fn below(n: usize) -> usize {
    // Multiply-shift: unbiased enough for balancing, and without a division.
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

/// A number in `[0, 1)`.
pub(crate) fn unit() -> f64 {
    (next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[below(7)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
        for _ in 0..1000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
