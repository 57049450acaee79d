//! Which config each connected proxy has applied, for the `Programmed` condition.
//!
//! The discovery adapter reports, per stream, the config revision the proxy is in sync with:
//! every update compiled from it (or before it) has been ACKed, or nothing it changed concerned
//! the proxy. [`ProgrammedTracker`] keeps those reports (a watch channel, so the status writer
//! wakes on them). [`Revisions`] is pure: it remembers, for every object, the first revision
//! the status writer saw holding its current generation; a proxy has programmed an object when
//! its synced revision is that one or later.
//!
//! Revisions are numbers the Kubernetes source gives each snapshot whose content changed
//! ([`ConfigSnapshot::revision`]), not snapshot identities: between the source and discovery,
//! adapters (ServiceEntry DNS answers, linked clusters' exports) publish snapshots of their own
//! that carry the source's number, and the status writer may skip revisions (watch channels
//! keep only the latest). A proxy synced to an earlier revision than an object's counts as not
//! programmed until it syncs to a later one, which it does when that revision reaches it: the
//! count is never too high, and converges.
//!
//! [`ConfigSnapshot::revision`]: crate::store::ConfigSnapshot::revision

use std::collections::BTreeMap;

use tokio::sync::watch;
use trellis_model::{Target, Workload};

use super::concern::Proxy;
use super::status::ObjectMeta;
use crate::registry::StreamId;

/// One connected proxy stream: the config revision it is in sync with (`None`: not yet), and
/// what it told the control plane (workload, subscriptions), which decides the objects that
/// concern it ([`super::concern`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyState {
    pub revision: Option<u64>,
    pub proxy: Proxy,
    /// Hosts subscribed to since the last sync report: the answer may not be ACKed yet, so
    /// the revision above does not vouch for objects that concern the proxy through them.
    pub unsynced_hosts: std::collections::BTreeSet<String>,
}

/// Per connected proxy stream, its state.
pub type Synced = BTreeMap<StreamId, ProxyState>;

/// Reports from the discovery streams.
#[derive(Debug)]
pub struct ProgrammedTracker {
    tx: watch::Sender<Synced>,
}

impl Default for ProgrammedTracker {
    fn default() -> Self {
        Self {
            tx: watch::channel(Synced::new()).0,
        }
    }
}

impl ProgrammedTracker {
    /// A proxy of `workload` said Hello on `stream` (again: its workload is replaced, its
    /// subscriptions and sync kept, as the stream keeps them).
    pub fn connected(&self, stream: StreamId, workload: &Workload) {
        let fresh = Proxy::new(workload);
        self.tx.send_if_modified(|m| {
            let known = m.contains_key(&stream);
            let state = m.entry(stream).or_default();
            let changed = !known
                || state.proxy.namespace != fresh.namespace
                || state.proxy.labels != fresh.labels;
            state.proxy.namespace = fresh.namespace;
            state.proxy.labels = fresh.labels;
            changed
        });
    }

    /// The proxy on `stream` subscribed to `target` (or, `false`, dropped it).
    pub fn subscribed(&self, stream: StreamId, target: &Target, subscribed: bool) {
        let Some(host) = Proxy::host_of(target) else {
            return;
        };
        self.tx.send_if_modified(|m| match m.get_mut(&stream) {
            Some(state) if subscribed => {
                let new = state.proxy.hosts.insert(host.clone());
                if new {
                    state.unsynced_hosts.insert(host);
                }
                new
            }
            Some(state) => {
                state.unsynced_hosts.remove(&host);
                state.proxy.hosts.remove(&host)
            }
            None => false,
        });
    }

    /// The proxy on `stream` has applied everything compiled from config `revision` (and
    /// everything sent for its subscriptions so far).
    pub fn synced(&self, stream: StreamId, revision: u64) {
        self.tx.send_if_modified(|m| match m.get_mut(&stream) {
            Some(state) if state.revision != Some(revision) || !state.unsynced_hosts.is_empty() => {
                state.revision = Some(revision);
                state.unsynced_hosts.clear();
                true
            }
            _ => false,
        });
    }

