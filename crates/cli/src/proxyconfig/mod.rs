//! `trellis proxy-config`: one proxy's listeners, routes, clusters and endpoints, from its
//! admin `/config_dump` (reached directly, or by workload name through the control plane's
//! `/api/v1/workloads`). [`tables`] is pure; this module fetches and renders.

pub mod tables;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use crate::check::parse_control;
use crate::http_client::HttpClient;
use crate::output::{self, OutputFormat};
use tables::{Dump, Section};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    /// The proxy's admin address (`127.0.0.1:15000`), or a workload name (`productpage-v1`,
    /// `productpage-v1.default`) looked up through the control plane.
    #[arg(value_name = "ADMIN_ADDR|WORKLOAD")]
    pub proxy: String,
    /// What to show.
    #[arg(value_enum, default_value_t = Section::All)]
    pub section: Section,
    /// The control plane's HTTP API, for workload names.
    #[arg(long, default_value = "http://127.0.0.1:15014", value_name = "URL")]
    pub control: String,
    /// The workload's namespace, as kubectl's `-n` (same as `WORKLOAD.NS`; without either, the
    /// one workload of that name in any namespace).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Why the config could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Fetch(String),
    #[error(transparent)]
    Dump(#[from] tables::DumpError),
    #[error(transparent)]
    Output(#[from] output::StructuredError),
}

#[derive(Debug, Serialize)]
struct JsonOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    listeners: Option<Vec<tables::Listener>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<Vec<tables::RouteRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clusters: Option<Vec<tables::ClusterRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<tables::EndpointRow>>,
}

/// Renders the chosen section(s) of a parsed dump.
pub fn render(
    dump: &Dump,
    section: Section,
    format: OutputFormat,
) -> Result<String, output::StructuredError> {
    let want = |s: Section| section == Section::All || section == s;
    if format.is_structured() {
        let out = JsonOut {
            listeners: want(Section::Listeners).then(|| dump.listeners.clone()),
            routes: want(Section::Routes).then(|| tables::routes(dump)),
            clusters: want(Section::Clusters).then(|| tables::clusters(dump)),
            endpoints: want(Section::Endpoints).then(|| tables::endpoints(dump)),
        };
        return output::structured(format, &out);
    }
    let wide = format == OutputFormat::Wide;
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let mut parts: Vec<(&str, String)> = Vec::new();
    if want(Section::Listeners) {
        let rows: Vec<Vec<String>> = dump
            .listeners
            .iter()
            .map(|l| vec![l.name.clone(), l.address.clone(), dash(&l.target)])
            .collect();
        parts.push((
            "LISTENERS",
            output::table(&["NAME", "ADDRESS", "TARGET"], &rows),
        ));
    }
    if want(Section::Routes) {
        let mut headers = vec!["TARGET", "INDEX", "NAME", "RESOURCE", "ACTION"];
        if wide {
            headers.extend(["MATCH", "TIMEOUT", "RETRIES"]);
        }
        let rows: Vec<Vec<String>> = tables::routes(dump)
            .into_iter()
            .map(|r| {
                let mut row = vec![
                    r.target,
                    r.index.map_or("-".into(), |i| i.to_string()),
                    r.name,
                    r.resource,
                    r.action,
                ];
                if wide {
                    row.extend([r.matches, r.timeout, r.retries]);
                }
                row
            })
            .collect();
        parts.push(("ROUTES", output::table(&headers, &rows)));
    }
    if want(Section::Clusters) {
        let rows: Vec<Vec<String>> = tables::clusters(dump)
            .into_iter()
            .map(|c| {
                vec![
                    c.cluster,
                    c.service,
                    dash(&c.subset),
                    c.endpoints.to_string(),
                    c.load_balancer,
                    if c.outlier_detection { "on" } else { "off" }.to_string(),
                ]
            })
            .collect();
        let headers = ["CLUSTER", "SERVICE", "SUBSET", "ENDPOINTS", "LB", "OUTLIER"];
        parts.push(("CLUSTERS", output::table(&headers, &rows)));
    }
    if want(Section::Endpoints) {
        let mut headers = vec!["CLUSTER", "ADDRESS", "WORKLOAD", "MESHED"];
        if wide {
            headers.extend(["IDENTITY", "LABELS"]);
        }
        let rows: Vec<Vec<String>> = tables::endpoints(dump)
            .into_iter()
            .map(|e| {
                let mut row = vec![e.cluster, e.address, e.workload, e.meshed.to_string()];
                if wide {
                    row.extend([dash(&e.identity), e.labels]);
                }
                row
            })
            .collect();
        parts.push(("ENDPOINTS", output::table(&headers, &rows)));
    }
    if let [(_, only)] = parts.as_slice() {
        return Ok(only.clone());
    }
    let sections: Vec<String> = parts
        .into_iter()
        .map(|(title, table)| format!("{title}\n{table}"))
        .collect();
    Ok(sections.join("\n"))
}

