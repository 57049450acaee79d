//! Compiled destinations shared by every discovery stream: one compile (and one conversion to
//! the wire type) per distinct target per mesh snapshot, instead of one per stream.
//!
//! A change of config or registry reaches every stream; thousands of proxies subscribe to the
//! same few targets, and before this each stream compiled each of its targets itself (a scan of
//! every registered workload per target) and serialized its traffic JSON again. The cache is
//! keyed by the snapshot pair (config, workloads) it was filled from, compared by pointer: a
//! new config empties it; a new workloads set (published by the registry with what changed,
//! see [`CompileCache::advance`]) keeps the entries whose endpoints no changed workload can
//! be among. What it hands out is exactly what `compile` returns for that snapshot, so
//! streams push what they pushed before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::watch;
use trellis_model::{Destination, ServiceKey, Target};

use crate::registry::WorkloadSet;
use crate::store::ConfigSnapshot;
use crate::wire;

/// One target compiled against one snapshot.
#[derive(Debug)]
pub struct Compiled {
    pub dest: Option<Destination>,
    /// The wire form's encoding, made on first use and shared by every stream that sends it
    /// (see `grpc::SharedUpdate`).
    encoded: OnceLock<Option<Bytes>>,
    /// The Services whose config (Service, routes, DestinationRule) and selected workloads
    /// this value reads (the target's own and its backends'); `None`: anything may matter (an
    /// address target).
    deps: Option<Vec<ServiceKey>>,
    /// Endpoint-delta plans from the values streams move from (see `plan_from`).
    plans: Mutex<Vec<(Weak<Compiled>, Arc<crate::discovery::delta::Plan>)>>,
    /// The cache's entry for the same target this value replaced, known to differ from it
    /// (an equal compile gets that entry back instead): a stream sent that entry needs no
    /// comparison to know it must be sent this one (see [`Compiled::same_as`]). A `Weak`
    /// keeps the allocation, so its pointer cannot be reused by another value.
    replaces: Weak<Compiled>,
}

/// Predecessors whose delta plan a value remembers.
const MAX_PLANS_PER_VALUE: usize = 4;

impl Compiled {
    /// A value whose endpoints any workload may change (see [`Compiled::for_target`]).
    pub fn new(dest: Option<Destination>) -> Self {
        Self {
            dest,
            encoded: OnceLock::new(),
            deps: None,
            plans: Mutex::default(),
            replaces: Weak::new(),
        }
    }

    /// `target` compiled to `dest`, knowing which workloads and config can change it.
    pub fn for_target(target: &Target, dest: Option<Destination>) -> Self {
        // Workloads and config enter a service destination only through the service itself
        // and each backend (`compile::endpoints`, `compile::policy`, `compile::backend`, all
        // keyed by service); an unknown service or port compiles to `None` until that service
        // changes.
        let deps = match (target, &dest) {
            (Target::Address(_), _) => None,
            (Target::Service { service, .. }, dest) => Some(
                std::iter::once(service.clone())
                    .chain(
                        dest.iter()
                            .flat_map(|d| d.backends.iter().map(|b| b.backend.service.clone())),
                    )
                    .collect(),
            ),
        };
        Self {
            dest,
            encoded: OnceLock::new(),
            deps,
            plans: Mutex::default(),
            replaces: Weak::new(),
        }
    }

    /// Whether a workload in `changed` can be among this value's endpoints under `config`.
    fn depends_on(
        &self,
        config: &ConfigSnapshot,
        changed: &[Arc<trellis_model::Workload>],
    ) -> bool {
        let Some(deps) = &self.deps else {
            return true;
        };
        deps.iter().any(|key| {
            config
                .services
                .get(key)
                .is_some_and(|svc| changed.iter().any(|w| crate::compile::selects(svc, w)))
        })
    }

