//! The state the adapters (discovery, HTTP, timers) share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_model::Workload;

use crate::registry::{Registry, WorkloadSet};
use crate::store::ConfigSnapshot;
use crate::telemetry::Metrics;

#[derive(Debug)]
pub struct Shared {
    pub trust_domain: String,
    pub heartbeat_interval: Duration,
    pub config_rx: watch::Receiver<Arc<ConfigSnapshot>>,
    registry: Mutex<Registry>,
    /// The registered workloads, republished whenever endpoints may have changed, with what
    /// changed; a publication wakes only the discovery streams it can concern (`wakers`).
    workloads_tx: watch::Sender<Arc<WorkloadSet>>,
    /// A registry change not yet published. Publishing copies every workload, so it is done
    /// once for all the changes made since the last one (see [`Shared::flush_workloads`]),
    /// not once per change: 10,000 proxies registering cost 10,000 copies of up to 10,000
    /// workloads each, minutes of CPU, before this.
    workloads_dirty: AtomicBool,
    /// Wakes the publisher (`run_expiry`) when `workloads_dirty` is set.
    publish: tokio::sync::Notify,
    /// Held for a whole publication (copy, cache advance, wake-ups), so that publications
    /// reach the cache in the order they were numbered.
    publishing: Mutex<Pacing>,
    /// Which discovery streams a publication wakes.
    pub wakers: crate::discovery::wake::Wakers,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// Until then, destinations without endpoints are held back (see `discovery`).
    pub hold_back_until: Instant,
    /// Kubernetes mode: workloads come from Pods (see `k8s::pods`), not from registrations,
    /// which then only record proxies' acks and subscriptions.
    external_workloads: AtomicBool,
    /// Which config each connected proxy has applied (the `Programmed` condition).
    pub programmed: crate::k8s::programmed::ProgrammedTracker,
    /// Destinations compiled for the current snapshot, shared by the discovery streams.
    pub compiled: crate::discovery::cache::CompileCache,
    /// Inbound policies per workload shape for the current config (and the discovery
    /// service's root namespace and defaults), shared by the discovery streams.
    pub inbound_policies: crate::discovery::shapes::PerShape<
        (Arc<ConfigSnapshot>, InboundMode),
        trellis_api::discovery::InboundPolicy,
    >,
    /// Gateway config per workload shape for the current config and workloads.
    pub gateways: crate::discovery::shapes::PerShape<
        (Arc<ConfigSnapshot>, Arc<WorkloadSet>),
        crate::discovery::shapes::GatewayMessage,
    >,
}

/// The discovery service's settings inbound policies depend on besides config and workload:
/// root namespace, `--default-inbound-policy`, `--outbound-traffic-policy`.
pub type InboundMode = (
    Arc<str>,
    trellis_model::authz::DefaultPolicy,
    crate::compile::outbound_policy::OutboundTrafficPolicy,
);

