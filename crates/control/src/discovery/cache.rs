//! Compiled destinations shared by every discovery stream: one compile (and one conversion to
//! the wire type) per distinct target per mesh snapshot, instead of one per stream.
//!
//! A change of config or registry reaches every stream; thousands of proxies subscribe to the
//! same few targets, and before this each stream compiled each of its targets itself (a scan of
//! every registered workload per target) and serialized its traffic JSON again. The cache is
//! keyed by the snapshot pair (config, workloads) it was filled from, compared by pointer: a
//! new snapshot of either empties it. What it hands out is exactly what `compile` returns for
//! that snapshot, so streams push what they pushed before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use trellis_api::discovery as pb;
use trellis_model::{Destination, Target, Workload};

use crate::store::ConfigSnapshot;
use crate::wire;

/// One target compiled against one snapshot.
#[derive(Debug)]
pub struct Compiled {
    pub dest: Option<Destination>,
    /// The wire form, made on first use and shared by every stream that sends it.
    wire: OnceLock<Option<pb::Destination>>,
}

impl Compiled {
    pub fn new(dest: Option<Destination>) -> Self {
        Self {
            dest,
            wire: OnceLock::new(),
        }
    }

    pub fn wire(&self) -> Option<pb::Destination> {
        self.wire
            .get_or_init(|| self.dest.as_ref().map(wire::destination_to_wire))
            .clone()
    }

    /// Whether a stream that was sent `self` must be sent `other`.
    pub fn same_as(self: &Arc<Self>, other: &Arc<Self>) -> bool {
        Arc::ptr_eq(self, other) || self.dest == other.dest
    }
}

#[derive(Debug, Default)]
pub struct CompileCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The snapshot the entries were compiled from; held so that the pointers compared
    /// cannot be reused by a newer allocation while the entries exist.
    config: Option<Arc<ConfigSnapshot>>,
    workloads: Option<Arc<Vec<Workload>>>,
    entries: HashMap<Target, Arc<Compiled>>,
    /// The entries of the snapshot before. A target that compiles equal to its previous
    /// entry gets that entry back, so that every stream sent it finds the new value by
    /// pointer; comparing is done once here, not once per stream (deep comparisons of
    /// endpoint lists by thousands of streams were a third of a route change's CPU).
    previous: HashMap<Target, Arc<Compiled>>,
}

impl Inner {
    fn is_for(&self, config: &Arc<ConfigSnapshot>, workloads: &Arc<Vec<Workload>>) -> bool {
        self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, config))
            && self
                .workloads
                .as_ref()
                .is_some_and(|w| Arc::ptr_eq(w, workloads))
    }
}

impl CompileCache {
    /// `target` compiled against (`config`, `workloads`): from the cache, or by `compile`.
    /// The lock is not held while compiling, so streams compile different targets at once;
    /// two that race on one target both compile it and the first stored wins.
    pub fn get(
        &self,
        config: &Arc<ConfigSnapshot>,
        workloads: &Arc<Vec<Workload>>,
        target: &Target,
        compile: impl FnOnce() -> Option<Destination>,
    ) -> Arc<Compiled> {
        {
            let inner = self.lock();
            if inner.is_for(config, workloads)
                && let Some(hit) = inner.entries.get(target)
            {
                return hit.clone();
            }
        }
        let dest = compile();
        let mut inner = self.lock();
        if !inner.is_for(config, workloads) {
            // Streams read the latest snapshot just before calling, so a stream still on the
            // one before replaces the cache at most once per change.
            inner.config = Some(config.clone());
            inner.workloads = Some(workloads.clone());
            inner.previous = std::mem::take(&mut inner.entries);
        }
        if let Some(hit) = inner.entries.get(target) {
            return hit.clone();
        }
        let compiled = match inner.previous.get(target) {
            Some(before) if before.dest == dest => before.clone(),
            _ => Arc::new(Compiled::new(dest)),
        };
        inner.entries.insert(target.clone(), compiled.clone());
        compiled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_compile_per_target_per_snapshot() {
        let cache = CompileCache::default();
        let (config, workloads) = (Arc::new(ConfigSnapshot::default()), Arc::new(Vec::new()));
        let target: Target = "reviews.default:9080".parse().unwrap();
        let mut compiles = 0;
        let mut get = |config: &Arc<ConfigSnapshot>, workloads: &Arc<Vec<Workload>>| {
            cache.get(config, workloads, &target, || {
                compiles += 1;
                None
            })
        };
        let first = get(&config, &workloads);
        let second = get(&config, &workloads);
        assert!(
            Arc::ptr_eq(&first, &second),
            "the second stream shares the first's"
        );
        // A new snapshot (equal content, new value) compiles again; an equal result is the
        // entry before, so streams sent it compare by pointer.
        let newer = Arc::new(Vec::new());
        let third = get(&config, &newer);
        assert!(Arc::ptr_eq(&first, &third));
        assert_eq!(compiles, 2);
        assert_eq!(third.wire(), None);
    }
}
