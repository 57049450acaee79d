//! TCP connection metrics with peer labels: `trellis_tcp_connections_opened_total`,
//! `trellis_tcp_connections_closed_total`, `trellis_tcp_received_bytes_total`,
//! `trellis_tcp_sent_bytes_total` and `trellis_tcp_connection_duration_seconds`, by direction,
//! source and destination workload, namespace and identity, and tls.
//!
//! A connection is accepted before anyone knows who is on the other end, so its labels are
//! attached later through a [`TcpTag`] (after the mTLS handshake, protocol detection or the
//! choice of an endpoint): the tag and the byte-counting wrapper share a once-set slot holding
//! the connection's [`TcpSeries`]. The series is looked up once per connection, never per read
//! or write; the wrapper accumulates bytes in plain integers and adds them to the series' atomics
//! in batches (see [`crate::transport::CountingIo`]). A connection is counted as opened when its
//! labels are attached, or, when it ends before that (refused, failed handshake, no endpoint),
//! at its close in the series with `direction` only, so opened and closed always match per series.
//!
//! Cardinality is bounded: label values come from discovery and verified certificates, and at
//! most [`MAX_SERIES`] label sets are kept (more share an overflow series per direction whose
//! peer labels are `other`). With `--metrics-labels minimal` every connection is counted by
//! `direction` only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use trellis_model::Endpoint;

use super::exchange::LocalWorkload;
use super::requests::Peer;
use super::{
    ConnectionDurations, Direction, LabelDetail, Metrics, escape, family, histogram, sample,
};

/// The most labelled TCP series kept; past it new label sets share an overflow series.
pub const MAX_SERIES: usize = 1024;
const OTHER: &str = "other";

/// The labels of one connection, borrowed from wherever the values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLabels<'a> {
    pub direction: Direction,
    pub source: Peer<'a>,
    pub destination: Peer<'a>,
    pub tls: bool,
}

impl TcpLabels<'_> {
    /// `direction="..",source_workload="..",...,tls=".."`, escaped.
    fn render(&self) -> String {
        let mut out = String::with_capacity(192);
        out.push_str("direction=\"");
        out.push_str(self.direction.as_str());
        out.push('"');
        let values = [
            ("source_workload", self.source.workload),
            ("source_namespace", self.source.namespace),
            ("source_identity", self.source.identity),
            ("destination_workload", self.destination.workload),
            ("destination_namespace", self.destination.namespace),
            ("destination_identity", self.destination.identity),
        ];
        for (name, value) in values {
            out.push(',');
            out.push_str(name);
            out.push_str("=\"");
            escape(value, &mut out);
            out.push('"');
        }
        out.push_str(if self.tls {
            ",tls=\"true\""
        } else {
            ",tls=\"false\""
        });
        out
    }
}

/// The counters of one label set.
#[derive(Debug)]
pub struct TcpSeries {
    rendered: Box<str>,
    opened: AtomicU64,
    closed: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    duration: ConnectionDurations,
}

impl TcpSeries {
    fn new(rendered: Box<str>) -> Self {
        Self {
            rendered,
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            duration: ConnectionDurations::new(),
        }
    }

    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Relaxed);
    }

    /// Adds a batch of bytes read from the downstream peer.
    pub(crate) fn received(&self, n: u64) {
        self.received.fetch_add(n, Relaxed);
    }

    /// Adds a batch of bytes written to the downstream peer.
    pub(crate) fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Relaxed);
    }

    /// The connection closed after `lived`.
    pub(crate) fn closed(&self, lived: Duration) {
        self.closed.fetch_add(1, Relaxed);
        self.duration.observe(lived);
    }
}

/// The slot a connection's series is put in once its labels are known.
pub type TcpSlot = Arc<OnceLock<Arc<TcpSeries>>>;

/// The TCP series of one proxy.
#[derive(Debug)]
pub struct TcpRegistry {
    detail: LabelDetail,
    /// By direction: connections whose labels never became known, and every connection with
    /// `--metrics-labels minimal`. Rendered with `direction` only.
    unlabelled: [Arc<TcpSeries>; 2],
    labelled: RwLock<Labelled>,
    overflow: [OnceLock<Arc<TcpSeries>>; 2],
}

#[derive(Debug, Default)]
struct Labelled {
    by_labels: HashMap<Box<str>, Arc<TcpSeries>>,
    /// Creation order, for a stable exposition.
    all: Vec<Arc<TcpSeries>>,
}

