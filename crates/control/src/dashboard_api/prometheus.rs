//! The dashboard's other metrics source: a Prometheus server that scrapes the proxies (on
//! Kubernetes, where the control plane may not reach pods' admin ports, or where Prometheus is
//! already there). `trellis-control --prometheus-url http://host:port[/prefix]` (or the
//! `TRELLIS_PROMETHEUS_URL` environment variable) selects it.
//!
//! Each round asks Prometheus's instant-query API for the current value of every request
//! counter and duration bucket, grouped by the `instance` label (one scrape target, one proxy),
//! and hands them to the same delta and ring machinery as a direct scrape. So the numbers are
//! Prometheus's counters, fresh as of its own scrape interval: with a 15 s scrape, a 20 s window
//! holds one or two increases. Only plain `http://` URLs; no authentication.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::fetch;
use super::prom::Sample;
use super::series::{self, Snapshot};

/// The environment variable that selects this source.
pub const ENV: &str = "TRELLIS_PROMETHEUS_URL";

/// The PromQL selector: the two metric families the dashboard reads, every label.
const QUERY: &str =
    "{__name__=~\"trellis_requests_total|trellis_request_duration_seconds_bucket\"}";

/// A parsed `http://host:port/prefix` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    /// `host:port`, resolved at each query (a Service name may move).
    pub authority: String,
    /// The path prefix without a trailing `/` (`""` for the root).
    pub prefix: String,
}

impl PrometheusUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?}: only http:// URLs are supported, as http://host:port")
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: expected http://host:port"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else if authority.contains(':') && !authority.ends_with(']') {
            return Err(format!("{url:?}: the port is not a number"));
        } else {
            format!("{authority}:80")
        };
        let prefix = path.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        Ok(Self { authority, prefix })
    }

    fn query_path(&self) -> String {
        format!("{}/api/v1/query?query={}", self.prefix, encode(QUERY))
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An instant-query answer as samples by scrape target (`instance`, else `job`, else one group).
pub fn parse_answer(body: &str) -> Result<BTreeMap<String, Vec<Sample>>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if value["status"] != "success" {
        let error = value["error"].as_str().unwrap_or("no error given");
        return Err(format!("query failed: {error}"));
    }
    let results = value["data"]["result"]
        .as_array()
        .ok_or("data.result is not a list")?;
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for result in results {
        let Some(metric) = result["metric"].as_object() else {
            continue;
        };
        let mut labels: BTreeMap<String, String> = metric
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let Some(name) = labels.remove("__name__") else {
            continue;
        };
        // Prometheus sends values as strings ("12", "+Inf", "NaN").
        let Some(value) = result["value"][1].as_str().and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse::<f64>().ok(),
        }) else {
            continue;
        };
        if value.is_nan() {
            continue;
        }
        let target = labels
            .get("instance")
            .or_else(|| labels.get("job"))
            .cloned()
            .unwrap_or_default();
        out.entry(target).or_default().push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(out)
}

/// Asks Prometheus once; a snapshot per scrape target.
pub async fn query(
    url: &PrometheusUrl,
    timeout: Duration,
) -> Result<HashMap<String, Snapshot>, String> {
    let addr: SocketAddr = tokio::time::timeout(timeout, tokio::net::lookup_host(&url.authority))
        .await
        .map_err(|_| format!("resolving {}: timed out", url.authority))?
        .map_err(|e| format!("resolving {}: {e}", url.authority))?
        .next()
        .ok_or_else(|| format!("resolving {}: no address", url.authority))?;
    let body = fetch::get_text(addr, &url.query_path(), timeout)
        .await
        .map_err(|e| e.to_string())?;
    let groups =
        parse_answer(&body).map_err(|e| format!("Prometheus at {}: {e}", url.authority))?;
    Ok(groups
        .into_iter()
        .map(|(target, samples)| (target, series::snapshot_samples(samples)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard_api::series::{NodeId, SeriesKey};

    #[test]
    fn urls() {
        let u = PrometheusUrl::parse("http://prometheus.monitoring:9090").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str()),
            ("prometheus.monitoring:9090", "")
        );
        let u = PrometheusUrl::parse("http://127.0.0.1:9090/prom/").unwrap();
        assert_eq!(u.prefix, "/prom");
        assert!(
            u.query_path().starts_with(
                "/prom/api/v1/query?query=%7B__name__%3D~%22trellis_requests_total%7C"
            )
        );
        assert_eq!(
            PrometheusUrl::parse("http://prom").unwrap().authority,
            "prom:80"
        );
        for bad in [
            "https://p:9090",
            "p:9090",
            "http://",
            "http://u@p:1",
            "http://p:x",
        ] {
            assert!(PrometheusUrl::parse(bad).is_err(), "{bad}");
        }
    }

    const ANSWER: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
      {"metric":{"__name__":"trellis_requests_total","instance":"10.0.0.7:15020","job":"trellis","direction":"outbound","source_workload":"productpage-v1","source_namespace":"default","destination_workload":"reviews-v1","destination_namespace":"default","destination_service":"reviews.default.svc.cluster.local","route":"","tls":"true","response_class":"success","status_code":"200"},"value":[1700000000.1,"42"]},
      {"metric":{"__name__":"trellis_request_duration_seconds_bucket","instance":"10.0.0.7:15020","direction":"outbound","source_workload":"productpage-v1","source_namespace":"default","destination_workload":"reviews-v1","destination_namespace":"default","destination_service":"reviews.default.svc.cluster.local","route":"","tls":"true","le":"+Inf"},"value":[1700000000.1,"42"]},
      {"metric":{"__name__":"trellis_requests_total","instance":"10.0.0.8:15020","direction":"inbound","source_workload":"productpage-v1","destination_workload":"reviews-v1","destination_namespace":"default","tls":"true","response_class":"success"},"value":[1700000000.1,"NaN"]},
      {"metric":{"instance":"x"},"value":[1,"1"]}, 7
    ]}}"#;

    #[test]
    fn answers_become_snapshots_by_target() {
        let groups = parse_answer(ANSWER).unwrap();
        assert_eq!(
            groups.len(),
            1,
            "the NaN sample and the nameless one are skipped"
        );
        let samples = &groups["10.0.0.7:15020"];
        assert_eq!(samples.len(), 2);
        let snap = series::snapshot_samples(samples.clone());
        let edge = SeriesKey::Edge {
            from: NodeId::workload("default", "productpage-v1"),
            to: NodeId::service("default", "reviews"),
        };
        assert_eq!(snap[&edge].requests, 42.0);
        assert_eq!(snap[&edge].buckets, vec![(f64::INFINITY, 42.0)]);

        let err =
            parse_answer(r#"{"status":"error","error":"parse error at char 3"}"#).unwrap_err();
        assert!(err.contains("parse error at char 3"), "{err}");
        assert!(parse_answer("<html>").is_err());
        assert!(parse_answer(r#"{"status":"success","data":{}}"#).is_err());
    }

    #[tokio::test]
    async fn queries_a_server_over_a_real_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(head.starts_with("GET /api/v1/query?query="), "{head}");
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                ANSWER.len()
            );
            sock.write_all(reply.as_bytes()).await.unwrap();
        });
        let url = PrometheusUrl::parse(&format!("http://{addr}")).unwrap();
        let snaps = query(&url, Duration::from_secs(5)).await.unwrap();
        assert!(
            snaps["10.0.0.7:15020"]
                .keys()
                .any(|k| matches!(k, SeriesKey::Node(_)))
        );
    }
}