impl Shared {
    pub fn new(
        trust_domain: String,
        heartbeat_interval: Duration,
        workload_expiry: Duration,
        registration_grace: Duration,
        config_rx: watch::Receiver<Arc<ConfigSnapshot>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            trust_domain,
            heartbeat_interval,
            config_rx,
            registry: Mutex::new(Registry::new(workload_expiry)),
            workloads_tx: watch::channel(Arc::new(WorkloadSet::default())).0,
            workloads_dirty: AtomicBool::new(false),
            publish: tokio::sync::Notify::new(),
            publishing: Mutex::new(Pacing::default()),
            wakers: Default::default(),
            metrics: Metrics::default(),
            shutdown,
            hold_back_until: Instant::now() + registration_grace,
            external_workloads: AtomicBool::new(false),
            programmed: Default::default(),
            compiled: Default::default(),
            inbound_policies: Default::default(),
            gateways: Default::default(),
        }
    }

    /// Runs `f` on the registry and, if it reports a change, has the workloads republished:
    /// by the publisher task an instant later, together with every other change made by
    /// then, or by the first reader of [`Shared::workloads_rx`] before that. The lock is held
    /// only for `f` (never across an await: this is not async).
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> (T, bool)) -> T {
        let mut registry = self.registry();
        let (out, changed) = f(&mut registry);
        if self.external_workloads.load(Ordering::Acquire) {
            // Nothing publishes registrations: their change list would only grow.
            registry.take_changes();
        }
        drop(registry);
        if changed && !self.external_workloads.load(Ordering::Acquire) {
            self.workloads_dirty.store(true, Ordering::Release);
            self.publish.notify_one();
        }
        out
    }

    /// Publishes the registry's workloads if a change is pending, moves the compile cache to
    /// them and wakes the discovery streams whose targets they can change.
    pub fn flush_workloads(&self) {
        if !self.workloads_dirty.load(Ordering::Acquire) {
            return;
        }
        let mut pacing = self.publishing();
        let started = std::time::Instant::now();
        let set = {
            let mut registry = self.registry();
            // Taken and numbered under the registry lock, so that no change is lost between
            // the swap and the copy.
            if !self.workloads_dirty.swap(false, Ordering::AcqRel)
                || self.external_workloads.load(Ordering::Acquire)
            {
                return;
            }
            let generation = self.workloads_tx.borrow().generation() + 1;
            let changed = registry.take_changes();
            Arc::new(WorkloadSet::new(
                registry.workloads(),
                generation,
                Some(changed),
            ))
        };
        self.publish_set(set);
        pacing.published(started.elapsed());
    }

    /// Sends `set` and has the streams it concerns recompile (under `publishing`).
    fn publish_set(&self, set: Arc<WorkloadSet>) {
        self.workloads_tx.send_replace(set.clone());
        let config = self.config_rx.borrow().clone();
        let kept = self.compiled.advance(&config, &set);
        let woken = self.wakers.wake(kept.as_ref());
        tracing::debug!(
            generation = set.generation(),
            changed = set.changed().map_or(0, <[Arc<Workload>]>::len),
            kept = kept.as_ref().map_or(0, std::collections::HashSet::len),
            woken,
            "workloads published"
        );
    }

    /// Has the discovery streams a config change concerns push it: the compile cache keeps
    /// the targets that read none of the services the change touched, and only the streams
    /// subscribed to another target (and those that want every change) are woken; a change
    /// of what any stream reads besides its targets wakes them all. Before this, every
    /// config change woke every stream and recompiled every subscribed target.
    pub fn publish_config(&self, before: &Arc<ConfigSnapshot>, after: &Arc<ConfigSnapshot>) {
        let _pacing = self.publishing();
        let kept = self.compiled.advance_config(before, after);
        let every = concerns_every_stream(before, after);
        let woken = if every {
            self.wakers.wake_all()
        } else {
            self.wakers.wake(kept.as_ref())
        };
        tracing::debug!(
            kept = kept.as_ref().map_or(0, std::collections::HashSet::len),
            every,
            woken,
            compiles = self.compiled.compiles(),
            woken_total = self.wakers.woken(),
            "config published"
        );
    }

    fn publishing(&self) -> MutexGuard<'_, Pacing> {
        self.publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry for reading. A poisoned lock means a panic elsewhere mid-update; the
    /// registry's invariants hold between statements, so reading on is safe.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Switches to workloads from an outside source (Kubernetes Pods) and publishes them;
    /// later calls replace the set. Registrations no longer change what is published.
    pub fn publish_external_workloads(&self, workloads: Vec<Workload>) {
        self.external_workloads.store(true, Ordering::Release);
        let _pacing = self.publishing();
        let current = self.workloads_tx.borrow().clone();
        if current.iter().map(|w| &**w).eq(&workloads) {
            return;
        }
        // What changed is not worked out here: every target compiles again.
        let list = workloads.into_iter().map(Arc::new).collect();
        let set = WorkloadSet::new(list, current.generation() + 1, None);
        self.publish_set(Arc::new(set));
    }

    /// The registered workloads as last published (a change an instant old may not be in
    /// yet: its publication wakes every discovery stream).
    pub fn workloads(&self) -> Arc<WorkloadSet> {
        self.workloads_tx.borrow().clone()
    }

    /// A receiver of the workloads, with every change made so far published.
    pub fn workloads_rx(&self) -> watch::Receiver<Arc<WorkloadSet>> {
        self.flush_workloads();
        self.workloads_tx.subscribe()
    }

    /// Until shutdown: expires silent workloads, checking several times per expiry period,
    /// publishes registry changes (the two tasks that change the registry's published view),
    /// and hands config changes to the discovery streams they concern
    /// ([`Shared::publish_config`]).
    pub async fn run_expiry(self: Arc<Self>, expiry: Duration) {
        let period = (expiry / 5).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        let mut config_rx = self.config_rx.clone();
        let mut config = config_rx.borrow_and_update().clone();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                changed = config_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let after = config_rx.borrow_and_update().clone();
                    self.publish_config(&config, &after);
                    config = after;
                }
                () = self.publish.notified() => {
                    // Let the registrations already queued land first: one copy for them all;
                    // and while registrations keep coming, publish at a pace that keeps the
                    // copies a small share of a core.
                    tokio::task::yield_now().await;
                    let not_before = self.publishing().next_at();
                    tokio::time::sleep_until(not_before).await;
                    self.flush_workloads();
                }
                _ = ticker.tick() => {
                    let expired = self.with_registry(|r| {
                        let expired = r.expire(Instant::now());
                        let changed = !expired.is_empty();
                        (expired, changed)
                    });
                    for (namespace, name) in expired {
                        tracing::info!(%namespace, %name, "workload expired");
                    }
                }
            }
        }
    }
}