impl TcpRegistry {
    pub fn new(detail: LabelDetail) -> Self {
        let unlabelled = Direction::ALL.map(|d| {
            Arc::new(TcpSeries::new(
                format!("direction=\"{}\"", d.as_str()).into(),
            ))
        });
        Self {
            detail,
            unlabelled,
            labelled: RwLock::default(),
            overflow: Default::default(),
        }
    }

    /// The series with `direction` only.
    pub(crate) fn unlabelled(&self, d: Direction) -> &Arc<TcpSeries> {
        &self.unlabelled[d as usize]
    }

    /// The series for a label set: made on its first connection, shared after.
    pub fn series(&self, labels: &TcpLabels<'_>) -> Arc<TcpSeries> {
        if self.detail == LabelDetail::Minimal {
            return self.unlabelled(labels.direction).clone();
        }
        let rendered = labels.render();
        {
            let l = self.labelled.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = l.by_labels.get(rendered.as_str()) {
                return s.clone();
            }
            if l.all.len() >= MAX_SERIES {
                drop(l);
                return self.overflow(labels.direction);
            }
        }
        let mut l = self
            .labelled
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another connection may have made the same set meanwhile.
        if let Some(s) = l.by_labels.get(rendered.as_str()) {
            return s.clone();
        }
        let s = Arc::new(TcpSeries::new(rendered.into()));
        l.by_labels.insert(s.rendered.clone(), s.clone());
        l.all.push(s.clone());
        s
    }

    fn overflow(&self, direction: Direction) -> Arc<TcpSeries> {
        self.overflow[direction as usize]
            .get_or_init(|| {
                let other = Peer {
                    workload: OTHER,
                    namespace: OTHER,
                    identity: OTHER,
                };
                let labels = TcpLabels {
                    direction,
                    source: other,
                    destination: other,
                    tls: false,
                };
                Arc::new(TcpSeries::new(labels.render().into()))
            })
            .clone()
    }

    /// How many labelled series exist.
    pub fn len(&self) -> usize {
        self.labelled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .all
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the five `trellis_tcp_*` families.
    pub fn render(&self, out: &mut String) -> std::fmt::Result {
        let mut all: Vec<Arc<TcpSeries>> = self.unlabelled.to_vec();
        all.extend(
            self.labelled
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .all
                .iter()
                .cloned(),
        );
        all.extend(self.overflow.iter().filter_map(|o| o.get().cloned()));

        type Field = fn(&TcpSeries) -> &AtomicU64;
        let simple: [(&str, &str, Field); 4] = [
            (
                "trellis_tcp_connections_opened_total",
                "TCP connections accepted (counted once their peer labels are known).",
                |s| &s.opened,
            ),
            (
                "trellis_tcp_connections_closed_total",
                "TCP connections closed.",
                |s| &s.closed,
            ),
            (
                "trellis_tcp_received_bytes_total",
                "Bytes read from downstream peers.",
                |s| &s.received,
            ),
            (
                "trellis_tcp_sent_bytes_total",
                "Bytes written to downstream peers.",
                |s| &s.sent,
            ),
        ];
        for (name, help, field) in simple {
            family(out, name, "counter", help)?;
            for s in &all {
                sample(out, name, &s.rendered, field(s).load(Relaxed))?;
            }
        }

        let name = "trellis_tcp_connection_duration_seconds";
        let help = "How long accepted TCP connections lived.";
        family(out, name, "histogram", help)?;
        for s in &all {
            histogram(out, name, &s.rendered, &s.duration.buckets())?;
        }
        Ok(())
    }
}

/// Attaches labels to one accepted connection, once its peer is known. Cloned from the
/// connection's [`crate::transport::CountingIo`]; only the first attachment counts.
#[derive(Clone, Debug)]
pub struct TcpTag {
    pub(crate) slot: TcpSlot,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) direction: Direction,
}

impl TcpTag {
    /// Files the connection under `labels` and counts it as opened there, unless it already has
    /// its series (labelled earlier, or closed before this).
    pub fn label(&self, labels: &TcpLabels<'_>) {
        if self.slot.get().is_some() {
            return;
        }
        let series = self.metrics.tcp.series(labels);
        if self.slot.set(series.clone()).is_ok() {
            series.opened();
        }
    }

    /// Inbound: the destination is this workload; the source is the caller's verified mTLS
    /// identity when there is one (its namespace read from the SPIFFE ID). The caller's workload
    /// name is not known on a TCP connection unless the caller's proxy sent it in the TCP
    /// metadata exchange ([`TcpTag::inbound_from`]).
    pub fn inbound(&self, local: &LocalWorkload, peer_identity: Option<&str>) {
        self.inbound_from(local, peer_identity, None)
    }

