//! Request metrics with workload labels: `trellis_requests_total`,
//! `trellis_request_duration_seconds`, `trellis_request_bytes_total` and
//! `trellis_response_bytes_total`, by direction, source and destination workload, namespace and
//! identity, destination service, route and tls (and, on the counter, status code, gRPC status
//! and response class).
//!
//! A label set is interned once: the first request with a new combination allocates its
//! [`Series`] (under a shard's write lock); every later one hashes the borrowed label strings,
//! takes the shard's read lock and gets the `Arc<Series>` back, so recording never formats or
//! allocates. Status codes are counted in per-class arrays created on first use. Cardinality is
//! capped twice: at most [`MAX_ROUTES`] distinct route names (more become `other`) and at most
//! [`MAX_SERIES`] label sets (more are counted in one overflow series per direction whose peer
//! labels are `other`). Label values are escaped once, when the series is made; rendering only
//! walks the atomics. This module must not know about HTTP beyond numbers.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use super::{Direction, Histogram, escape, family, histogram, sample};

/// The most label sets kept; past it new combinations share an overflow series.
pub const MAX_SERIES: usize = 4096;
/// The most distinct route names used as label values; past it a route is `other`.
pub const MAX_ROUTES: usize = 256;
const SHARDS: usize = 16;
/// gRPC status codes 0..=16; anything else is counted as 2 (UNKNOWN).
const GRPC_CODES: usize = 17;
const OTHER: &str = "other";

/// One side of an exchange as labels: empty strings render as empty labels (Prometheus
/// treats them as absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Peer<'a> {
    pub workload: &'a str,
    pub namespace: &'a str,
    pub identity: &'a str,
}

/// The label set of one request, borrowed from wherever the values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels<'a> {
    pub direction: Direction,
    pub source: Peer<'a>,
    pub destination: Peer<'a>,
    pub destination_service: &'a str,
    pub route: &'a str,
    pub tls: bool,
}

/// The owned copy a series is filed under, compared on lookup (hash collisions are possible).
#[derive(Debug, PartialEq, Eq)]
struct OwnedLabels {
    direction: Direction,
    values: [Box<str>; 8],
    tls: bool,
}

impl OwnedLabels {
    fn of(l: &RequestLabels<'_>) -> Self {
        Self {
            direction: l.direction,
            values: [
                l.source.workload.into(),
                l.source.namespace.into(),
                l.source.identity.into(),
                l.destination.workload.into(),
                l.destination.namespace.into(),
                l.destination.identity.into(),
                l.destination_service.into(),
                l.route.into(),
            ],
            tls: l.tls,
        }
    }

    fn matches(&self, l: &RequestLabels<'_>) -> bool {
        let [sw, sn, si, dw, dn, di, ds, r] = &self.values;
        self.direction == l.direction
            && self.tls == l.tls
            && **sw == *l.source.workload
            && **sn == *l.source.namespace
            && **si == *l.source.identity
            && **dw == *l.destination.workload
            && **dn == *l.destination.namespace
            && **di == *l.destination.identity
            && **ds == *l.destination_service
            && **r == *l.route
    }
}

/// The counters of one label set.
#[derive(Debug)]
pub struct Series {
    /// `direction="..",source_workload="..",...,tls=".."`, escaped, made once.
    rendered: Box<str>,
    /// HTTP statuses by class (1xx..9xx), each array made on the class's first response.
    statuses: [OnceLock<Box<[AtomicU64; 100]>>; 9],
    /// gRPC answers (HTTP 200 with a `grpc-status`) by gRPC code.
    grpc: [AtomicU64; GRPC_CODES],
    duration: Histogram,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

impl Series {
    fn new(labels: &OwnedLabels) -> Self {
        let mut rendered = String::with_capacity(256);
        let names = [
            "source_workload",
            "source_namespace",
            "source_identity",
            "destination_workload",
            "destination_namespace",
            "destination_identity",
            "destination_service",
            "route",
        ];
        rendered.push_str("direction=\"");
        rendered.push_str(labels.direction.as_str());
        rendered.push('"');
        for (name, value) in names.iter().zip(&labels.values) {
            rendered.push(',');
            rendered.push_str(name);
            rendered.push_str("=\"");
            escape(value, &mut rendered);
            rendered.push('"');
        }
        rendered.push_str(if labels.tls {
            ",tls=\"true\""
        } else {
            ",tls=\"false\""
        });
        Self {
            rendered: rendered.into(),
            statuses: Default::default(),
            grpc: super::counters(),
            duration: Histogram::new(),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
        }
    }