    pub fn disconnected(&self, stream: StreamId) {
        self.tx.send_if_modified(|m| m.remove(&stream).is_some());
    }

    pub fn subscribe(&self) -> watch::Receiver<Synced> {
        self.tx.subscribe()
    }
}

/// Per object, the revision its current generation first appeared in.
#[derive(Debug, Default)]
pub struct Revisions {
    /// Object key -> (generation, first revision with it).
    since: BTreeMap<String, (Option<i64>, u64)>,
}

impl Revisions {
    /// Records the objects of the snapshot numbered `revision`.
    pub fn observe(&mut self, revision: u64, objects: &BTreeMap<String, ObjectMeta>) {
        self.since.retain(|key, _| objects.contains_key(key));
        for (key, meta) in objects {
            match self.since.get(key) {
                Some((generation, _)) if *generation == meta.generation => {}
                _ => {
                    self.since.insert(key.clone(), (meta.generation, revision));
                }
            }
        }
    }

    /// (proxies that have programmed object `key`, proxies it concerns) among the connected
    /// ones `concerned` takes in.
    pub fn count(
        &self,
        key: &str,
        synced: &Synced,
        concerned: impl Fn(&Proxy) -> bool,
    ) -> (usize, usize) {
        let concerned = &concerned;
        let concerned_states = synced.values().filter(|s| concerned(&s.proxy));
        let Some((_, since)) = self.since.get(key) else {
            return (0, concerned_states.count());
        };
        concerned_states.fold((0, 0), |(done, total), state| {
            let mut programmed = state.revision.is_some_and(|r| r >= *since);
            // Concerned only through a subscription not ACKed yet: not programmed until it is
            // (the count is never too high).
            if programmed && !state.unsynced_hosts.is_empty() {
                let mut settled = state.proxy.clone();
                settled.hosts.retain(|h| !state.unsynced_hosts.contains(h));
                programmed = concerned(&settled);
            }
            (done + usize::from(programmed), total + 1)
        })
    }
}