    /// [`TcpTag::inbound`] with the `(workload, namespace)` the caller's proxy announced
    /// (`crate::transport::mx`). The namespace in a verified SPIFFE ID wins over the announced
    /// one: the announcement is informational, the certificate is proven.
    pub fn inbound_from(
        &self,
        local: &LocalWorkload,
        peer_identity: Option<&str>,
        caller: Option<(&str, &str)>,
    ) {
        let identity = peer_identity.unwrap_or("");
        let (workload, announced_ns) = caller.unwrap_or(("", ""));
        self.label(&TcpLabels {
            direction: self.direction,
            source: Peer {
                workload,
                namespace: spiffe_namespace(identity).unwrap_or(announced_ns),
                identity,
            },
            destination: Peer {
                workload: &local.workload,
                namespace: &local.namespace,
                identity: "",
            },
            tls: peer_identity.is_some(),
        });
    }

    /// Outbound: the source is this workload; the destination is the endpoint chosen for an
    /// opaque stream (none for HTTP connections, whose requests may each go elsewhere: those are
    /// labelled per request by `trellis_requests_total`).
    pub fn outbound(&self, local: &LocalWorkload, endpoint: Option<&Endpoint>, tls: bool) {
        let identity = endpoint.and_then(|e| e.identity.as_deref()).unwrap_or("");
        self.label(&TcpLabels {
            direction: self.direction,
            source: Peer {
                workload: &local.workload,
                namespace: &local.namespace,
                identity: "",
            },
            destination: Peer {
                workload: endpoint.map_or("", |e| e.workload.as_str()),
                namespace: spiffe_namespace(identity).unwrap_or(""),
                identity,
            },
            tls,
        });
    }
}

/// `spiffe://td/ns/<namespace>/sa/<sa>` → the namespace.
fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    path.strip_prefix("ns/")?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(m: &Metrics) -> String {
        let mut s = String::new();
        m.tcp.render(&mut s).unwrap();
        s
    }

    fn tag(m: &Arc<Metrics>, d: Direction) -> TcpTag {
        TcpTag {
            slot: TcpSlot::default(),
            metrics: m.clone(),
            direction: d,
        }
    }

    #[test]
    fn labels_are_attached_once_and_opened_counted_there() {
        let m = Arc::new(Metrics::new());
        let local = LocalWorkload::new("reviews-v1", "shop");
        let t = tag(&m, Direction::Inbound);
        t.inbound(
            &local,
            Some("spiffe://cluster.local/ns/front/sa/productpage"),
        );
        // A second attachment (another code path) changes nothing.
        t.inbound(&local, None);
        let s = rendered(&m);
        let want = "trellis_tcp_connections_opened_total{direction=\"inbound\",source_workload=\"\",source_namespace=\"front\",source_identity=\"spiffe://cluster.local/ns/front/sa/productpage\",destination_workload=\"reviews-v1\",destination_namespace=\"shop\",destination_identity=\"\",tls=\"true\"} 1";
        assert!(s.contains(want), "{s}");
        assert!(s.contains("trellis_tcp_connections_opened_total{direction=\"inbound\"} 0"));
        assert_eq!(m.tcp.len(), 1);
    }

    #[test]
    fn minimal_detail_counts_by_direction_only() {
        let m = Arc::new(Metrics::with_detail(LabelDetail::Minimal));
        let t = tag(&m, Direction::Outbound);
        t.outbound(&LocalWorkload::new("a", "b"), None, false);
        let s = rendered(&m);
        assert!(s.contains("trellis_tcp_connections_opened_total{direction=\"outbound\"} 1"));
        assert!(!s.contains("source_workload"));
        assert!(m.tcp.is_empty());
    }

    #[test]
    fn label_sets_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_SERIES + 10 {
            let w = format!("w{i}");
            let p = Peer {
                workload: &w,
                namespace: "ns",
                identity: "",
            };
            m.tcp
                .series(&TcpLabels {
                    direction: Direction::Outbound,
                    source: p,
                    destination: p,
                    tls: false,
                })
                .opened();
        }
        assert_eq!(m.tcp.len(), MAX_SERIES);
        let s = rendered(&m);
        assert!(s.contains("trellis_tcp_connections_opened_total{direction=\"outbound\",source_workload=\"other\",source_namespace=\"other\",source_identity=\"other\",destination_workload=\"other\",destination_namespace=\"other\",destination_identity=\"other\",tls=\"false\"} 10"));
    }
}
