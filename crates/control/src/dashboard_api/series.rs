//! The dashboard's golden metrics: what one scrape of one proxy says about each edge, node and
//! route of the mesh, the per-interval deltas of those counters summed over all proxies, and a
//! fixed-size ring of those deltas (the last 15 minutes) with window and time-series queries.
//!
//! Pure: samples in, numbers out; time is passed in as Unix milliseconds. Memory is bounded by
//! [`HISTORY_TICKS`] × [`MAX_SERIES`] points, whatever the proxies report.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use super::prom::{self, Buckets, Sample};

/// Ticks kept: 15 minutes of 2-second scrapes.
pub const HISTORY_TICKS: usize = 450;
/// Distinct series kept per tick; more (a misbehaving proxy's labels) are dropped and counted.
pub const MAX_SERIES: usize = 512;

/// A node of the service graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    /// Callers outside the mesh (inbound requests that carried no meshed source).
    External,
    Workload {
        namespace: String,
        name: String,
    },
    Service {
        namespace: String,
        name: String,
    },
}

impl NodeId {
    pub fn workload(namespace: &str, name: &str) -> Self {
        Self::Workload {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn service(namespace: &str, name: &str) -> Self {
        Self::Service {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The id the JSON API and the page use: `workload/ns/name`, `service/ns/name`, `external`.
    pub fn id(&self) -> String {
        match self {
            Self::External => "external".to_string(),
            Self::Workload { namespace, name } => format!("workload/{namespace}/{name}"),
            Self::Service { namespace, name } => format!("service/{namespace}/{name}"),
        }
    }
}

/// What one series counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeriesKey {
    /// Requests from one node to another, as the calling side saw them (outbound metrics), or
    /// as the called proxy saw them when the caller is outside the mesh.
    Edge { from: NodeId, to: NodeId },
    /// Workloads: requests their proxy received (inbound). Services: requests sent to them by
    /// every meshed caller (outbound), including ones the callers' proxies failed themselves.
    Node(NodeId),
    /// Requests a route (by name) of a service's routing sent, from every caller.
    Route {
        namespace: String,
        service: String,
        route: String,
    },
}

/// Counter values (cumulative in a scrape, increases in a tick).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub successes: f64,
    /// Requests that went (outbound) or arrived (inbound) over mesh mTLS.
    pub tls: f64,
    /// Request duration buckets (seconds), cumulative by upper bound, ascending.
    pub buckets: Buckets,
}

impl Counts {
    fn add_bucket(&mut self, le: f64, value: f64) {
        match self.buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
            Ok(i) => self.buckets[i].1 += value,
            Err(i) => self.buckets.insert(i, (le, value)),
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.tls += other.tls;
        for &(le, v) in &other.buckets {
            self.add_bucket(le, v);
        }
    }

    /// The increase from `before` to `self`; a counter that went down restarted from zero.
    fn increase_since(&self, before: Option<&Counts>) -> Counts {
        let inc = |b: f64, a: f64| if a >= b { a - b } else { a };
        let Some(before) = before else {
            return self.clone();
        };
        Counts {
            requests: inc(before.requests, self.requests),
            successes: inc(before.successes, self.successes),
            tls: inc(before.tls, self.tls),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, v)| {
                    let was = before
                        .buckets
                        .iter()
                        .find(|(b, _)| b.to_bits() == le.to_bits())
                        .map_or(0.0, |(_, c)| *c);
                    (le, inc(was, v))
                })
                .collect(),
        }
    }
}

/// Everything one scrape of one proxy says, by series.
pub type Snapshot = HashMap<SeriesKey, Counts>;

/// `reviews.default.svc.cluster.local` (or `reviews.default`) -> (`default`, `reviews`).
fn service_of(host: &str) -> Option<(String, String)> {
    let host = host.split(':').next().unwrap_or(host);
    let mut parts = host.split('.');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let namespace = parts.next().filter(|n| !n.is_empty())?;
    Some((namespace.to_string(), name.to_string()))
}

