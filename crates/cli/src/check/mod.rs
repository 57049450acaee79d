//! `trellis check` (local mode): is the mesh healthy? Control plane reachable and ready, config
//! free of invalid resources, every proxy connected, up to date (ACKed, no NACKs), ready and
//! with a certificate not near expiry. Linkerd's format: sections, `√`/`‼`/`×` lines with
//! hints, a summary; `-o json`; exit 1 on any `×`.
//!
//! [`report`] is pure; this module only fetches the control plane's JSON API and each proxy's
//! admin endpoint (addresses from `/api/v1/workloads`), every call under a deadline.

pub mod k8s;
pub mod report;
pub mod skew;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::http_client::HttpClient;
use crate::output::{self, OutputFormat};
use report::{ConfigRow, Observed, ProxyObserved, WorkloadRow};

/// Each HTTP call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The control plane's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:15014", value_name = "URL")]
    pub control: String,
    /// Also list every proxy with its state (Kubernetes: every meshed pod's proxy).
    #[arg(long)]
    pub proxy: bool,
    /// Kubernetes `--proxy`: only the meshed pods of this namespace (default: all namespaces).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// `table` (Linkerd's text) or `json`.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Kubernetes: is the cluster ready for the mesh (before `trellis install`)?
    #[arg(long)]
    pub pre: bool,
    /// Check the mesh installed in a Kubernetes cluster (implied by `--pre`, `--kubeconfig`
    /// and `--context`) instead of a local-mode control plane.
    #[arg(long)]
    pub kubernetes: bool,
    #[command(flatten)]
    pub kube: crate::install::cluster::KubeArgs,
}

impl CheckArgs {
    /// Whether the checks are against a Kubernetes cluster.
    pub fn kubernetes_mode(&self) -> bool {
        self.pre || self.kubernetes || self.kube.given()
    }
}

/// `http://127.0.0.1:15014` or `127.0.0.1:15014` -> the address (loopback HTTP only).
pub fn parse_control(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    rest.parse()
        .map_err(|e| format!("--control {url:?}: expected http://IP:PORT ({e})"))
}

async fn get_ok(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<bytes::Bytes, String> {
    let reply = client
        .get(addr, path, &HeaderMap::new(), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if reply.status.is_success() {
        Ok(reply.body)
    } else {
        let body = String::from_utf8_lossy(&reply.body);
        Err(format!(
            "GET http://{addr}{path}: {} {}",
            reply.status,
            body.trim()
        ))
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<T, String> {
    let body = get_ok(client, addr, path).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET http://{addr}{path}: {e}"))
}

#[derive(serde::Deserialize)]
struct ConfigJson {
    resources: Vec<ConfigRow>,
}

/// The value of an unlabelled gauge in Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.split_whitespace().last()?.parse().ok()
    })
}

async fn observe_proxy(client: &HttpClient, admin: Option<&str>) -> ProxyObserved {
    let Some(addr) = admin.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return ProxyObserved {
            ready: Err("no admin address registered".into()),
            cert_expiry_unix: None,
        };
    };
    let ready = get_ok(client, addr, "/ready").await.map(|_| ());
    let cert_expiry_unix = get_ok(client, addr, "/metrics").await.ok().and_then(|m| {
        gauge(
            &String::from_utf8_lossy(&m),
            "trellis_identity_cert_expiry_timestamp_seconds",
        )
    });
    ProxyObserved {
        ready,
        cert_expiry_unix,
    }
}

/// Fetches everything the checks read.
pub async fn observe(control: SocketAddr, url: &str) -> Observed {
    let client = HttpClient::new();
    let live = get_ok(&client, control, "/live").await.map(|_| ());
    let reachable = live.is_ok();
    const SKIPPED: &str = "skipped: the control plane is not reachable";
    let (ready, config, workloads) = if reachable {
        let ready = get_ok(&client, control, "/ready").await.map(|_| ());
        let config = get_json::<ConfigJson>(&client, control, "/api/v1/config")
            .await
            .map(|c| c.resources);
        let workloads =
            match get_json::<Vec<WorkloadRow>>(&client, control, "/api/v1/workloads").await {
                Ok(rows) => {
                    let mut out = Vec::with_capacity(rows.len());
                    for w in rows {
                        let p = observe_proxy(&client, w.admin.as_deref()).await;
                        out.push((w, p));
                    }
                    Ok(out)
                }
                Err(e) => Err(e),
            };
        (ready, config, workloads)
    } else {
        (
            Err(SKIPPED.to_string()),
            Err(SKIPPED.to_string()),
            Err(SKIPPED.to_string()),
        )
    };
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Observed {
        control: url.to_string(),
        live,
        ready,
        config,
        workloads,
        now_unix,
    }
}

/// Runs the command; returns the exit code (0 healthy, 1 any `×`, 64 bad usage).
pub fn run(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (control, runtime) =
        match crate::runtime::control_and_start(&args.control, "trellis check", err) {
            Ok(started) => started,
            Err(code) => return code,
        };
    if args.namespace.is_some() && !(args.proxy && args.kubernetes_mode()) {
        let _ = writeln!(
            err,
            "trellis check: -n/--namespace applies to `--proxy` on a Kubernetes cluster only"
        );
        return crate::EXIT_USAGE;
    }
    let report = if args.pre {
        runtime.block_on(k8s::pre(&args.kube))
    } else if args.kubernetes_mode() {
        let data_plane = args.proxy.then_some(args.namespace.as_deref());
        let report = runtime.block_on(k8s::installed(&args.kube, data_plane));
        // Version skew once the cluster answered (the API section says why it did not).
        let api_answered = report.categories.first().is_some_and(|c| {
            c.checks
                .iter()
                .all(|k| k.result == report::CheckResult::Success)
        });
        match runtime.block_on(crate::install::cluster::connect(&args.kube)) {
            Ok(client) if api_answered => {
                let versions = runtime.block_on(skew::kubernetes(&client, data_plane));
                with_category(report, skew::evaluate(&versions))
            }
            _ => report,
        }
    } else {
        let observed = runtime.block_on(observe(control, &args.control));
        let report = report::evaluate(&observed, args.proxy);
        // Nothing to compare with a control plane that does not answer.
        if observed.live.is_ok() {
            let versions = runtime.block_on(skew::local(control));
            with_category(report, skew::evaluate(&versions))
        } else {
            report
        }
    };
    let text = if args.output.is_structured() {
        match output::structured(args.output, &report) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(err, "trellis check: {e}");
                return crate::EXIT_FAILURE;
            }
        }
    } else {
        report::render(&report)
    };
    let _ = out.write_all(text.as_bytes());
    if report.success {
        0
    } else {
        crate::EXIT_FAILURE
    }
}

/// `report` with one more section (success recomputed).
fn with_category(report: report::Report, category: report::Category) -> report::Report {
    let mut categories = report.categories;
    categories.push(category);
    report::Report::new(categories)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_url_and_gauge() {
        assert_eq!(
            parse_control("http://127.0.0.1:15014/").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 15014))
        );
        assert!(parse_control("http://localhost").is_err());
        let text = "# HELP x\ntrellis_identity_cert_expiry_timestamp_seconds_total 5\ntrellis_identity_cert_expiry_timestamp_seconds 1764000000\n";
        assert_eq!(
            gauge(text, "trellis_identity_cert_expiry_timestamp_seconds"),
            Some(1_764_000_000.0)
        );
        assert_eq!(gauge(text, "absent"), None);
    }
}
