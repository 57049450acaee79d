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

use super::status::ObjectMeta;
use crate::registry::StreamId;

/// Per connected proxy stream: the config revision it is in sync with (`None`: not yet).
pub type Synced = BTreeMap<StreamId, Option<u64>>;

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
    /// A proxy said Hello on `stream`.
    pub fn connected(&self, stream: StreamId) {
        self.tx.send_modify(|m| {
            m.entry(stream).or_insert(None);
        });
    }

    /// The proxy on `stream` has applied everything compiled from config `revision`.
    pub fn synced(&self, stream: StreamId, revision: u64) {
        self.tx.send_if_modified(|m| match m.get_mut(&stream) {
            Some(slot) if *slot != Some(revision) => {
                *slot = Some(revision);
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

    /// (proxies that have programmed object `key`, connected proxies).
    pub fn count(&self, key: &str, synced: &Synced) -> (usize, usize) {
        let Some((_, since)) = self.since.get(key) else {
            return (0, synced.len());
        };
        let done = synced
            .values()
            .filter(|revision| revision.is_some_and(|r| r >= *since))
            .count();
        (done, synced.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::k8s::kinds::CONFIG_KINDS;

    fn objects(generation: i64) -> BTreeMap<String, ObjectMeta> {
        let kind = CONFIG_KINDS
            .iter()
            .find(|k| k.kind == "VirtualService")
            .unwrap();
        BTreeMap::from([(
            "VirtualService shop/reviews".to_string(),
            ObjectMeta {
                kind,
                namespace: "shop".into(),
                name: "reviews".into(),
                generation: Some(generation),
            },
        )])
    }

    #[test]
    fn a_proxy_has_programmed_an_object_once_synced_to_its_revision_or_later() {
        const KEY: &str = "VirtualService shop/reviews";
        let tracker = ProgrammedTracker::default();
        let rx = tracker.subscribe();
        let mut revs = Revisions::default();
        revs.observe(1, &objects(1));
        tracker.connected(1);
        tracker.connected(2);
        assert_eq!(revs.count(KEY, &rx.borrow()), (0, 2), "nothing synced yet");
        tracker.synced(1, 1);
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 2));
        tracker.synced(2, 1);
        assert_eq!(revs.count(KEY, &rx.borrow()), (2, 2));

        // A later revision with the same generation (another object changed) does not reset
        // the count...
        revs.observe(2, &objects(1));
        assert_eq!(revs.count(KEY, &rx.borrow()), (2, 2));
        // ...a new generation does, until the proxies sync to it.
        revs.observe(3, &objects(2));
        assert_eq!(revs.count(KEY, &rx.borrow()), (0, 2));
        tracker.synced(2, 3);
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 2));
        // A revision the writer skipped still counts when it is the object's or later.
        tracker.synced(1, 4);
        assert_eq!(revs.count(KEY, &rx.borrow()), (2, 2));
        // A gone proxy no longer counts.
        tracker.disconnected(1);
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 1));
    }

    #[test]
    fn an_object_first_seen_in_a_skipped_revision_counts_from_the_one_seen() {
        // The writer skipped revision 5 (where the object appeared) and saw 6; proxies synced
        // to 5 are behind until they reach 6, which discovery delivers to them.
        const KEY: &str = "VirtualService shop/reviews";
        let tracker = ProgrammedTracker::default();
        let rx = tracker.subscribe();
        let mut revs = Revisions::default();
        tracker.connected(1);
        tracker.synced(1, 5);
        revs.observe(6, &objects(1));
        assert_eq!(revs.count(KEY, &rx.borrow()), (0, 1));
        tracker.synced(1, 6);
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 1));
    }
}
