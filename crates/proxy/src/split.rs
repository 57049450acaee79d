//! Per-request randomness and the weighted split: a thread-local xorshift generator (seeded
//! once per thread from the OS), so a draw costs a few instructions and no lock, and the
//! weighted pick itself is `trellis_model::route::pick_weighted`, shared with `explain`.
//!
//! This module must not do I/O.

use std::cell::Cell;

use trellis_model::route::{WeightedBackend, pick_weighted};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // xorshift must not start at zero.
    rand::random::<u64>() | 1
}

/// A uniform 64-bit draw (xorshift64*). Not for cryptography: it spreads traffic.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A uniform draw in [0, 1).
pub fn next_f64() -> f64 {
    // The top 53 bits fill an f64 mantissa exactly.
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A uniform index in [0, n); `n` must be non-zero.
pub fn below(n: usize) -> usize {
    // Lemire's multiply-shift: unbiased enough for n far below 2^32, and no division.
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

/// The backend a fresh draw picks; `None` when every weight is zero.
pub fn pick(backends: &[WeightedBackend]) -> Option<(usize, &WeightedBackend)> {
    let chosen = pick_weighted(backends, next_u64())?;
    let index = backends.iter().position(|b| std::ptr::eq(b, chosen))?;
    Some((index, chosen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_model::ServiceKey;
    use trellis_model::route::{BackendRef, HeaderModifier};

    fn backend(subset: &str, weight: u32) -> WeightedBackend {
        WeightedBackend {
            backend: BackendRef {
                service: ServiceKey::new("default", "reviews"),
                port: None,
                subset: Some(subset.into()),
            },
            weight,
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
        }
    }

    #[test]
    fn ninety_ten_over_ten_thousand_draws_is_within_two_percent() {
        let backends = [backend("v1", 90), backend("v3", 10)];
        let n = 10_000;
        let v1 = (0..n)
            .filter(|_| pick(&backends).map(|(i, _)| i) == Some(0))
            .count();
        let share = v1 as f64 / n as f64;
        assert!((0.88..=0.92).contains(&share), "v1 share {share}");
    }

    #[test]
    fn zero_weights_pick_nothing() {
        assert!(pick(&[backend("v1", 0), backend("v2", 0)]).is_none());
    }

    #[test]
    fn draws_are_uniform_enough() {
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[below(10)] += 1;
        }
        for b in buckets {
            assert!((9_000..=11_000).contains(&b), "{buckets:?}");
        }
        let f = next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