    /// The response head arrived after `elapsed`.
    pub fn observe_latency(&self, elapsed: Duration) {
        self.duration.observe(elapsed);
    }

    /// The exchange ended: count it by status (or gRPC status) and add its bytes.
    pub fn finish(&self, status: u16, grpc_status: Option<u32>, req_bytes: u64, resp_bytes: u64) {
        self.request_bytes.fetch_add(req_bytes, Relaxed);
        self.response_bytes.fetch_add(resp_bytes, Relaxed);
        if let (200, Some(code)) = (status, grpc_status) {
            let slot = usize::try_from(code)
                .ok()
                .filter(|c| *c < GRPC_CODES)
                .unwrap_or(2);
            self.grpc[slot].fetch_add(1, Relaxed);
            return;
        }
        let status = status.clamp(100, 999);
        let class = usize::from(status / 100 - 1);
        let array = self.statuses[class].get_or_init(|| Box::new(super::counters()));
        array[usize::from(status % 100)].fetch_add(1, Relaxed);
    }
}

/// Linkerd's classification: 5xx, and gRPC answers other than OK, are failures.
pub fn response_class(status: u16, grpc_status: Option<u32>) -> &'static str {
    if status >= 500 || grpc_status.is_some_and(|c| c != 0) {
        "failure"
    } else {
        "success"
    }
}

#[derive(Debug)]
struct Entry {
    key: OwnedLabels,
    series: Arc<Series>,
}

/// The interned label sets of one proxy.
/// A fast word-at-a-time hasher (rustc's Fx) with a per-registry random seed: the per-request
/// lookup hashes ~100 bytes of labels, where SipHash costs several times more. Collisions only
/// lengthen a bucket (entries are compared in full), and entries are capped.
#[derive(Clone, Copy, Debug)]
struct FxBuild {
    seed: u64,
}

