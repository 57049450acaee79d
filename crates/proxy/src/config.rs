//! The proxy's validated configuration: plain data, built from the command line by
//! [`crate::args`] before any socket is bound, and shown as-is by `/config_dump`.
//!
//! Nothing here does I/O; everything downstream trusts these values to be consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use trellis_model::Target;

/// Default for `--opaque-ports`: server-first protocols (SMTP, MySQL, ..., memcached) where the
/// client waits for the server to speak, so detection could only ever time out.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// An explicit outbound listener: traffic accepted on `listen` goes to `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboundPort {
    pub listen: SocketAddr,
    #[serde(serialize_with = "display")]
    pub target: Target,
}

/// New traces sampled when `--trace-sampling` is not given: Istio's default, 1%.
pub const DEFAULT_TRACE_SAMPLING: f64 = 0.01;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `trellis-proxy run` needs, validated.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    /// Absent only in standalone mode (no `--control`).
    pub workload: Option<String>,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Control plane URL; `None` runs standalone with discovery disabled.
    pub control: Option<String>,
    /// A secret: never serialized into `/config_dump`.
    #[serde(skip)]
    pub join_token: Option<String>,
    /// Kubernetes mode: a projected ServiceAccount token, read again for every Certify (the
    /// kubelet rotates it) and sent as the proof instead of a join token.
    pub identity_token_file: Option<std::path::PathBuf>,
    pub inbound: SocketAddr,
    /// Where inbound traffic goes when the connection carries no original destination.
    pub app: Option<SocketAddr>,
    pub app_ports: Vec<u16>,
    /// The inbound address registered with the control plane; `None` derives it from the bound
    /// inbound address once it is known.
    pub advertise: Option<SocketAddr>,
    /// The transparent outbound listener; `None` when disabled with `--outbound none`.
    pub outbound: Option<SocketAddr>,
    pub outbound_ports: Vec<OutboundPort>,
    pub admin: SocketAddr,
    pub ready_file: Option<PathBuf>,
    #[serde(serialize_with = "millis")]
    pub drain_timeout: Duration,
    #[serde(serialize_with = "millis")]
    pub detect_timeout: Duration,
    pub opaque_ports: BTreeSet<u16>,
    pub threads: usize,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Labels on request metrics (`--metrics-labels`).
    pub metrics_labels: crate::telemetry::LabelDetail,
    /// OTLP/gRPC collector for spans; `None`: no tracing.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: crate::trace::export::Protocol,
    /// Probability of sampling a new trace (an incoming decision is obeyed).
    pub trace_sampling: f64,
    pub access_log: crate::accesslog::Format,
    /// Where access logs go; `None`: stdout.
    pub access_log_path: Option<PathBuf>,
    /// Anomaly detection windows (`--anomaly-window`, `--anomaly-baseline`).
    pub anomaly_window: Duration,
    pub anomaly_baseline: Duration,
    /// `--mode`, `--listen-host`, `--gateway-port`.
    pub gateway: crate::gateway::GatewaySettings,
    /// Connection, request and HTTP/2 limits and load shedding (`--max-connections`, ...).
    pub limits: crate::limits::ServerLimits,
}

impl ProxyConfig {
    /// A standalone proxy on loopback with every listener on an ephemeral port: the starting
    /// point for tests and embedders, who then set what they need.
    pub fn local(app: Option<SocketAddr>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            workload: None,
            namespace: "default".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            control: None,
            join_token: None,
            identity_token_file: None,
            inbound: any,
            app,
            app_ports: app.map(|a| vec![a.port()]).unwrap_or_default(),
            advertise: None,
            outbound: None,
            outbound_ports: Vec::new(),
            admin: any,
            ready_file: None,
            drain_timeout: Duration::from_secs(5),
            detect_timeout: Duration::from_secs(1),
            opaque_ports: parse_port_list(DEFAULT_OPAQUE_PORTS).unwrap_or_default(),
            threads: 1,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            metrics_labels: crate::telemetry::LabelDetail::Full,
            otlp_endpoint: None,
            otlp_protocol: crate::trace::export::Protocol::Grpc,
            trace_sampling: DEFAULT_TRACE_SAMPLING,
            access_log: crate::accesslog::Format::Off,
            access_log_path: None,
            anomaly_window: Duration::from_secs(30),
            anomaly_baseline: Duration::from_secs(600),
            gateway: crate::gateway::GatewaySettings::default(),
            limits: crate::limits::ServerLimits::default(),
        }
    }
}

/// Parses `25,587,3306`.
pub(crate) fn parse_port_list(s: &str) -> Result<BTreeSet<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))
        })
        .collect()
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}