/// The series one request sample counts toward.
fn keys_of(sample: &Sample) -> Vec<SeriesKey> {
    let label = |k: &str| sample.labels.get(k).map_or("", String::as_str);
    let mut keys = Vec::with_capacity(4);
    match label("direction") {
        "outbound" => {
            let (src_ns, src) = (label("source_namespace"), label("source_workload"));
            if src.is_empty() {
                return keys;
            }
            let from = NodeId::workload(src_ns, src);
            let dst_workload = (!label("destination_workload").is_empty()).then(|| {
                NodeId::workload(
                    label("destination_namespace"),
                    label("destination_workload"),
                )
            });
            match service_of(label("destination_service")) {
                Some((ns, name)) => {
                    let svc = NodeId::service(&ns, &name);
                    keys.push(SeriesKey::Edge {
                        from,
                        to: svc.clone(),
                    });
                    if let Some(wl) = dst_workload {
                        keys.push(SeriesKey::Edge {
                            from: svc.clone(),
                            to: wl,
                        });
                    }
                    keys.push(SeriesKey::Node(svc));
                    let route = label("route");
                    if !route.is_empty() {
                        keys.push(SeriesKey::Route {
                            namespace: ns,
                            service: name,
                            route: route.to_string(),
                        });
                    }
                }
                // An address target (no service): the edge goes straight to the workload.
                None => {
                    if let Some(wl) = dst_workload {
                        keys.push(SeriesKey::Edge { from, to: wl });
                    }
                }
            }
        }
        "inbound" => {
            let (ns, name) = (
                label("destination_namespace"),
                label("destination_workload"),
            );
            if name.is_empty() {
                return keys;
            }
            let me = NodeId::workload(ns, name);
            if label("source_workload").is_empty() {
                keys.push(SeriesKey::Edge {
                    from: NodeId::External,
                    to: me.clone(),
                });
            }
            keys.push(SeriesKey::Node(me));
        }
        _ => {}
    }
    keys
}

/// Reads one proxy's `/metrics` text into series. Lines of other metrics are ignored; so are
/// request metrics without workload labels (a proxy on `--metrics-labels minimal`).
pub fn snapshot(text: &str) -> Snapshot {
    snapshot_samples(prom::parse(text))
}

/// [`snapshot`] from samples already parsed (by the Prometheus source, say).
pub fn snapshot_samples(samples: impl IntoIterator<Item = Sample>) -> Snapshot {
    let mut out = Snapshot::new();
    for sample in samples {
        let is_total = sample.name == "trellis_requests_total";
        let is_bucket = sample.name == "trellis_request_duration_seconds_bucket";
        if !is_total && !is_bucket {
            continue;
        }
        let le = if is_bucket {
            match sample.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse::<f64>() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
                None => continue,
            }
        } else {
            0.0
        };
        let success = sample.labels.get("response_class").map(String::as_str) == Some("success");
        let tls = sample.labels.get("tls").map(String::as_str) == Some("true");
        for key in keys_of(&sample) {
            let counts = out.entry(key).or_default();
            if is_total {
                counts.requests += sample.value;
                if success {
                    counts.successes += sample.value;
                }
                if tls {
                    counts.tls += sample.value;
                }
            } else {
                counts.add_bucket(le, sample.value);
            }
        }
    }
    out
}

