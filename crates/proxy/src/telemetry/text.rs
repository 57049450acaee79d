//! The Prometheus text format's pieces, shared by every family the proxy renders: a family's
//! `# HELP`/`# TYPE` lines, label value escaping, one sample line (labels rendered already, or
//! as pairs) and a histogram's cumulative buckets. Used per scrape only; the request path records into atomics and never
//! formats.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Writes a family's `# HELP` and `# TYPE` lines (`kind`: `counter`, `gauge`, ...).
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")
}

/// Escapes a label value for the text format (backslash, quote, newline).
pub(crate) fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One sample line, `name{labels} value`; `labels` is already rendered and escaped (`a="x"`
/// pairs joined by commas) and, when empty, leaves the braces out.
pub(crate) fn sample(
    out: &mut String,
    name: &str,
    labels: &str,
    value: impl Display,
) -> std::fmt::Result {
    if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        writeln!(out, "{name}{{{labels}}} {value}")
    }
}

/// One sample line whose labels are `(name, value)` pairs, the values escaped here:
/// `name{a="x",b="y"} value` (no braces without labels). For families rendered label by label
/// at scrape time; series with labels kept rendered use [`sample`].
pub(crate) fn labelled(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl Display,
) -> std::fmt::Result {
    out.push_str(name);
    for (i, (key, v)) in labels.iter().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(key);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    if !labels.is_empty() {
        out.push('}');
    }
    writeln!(out, " {value}")
}

/// A fixed-bucket histogram as recorded: per-bucket (not cumulative) counts, one more than
/// `bounds` (the last is `+Inf`), and the sum in nanoseconds.
pub(crate) struct Buckets<'a> {
    pub bounds: &'a [f64],
    pub counts: &'a [AtomicU64],
    pub sum_nanos: &'a AtomicU64,
    /// The `_count` sample when the histogram keeps its own; `None`: the buckets' total.
    pub count: Option<&'a AtomicU64>,
}

/// One label set's `_bucket` (cumulative, `le` last among the labels), `_sum` (seconds) and
/// `_count` lines of the histogram family `name`.
pub(crate) fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &Buckets<'_>,
) -> std::fmt::Result {
    let mut cumulative = 0;
    for (bound, c) in h.bounds.iter().zip(h.counts) {
        cumulative += c.load(Relaxed);
        writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}")?;
    }
    cumulative += h.counts[h.bounds.len()].load(Relaxed);
    writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}")?;
    let sum = h.sum_nanos.load(Relaxed) as f64 / 1e9;
    writeln!(out, "{name}_sum{{{labels}}} {sum}")?;
    let count = h.count.map_or(cumulative, |c| c.load(Relaxed));
    writeln!(out, "{name}_count{{{labels}}} {count}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_samples_and_escapes() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "Things.").unwrap();
        let mut labels = String::from("a=\"");
        escape("q\"b\\n\nl", &mut labels);
        labels.push('"');
        sample(&mut out, "x_total", &labels, 3).unwrap();
        sample(&mut out, "x_total", "", 4).unwrap();
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\n\\nl\"} 3\nx_total 4\n"
        );
    }

    #[test]
    fn labelled_escapes_values_and_leaves_out_empty_braces() {
        let mut out = String::new();
        labelled(&mut out, "y_total", &[("a", "x"), ("b", "q\"")], 2).unwrap();
        labelled(&mut out, "y_total", &[], 5).unwrap();
        assert_eq!(out, "y_total{a=\"x\",b=\"q\\\"\"} 2\ny_total 5\n");
    }

    #[test]
    fn histogram_is_cumulative_with_inf_sum_and_count() {
        let counts = [AtomicU64::new(1), AtomicU64::new(2), AtomicU64::new(4)];
        let sum = AtomicU64::new(1_500_000_000);
        let own = AtomicU64::new(9);
        let mut h = Buckets {
            bounds: &[0.5, 1.0],
            counts: &counts,
            sum_nanos: &sum,
            count: None,
        };
        let mut out = String::new();
        histogram(&mut out, "d", "k=\"v\"", &h).unwrap();
        assert_eq!(
            out,
            "d_bucket{k=\"v\",le=\"0.5\"} 1\nd_bucket{k=\"v\",le=\"1\"} 3\n\
             d_bucket{k=\"v\",le=\"+Inf\"} 7\nd_sum{k=\"v\"} 1.5\nd_count{k=\"v\"} 7\n"
        );
        h.count = Some(&own);
        out.clear();
        histogram(&mut out, "d", "k=\"v\"", &h).unwrap();
        assert!(out.ends_with("d_count{k=\"v\"} 9\n"));
    }
}
