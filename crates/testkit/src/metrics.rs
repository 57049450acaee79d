//! Reading Prometheus text exposition, as a scraper would, to assert on what a proxy counted.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format; comment lines and lines that do not parse are skipped (a test
    /// asserting on a metric will then fail on the missing value, naming it).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// How many connections in `direction` the proxy's protocol detection classified as
    /// `outcome` (`http1`, `http2`, `tls`, `opaque`, ...).
    pub fn detected(&self, direction: &str, outcome: &str) -> f64 {
        self.sum(
            "trellis_protocol_detections_total",
            &[("direction", direction), ("outcome", outcome)],
        )
    }

    /// Checks that every connection a server proxy accepted came from a peer proxy (the meshed
    /// hop: HTTP/2, or TLS once the hop is encrypted) and none as plain HTTP/1 or opaque bytes.
    pub fn check_meshed_inbound(&self) -> Result<(), String> {
        let meshed = self.detected("inbound", "http2") + self.detected("inbound", "tls");
        let plain = self.detected("inbound", "http1") + self.detected("inbound", "opaque");
        if meshed >= 1.0 && plain == 0.0 {
            return Ok(());
        }
        let seen: Vec<String> = self
            .matching(
                "trellis_protocol_detections_total",
                &[("direction", "inbound")],
            )
            .filter(|s| s.value > 0.0)
            .map(|s| {
                format!(
                    "{}={}",
                    s.labels.get("outcome").map_or("?", String::as_str),
                    s.value
                )
            })
            .collect();
        Err(format!(
            "inbound detections {seen:?}: expected only meshed (http2 or tls) connections"
        ))
    }

    /// Whether a metric of that name appears at all.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    // Each iteration consumes one `key="value"` pair, so the loop ends.
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        labels.insert(key.trim().trim_start_matches(',').trim().to_string(), value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums() {
        let text = r#"
# HELP trellis_requests_total Requests.
# TYPE trellis_requests_total counter
trellis_requests_total{direction="outbound",status_code="200"} 3
trellis_requests_total{direction="inbound",status_code="200"} 2
trellis_requests_total{direction="outbound",status_code="503"} 1
trellis_request_duration_seconds_bucket{direction="outbound",le="+Inf"} 4
weird{a="x\"y,z",b="2"} 1.5 1700000000
plain 7
"#;
        let m = Metrics::parse(text);
        assert_eq!(
            m.sum("trellis_requests_total", &[("direction", "outbound")]),
            4.0
        );
        assert_eq!(
            m.sum(
                "trellis_requests_total",
                &[("direction", "outbound"), ("status_code", "200")]
            ),
            3.0
        );
        assert_eq!(m.sum("weird", &[("a", "x\"y,z"), ("b", "2")]), 1.5);
        assert_eq!(m.sum("plain", &[]), 7.0);
        assert!(!m.has("missing"));
    }
}