    /// Whether a config change that touched `changed` (`None`: anything) can change this
    /// value.
    fn reads_any(&self, changed: Option<&HashSet<ServiceKey>>) -> bool {
        match (&self.deps, changed) {
            (Some(deps), Some(changed)) => deps.iter().any(|k| changed.contains(k)),
            _ => true,
        }
    }

    /// The delta plan from `before` to this value (see `delta::shared_plan`), made once per
    /// predecessor for every stream that moves from it.
    pub fn plan_from(
        &self,
        before: &Arc<Compiled>,
        make: impl FnOnce() -> crate::discovery::delta::Plan,
    ) -> Arc<crate::discovery::delta::Plan> {
        let lock = || super::lock::lock(&self.plans);
        if let Some((_, plan)) = lock()
            .iter()
            .find(|(b, _)| b.as_ptr() == Arc::as_ptr(before))
        {
            return plan.clone();
        }
        // Made without the lock; two streams racing on one predecessor both make it, equal.
        let plan = Arc::new(make());
        let mut plans = lock();
        // A `Weak` keeps its allocation from being reused, so a pointer found here is that
        // predecessor. Streams move from one or two predecessors; a few slots suffice.
        plans.retain(|(b, _)| b.strong_count() > 0);
        if plans.len() >= MAX_PLANS_PER_VALUE {
            plans.remove(0);
        }
        plans.push((Arc::downgrade(before), plan.clone()));
        plan
    }

    /// The `Destination` message's encoding (`None`: nothing there), made once: streams
    /// share the bytes.
    pub fn encoded(&self) -> Option<Bytes> {
        self.encoded
            .get_or_init(|| {
                self.dest
                    .as_ref()
                    .map(|d| Bytes::from(wire::destination_to_wire(d).encode_to_vec()))
            })
            .clone()
    }

    /// The wire form (tests).
    #[cfg(test)]
    pub fn wire(&self) -> Option<trellis_api::discovery::Destination> {
        self.dest.as_ref().map(wire::destination_to_wire)
    }

    /// Whether a stream that was sent `self` need not be sent `other`. Comparing by value
    /// reads every endpoint (labels included); with thousands of streams moving from one value
    /// to the next on a route change it was a tenth of the control plane's samples, so the
    /// value the cache replaced is known different without it.
    pub fn same_as(self: &Arc<Self>, other: &Arc<Self>) -> bool {
        if Arc::ptr_eq(self, other) {
            return true;
        }
        if std::ptr::eq(other.replaces.as_ptr(), Arc::as_ptr(self)) {
            return false;
        }
        self.dest == other.dest
    }
}

#[derive(Debug, Default)]
pub struct CompileCache {
    inner: Mutex<Inner>,
    /// Compiles made so far (tests and the bench's deterministic figures).
    compiles: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The snapshot the entries were compiled from; held so that the pointers compared
    /// cannot be reused by a newer allocation while the entries exist.
    config: Option<Arc<ConfigSnapshot>>,
    workloads: Option<Arc<WorkloadSet>>,
    entries: HashMap<Target, Arc<Compiled>>,
    /// The entries of the snapshot before. A target that compiles equal to its previous
    /// entry gets that entry back, so that every stream sent it finds the new value by
    /// pointer; comparing is done once here, not once per stream (deep comparisons of
    /// endpoint lists by thousands of streams were a third of a route change's CPU).
    previous: HashMap<Target, Arc<Compiled>>,
}

impl Inner {
    /// Keeps the entries `stale` says the change cannot touch (returning their targets) and
    /// moves the others to `previous`, where a recompile that comes out equal finds them.
    fn keep_unless(&mut self, stale: impl Fn(&Compiled) -> bool) -> HashSet<Target> {
        let entries = std::mem::take(&mut self.entries);
        let mut kept = HashSet::new();
        let mut previous = HashMap::new();
        for (target, compiled) in entries {
            if stale(&compiled) {
                previous.insert(target, compiled);
            } else {
                kept.insert(target.clone());
                self.entries.insert(target, compiled);
            }
        }
        self.previous = previous;
        kept
    }

