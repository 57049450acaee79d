//! Istio `Telemetry` metrics overrides, applied to this proxy's `/metrics` exposition: a
//! disabled metric's samples (per direction) are left out, and a removed label is dropped with
//! the samples that differed only by it summed (counters, histogram buckets, sums and counts
//! all add). The control plane has already mapped Istio's metric and tag names onto Trellis'
//! families and labels (`trellis_config::istio::telemetry::MetricOverride`).
//!
//! Applied when `/metrics` is rendered, not when requests are counted: the request path is
//! untouched, and a scrape with no overrides costs one atomic load. Families outside the
//! request and TCP metrics are never touched.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// One override, as the control plane sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub metrics: Vec<String>,
    pub directions: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub remove_labels: Vec<String>,
}

/// The overrides in force; empty: the exposition is passed through.
#[derive(Debug, Default)]
pub struct Overrides {
    rules: ArcSwap<Vec<Rule>>,
}

impl Overrides {
    pub fn set(&self, rules: Vec<Rule>) {
        self.rules.store(Arc::new(rules));
    }

    pub fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules.load_full()
    }

    /// The exposition `text` with the overrides applied.
    pub fn apply(&self, text: String) -> String {
        let rules = self.rules.load();
        if rules.is_empty() {
            return text;
        }
        apply(&rules, &text)
    }
}

/// A histogram's series names → its family.
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && base.ends_with("_seconds")
        {
            return base;
        }
    }
    name
}

/// `a="x",b="y\"z"` → pairs (values still escaped, as they are written back unchanged).
fn parse_labels(s: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if i >= bytes.len() {
            return None;
        }
        out.push((name.trim_start_matches(','), &after[..i]));
        rest = &after[i + 1..];
    }
    Some(out)
}

/// A sample line's name, labels and value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    match series.split_once('{') {
        Some((name, labels)) => Some((name, parse_labels(labels.strip_suffix('}')?)?, value)),
        None => Some((series, Vec::new(), value)),
    }
}

fn apply(rules: &[Rule], text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Aggregated samples (series text → index into `summed`), in order of first appearance,
    // flushed when their family ends so the exposition stays grouped by family.
    let mut summed: Vec<(String, f64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let flush = |out: &mut String, summed: &mut Vec<(String, f64)>, index: &mut HashMap<_, _>| {
        for (series, v) in summed.drain(..) {
            out.push_str(&series);
            out.push(' ');
            out.push_str(&v.to_string());
            out.push('\n');
        }
        index.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut out, &mut summed, &mut index);
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let fam = family(name);
        let direction = labels
            .iter()
            .find(|(k, _)| *k == "direction")
            .map_or("", |(_, v)| *v);
        let matching = rules.iter().filter(|r| {
            r.metrics.iter().any(|m| m == fam) && r.directions.iter().any(|d| d == direction)
        });
        let mut remove: Vec<&str> = Vec::new();
        let mut disabled = false;
        for r in matching {
            disabled |= r.disabled;
            remove.extend(r.remove_labels.iter().map(String::as_str));
        }
        if disabled {
            continue;
        }
        if remove.is_empty() {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let kept: Vec<String> = labels
            .iter()
            .filter(|(k, _)| !remove.contains(k))
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let series = format!("{name}{{{}}}", kept.join(","));
        match index.get(&series) {
            Some(&i) => summed[i].1 += value,
            None => {
                index.insert(series.clone(), summed.len());
                summed.push((series, value));
            }
        }
    }
    flush(&mut out, &mut summed, &mut index);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE trellis_requests_total counter
trellis_requests_total{direction="inbound",source_workload="a",status_code="200"} 3
trellis_requests_total{direction="inbound",source_workload="b",status_code="200"} 4
trellis_requests_total{direction="outbound",source_workload="me",status_code="200"} 5
# TYPE trellis_request_duration_seconds histogram
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="a",le="0.1"} 1
trellis_request_duration_seconds_sum{direction="inbound",source_workload="a"} 0.05
trellis_request_duration_seconds_bucket{direction="outbound",source_workload="me",le="0.1"} 2
# TYPE trellis_proxy_info gauge
trellis_proxy_info{version="0.1.0"} 1
"#;

    fn rule(metric: &str, dirs: &[&str], disabled: bool, remove: &[&str]) -> Rule {
        Rule {
            metrics: vec![metric.into()],
            directions: dirs.iter().map(|d| d.to_string()).collect(),
            disabled,
            remove_labels: remove.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn no_rules_pass_through() {
        assert_eq!(Overrides::default().apply(TEXT.into()), TEXT);
    }

    #[test]
    fn disabled_per_direction() {
        let out = apply(
            &[rule(
                "trellis_request_duration_seconds",
                &["inbound"],
                true,
                &[],
            )],
            TEXT,
        );
        assert!(!out.contains("_bucket{direction=\"inbound\""), "{out}");
        assert!(!out.contains("_sum{direction=\"inbound\""), "{out}");
        assert!(out.contains("_bucket{direction=\"outbound\""), "{out}");
        assert!(
            out.contains("trellis_proxy_info{version=\"0.1.0\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn a_removed_label_sums_what_it_told_apart() {
        let out = apply(
            &[rule(
                "trellis_requests_total",
                &["inbound", "outbound"],
                false,
                &["source_workload"],
            )],
            TEXT,
        );
        assert!(
            out.contains("trellis_requests_total{direction=\"inbound\",status_code=\"200\"} 7\n"),
            "{out}"
        );
        assert!(
            out.contains("trellis_requests_total{direction=\"outbound\",status_code=\"200\"} 5\n"),
            "{out}"
        );
        assert!(!out.contains("source_workload=\"a\",status"), "{out}");
        // Other families untouched.
        assert!(
            out.contains("_bucket{direction=\"inbound\",source_workload=\"a\""),
            "{out}"
        );
    }

    #[test]
    fn escaped_label_values_survive() {
        let text = "trellis_requests_total{direction=\"inbound\",route=\"a\\\"b\",source_workload=\"x\"} 1\n";
        let out = apply(
            &[rule(
                "trellis_requests_total",
                &["inbound"],
                false,
                &["source_workload"],
            )],
            text,
        );
        assert_eq!(
            out,
            "trellis_requests_total{direction=\"inbound\",route=\"a\\\"b\"} 1\n"
        );
    }
}
