//! The state the adapters (discovery, HTTP, timers) share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_model::Workload;

use crate::registry::Registry;
use crate::store::ConfigSnapshot;
use crate::telemetry::Metrics;

#[derive(Debug)]
pub struct Shared {
    pub trust_domain: String,
    pub heartbeat_interval: Duration,
    pub config_rx: watch::Receiver<Arc<ConfigSnapshot>>,
    registry: Mutex<Registry>,
    /// The registered workloads, republished whenever endpoints may have changed; discovery
    /// streams recompute on every new value.
    workloads_tx: watch::Sender<Arc<Vec<Workload>>>,
    /// A registry change not yet published. Publishing copies every workload, so it is done
    /// once for all the changes made since the last one (see [`Shared::flush_workloads`]),
    /// not once per change: 10,000 proxies registering cost 10,000 copies of up to 10,000
    /// workloads each, minutes of CPU, before this.
    workloads_dirty: AtomicBool,
    /// Wakes the publisher (`run_expiry`) when `workloads_dirty` is set.
    publish: tokio::sync::Notify,
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
}

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
            workloads_tx: watch::channel(Arc::new(Vec::new())).0,
            workloads_dirty: AtomicBool::new(false),
            publish: tokio::sync::Notify::new(),
            metrics: Metrics::default(),
            shutdown,
            hold_back_until: Instant::now() + registration_grace,
            external_workloads: AtomicBool::new(false),
            programmed: Default::default(),
            compiled: Default::default(),
        }
    }

    /// Runs `f` on the registry and, if it reports a change, has the workloads republished:
    /// by the publisher task an instant later, together with every other change made by
    /// then, or by the first reader of [`Shared::workloads_rx`] before that. The lock is held
    /// only for `f` (never across an await: this is not async).
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> (T, bool)) -> T {
        let mut registry = self.registry();
        let (out, changed) = f(&mut registry);
        drop(registry);
        if changed && !self.external_workloads.load(Ordering::Acquire) {
            self.workloads_dirty.store(true, Ordering::Release);
            self.publish.notify_one();
        }
        out
    }

    /// Publishes the registry's workloads if a change is pending.
    pub fn flush_workloads(&self) {
        if !self.workloads_dirty.load(Ordering::Acquire) {
            return;
        }
        let registry = self.registry();
        // Taken and published under the lock, so that values go out in the order changes
        // were made and none is lost between the swap and the copy.
        if self.workloads_dirty.swap(false, Ordering::AcqRel)
            && !self.external_workloads.load(Ordering::Acquire)
        {
            self.workloads_tx
                .send_replace(Arc::new(registry.workloads()));
        }
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
        self.workloads_tx.send_if_modified(|current| {
            let changed = **current != workloads;
            if changed {
                *current = Arc::new(workloads);
            }
            changed
        });
    }

    /// The registered workloads as last published (a change an instant old may not be in
    /// yet: its publication wakes every discovery stream).
    pub fn workloads(&self) -> Arc<Vec<Workload>> {
        self.workloads_tx.borrow().clone()
    }

    /// A receiver of the workloads, with every change made so far published.
    pub fn workloads_rx(&self) -> watch::Receiver<Arc<Vec<Workload>>> {
        self.flush_workloads();
        self.workloads_tx.subscribe()
    }

    /// Until shutdown: expires silent workloads, checking several times per expiry period, and
    /// publishes registry changes (the two tasks that change the registry's published view).
    pub async fn run_expiry(self: Arc<Self>, expiry: Duration) {
        let period = (expiry / 5).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.publish.notified() => {
                    // Let the registrations already queued land first: one copy for them all.
                    tokio::task::yield_now().await;
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
