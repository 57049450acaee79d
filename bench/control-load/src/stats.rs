//! Percentiles over a sample, as the bench reports them.

use serde::Serialize;

/// Nearest-rank percentiles of latencies (milliseconds) and the share of the population that
/// was reached at all.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub expected: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(mut samples_ms: Vec<f64>, expected: usize) -> Self {
        samples_ms.sort_by(f64::total_cmp);
        Self {
            count: samples_ms.len(),
            expected,
            p50_ms: rank(&samples_ms, 0.50),
            p90_ms: rank(&samples_ms, 0.90),
            p99_ms: rank(&samples_ms, 0.99),
            max_ms: samples_ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The nearest-rank percentile of a sorted sample; NaN for an empty one.
pub fn rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least q of the sample at or below it.
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// The median of a sample (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    rank(&v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(rank(&v, 0.5), 50.0);
        assert_eq!(rank(&v, 0.9), 90.0);
        assert_eq!(rank(&v, 0.99), 99.0);
        assert_eq!(rank(&v, 1.0), 100.0);
        assert!(rank(&[], 0.5).is_nan());
    }
}
