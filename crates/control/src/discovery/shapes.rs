//! Per-workload config (inbound policies, gateway listeners) computed once per distinct
//! workload shape per snapshot and shared by every stream of that shape.
//!
//! What `push_inbound_policy` and `push_gateway` compile reads, of the workload, only its
//! namespace and labels (and the service account, kept in the key so that a future policy
//! reading it stays correct); thousands of proxies share a few shapes. Before this, every
//! stream recompiled six policy JSONs and its gateway config on every config change: at 1,000
//! proxies most of a route change's control-plane CPU. The values handed out are what the
//! compile functions return for that snapshot and shape, so streams push the same bytes.
//!
//! Like `cache`, a value equal to the previous snapshot's is that previous `Arc`, so a stream
//! compares what it last sent by pointer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use trellis_model::Workload;

/// A workload shape's gateway config as sent, and whether any Gateway selects the shape (if
/// none ever did, nothing is sent).
#[derive(Debug, PartialEq)]
pub struct GatewayMessage {
    pub serves: bool,
    pub message: trellis_api::discovery::GatewayConfig,
}

/// What the per-workload compile functions read of a workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Shape {
    namespace: String,
    service_account: String,
    labels: BTreeMap<String, String>,
}

impl Shape {
    pub fn of(w: &Workload) -> Self {
        Self {
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            labels: w.labels.clone(),
        }
    }
}

/// Values per shape for one snapshot `S` (compared by `same`), with the snapshot before kept
/// to hand back equal values by pointer.
#[derive(Debug)]
pub struct PerShape<S, V> {
    inner: Mutex<Inner<S, V>>,
    /// How many values were computed (not served from the cache): for tests and the bench's
    /// deterministic figures.
    computed: AtomicU64,
}

#[derive(Debug)]
struct Inner<S, V> {
    /// The snapshot the entries were computed from; held so that pointer comparisons of it
    /// cannot match a newer allocation at the same address.
    snapshot: Option<S>,
    entries: HashMap<Shape, Arc<V>>,
    previous: HashMap<Shape, Arc<V>>,
}

impl<S, V> Default for PerShape<S, V> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                snapshot: None,
                entries: HashMap::new(),
                previous: HashMap::new(),
            }),
            computed: AtomicU64::new(0),
        }
    }
}

impl<S, V: PartialEq> PerShape<S, V> {
    /// The value for `shape` under `snapshot`: cached, or `compute`d (without the lock held,
    /// so streams of different shapes compute at once; two racing on one shape both compute
    /// and the first stored wins). `same` tells whether two snapshots are the same one.
    pub fn get(
        &self,
        snapshot: &S,
        same: impl Fn(&S, &S) -> bool,
        shape: Shape,
        compute: impl FnOnce() -> V,
    ) -> Arc<V>
    where
        S: Clone,
    {
        {
            let inner = self.lock();
            if inner.snapshot.as_ref().is_some_and(|s| same(s, snapshot))
                && let Some(hit) = inner.entries.get(&shape)
            {
                return hit.clone();
            }
        }
        let value = compute();
        self.computed.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if !inner.snapshot.as_ref().is_some_and(|s| same(s, snapshot)) {
            inner.snapshot = Some(snapshot.clone());
            inner.previous = std::mem::take(&mut inner.entries);
        }
        if let Some(hit) = inner.entries.get(&shape) {
            return hit.clone();
        }
        let value = match inner.previous.get(&shape) {
            Some(before) if **before == value => before.clone(),
            _ => Arc::new(value),
        };
        inner.entries.insert(shape, value.clone());
        value
    }

    /// Values computed so far (cache misses).
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S, V>> {
        super::lock::lock(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::test_support::workload;

    #[test]
    fn one_value_per_shape_per_snapshot_and_equal_values_keep_their_pointer() {
        let cache: PerShape<Arc<u32>, String> = PerShape::default();
        let same = |a: &Arc<u32>, b: &Arc<u32>| Arc::ptr_eq(a, b);
        let snap = Arc::new(1);
        let get = |snap: &Arc<u32>, w: &Workload, v: &str| {
            cache.get(snap, same, Shape::of(w), || v.to_string())
        };
        // Two workloads, one shape: one computation, one shared value.
        let a = get(&snap, &workload("a", "web"), "x");
        let b = get(&snap, &workload("b", "web"), "unused");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.computed(), 1);
        // Another shape is computed on its own.
        let c = get(&snap, &workload("c", "db"), "y");
        assert_eq!((c.as_str(), cache.computed()), ("y", 2));
        // A new snapshot computes again; an equal value is the previous pointer, a changed
        // one is new.
        let next = Arc::new(1);
        let a2 = get(&next, &workload("a", "web"), "x");
        let c2 = get(&next, &workload("c", "db"), "z");
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(c2.as_str(), "z");
        assert_eq!(cache.computed(), 4);
    }
}
