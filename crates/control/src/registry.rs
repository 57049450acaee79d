//! The workloads proxies have registered, keyed by namespace/name.
//!
//! Pure state with time passed in (`tokio::time::Instant`, so tests run on paused time): the
//! discovery adapter calls [`Registry::register`], [`Registry::heartbeat`] and
//! [`Registry::disconnect`]; a timer calls [`Registry::expire`]. A workload leaves the registry
//! when its proxy has not been heard from (Hello or Heartbeat) for the expiry, whether its stream
//! closed or stayed open and silent, so a proxy that restarts quickly keeps its endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trellis_model::{Target, Workload};

/// Identifies one discovery stream for the lifetime of the process.
pub type StreamId = u64;

/// `namespace/name`: a workload registered twice under one key is one workload (the later
/// registration wins, so a proxy that restarts replaces its old self).
pub type WorkloadKey = (String, String);

/// One registered workload and what the control plane knows of its proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// Shared with the proxy's session and every publication that lists it: a workload is
    /// allocated once per registration, not once per holder (with 5,000 proxies and 10,000
    /// endpoints each copy of the 15,000 workloads, label maps included, was megabytes).
    pub workload: Arc<Workload>,
    pub proxy_id: String,
    pub stream: StreamId,
    pub connected: bool,
    pub last_seen: Instant,
    pub acked_version: Option<u64>,
    pub nacks: u64,
    pub last_nack: Option<String>,
    pub subscriptions: BTreeSet<Target>,
    /// The proxy's build and protocol revision, set after Hello ([`Registry::set_versions`]).
    pub versions: crate::protocol_version::ProxyVersions,
}

#[derive(Debug)]
pub struct Registry {
    expiry: Duration,
    entries: BTreeMap<WorkloadKey, Registration>,
    /// Which workload each live stream registered, so stream events find their entry.
    streams: BTreeMap<StreamId, WorkloadKey>,
    /// The workloads that joined, left or changed since [`Registry::take_changes`] was last
    /// called (both versions of a changed one): what a publication tells discovery, so that
    /// only destinations selecting one of them are recompiled.
    changes: Vec<Arc<Workload>>,
}

/// The registered workloads as published to discovery: a list, numbered, with what changed
/// since the one numbered before. Reads as the slice of workloads (`Deref`), which is what
/// `compile::MeshView` takes.
#[derive(Debug, Default)]
pub struct WorkloadSet {
    list: Vec<Arc<Workload>>,
    generation: u64,
    /// The workloads (old and new versions) that differ from generation `generation - 1`;
    /// `None`: not known (everything may have changed).
    changed: Option<Vec<Arc<Workload>>>,
    /// `list` by selector label, built on first compile (a publication nobody compiles
    /// against, as under a storm of registrations, does not pay for it).
    index: std::sync::OnceLock<crate::compile::index::SelectorIndex>,
}

impl PartialEq for WorkloadSet {
    fn eq(&self, other: &Self) -> bool {
        // The index is derived from the list.
        self.list == other.list
            && self.generation == other.generation
            && self.changed == other.changed
    }
}

impl WorkloadSet {
    pub fn new(
        list: Vec<Arc<Workload>>,
        generation: u64,
        changed: Option<Vec<Arc<Workload>>>,
    ) -> Self {
        Self {
            list,
            generation,
            changed,
            index: std::sync::OnceLock::new(),
        }
    }

