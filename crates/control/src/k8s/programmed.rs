//! Which config each connected proxy has applied, for the `Programmed` condition.
//!
//! The discovery adapter reports, per stream, the config snapshot the proxy is in sync with:
//! every update compiled from it (or before it) has been ACKed, or nothing it changed concerned
//! the proxy. [`ProgrammedTracker`] keeps those reports (a watch channel, so the status writer
//! wakes on them). [`Revisions`] is pure: it numbers the snapshots the status writer sees and
//! remembers, for every object, the first revision holding its current generation; a proxy has
//! programmed an object when its synced snapshot is that revision or later.
//!
//! Snapshots are compared by identity (`Arc::ptr_eq`): the discovery streams and the status
//! writer receive the same `Arc` from the config source. A proxy synced to a snapshot the
//! writer skipped (watch channels keep only the latest) counts as not programmed until it
//! syncs to a later one, which it does when the next snapshot arrives: the count is never too
//! high, and converges.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;

use super::status::ObjectMeta;
use crate::registry::StreamId;
use crate::store::ConfigSnapshot;

/// Per connected proxy stream: the snapshot it is in sync with (`None`: not yet).
pub type Synced = BTreeMap<StreamId, Option<Arc<ConfigSnapshot>>>;

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

    /// The proxy on `stream` has applied everything compiled from `snapshot`.
    pub fn synced(&self, stream: StreamId, snapshot: Arc<ConfigSnapshot>) {
        self.tx.send_if_modified(|m| match m.get_mut(&stream) {
            Some(slot) if !slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &snapshot)) => {
                *slot = Some(snapshot);
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

/// How many recent snapshots are remembered; a proxy synced to an older one counts as behind.
const REMEMBERED: usize = 256;

/// Snapshot revisions and, per object, the revision its current generation first appeared in.
#[derive(Debug, Default)]
pub struct Revisions {
    recent: VecDeque<(Arc<ConfigSnapshot>, u64)>,
    next: u64,
    /// Object key -> (generation, first revision with it).
    since: BTreeMap<String, (Option<i64>, u64)>,
}

impl Revisions {
    /// Records `snapshot` (a new revision unless already seen) and the objects in it.
    pub fn observe(
        &mut self,
        snapshot: &Arc<ConfigSnapshot>,
        objects: &BTreeMap<String, ObjectMeta>,
    ) {
        let rev = match self.revision(snapshot) {
            Some(rev) => rev,
            None => {
                self.next += 1;
                if self.recent.len() >= REMEMBERED {
                    self.recent.pop_front();
                }
                self.recent.push_back((snapshot.clone(), self.next));
                self.next
            }
        };
        self.since.retain(|key, _| objects.contains_key(key));
        for (key, meta) in objects {
            match self.since.get(key) {
                Some((generation, _)) if *generation == meta.generation => {}
                _ => {
                    self.since.insert(key.clone(), (meta.generation, rev));
                }
            }
        }
    }

    fn revision(&self, snapshot: &Arc<ConfigSnapshot>) -> Option<u64> {
        self.recent
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, snapshot))
            .map(|(_, rev)| *rev)
    }

    /// (proxies that have programmed object `key`, connected proxies).
    pub fn count(&self, key: &str, synced: &Synced) -> (usize, usize) {
        let Some((_, since)) = self.since.get(key) else {
            return (0, synced.len());
        };
        let done = synced
            .values()
            .filter(|s| {
                s.as_ref()
                    .and_then(|s| self.revision(s))
                    .is_some_and(|rev| rev >= *since)
            })
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
        let s1 = Arc::new(ConfigSnapshot::default());
        revs.observe(&s1, &objects(1));
        tracker.connected(1);
        tracker.connected(2);
        assert_eq!(revs.count(KEY, &rx.borrow()), (0, 2), "nothing synced yet");
        tracker.synced(1, s1.clone());
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 2));
        tracker.synced(2, s1.clone());
        assert_eq!(revs.count(KEY, &rx.borrow()), (2, 2));

        // A status write (same generation, new snapshot) does not reset the count...
        let s2 = Arc::new(ConfigSnapshot::default());
        revs.observe(&s2, &objects(1));
        assert_eq!(revs.count(KEY, &rx.borrow()), (2, 2));
        // ...a new generation does, until the proxies sync to it.
        let s3 = Arc::new(ConfigSnapshot::default());
        revs.observe(&s3, &objects(2));
        assert_eq!(revs.count(KEY, &rx.borrow()), (0, 2));
        tracker.synced(2, s3.clone());
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 2));
        // A snapshot the writer never saw counts as behind; a gone proxy no longer counts.
        tracker.synced(1, Arc::new(ConfigSnapshot::default()));
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 2));
        tracker.disconnected(1);
        assert_eq!(revs.count(KEY, &rx.borrow()), (1, 1));
    }
}
