//! `trellis stat [deploy|workload] [-n NS | -A] --control URL`: per workload SUCCESS, RPS,
//! LATENCY_P50/P95/P99, TCP_CONN and ANOMALY, from two scrapes of each proxy's `/metrics` an
//! interval apart (proxies' admin addresses come from the control plane's `/api/v1/workloads`).
//! ANOMALY names what the proxy's detector flags now (`trellis_anomaly{kind}` = 1: the
//! workload's success rate or latency has left its own recent baseline; see
//! docs/observability.md), `-` when nothing is.
//!
//! Everything is computed from the inbound side of each workload's proxy (what its callers
//! saw arrive), as Linkerd's `stat` does. [`Counters::from_metrics`] and [`row`] are pure; the
//! adapter only scrapes.

/// The control plane's Prometheus text parser, shared with the dashboard's scraper.
pub use trellis_control::dashboard_api::prom;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde::Serialize;

use crate::check::parse_control;
use crate::http_client::HttpClient;
use crate::output::{self, OutputFormat};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    /// In local mode one workload is one deployment: both list the same rows.
    #[default]
    #[value(alias = "deployment", alias = "deployments")]
    Deploy,
    #[value(alias = "workloads", alias = "wl")]
    Workload,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    #[arg(value_enum, default_value_t = Resource::Deploy)]
    pub resource: Resource,
    /// Only this namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace (adds a NAMESPACE column).
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    #[arg(long, default_value = "http://127.0.0.1:15014", value_name = "URL")]
    pub control: String,
    /// Time between the two scrapes (100ms-60s); rates are over this window.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 1s or 500ms"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1000.0,
        _ => return Err(format!("{s:?}: unit must be s or ms")),
    };
    if !(0.1..=60.0).contains(&secs) {
        return Err(format!("{s:?}: must be between 100ms and 60s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The inbound counters of one proxy at one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    pub successes: f64,
    /// Cumulative duration buckets (seconds), ascending, `+Inf` last.
    pub buckets: prom::Buckets,
    pub tcp_open: f64,
    /// The `kind`s of `trellis_anomaly` gauges at 1, sorted.
    pub anomalies: Vec<String>,
}

impl Counters {
    pub fn from_metrics(text: &str) -> Self {
        let mut c = Counters::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let mut opened = 0.0;
        let mut closed = 0.0;
        for s in prom::parse(text) {
            // The anomaly gauges are about the workload's inbound side and carry no direction.
            if s.name == "trellis_anomaly" {
                if s.value >= 1.0
                    && let Some(kind) = s.labels.get("kind")
                {
                    c.anomalies.push(kind.clone());
                }
                continue;
            }
            if s.labels.get("direction").map(String::as_str) != Some("inbound") {
                continue;
            }
            match s.name.as_str() {
                "trellis_requests_total" => {
                    c.requests += s.value;
                    if s.labels.get("response_class").map(String::as_str) == Some("success") {
                        c.successes += s.value;
                    }
                }
                "trellis_request_duration_seconds_bucket" => {
                    let Some(le) = s.labels.get("le").and_then(|le| match le.as_str() {
                        "+Inf" => Some(f64::INFINITY),
                        v => v.parse::<f64>().ok(),
                    }) else {
                        continue;
                    };
                    // f64 is not Ord; the bit pattern orders non-negative bounds correctly.
                    buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
                }
                "trellis_tcp_connections_opened_total" => opened += s.value,
                "trellis_tcp_connections_closed_total" => closed += s.value,
                _ => {}
            }
        }
        c.buckets = buckets.into_values().collect();
        c.tcp_open = (opened - closed).max(0.0);
        c.anomalies.sort();
        c.anomalies.dedup();
        c
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatRow {
    pub namespace: String,
    pub name: String,
    /// Share of successful requests in the window; `None` without requests.
    pub success: Option<f64>,
    pub rps: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub tcp_conn: u64,
    /// What the workload's anomaly detector flags at the second scrape: `success_rate`,
    /// `latency`; empty when nothing is.
    pub anomaly: Vec<String>,
    /// Why the proxy could not be scraped, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A counter's increase; a reset (the proxy restarted) counts from zero, as Prometheus does.
fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// The row for one workload from two scrapes `secs` apart.
pub fn row(namespace: &str, name: &str, before: &Counters, after: &Counters, secs: f64) -> StatRow {
    let requests = increase(before.requests, after.requests);
    let successes = increase(before.successes, after.successes);
    let buckets: prom::Buckets = after
        .buckets
        .iter()
        .map(|&(le, count)| {
            let was = before
                .buckets
                .iter()
                .find(|(b, _)| b.to_bits() == le.to_bits())
                .map_or(0.0, |(_, c)| *c);
            (le, increase(was, count))
        })
        .collect();
    let ms = |q: f64| prom::quantile(q, &buckets).map(|s| s * 1000.0);
    StatRow {
        namespace: namespace.to_string(),
        name: name.to_string(),
        success: (requests > 0.0).then(|| successes / requests),
        rps: if secs > 0.0 { requests / secs } else { 0.0 },
        latency_ms_p50: ms(0.5),
        latency_ms_p95: ms(0.95),
        latency_ms_p99: ms(0.99),
        tcp_conn: after.tcp_open as u64,
        anomaly: after.anomalies.clone(),
        error: None,
    }
}

fn latency(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

/// Renders rows as a table (`NAMESPACE` first when `all_namespaces`) or JSON/YAML.
pub fn render(
    rows: &[StatRow],
    all_namespaces: bool,
    format: OutputFormat,
) -> Result<String, output::StructuredError> {
    if format.is_structured() {
        return output::structured(format, &rows);
    }
    let mut headers = vec![
        "NAME",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
        "ANOMALY",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = if r.error.is_some() {
                vec![
                    r.name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]
            } else {
                vec![
                    r.name.clone(),
                    r.success
                        .map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
                    format!("{:.1}rps", r.rps),
                    latency(r.latency_ms_p50),
                    latency(r.latency_ms_p95),
                    latency(r.latency_ms_p99),
                    r.tcp_conn.to_string(),
                    if r.anomaly.is_empty() {
                        "-".into()
                    } else {
                        r.anomaly.join(",")
                    },
                ]
            };
            if all_namespaces {
                cells.insert(0, r.namespace.clone());
            }
            cells
        })
        .collect();
    Ok(output::table(&headers, &table))
}

#[derive(serde::Deserialize)]
struct WorkloadRow {
    name: String,
    namespace: String,
    admin: Option<String>,
}

async fn get_text(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<String, String> {
    let reply = client
        .get(addr, path, &HeaderMap::new(), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(format!("GET http://{addr}{path}: {}", reply.status));
    }
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

async fn scrape_all(
    client: &HttpClient,
    admins: &[Option<SocketAddr>],
) -> Vec<Result<Counters, String>> {
    let mut out = Vec::with_capacity(admins.len());
    for admin in admins {
        out.push(match admin {
            Some(a) => get_text(client, *a, "/metrics")
                .await
                .map(|t| Counters::from_metrics(&t)),
            None => Err("no admin address registered".into()),
        });
    }
    out
}

async fn collect(args: &StatArgs, control: SocketAddr) -> Result<Vec<StatRow>, String> {
    let client = HttpClient::new();
    let body = get_text(&client, control, "/api/v1/workloads").await?;
    let mut workloads: Vec<WorkloadRow> =
        serde_json::from_str(&body).map_err(|e| format!("/api/v1/workloads: {e}"))?;
    workloads.retain(|w| args.all_namespaces || w.namespace == args.namespace);
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let admins: Vec<Option<SocketAddr>> = workloads
        .iter()
        .map(|w| w.admin.as_deref().and_then(|a| a.parse().ok()))
        .collect();
    let first = scrape_all(&client, &admins).await;
    let started = Instant::now();
    // The window rates are measured over, not a wait for some condition.
    tokio::time::sleep(args.interval).await;
    let second = scrape_all(&client, &admins).await;
    let secs = started.elapsed().as_secs_f64();
    Ok(workloads
        .iter()
        .zip(first.into_iter().zip(second))
        .map(|(w, scrapes)| match scrapes {
            (Ok(before), Ok(after)) => row(&w.namespace, &w.name, &before, &after, secs),
            (Err(e), _) | (_, Err(e)) => StatRow {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                success: None,
                rps: 0.0,
                latency_ms_p50: None,
                latency_ms_p95: None,
                latency_ms_p99: None,
                tcp_conn: 0,
                anomaly: Vec::new(),
                error: Some(e),
            },
        })
        .collect())
}

/// Runs the command; returns the exit code (0, 1 when the control plane cannot be read, 64).
pub fn run(args: &StatArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let control = match parse_control(&args.control) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "trellis stat: {e}");
            return crate::EXIT_USAGE;
        }
    };
    let rows = crate::runtime::build().and_then(|rt| rt.block_on(collect(args, control)));
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let _ = writeln!(err, "trellis stat: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    for r in &rows {
        if let Some(e) = &r.error {
            let _ = writeln!(err, "trellis stat: {}.{}: {e}", r.name, r.namespace);
        }
    }
    match render(&rows, args.all_namespaces, args.output) {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
            0
        }
        Err(e) => {
            let _ = writeln!(err, "trellis stat: {e}");
            crate::EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
