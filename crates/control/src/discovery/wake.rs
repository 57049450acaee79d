//! Which discovery streams a registry publication wakes: an index from subscribed target to
//! the streams subscribed to it.
//!
//! A publication of the registered workloads used to wake every stream; with thousands of
//! proxies connecting, each registration woke thousands of streams that then found nothing to
//! send, O(N²) while N proxies connect. Now the publisher asks the compile cache which targets
//! kept their compiled value (`cache::CompileCache::advance`) and wakes only the streams
//! subscribed to another target, plus those that want every change (gateways: their
//! listeners' backends list endpoints).
//!
//! A config change is handled the same way (`state::Shared::publish_config`): the cache keeps
//! the targets that read none of the services it touched, and only the streams subscribed to
//! another target are woken; a change of what every stream reads (its inbound policy's inputs,
//! Gateways, the config revision) wakes every open stream.
//!
//! A stream registers a target here before it compiles it, so a publication between the two
//! wakes it (a `Notify` keeps the wake-up until the stream next waits).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use trellis_model::Target;

use crate::registry::StreamId;

#[derive(Debug, Default)]
pub struct Wakers {
    inner: Mutex<Inner>,
    /// Stream wake-ups made by publications so far (tests and the bench's figures).
    woken: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    by_target: HashMap<Target, HashMap<StreamId, Arc<Notify>>>,
    /// Streams woken by every publication.
    every: HashMap<StreamId, Arc<Notify>>,
    /// Every open stream, for a config change that may concern any of them (their inbound
    /// policy, a Gateway that may select them, a new config revision to report).
    all: HashMap<StreamId, Arc<Notify>>,
}

impl Wakers {
    /// `stream` is (or is no longer) subscribed to `target`.
    pub fn set_subscribed(
        &self,
        target: &Target,
        stream: StreamId,
        wake: &Arc<Notify>,
        subscribed: bool,
    ) {
        let mut inner = self.lock();
        if subscribed {
            inner
                .by_target
                .entry(target.clone())
                .or_default()
                .insert(stream, wake.clone());
        } else if let Some(streams) = inner.by_target.get_mut(target) {
            streams.remove(&stream);
            if streams.is_empty() {
                inner.by_target.remove(target);
            }
        }
    }

    /// Whether `stream` is woken by every publication (whatever its targets).
    pub fn set_every(&self, stream: StreamId, wake: &Arc<Notify>, every: bool) {
        let mut inner = self.lock();
        if every {
            inner.every.insert(stream, wake.clone());
        } else {
            inner.every.remove(&stream);
        }
    }

    /// A stream opened: [`Wakers::wake_all`] reaches it from now on.
    pub fn open(&self, stream: StreamId, wake: &Arc<Notify>) {
        self.lock().all.insert(stream, wake.clone());
    }

    /// Wakes every open stream. Returns how many.
    pub fn wake_all(&self) -> usize {
        let inner = self.lock();
        for wake in inner.all.values() {
            wake.notify_one();
        }
        self.woken
            .fetch_add(inner.all.len() as u64, Ordering::Relaxed);
        inner.all.len()
    }

    /// Forgets `stream` (its stream ended), subscribed to `targets`.
    pub fn remove<'a>(&self, stream: StreamId, targets: impl IntoIterator<Item = &'a Target>) {
        let mut inner = self.lock();
        inner.every.remove(&stream);
        inner.all.remove(&stream);
        for target in targets {
            if let Some(streams) = inner.by_target.get_mut(target) {
                streams.remove(&stream);
                if streams.is_empty() {
                    inner.by_target.remove(target);
                }
            }
        }
    }

    /// Wakes the streams subscribed to a target not in `kept` (`None`: nothing was kept, wake
    /// every subscribed stream) and those that want every change. Returns how many streams
    /// were woken (each once, however many of its targets changed).
    pub fn wake(&self, kept: Option<&HashSet<Target>>) -> usize {
        let inner = self.lock();
        let mut woken: HashSet<StreamId> = HashSet::new();
        for (stream, wake) in &inner.every {
            if woken.insert(*stream) {
                wake.notify_one();
            }
        }
        for (target, streams) in &inner.by_target {
            if kept.is_some_and(|kept| kept.contains(target)) {
                continue;
            }
            for (stream, wake) in streams {
                if woken.insert(*stream) {
                    wake.notify_one();
                }
            }
        }
        self.woken.fetch_add(woken.len() as u64, Ordering::Relaxed);
        woken.len()
    }

    /// Stream wake-ups made by [`Wakers::wake`] so far.
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        super::lock::lock(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_streams_of_changed_targets_and_those_wanting_all() {
        let wakers = Wakers::default();
        let (a, b, g): (Target, Target, Target) = (
            "a.default:80".parse().unwrap(),
            "b.default:80".parse().unwrap(),
            "g.default:80".parse().unwrap(),
        );
        let n: Vec<Arc<Notify>> = (0..4).map(|_| Arc::new(Notify::new())).collect();
        wakers.set_subscribed(&a, 1, &n[1], true);
        wakers.set_subscribed(&b, 1, &n[1], true);
        wakers.set_subscribed(&b, 2, &n[2], true);
        wakers.set_subscribed(&g, 3, &n[3], true);
        wakers.set_every(3, &n[3], true);
        // `a` and `g` kept: stream 1 (via b), 2 (b) and 3 (every) are woken, once each.
        let kept: HashSet<Target> = [a.clone(), g.clone()].into();
        assert_eq!(wakers.wake(Some(&kept)), 3);
        for wake in &n[1..4] {
            tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
                .await
                .expect("woken");
        }
        // Nothing changed of `b` for stream 2 after it leaves; stream 1 unsubscribes from b.
        wakers.remove(2, [&b]);
        wakers.set_subscribed(&b, 1, &n[1], false);
        wakers.set_every(3, &n[3], false);
        let kept: HashSet<Target> = [a.clone(), g.clone()].into();
        assert_eq!(wakers.wake(Some(&kept)), 0);
        assert_eq!(wakers.wake(None), 2, "streams 1 (a) and 3 (g)");
        assert_eq!(wakers.woken(), 5);
    }
}