/// Whether a config change can concern a discovery stream whatever its targets: what its
/// inbound policy reads (`discovery::Session::push_inbound_policy`: the security kinds,
/// Telemetry, MeshConfig, WasmPlugins, rate limits, Services, ServiceEntries), Gateways (one
/// may come to select its workload) and the revision it reports in sync with (`Programmed`).
fn concerns_every_stream(before: &ConfigSnapshot, after: &ConfigSnapshot) -> bool {
    before.revision != after.revision
        || before.services != after.services
        || before.traffic.service_entries != after.traffic.service_entries
        || before.peer_authentications != after.peer_authentications
        || before.request_authentications != after.request_authentications
        || before.telemetries != after.telemetries
        || before.mesh_configs != after.mesh_configs
        || before.authorization_policies != after.authorization_policies
        || before.gateways != after.gateways
        || before.wasm_plugins != after.wasm_plugins
        || before.rate_limit_policies != after.rate_limit_policies
}

/// When the next publication of the workloads may be made: a publication copies every
/// workload (milliseconds at 15,000), so under a stream of registrations publications are
/// spaced by [`Pacing::SHARE`] times the last one's cost, at least [`Pacing::MIN_GAP`] apart.
/// A registration after a quiet spell is published at once.
#[derive(Debug, Default)]
struct Pacing {
    last: Option<(Instant, std::time::Duration)>,
}

impl Pacing {
    const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(5);
    /// Gap per unit of publication cost: at most one fifth of a core spent publishing.
    const SHARE: u32 = 5;

    fn published(&mut self, cost: std::time::Duration) {
        self.last = Some((Instant::now(), cost));
    }

    fn next_at(&self) -> Instant {
        let now = Instant::now();
        match self.last {
            Some((at, cost)) => (at + (cost * Self::SHARE).max(Self::MIN_GAP)).max(now),
            None => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use trellis_model::{ServiceKey, Target};

    use super::*;
    use crate::discovery::test_support::two_services;

    /// Whether `n` was notified (a stored `notify_one` permit), without waiting: the wakes
    /// under test are made synchronously by `publish_config`, so a missing one is missing now.
    fn woken(n: &tokio::sync::Notify) -> bool {
        let notified = std::pin::pin!(n.notified());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::future::Future::poll(notified, &mut cx).is_ready()
    }

    #[tokio::test]
    async fn a_route_change_wakes_only_the_streams_of_its_service() {
        let before = Arc::new(two_services());
        let (tx, config_rx) = watch::channel(before.clone());
        let shared = Shared::new(
            "cluster.local".into(),
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::ZERO,
            config_rx,
            CancellationToken::new(),
        );
        let (a, b): (Target, Target) = (
            "a.default:9080".parse().unwrap(),
            "b.default:9080".parse().unwrap(),
        );
        // Stream 1 follows a, stream 2 b, stream 3 nothing yet; each target compiled once,
        // as their Subscribes do.
        let n: Vec<Arc<tokio::sync::Notify>> = (0..3)
            .map(|_| Arc::new(tokio::sync::Notify::new()))
            .collect();
        for (i, wake) in n.iter().enumerate() {
            shared.wakers.open(i as u64 + 1, wake);
        }
        shared.wakers.set_subscribed(&a, 1, &n[0], true);
        shared.wakers.set_subscribed(&b, 2, &n[1], true);
        let workloads = shared.workloads();
        for target in [&a, &b] {
            shared
                .compiled
                .get(&shared.config_rx, &before, &workloads, target, || {
                    let view = crate::compile::MeshView {
                        services: &before.services,
                        traffic: &before.traffic,
                        workloads: &workloads,
                        trust_domain: "cluster.local",
                    };
                    crate::compile::compile(view, target)
                });
        }
        // A route for `a` (a ServiceProfile's, empty): only stream 1 wakes.
        let mut next = two_services();
        next.traffic.routes.insert(
            ServiceKey::new("default", "a"),
            crate::store::traffic::ServiceRoutes {
                api: trellis_config::traffic::RouteApi::ServiceProfile,
                http: Vec::new(),
                tcp: Vec::new(),
                policy: Default::default(),
            },
        );
        let after = Arc::new(next);
        tx.send_replace(after.clone());
        let count = shared.wakers.woken();
        shared.publish_config(&before, &after);
        assert_eq!(shared.wakers.woken() - count, 1);
        assert!(woken(&n[0]));
        assert!(!woken(&n[1]) && !woken(&n[2]));
        // A change of a Service may change any stream's inbound policy: all three wake.
        let mut services_changed = (*after).clone();
        if let Some(svc) = services_changed
            .services
            .get_mut(&ServiceKey::new("default", "b"))
        {
            svc.cluster_ip = Some("10.0.0.2".parse().unwrap());
        }
        let last = Arc::new(services_changed);
        tx.send_replace(last.clone());
        shared.publish_config(&after, &last);
        for wake in &n {
            assert!(woken(wake));
        }
    }
}
