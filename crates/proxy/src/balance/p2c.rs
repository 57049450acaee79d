//! Power of two choices: draw two distinct candidates at random and keep the cheaper. Nearly
//! as good as looking at every endpoint, at the cost of two, and it never herds all traffic
//! onto the one endpoint that looked best a moment ago.

use crate::split;

/// Two distinct indexes in [0, n); the second is `None` when n is 1.
pub fn two_distinct(n: usize) -> Option<(usize, Option<usize>)> {
    match n {
        0 => None,
        1 => Some((0, None)),
        _ => {
            let a = split::below(n);
            // Draw from the n-1 others and step over `a`.
            let mut b = split::below(n - 1);
            if b >= a {
                b += 1;
            }
            Some((a, Some(b)))
        }
    }
}

/// The cheaper of two candidates; ties go to the first.
pub fn cheaper(a: usize, b: usize, cost: impl Fn(usize) -> f64) -> usize {
    if cost(b) < cost(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_distinct_and_cover_the_range() {
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            let (a, b) = two_distinct(5).unwrap();
            let b = b.unwrap();
            assert_ne!(a, b);
            seen[a] += 1;
            seen[b] += 1;
        }
        assert!(seen.iter().all(|s| *s > 3_000), "{seen:?}");
        assert_eq!(two_distinct(1), Some((0, None)));
        assert_eq!(two_distinct(0), None);
    }

    #[test]
    fn keeps_the_cheaper() {
        assert_eq!(cheaper(0, 1, |i| [5.0, 3.0][i]), 1);
        assert_eq!(cheaper(0, 1, |i| [3.0, 3.0][i]), 0);
    }
}