/// The kinds (`success_rate`, `latency`) a proxy's own anomaly detector flags now: its
/// `trellis_anomaly{kind=...}` gauges at 1.
pub fn anomalies(text: &str) -> Vec<String> {
    let mut kinds: Vec<String> = prom::parse(text)
        .into_iter()
        .filter(|s| s.name == "trellis_anomaly" && s.value >= 1.0)
        .filter_map(|s| s.labels.get("kind").cloned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The increases from `before` to `after` of one proxy (series new since `before` count whole:
/// they started at zero within the interval).
pub fn delta(before: &Snapshot, after: &Snapshot) -> Snapshot {
    after
        .iter()
        .map(|(key, counts)| (key.clone(), counts.increase_since(before.get(key))))
        .collect()
}

/// One scrape round: the summed increases of every proxy over one interval.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// When the round ended (Unix ms).
    pub at_ms: u64,
    /// The interval's length in seconds.
    pub secs: f64,
    pub points: HashMap<SeriesKey, Counts>,
}

/// The last [`HISTORY_TICKS`] ticks.
#[derive(Debug, Default)]
pub struct History {
    ticks: VecDeque<Tick>,
    /// Series dropped by the [`MAX_SERIES`] cap since start.
    pub dropped_series: u64,
}

/// Golden metrics of one series over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub requests: f64,
    pub rps: f64,
    /// `None` without requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of requests over mesh mTLS; `None` without requests.
    pub tls_share: Option<f64>,
}

impl Stats {
    fn of(counts: &Counts, secs: f64) -> Self {
        let ms = |q: f64| prom::quantile(q, &counts.buckets).map(|s| s * 1000.0);
        let share = |n: f64| (counts.requests > 0.0).then(|| (n / counts.requests).clamp(0.0, 1.0));
        Stats {
            requests: counts.requests,
            rps: if secs > 0.0 {
                counts.requests / secs
            } else {
                0.0
            },
            success_rate: share(counts.successes),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            tls_share: share(counts.tls),
        }
    }
}

/// One point of a time series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The end of the step (Unix ms).
    pub t: u64,
    #[serde(flatten)]
    pub stats: Stats,
}

impl History {
    /// Adds one round's increases (summed over proxies), dropping the oldest beyond the ring.
    pub fn push(&mut self, at_ms: u64, secs: f64, per_proxy: impl IntoIterator<Item = Snapshot>) {
        let mut points: HashMap<SeriesKey, Counts> = HashMap::new();
        for snapshot in per_proxy {
            for (key, counts) in snapshot {
                if let Some(existing) = points.get_mut(&key) {
                    existing.merge(&counts);
                } else if points.len() < MAX_SERIES {
                    points.insert(key, counts);
                } else {
                    self.dropped_series += 1;
                }
            }
        }
        if self.ticks.len() >= HISTORY_TICKS {
            self.ticks.pop_front();
        }
        self.ticks.push_back(Tick {
            at_ms,
            secs,
            points,
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    pub fn last_at_ms(&self) -> Option<u64> {
        self.ticks.back().map(|t| t.at_ms)
    }

    /// Every series seen in the last `window_secs` of ticks (ending at the newest tick), with
    /// its stats over the time those ticks cover.
    pub fn window(&self, window_secs: f64) -> (f64, BTreeMap<SeriesKey, Stats>) {
        let Some(newest) = self.ticks.back() else {
            return (0.0, BTreeMap::new());
        };
        let since = newest.at_ms.saturating_sub((window_secs * 1000.0) as u64);
        let mut covered = 0.0;
        let mut sums: BTreeMap<SeriesKey, Counts> = BTreeMap::new();
        for tick in self.ticks.iter().rev().take_while(|t| t.at_ms > since) {
            covered += tick.secs;
            for (key, counts) in &tick.points {
                sums.entry(key.clone()).or_default().merge(counts);
            }
        }
        let stats = sums
            .into_iter()
            .map(|(k, c)| (k, Stats::of(&c, covered)))
            .collect();
        (covered, stats)
    }

    /// One series over the whole ring in steps of `step_ms` (aligned to the clock); steps with
    /// no tick are left out, steps with ticks but no requests have zero rates.
    pub fn series(&self, key: &SeriesKey, step_ms: u64) -> Vec<Point> {
        let step_ms = step_ms.max(1);
        let mut steps: BTreeMap<u64, (f64, Counts)> = BTreeMap::new();
        for tick in &self.ticks {
            let end = (tick.at_ms / step_ms + 1) * step_ms;
            let (secs, counts) = steps.entry(end).or_default();
            *secs += tick.secs;
            if let Some(c) = tick.points.get(key) {
                counts.merge(c);
            }
        }
        steps
            .into_iter()
            .map(|(t, (secs, counts))| Point {
                t,
                stats: Stats::of(&counts, secs),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
