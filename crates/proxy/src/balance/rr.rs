//! Endpoint selection. For now round robin per destination; the traffic work replaces it with
//! P2C over peak-EWMA behind the same small interface: a pure choice over a slice of endpoints.
//!
//! This module must not do I/O or know about connections.

use std::sync::atomic::{AtomicUsize, Ordering};

use trellis_model::Endpoint;

/// Round robin over whatever endpoint list it is handed; the list may change between picks
/// (discovery updates), so only a counter is kept, never an index into an old list.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pick<'a>(&self, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
        if endpoints.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        endpoints.get(n % endpoints.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            address: ([127, 0, 0, 1], port).into(),
            meshed: false,
            identity: None,
            workload: format!("w{port}"),
            labels: Default::default(),
            target_port: port,
        }
    }

    #[test]
    fn cycles_through_endpoints() {
        let rr = RoundRobin::new();
        let eps = [ep(1), ep(2), ep(3)];
        let picked: Vec<u16> = (0..6)
            .map(|_| rr.pick(&eps).unwrap().address.port())
            .collect();
        assert_eq!(picked, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn empty_and_shrinking_lists() {
        let rr = RoundRobin::new();
        assert!(rr.pick(&[]).is_none());
        let eps = [ep(1), ep(2), ep(3)];
        rr.pick(&eps);
        rr.pick(&eps);
        assert_eq!(rr.pick(&eps[..1]).unwrap().address.port(), 1);
    }
}