/// Whether object `key` of `objects` concerns `proxy` (an object not in `objects`: every
/// proxy, as before objects had a concern).
pub fn concerned(objects: &BTreeMap<String, ObjectMeta>, key: &str, proxy: &Proxy) -> bool {
    let Some(meta) = objects.get(key) else {
        return true;
    };
    super::concern::concerns(&meta.concern, proxy, |gateway| {
        objects.get(gateway).map(|m| &m.concern)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::k8s::concern::Concern;
    use crate::k8s::kinds::CONFIG_KINDS;

    const KEY: &str = "VirtualService shop/reviews";

    fn objects(generation: i64) -> BTreeMap<String, ObjectMeta> {
        let kind = CONFIG_KINDS
            .iter()
            .find(|k| k.kind == "VirtualService")
            .unwrap();
        BTreeMap::from([(
            KEY.to_string(),
            ObjectMeta {
                kind,
                namespace: "shop".into(),
                name: "reviews".into(),
                generation: Some(generation),
                concern: Concern::Hosts {
                    hosts: vec!["reviews.shop.svc.cluster.local".into()],
                    mesh: true,
                    gateways: Vec::new(),
                },
            },
        )])
    }

    fn workload(name: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: "shop".into(),
            service_account: "default".into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            inbound_address: "127.0.0.1:1".parse().unwrap(),
            ports: Vec::new(),
            admin_address: None,
        }
    }

    fn reviews() -> Target {
        "reviews.shop:9080".parse().unwrap()
    }

    /// `KEY`'s count with its concern.
    fn count(
        revs: &Revisions,
        rx: &watch::Receiver<Synced>,
        objs: &BTreeMap<String, ObjectMeta>,
    ) -> (usize, usize) {
        revs.count(KEY, &rx.borrow(), |p| concerned(objs, KEY, p))
    }

    #[test]
    fn a_proxy_has_programmed_an_object_once_synced_to_its_revision_or_later() {
        let tracker = ProgrammedTracker::default();
        let rx = tracker.subscribe();
        let mut revs = Revisions::default();
        let objs = objects(1);
        revs.observe(1, &objs);
        for stream in [1, 2] {
            tracker.connected(stream, &workload("web"));
            tracker.subscribed(stream, &reviews(), true);
        }
        assert_eq!(count(&revs, &rx, &objs), (0, 2), "nothing synced yet");
        tracker.synced(1, 1);
        assert_eq!(count(&revs, &rx, &objs), (1, 2));
        tracker.synced(2, 1);
        assert_eq!(count(&revs, &rx, &objs), (2, 2));

        // A later revision with the same generation (another object changed) does not reset
        // the count...
        revs.observe(2, &objects(1));
        assert_eq!(count(&revs, &rx, &objs), (2, 2));
        // ...a new generation does, until the proxies sync to it.
        let objs = objects(2);
        revs.observe(3, &objs);
        assert_eq!(count(&revs, &rx, &objs), (0, 2));
        tracker.synced(2, 3);
        assert_eq!(count(&revs, &rx, &objs), (1, 2));
        // A revision the writer skipped still counts when it is the object's or later.
        tracker.synced(1, 4);
        assert_eq!(count(&revs, &rx, &objs), (2, 2));
        // A gone proxy no longer counts.
        tracker.disconnected(1);
        assert_eq!(count(&revs, &rx, &objs), (1, 1));
    }

    #[test]
    fn an_object_first_seen_in_a_skipped_revision_counts_from_the_one_seen() {
        // The writer skipped revision 5 (where the object appeared) and saw 6; proxies synced
        // to 5 are behind until they reach 6, which discovery delivers to them.
        let tracker = ProgrammedTracker::default();
        let rx = tracker.subscribe();
        let mut revs = Revisions::default();
        let objs = objects(1);
        tracker.connected(1, &workload("web"));
        tracker.subscribed(1, &reviews(), true);
        tracker.synced(1, 5);
        revs.observe(6, &objs);
        assert_eq!(count(&revs, &rx, &objs), (0, 1));
        tracker.synced(1, 6);
        assert_eq!(count(&revs, &rx, &objs), (1, 1));
    }

    #[test]
    fn only_the_proxies_an_object_concerns_are_counted() {
        let tracker = ProgrammedTracker::default();
        let rx = tracker.subscribe();
        let mut revs = Revisions::default();
        let objs = objects(1);
        revs.observe(1, &objs);
        tracker.connected(1, &workload("web"));
        tracker.connected(2, &workload("batch"));
        tracker.subscribed(1, &reviews(), true);
        tracker.subscribed(2, &"ratings.shop:9080".parse().unwrap(), true);
        // An address subscription names no host.
        tracker.subscribed(2, &"10.0.0.1:80".parse().unwrap(), true);
        tracker.synced(1, 1);
        tracker.synced(2, 1);
        assert_eq!(
            count(&revs, &rx, &objs),
            (1, 1),
            "reviews' proxy only, not 1/2"
        );
        // Dropping the subscription: the object concerns no proxy.
        tracker.subscribed(1, &reviews(), false);
        assert_eq!(count(&revs, &rx, &objs), (0, 0));
        // A new subscriber counts, and is programmed once it has ACKed what it asked for,
        // not on the strength of an earlier sync.
        tracker.subscribed(2, &reviews(), true);
        assert_eq!(count(&revs, &rx, &objs), (0, 1));
        tracker.synced(2, 1);
        assert_eq!(count(&revs, &rx, &objs), (1, 1));
        // A Hello again keeps the stream's subscriptions and sync.
        tracker.connected(2, &workload("batch-v2"));
        assert_eq!(count(&revs, &rx, &objs), (1, 1));
        // An object without a known concern counts every connected proxy, as before.
        assert_eq!(
            revs.count("VirtualService shop/gone", &rx.borrow(), |p| {
                concerned(&objs, "VirtualService shop/gone", p)
            }),
            (0, 2)
        );
    }
}