#[derive(serde::Deserialize)]
struct WorkloadRow {
    name: String,
    namespace: String,
    admin: Option<String>,
}

async fn fetch_json(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<Value, ProxyConfigError> {
    let reply = client
        .get(addr, path, &HeaderMap::new(), CALL_TIMEOUT)
        .await
        .map_err(|e| ProxyConfigError::Fetch(e.to_string()))?;
    if !reply.status.is_success() {
        return Err(ProxyConfigError::Fetch(format!(
            "GET http://{addr}{path}: {}",
            reply.status
        )));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| ProxyConfigError::Fetch(format!("GET http://{addr}{path}: {e}")))
}

/// The admin address for `proxy`: itself if it is an address, else the registered workload's.
async fn admin_address(
    client: &HttpClient,
    args: &ProxyConfigArgs,
) -> Result<SocketAddr, ProxyConfigError> {
    if let Ok(addr) = args.proxy.parse() {
        return Ok(addr);
    }
    let control = parse_control(&args.control).map_err(ProxyConfigError::Usage)?;
    let rows: Vec<WorkloadRow> =
        serde_json::from_value(fetch_json(client, control, "/api/v1/workloads").await?)
            .map_err(|e| ProxyConfigError::Fetch(format!("/api/v1/workloads: {e}")))?;
    let (name, ns) = match (args.proxy.split_once('.'), args.namespace.as_deref()) {
        (Some((_, ns)), Some(flag)) if ns != flag => {
            return Err(ProxyConfigError::Usage(format!(
                "{:?} names namespace {ns:?} but -n is {flag:?}",
                args.proxy
            )));
        }
        (Some((n, ns)), _) => (n, Some(ns)),
        (None, flag) => (args.proxy.as_str(), flag),
    };
    let row = rows
        .iter()
        .find(|w| w.name == name && ns.is_none_or(|ns| w.namespace == ns))
        .ok_or_else(|| {
            let known: Vec<String> = rows
                .iter()
                .map(|w| format!("{}.{}", w.name, w.namespace))
                .collect();
            ProxyConfigError::Usage(format!(
                "no registered workload {:?} (known: {})",
                args.proxy,
                known.join(", ")
            ))
        })?;
    row.admin
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            ProxyConfigError::Fetch(format!("{} registered no admin address", args.proxy))
        })
}

async fn fetch(args: &ProxyConfigArgs) -> Result<Value, ProxyConfigError> {
    let client = HttpClient::new();
    let admin = admin_address(&client, args).await?;
    fetch_json(&client, admin, "/config_dump").await
}

/// Runs the command; returns the exit code (0, 1 on failure, 64 on bad usage).
pub fn run(args: &ProxyConfigArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let outcome = crate::runtime::build()
        .map_err(ProxyConfigError::Fetch)
        .and_then(|rt| rt.block_on(fetch(args)))
        .and_then(|json| Ok(tables::parse(&json)?))
        .and_then(|dump| Ok(render(&dump, args.section, args.output)?));
    match outcome {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
            0
        }
        Err(e) => {
            let _ = writeln!(err, "trellis proxy-config: {e}");
            match e {
                ProxyConfigError::Usage(_) => crate::EXIT_USAGE,
                _ => crate::EXIT_FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Dump {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/proxyconfig/productpage-config-dump.json"
        );
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        tables::parse(&json).unwrap()
    }

    fn golden(name: &str, actual: &str) {
        crate::golden::assert_golden("proxyconfig", name, actual);
    }

    #[test]
    fn productpage_tables() {
        let d = dump();
        let routes = tables::routes(&d);
        assert!(
            routes
                .iter()
                .any(|r| r.resource == "VirtualService default/reviews"
                    && r.action.contains("subset v2 100%"))
        );
        let clusters = tables::clusters(&d);
        assert!(
            clusters
                .iter()
                .any(|c| c.subset.as_deref() == Some("v3") && c.endpoints == 1)
        );
        golden(
            "all.txt",
            &render(&d, Section::All, OutputFormat::Table).unwrap(),
        );
        golden(
            "routes-wide.txt",
            &render(&d, Section::Routes, OutputFormat::Wide).unwrap(),
        );
        golden(
            "endpoints.json",
            &render(&d, Section::Endpoints, OutputFormat::Json).unwrap(),
        );
    }

    #[test]
    fn not_a_dump() {
        assert!(tables::parse(&serde_json::json!({"x": 1})).is_err());
    }
}