    /// The list indexed by selector label (see `compile::index`), to pass to
    /// `compile::compile_indexed` with this set as the view's workloads.
    pub fn index(&self) -> &crate::compile::index::SelectorIndex {
        self.index
            .get_or_init(|| crate::compile::index::SelectorIndex::new(&self.list))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What changed since the set numbered `generation - 1` (`None`: unknown).
    pub fn changed(&self) -> Option<&[Arc<Workload>]> {
        self.changed.as_deref()
    }
}

impl std::ops::Deref for WorkloadSet {
    type Target = [Arc<Workload>];
    fn deref(&self) -> &[Arc<Workload>] {
        &self.list
    }
}

impl Registry {
    pub fn new(expiry: Duration) -> Self {
        Self {
            expiry,
            entries: BTreeMap::new(),
            streams: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    /// The workloads changed since the last call (see `changes`).
    pub fn take_changes(&mut self) -> Vec<Arc<Workload>> {
        std::mem::take(&mut self.changes)
    }

    /// Registers (or re-registers) the workload behind `stream`. Returns whether the set of
    /// workloads changed in a way endpoints depend on.
    pub fn register(
        &mut self,
        stream: StreamId,
        proxy_id: &str,
        workload: impl Into<Arc<Workload>>,
        now: Instant,
    ) -> bool {
        let workload = workload.into();
        let key = (workload.namespace.clone(), workload.name.clone());
        // A stream that re-registers under a new name gives up its old one.
        let mut changed = false;
        if let Some(old) = self.streams.insert(stream, key.clone())
            && old != key
            && self.entries.get(&old).is_some_and(|e| e.stream == stream)
            && let Some(gone) = self.entries.remove(&old)
        {
            self.changes.push(gone.workload);
            changed = true;
        }
        let previous = self.entries.remove(&key);
        if let Some(prev) = &previous
            && prev.stream != stream
        {
            self.streams.remove(&prev.stream);
        }
        if previous.as_ref().is_none_or(|p| p.workload != workload) {
            changed = true;
            if let Some(prev) = &previous {
                self.changes.push(prev.workload.clone());
            }
            self.changes.push(workload.clone());
        }
        // Versions are per stream, so acks and subscriptions carry over only on the same stream.
        let (acked_version, nacks, last_nack, subscriptions) = previous
            .filter(|p| p.stream == stream)
            .map(|p| (p.acked_version, p.nacks, p.last_nack, p.subscriptions))
            .unwrap_or_default();
        self.entries.insert(
            key,
            Registration {
                workload,
                proxy_id: proxy_id.to_string(),
                stream,
                connected: true,
                last_seen: now,
                acked_version,
                nacks,
                last_nack,
                subscriptions,
                versions: Default::default(),
            },
        );
        changed
    }

    /// Records what the proxy behind `stream` said about its versions.
    pub fn set_versions(
        &mut self,
        stream: StreamId,
        versions: crate::protocol_version::ProxyVersions,
    ) {
        if let Some(entry) = self.entry_mut(stream) {
            entry.versions = versions;
        }
    }

    /// Registers again a stream whose workload expired while the stream stayed open, unless
    /// another live stream has taken the name meanwhile (two proxies claiming one name would
    /// otherwise take it from each other on every heartbeat). Returns whether endpoints changed.
    pub fn reregister(
        &mut self,
        stream: StreamId,
        proxy_id: &str,
        workload: impl Into<Arc<Workload>>,
        now: Instant,
    ) -> bool {
        let workload = workload.into();
        let key = (workload.namespace.clone(), workload.name.clone());
        if self
            .entries
            .get(&key)
            .is_some_and(|e| e.stream != stream && e.connected)
        {
            return false;
        }
        self.register(stream, proxy_id, workload, now)
    }

    fn entry_mut(&mut self, stream: StreamId) -> Option<&mut Registration> {
        let key = self.streams.get(&stream)?;
        self.entries.get_mut(key).filter(|e| e.stream == stream)
    }

    /// Records a sign of life. Returns false when the stream has no registration (it expired
    /// while the stream stayed open): the caller then registers again.
    pub fn heartbeat(&mut self, stream: StreamId, now: Instant) -> bool {
        match self.entry_mut(stream) {
            Some(entry) => {
                entry.last_seen = now;
                entry.connected = true;
                true
            }
            None => false,
        }
    }

    /// The stream closed: the workload stays registered until it expires or reconnects.
    pub fn disconnect(&mut self, stream: StreamId, now: Instant) {
        if let Some(entry) = self.entry_mut(stream) {
            entry.connected = false;
            entry.last_seen = now;
        }
        self.streams.remove(&stream);
    }

    pub fn ack(&mut self, stream: StreamId, version: u64) {
        if let Some(entry) = self.entry_mut(stream) {
            entry.acked_version = Some(entry.acked_version.map_or(version, |v| v.max(version)));
        }
    }

    pub fn nack(&mut self, stream: StreamId, error: &str) {
        if let Some(entry) = self.entry_mut(stream) {
            entry.nacks += 1;
            entry.last_nack = Some(error.to_string());
        }
    }

    pub fn set_subscribed(&mut self, stream: StreamId, target: &Target, subscribed: bool) {
        if let Some(entry) = self.entry_mut(stream) {
            if subscribed {
                entry.subscriptions.insert(target.clone());
            } else {
                entry.subscriptions.remove(target);
            }
        }
    }

    /// Removes workloads not heard from for the expiry; returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<WorkloadKey> {
        let expiry = self.expiry;
        let expired: Vec<WorkloadKey> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) >= expiry)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            if let Some(entry) = self.entries.remove(key) {
                self.streams.remove(&entry.stream);
                self.changes.push(entry.workload);
            }
        }
        expired
    }

    /// Every registered workload (pointers: the workloads themselves are shared).
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        self.entries.values().map(|e| e.workload.clone()).collect()
    }

    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: "default".into(),
            service_account: "sa".into(),
            labels: BTreeMap::new(),
            inbound_address: "127.0.0.1:15006".parse().unwrap(),
            ports: vec![9080],
            admin_address: None,
        }
    }

    const EXPIRY: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn closed_stream_expires_after_expiry() {
        let mut reg = Registry::new(EXPIRY);
        assert!(reg.register(1, "p", workload("a"), Instant::now()));
        tokio::time::advance(Duration::from_secs(3)).await;
        reg.disconnect(1, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            reg.expire(Instant::now()).is_empty(),
            "expiry counts from the disconnect"
        );
        assert!(!reg.registrations().next().unwrap().connected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            reg.expire(Instant::now()),
            vec![("default".into(), "a".into())]
        );
        assert!(reg.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_before_expiry_keeps_workload() {
        let mut reg = Registry::new(EXPIRY);
        reg.register(1, "p", workload("a"), Instant::now());
        reg.disconnect(1, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !reg.register(2, "p", workload("a"), Instant::now()),
            "same workload: no change"
        );
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(reg.expire(Instant::now()).is_empty());
        assert!(reg.registrations().next().unwrap().connected);
        // The old stream's late events no longer touch the new registration.
        reg.disconnect(1, Instant::now());
        assert!(reg.registrations().next().unwrap().connected);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_open_stream_expires_and_heartbeat_keeps_alive() {
        let mut reg = Registry::new(EXPIRY);
        reg.register(1, "p", workload("a"), Instant::now());
        reg.register(2, "q", workload("b"), Instant::now());
        for _ in 0..6 {
            tokio::time::advance(Duration::from_secs(2)).await;
            assert!(reg.heartbeat(2, Instant::now()));
        }
        assert_eq!(
            reg.expire(Instant::now()),
            vec![("default".into(), "a".into())]
        );
        assert!(
            !reg.heartbeat(1, Instant::now()),
            "expired stream must register again"
        );
        assert_eq!(reg.len(), 1);
        assert!(reg.reregister(1, "p", workload("a"), Instant::now()));
        assert_eq!(reg.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn reregister_does_not_steal_a_live_name() {
        let mut reg = Registry::new(EXPIRY);
        reg.register(1, "p", workload("a"), Instant::now());
        tokio::time::advance(EXPIRY).await;
        reg.expire(Instant::now());
        reg.register(2, "q", workload("a"), Instant::now());
        assert!(!reg.reregister(1, "p", workload("a"), Instant::now()));
        assert_eq!(reg.registrations().next().unwrap().stream, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn acks_nacks_and_subscriptions() {
        let mut reg = Registry::new(EXPIRY);
        reg.register(1, "p", workload("a"), Instant::now());
        reg.ack(1, 3);
        reg.ack(1, 2);
        reg.nack(1, "bad address");
        let t: Target = "reviews.default:9080".parse().unwrap();
        reg.set_subscribed(1, &t, true);
        let e = reg.registrations().next().unwrap();
        assert_eq!(e.acked_version, Some(3));
        assert_eq!((e.nacks, e.last_nack.as_deref()), (1, Some("bad address")));
        assert!(e.subscriptions.contains(&t));
        // A changed registration on the same stream reports a change and keeps subscriptions.
        let mut moved = workload("a");
        moved.labels.insert("version".into(), "v2".into());
        assert!(reg.register(1, "p", moved, Instant::now()));
        assert!(
            reg.registrations()
                .next()
                .unwrap()
                .subscriptions
                .contains(&t)
        );
    }
}