    fn is_for(&self, config: &Arc<ConfigSnapshot>, workloads: &Arc<WorkloadSet>) -> bool {
        self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, config))
            && self
                .workloads
                .as_ref()
                .is_some_and(|w| Arc::ptr_eq(w, workloads))
    }

    /// Starts over on (`config`, `workloads`), keeping the entries as `previous`.
    fn reset(&mut self, config: &Arc<ConfigSnapshot>, workloads: &Arc<WorkloadSet>) {
        self.config = Some(config.clone());
        self.workloads = Some(workloads.clone());
        self.previous = std::mem::take(&mut self.entries);
    }
}

/// The services whose Service, routes or DestinationRule differ between two configs; `None`
/// when something every target may read changed (ServiceEntries, linked clusters' endpoints).
pub fn changed_services(
    before: &ConfigSnapshot,
    after: &ConfigSnapshot,
) -> Option<HashSet<ServiceKey>> {
    let (b, a) = (&before.traffic, &after.traffic);
    if b.service_entries != a.service_entries || b.remote != a.remote {
        return None;
    }
    let mut changed = HashSet::new();
    diff_keys(&before.services, &after.services, &mut changed);
    diff_keys(&b.routes, &a.routes, &mut changed);
    diff_keys(&b.policies, &a.policies, &mut changed);
    Some(changed)
}

/// Adds to `out` every key whose value differs between `before` and `after` (or is on one
/// side only).
fn diff_keys<V: PartialEq>(
    before: &std::collections::BTreeMap<ServiceKey, V>,
    after: &std::collections::BTreeMap<ServiceKey, V>,
    out: &mut HashSet<ServiceKey>,
) {
    for (k, v) in before {
        if after.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            out.insert(k.clone());
        }
    }
}

impl CompileCache {
    /// `target` compiled against (`config`, `workloads`): from the cache, or by `compile`.
    /// The lock is not held while compiling, so streams compile different targets at once;
    /// two that race on one target both compile it and the first stored wins. A stream that
    /// asks with a snapshot older than the cache's (it read it just before a change) gets its
    /// compile back unstored: the change wakes it to ask again.
    pub fn get(
        &self,
        config_rx: &watch::Receiver<Arc<ConfigSnapshot>>,
        config: &Arc<ConfigSnapshot>,
        workloads: &Arc<WorkloadSet>,
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
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if !inner.is_for(config, workloads) {
            let older_workloads = inner
                .workloads
                .as_ref()
                .is_some_and(|w| w.generation() > workloads.generation());
            let current_config = Arc::ptr_eq(&config_rx.borrow(), config);
            if older_workloads || !current_config {
                return Arc::new(Compiled::for_target(target, dest));
            }
            inner.reset(config, workloads);
        }
        if let Some(hit) = inner.entries.get(target) {
            return hit.clone();
        }
        let compiled = match inner.previous.get(target) {
            Some(before) if before.dest == dest => before.clone(),
            Some(before) => Arc::new(Compiled {
                replaces: Arc::downgrade(before),
                ..Compiled::for_target(target, dest)
            }),
            None => Arc::new(Compiled::for_target(target, dest)),
        };
        inner.entries.insert(target.clone(), compiled.clone());
        compiled
    }