#[derive(Debug)]
struct FxHasher {
    hash: u64,
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.hash = (self.hash.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.hash = (self.hash.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;

    fn build_hasher(&self) -> FxHasher {
        FxHasher { hash: self.seed }
    }
}

/// The shards' maps are keyed by the labels' hash, already seeded and mixed by [`FxBuild`]:
/// hashing it again (the default SipHash) would only add cost.
#[derive(Clone, Copy, Debug, Default)]
struct HashedKey;

#[derive(Debug, Default)]
struct HashedKeyHasher(u64);

impl std::hash::Hasher for HashedKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else is still mixed, never dropped.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_u64(&mut self, i: u64) {
        // hashbrown picks buckets by the low bits; the multiply at the end of Fx mixes the high
        // bits best. The shard takes the top four (see `RequestRegistry::series`).
        self.0 = i.rotate_left(32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for HashedKey {
    type Hasher = HashedKeyHasher;

    fn build_hasher(&self) -> HashedKeyHasher {
        HashedKeyHasher::default()
    }
}

type Shard = HashMap<u64, Vec<Entry>, HashedKey>;

#[derive(Debug)]
pub struct RequestRegistry {
    hasher: FxBuild,
    shards: [RwLock<Shard>; SHARDS],
    /// Lookup entries made (aliases included), against [`MAX_SERIES`].
    entries: AtomicUsize,
    /// Every distinct series, in creation order, for rendering; and the canonical index.
    canonical: Mutex<CanonicalIndex>,
    overflow: [OnceLock<Arc<Series>>; 2],
}

#[derive(Debug, Default)]
struct CanonicalIndex {
    all: Vec<Arc<Series>>,
    by_labels: HashMap<Box<str>, Arc<Series>>,
    routes: HashSet<Box<str>>,
}

impl Default for RequestRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestRegistry {
    pub fn new() -> Self {
        Self {
            hasher: FxBuild {
                seed: crate::split::next_u64(),
            },
            shards: Default::default(),
            entries: AtomicUsize::new(0),
            canonical: Mutex::new(CanonicalIndex::default()),
            overflow: Default::default(),
        }
    }

    /// The series for a label set: found by hash under a read lock, made once per new set.
    pub fn series(&self, labels: &RequestLabels<'_>) -> Arc<Series> {
        let hash = self.hasher.hash_one(labels);
        // The top bits: the best mixed, and not those the shard's map buckets by.
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = map
                .get(&hash)
                .and_then(|v| v.iter().find(|e| e.key.matches(labels)))
            {
                return e.series.clone();
            }
        }
        if self.entries.load(Relaxed) >= MAX_SERIES {
            return self.overflow(labels.direction);
        }
        let series = self.canonical(labels);
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        let bucket = map.entry(hash).or_default();
        // Another thread may have filed the same set meanwhile.
        if let Some(e) = bucket.iter().find(|e| e.key.matches(labels)) {
            return e.series.clone();
        }
        self.entries.fetch_add(1, Relaxed);
        bucket.push(Entry {
            key: OwnedLabels::of(labels),
            series: series.clone(),
        });
        series
    }

    /// The one series for these labels after the route cap, so that two lookups mapped to
    /// `other` never render twice.
    fn canonical(&self, labels: &RequestLabels<'_>) -> Arc<Series> {
        let mut idx = self
            .canonical
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let route_known = labels.route.is_empty() || idx.routes.contains(labels.route);
        let route = if route_known {
            labels.route
        } else if idx.routes.len() < MAX_ROUTES {
            idx.routes.insert(labels.route.into());
            labels.route
        } else {
            OTHER
        };
        let capped = RequestLabels { route, ..*labels };
        let owned = OwnedLabels::of(&capped);
        let probe = Series::new(&owned);
        if let Some(s) = idx.by_labels.get(&probe.rendered) {
            return s.clone();
        }
        let series = Arc::new(probe);
        idx.by_labels
            .insert(series.rendered.clone(), series.clone());
        idx.all.push(series.clone());
        series
    }

    fn overflow(&self, direction: Direction) -> Arc<Series> {
        self.overflow[direction as usize]
            .get_or_init(|| {
                let other = Peer {
                    workload: OTHER,
                    namespace: OTHER,
                    identity: OTHER,
                };
                let labels = RequestLabels {
                    direction,
                    source: other,
                    destination: other,
                    destination_service: OTHER,
                    route: OTHER,
                    tls: false,
                };
                self.canonical(&labels)
            })
            .clone()
    }

    /// How many distinct series exist (for tests and `/config_dump`).
    pub fn len(&self) -> usize {
        self.lock_canonical().all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_canonical(&self) -> std::sync::MutexGuard<'_, CanonicalIndex> {
        self.canonical
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the four request families.
    pub fn render(&self, out: &mut String) -> std::fmt::Result {
        let all: Vec<Arc<Series>> = self.lock_canonical().all.clone();
        let name = "trellis_requests_total";
        let help = "HTTP and gRPC requests proxied, counted when the response ends.";
        family(out, name, "counter", help)?;
        for s in &all {
            for (class, array) in s.statuses.iter().enumerate() {
                let Some(array) = array.get() else { continue };
                for (i, c) in array.iter().enumerate() {
                    let n = c.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let code = (class as u16 + 1) * 100 + i as u16;
                    writeln!(
                        out,
                        "{name}{{{},status_code=\"{code}\",response_class=\"{}\"}} {n}",
                        s.rendered,
                        response_class(code, None)
                    )?;
                }
            }
            for (code, c) in s.grpc.iter().enumerate() {
                let n = c.load(Relaxed);
                if n == 0 {
                    continue;
                }
                writeln!(
                    out,
                    "{name}{{{},status_code=\"200\",grpc_status=\"{code}\",response_class=\"{}\"}} {n}",
                    s.rendered,
                    response_class(200, Some(code as u32))
                )?;
            }
        }
        let name = "trellis_request_duration_seconds";
        let help = "Time from the request to the response headers.";
        family(out, name, "histogram", help)?;
        for s in &all {
            histogram(out, name, &s.rendered, &s.duration.buckets())?;
        }
        type Field = fn(&Series) -> &AtomicU64;
        let bytes: [(&str, &str, Field); 2] = [
            (
                "trellis_request_bytes_total",
                "Request body bytes received from the downstream.",
                |s| &s.request_bytes,
            ),
            (
                "trellis_response_bytes_total",
                "Response body bytes sent to the downstream.",
                |s| &s.response_bytes,
            ),
        ];
        for (name, help, field) in bytes {
            family(out, name, "counter", help)?;
            for s in &all {
                sample(out, name, &s.rendered, field(s).load(Relaxed))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(route: &'a str, dst: &'a str) -> RequestLabels<'a> {
        RequestLabels {
            direction: Direction::Outbound,
            source: Peer {
                workload: "productpage-v1",
                namespace: "default",
                identity: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            },
            destination: Peer {
                workload: dst,
                namespace: "default",
                identity: "",
            },
            destination_service: "reviews.default.svc.cluster.local",
            route,
            tls: false,
        }
    }

    fn rendered(r: &RequestRegistry) -> String {
        let mut s = String::new();
        r.render(&mut s).unwrap();
        s
    }

    #[test]
    fn same_labels_share_one_series() {
        let r = RequestRegistry::new();
        let a = r.series(&labels("r1", "reviews-v1"));
        let b = r.series(&labels("r1", "reviews-v1"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = r.series(&labels("r1", "reviews-v2"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn renders_status_grpc_and_class() {
        let r = RequestRegistry::new();
        let s = r.series(&labels("r1", "reviews-v1"));
        s.observe_latency(Duration::from_millis(3));
        s.finish(200, None, 10, 20);
        s.finish(503, None, 0, 5);
        s.finish(200, Some(14), 0, 0);
        let out = rendered(&r);
        let base = "direction=\"outbound\",source_workload=\"productpage-v1\",source_namespace=\"default\",source_identity=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\",destination_workload=\"reviews-v1\",destination_namespace=\"default\",destination_identity=\"\",destination_service=\"reviews.default.svc.cluster.local\",route=\"r1\",tls=\"false\"";
        assert!(out.contains(&format!(
            "trellis_requests_total{{{base},status_code=\"200\",response_class=\"success\"}} 1"
        )));
        assert!(out.contains(&format!(
            "trellis_requests_total{{{base},status_code=\"503\",response_class=\"failure\"}} 1"
        )));
        assert!(out.contains(&format!(
            "trellis_requests_total{{{base},status_code=\"200\",grpc_status=\"14\",response_class=\"failure\"}} 1"
        )));
        assert!(out.contains(&format!(
            "trellis_request_duration_seconds_bucket{{{base},le=\"0.005\"}} 1"
        )));
        assert!(out.contains(&format!("trellis_request_bytes_total{{{base}}} 10")));
        assert!(out.contains(&format!("trellis_response_bytes_total{{{base}}} 25")));
    }

    #[test]
    fn routes_are_capped_to_other_without_duplicate_series() {
        let r = RequestRegistry::new();
        for i in 0..MAX_ROUTES {
            r.series(&labels(&format!("route-{i}"), "w"));
        }
        let a = r.series(&labels("late-1", "w"));
        let b = r.series(&labels("late-2", "w"));
        assert!(Arc::ptr_eq(&a, &b), "both overflow into route=other");
        assert_eq!(r.len(), MAX_ROUTES + 1);
        assert!(rendered(&r).contains("route=\"other\""));
    }

    #[test]
    fn series_are_capped() {
        let r = RequestRegistry::new();
        for i in 0..MAX_SERIES {
            r.series(&labels("", &format!("w{i}")));
        }
        let a = r.series(&labels("", "new-1"));
        let b = r.series(&labels("", "new-2"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(rendered(&r).contains("source_workload=\"other\""));
    }

    #[test]
    fn values_are_escaped() {
        let r = RequestRegistry::new();
        r.series(&labels("a\"b\\c\nd", "w")).finish(200, None, 0, 0);
        assert!(rendered(&r).contains("route=\"a\\\"b\\\\c\\nd\""));
    }
}