    /// Moves the cache to `workloads`, just published under `config`. When the cache is on
    /// the set before it under the same config, the entries no changed workload can be an
    /// endpoint of are kept (streams find them by pointer and send nothing); returns the
    /// targets kept. `None`: nothing was kept (another config, or a set whose changes are not
    /// known): every target is to be compiled again.
    pub fn advance(
        &self,
        config: &Arc<ConfigSnapshot>,
        workloads: &Arc<WorkloadSet>,
    ) -> Option<HashSet<Target>> {
        let mut inner = self.lock();
        let follows = inner
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, config))
            && inner
                .workloads
                .as_ref()
                .is_some_and(|w| w.generation() + 1 == workloads.generation());
        let changed = workloads.changed().filter(|_| follows);
        let Some(changed) = changed else {
            inner.reset(config, workloads);
            return None;
        };
        inner.workloads = Some(workloads.clone());
        Some(inner.keep_unless(|compiled| compiled.depends_on(config, changed)))
    }

    /// Moves the cache from config `before` to `after` (the workloads unchanged): the entries
    /// that read none of the services the change touched are kept (streams find them by
    /// pointer and send nothing); returns the targets kept. `None`: nothing was kept (the
    /// cache was not on `before`, or the change touched what every target reads).
    pub fn advance_config(
        &self,
        before: &Arc<ConfigSnapshot>,
        after: &Arc<ConfigSnapshot>,
    ) -> Option<HashSet<Target>> {
        let changed = changed_services(before, after);
        let mut inner = self.lock();
        let on_before = inner
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, before));
        if !on_before {
            if let Some(workloads) = inner.workloads.clone() {
                // A stream compiled against `after` first (it started over then), or the cache
                // is on another config: the targets compile again.
                if !inner.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, after)) {
                    inner.reset(after, &workloads);
                }
            }
            return None;
        }
        inner.config = Some(after.clone());
        Some(inner.keep_unless(|compiled| compiled.reads_any(changed.as_ref())))
    }

    /// Compiles made so far (cache misses).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        super::lock::lock(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::test_support::{two_services, workload};

    #[test]
    fn one_compile_per_target_per_snapshot() {
        let cache = CompileCache::default();
        let config = Arc::new(ConfigSnapshot::default());
        let (_tx, config_rx) = watch::channel(config.clone());
        let workloads = Arc::new(WorkloadSet::default());
        let target: Target = "reviews.default:9080".parse().unwrap();
        let mut compiles = 0;
        let mut get = |config: &Arc<ConfigSnapshot>, workloads: &Arc<WorkloadSet>| {
            cache.get(&config_rx, config, workloads, &target, || {
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
        // A new snapshot (equal content, new value, changes unknown) compiles again; an equal
        // result is the entry before, so streams sent it compare by pointer.
        let newer = Arc::new(WorkloadSet::new(Vec::new(), 1, None));
        let third = get(&config, &newer);
        assert!(Arc::ptr_eq(&first, &third));
        // A stream still on the older set gets a compile that does not replace the newer.
        let _ = get(&config, &workloads);
        let fourth = get(&config, &newer);
        assert!(Arc::ptr_eq(&first, &fourth));
        assert_eq!(compiles, 3);
        assert_eq!(third.wire(), None);
    }

    #[test]
    fn a_registration_keeps_the_targets_it_cannot_change() {
        let cache = CompileCache::default();
        let config = Arc::new(two_services());
        let (_tx, config_rx) = watch::channel(config.clone());
        let (a, b): (Target, Target) = (
            "a.default:9080".parse().unwrap(),
            "b.default:9080".parse().unwrap(),
        );
        let compile = |set: &Arc<WorkloadSet>, target: &Target| {
            let view = crate::compile::MeshView {
                services: &config.services,
                traffic: &config.traffic,
                workloads: set,
                trust_domain: "cluster.local",
            };
            cache.get(&config_rx, &config, set, target, || {
                crate::compile::compile(view, target)
            })
        };
        let set1 = Arc::new(WorkloadSet::new(vec![workload("a-1", "a")], 1, None));
        assert_eq!(cache.advance(&config, &set1), None, "first set: unknown");
        let (a1, b1) = (compile(&set1, &a), compile(&set1, &b));
        assert_eq!(cache.compiles(), 2);
        // A client no Service selects: both kept, nothing compiled again.
        let set2 = Arc::new(WorkloadSet::new(
            vec![workload("a-1", "a"), workload("client", "client")],
            2,
            Some(vec![workload("client", "client")]),
        ));
        let kept = cache.advance(&config, &set2).expect("follows");
        assert_eq!(kept, [a.clone(), b.clone()].into());
        assert!(Arc::ptr_eq(&a1, &compile(&set2, &a)));
        assert!(Arc::ptr_eq(&b1, &compile(&set2, &b)));
        assert_eq!(cache.compiles(), 2);
        // A new endpoint of `a`: `a` compiles again (one more endpoint), `b` is kept.
        let set3 = Arc::new(WorkloadSet::new(
            vec![
                workload("a-1", "a"),
                workload("a-2", "a"),
                workload("client", "client"),
            ],
            3,
            Some(vec![workload("a-2", "a")]),
        ));
        let kept = cache.advance(&config, &set3).expect("follows");
        assert_eq!(kept, [b.clone()].into());
        let a3 = compile(&set3, &a);
        assert_eq!(a3.dest.as_ref().map(|d| d.endpoints.len()), Some(2));
        // `a3` replaced `a1`: a stream sent `a1` is known to need `a3` without a comparison;
        // an equal value from elsewhere is compared by value.
        assert!(std::ptr::eq(a3.replaces.as_ptr(), Arc::as_ptr(&a1)));
        assert!(!a1.same_as(&a3));
        let copy = Arc::new(Compiled::for_target(&a, a1.dest.clone()));
        assert!(a1.same_as(&copy) && copy.same_as(&a1) && !copy.same_as(&a3));
        assert!(Arc::ptr_eq(&b1, &compile(&set3, &b)));
        assert_eq!(cache.compiles(), 3);
        // A set that skips a number (changes unknown in between) keeps nothing.
        let set5 = Arc::new(WorkloadSet::new(set3.to_vec(), 5, Some(Vec::new())));
        assert_eq!(cache.advance(&config, &set5), None);
    }

    #[test]
    fn a_config_change_keeps_the_targets_that_read_nothing_it_touched() {
        let cache = CompileCache::default();
        let config1 = Arc::new(two_services());
        let (tx, config_rx) = watch::channel(config1.clone());
        let (a, b): (Target, Target) = (
            "a.default:9080".parse().unwrap(),
            "b.default:9080".parse().unwrap(),
        );
        let set = Arc::new(WorkloadSet::new(
            vec![workload("a-1", "a"), workload("b-1", "b")],
            1,
            None,
        ));
        let compile = |config: &Arc<ConfigSnapshot>, target: &Target| {
            let view = crate::compile::MeshView {
                services: &config.services,
                traffic: &config.traffic,
                workloads: &set,
                trust_domain: "cluster.local",
            };
            cache.get(&config_rx, config, &set, target, || {
                crate::compile::compile_indexed(view, Some(set.index()), target)
            })
        };
        let (a1, b1) = (compile(&config1, &a), compile(&config1, &b));
        assert_eq!(cache.compiles(), 2);
        // Service `a` changes in a way its destination does not show (a cluster IP).
        let mut changed = (*config1).clone();
        let svc_a = ServiceKey::new("default", "a");
        if let Some(svc) = changed.services.get_mut(&svc_a) {
            svc.cluster_ip = Some("10.0.0.1".parse().unwrap());
        }
        let config2 = Arc::new(changed);
        assert_eq!(changed_services(&config1, &config2), Some([svc_a].into()));
        tx.send_replace(config2.clone());
        let kept = cache
            .advance_config(&config1, &config2)
            .expect("on config1");
        assert_eq!(kept, [b.clone()].into(), "only b kept");
        // `b` is served without a compile; `a` compiles again, equal, so the same pointer.
        assert!(Arc::ptr_eq(&b1, &compile(&config2, &b)));
        assert!(Arc::ptr_eq(&a1, &compile(&config2, &a)));
        assert_eq!(cache.compiles(), 3);
        // A cache that is not on the config before keeps nothing.
        assert_eq!(cache.advance_config(&config1, &config2), None);
    }
}
