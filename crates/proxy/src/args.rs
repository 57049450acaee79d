//! The `trellis-proxy` command line: clap types, value parsers and validation into a
//! [`ProxyConfig`].
//!
//! Every flag is checked here, before any socket is bound; a bad value is a [`ConfigError`] naming
//! the flag (the binary exits 64). This module must not bind, read files or start tasks.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use trellis_model::Target;

use crate::accesslog::Format as AccessLogFormat;
use crate::config::DEFAULT_TRACE_SAMPLING;
use crate::config::{DEFAULT_OPAQUE_PORTS, LogFormat, OutboundPort, ProxyConfig, parse_port_list};
use crate::init::InitArgs;
use crate::telemetry::LabelDetail;
use crate::trace::export::Protocol as OtlpProtocol;

/// A flag with a value that does not make sense; `flag` is the flag's name as typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for {flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

/// `trellis-proxy [run] ...` or `trellis-proxy init ...`.
#[derive(Debug, Parser)]
#[command(name = "trellis-proxy", version, about = "The Trellis sidecar proxy")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s flags, so that `run` can be omitted.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// The subcommand, with `run` as the default.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(Box::new(self.run)))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run(Box<RunArgs>),
    /// Write the iptables rules that redirect a pod's traffic through the proxy.
    Init(InitArgs),
    /// Wait until a proxy's admin `/ready` answers 200 (a postStart hook on older clusters).
    WaitReady(crate::wait_ready::WaitReadyArgs),
}

/// Flags of `trellis-proxy run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Workload name registered with the control plane (required with --control).
    #[arg(long, value_name = "NAME")]
    pub workload: Option<String>,
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,
    #[arg(long, value_name = "SA", default_value = "default")]
    pub service_account: String,
    /// A workload label `k=v` (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Workload labels as a comma list `k=v,k2=v2`.
    #[arg(long = "labels", value_name = "K=V,..", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Control plane URL, e.g. http://127.0.0.1:15010 (absent: standalone).
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TRELLIS_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// A ServiceAccount token file (Kubernetes: the projected token with audience `trellis`),
    /// read for every certificate request and sent as the identity proof.
    #[arg(long, value_name = "FILE", env = "TRELLIS_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<std::path::PathBuf>,
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Where inbound forwards connections that have no original destination.
    #[arg(long, value_name = "ADDR")]
    pub app: Option<SocketAddr>,
    /// Application port registered with the control plane (repeatable; default --app's port).
    #[arg(long = "app-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Vec<u16>,
    /// Inbound address registered with the control plane.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// Transparent outbound listener, or `none`.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:15001", value_parser = parse_optional_addr)]
    pub outbound: OptionalAddr,
    /// Explicit outbound listener `LISTEN=TARGET` (repeatable).
    #[arg(long = "outbound-port", value_name = "LISTEN=TARGET", value_parser = parse_outbound_port)]
    pub outbound_port: Vec<OutboundPort>,
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
    /// Written (atomically) with the bound addresses once the proxy is ready.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// Ports never sniffed: traffic to them is opaque TCP.
    #[arg(long, value_name = "LIST", default_value = DEFAULT_OPAQUE_PORTS, value_parser = parse_ports)]
    pub opaque_ports: BTreeSet<u16>,
    /// Runtime worker threads; 1 runs a current-thread runtime.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Log filter (RUST_LOG overrides).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Labels on request metrics: `full` (workloads, route, status, class) or `minimal`
    /// (direction and status code: the cheapest, for comparing telemetry cost).
    #[arg(long, value_name = "DETAIL", value_enum, env = "TRELLIS_METRICS_LABELS", default_value_t = LabelDetail::Full)]
    pub metrics_labels: LabelDetail,
    /// OTLP/gRPC collector (`http://host:4317`) spans are exported to; none: no tracing.
    #[arg(long, value_name = "URL", env = "TRELLIS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How spans are sent: `grpc` (TraceService/Export) or `http/protobuf` (POST /v1/traces).
    #[arg(long, value_name = "PROTOCOL", value_enum, env = "TRELLIS_OTLP_PROTOCOL", default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,
    /// Probability (0.0 to 1.0) of sampling a trace that arrives without a decision.
    #[arg(long, value_name = "P", env = "TRELLIS_TRACE_SAMPLING", default_value_t = DEFAULT_TRACE_SAMPLING)]
    pub trace_sampling: f64,
    /// One line per HTTP request: `off`, `json` or `text`.
    #[arg(long, value_name = "FORMAT", value_enum, env = "TRELLIS_ACCESS_LOG", default_value_t = AccessLogFormat::Off)]
    pub access_log: AccessLogFormat,
    /// Where access log lines go (appended); default stdout.
    #[arg(long, value_name = "FILE", env = "TRELLIS_ACCESS_LOG_PATH")]
    pub access_log_path: Option<PathBuf>,
    /// Anomaly detection: the window of inbound traffic judged against the baseline.
    #[arg(long, value_name = "DUR", env = "TRELLIS_ANOMALY_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub anomaly_window: Duration,
    /// Anomaly detection: the time constant of the baseline (an EWMA over past windows).
    #[arg(long, value_name = "DUR", env = "TRELLIS_ANOMALY_BASELINE", default_value = "10m", value_parser = parse_duration)]
    pub anomaly_baseline: Duration,
    /// `--mode gateway` and its listener flags (docs/gateways.md).
    #[command(flatten)]
    pub gateway: crate::gateway::GatewayArgs,
    /// The proxy's own limits and load shedding (docs/proxy.md, "Limits and overload").
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
}

/// `--outbound`'s value: an address or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl RunArgs {
    /// Checks what clap's per-value parsers cannot (relations between flags) and builds the
    /// config.
    pub fn validate(self) -> Result<ProxyConfig, ConfigError> {
        if self.control.is_some() && self.workload.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::new(
                "--workload",
                "required when --control is given",
            ));
        }
        if let Some(control) = &self.control
            && !(control.starts_with("http://") || control.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "--control",
                format!("{control:?} is not an http(s) URL"),
            ));
        }
        if self.namespace.is_empty() {
            return Err(ConfigError::new("--namespace", "must not be empty"));
        }
        if self.service_account.is_empty() {
            return Err(ConfigError::new("--service-account", "must not be empty"));
        }
        if self.drain_timeout.is_zero() {
            return Err(ConfigError::new("--drain-timeout", "must be positive"));
        }
        if self.detect_timeout.is_zero() {
            return Err(ConfigError::new("--detect-timeout", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            return Err(ConfigError::new(
                "--trace-sampling",
                format!("{} is not between 0.0 and 1.0", self.trace_sampling),
            ));
        }
        if let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !e.is_empty())
            && let Err(e) = crate::trace::export::validate_endpoint(endpoint)
        {
            return Err(ConfigError::new("--otlp-endpoint", e.to_string()));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(ConfigError::new(
                "--log-level",
                format!("{:?} is not a log filter", self.log_level),
            ));
        }
        // Two listeners on one fixed address would fail at bind with a less helpful message.
        let mut fixed = BTreeSet::new();
        let listeners = [
            ("--inbound", Some(self.inbound)),
            ("--outbound", self.outbound.0),
            ("--admin", Some(self.admin)),
        ]
        .into_iter()
        .chain(
            self.outbound_port
                .iter()
                .map(|p| ("--outbound-port", Some(p.listen))),
        );
        for (flag, addr) in listeners {
            if let Some(addr) = addr.filter(|a| a.port() != 0)
                && !fixed.insert(addr)
            {
                return Err(ConfigError::new(
                    flag,
                    format!("{addr} is used by another listener"),
                ));
            }
        }
        let app_ports = if self.app_port.is_empty() {
            self.app.map(|a| vec![a.port()]).unwrap_or_default()
        } else {
            self.app_port
        };
        Ok(ProxyConfig {
            workload: self.workload,
            namespace: self.namespace,
            service_account: self.service_account,
            labels: self.label.into_iter().chain(self.labels).collect(),
            control: self.control,
            join_token: self.join_token.filter(|t| !t.is_empty()),
            identity_token_file: self.identity_token_file,
            inbound: self.inbound,
            app: self.app,
            app_ports,
            advertise: self.advertise,
            outbound: self.outbound.0,
            outbound_ports: self.outbound_port,
            admin: self.admin,
            ready_file: self.ready_file,
            drain_timeout: self.drain_timeout,
            detect_timeout: self.detect_timeout,
            opaque_ports: self.opaque_ports,
            threads: usize::from(self.threads),
            log_level: self.log_level,
            log_format: self.log_format,
            metrics_labels: self.metrics_labels,
            otlp_endpoint: self.otlp_endpoint.filter(|e| !e.is_empty()),
            otlp_protocol: self.otlp_protocol,
            trace_sampling: self.trace_sampling,
            access_log: self.access_log,
            access_log_path: self.access_log_path,
            anomaly_window: self.anomaly_window,
            anomaly_baseline: self.anomaly_baseline,
            gateway: self.gateway.validate()?,
            limits: self.limits.validate()?,
        })
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not k=v"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|_| format!("{s:?} is not ip:port or none"))
}

fn parse_outbound_port(s: &str) -> Result<OutboundPort, String> {
    let (listen, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LISTEN=TARGET"))?;
    let listen = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not ip:port"))?;
    let target = Target::from_str(target).map_err(|e| e.to_string())?;
    Ok(OutboundPort { listen, target })
}

fn parse_ports(s: &str) -> Result<BTreeSet<u16>, String> {
    parse_port_list(s)
}

/// Parses `500ms`, `5s`, `1m`, `1h` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?} has an unknown unit (use ms, s, m or h)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("trellis-proxy").chain(args.iter().copied()))
            .map(Cli::into_command)
    }

    fn run(args: &[&str]) -> Result<ProxyConfig, ConfigError> {
        match parse(args) {
            Ok(Command::Run(r)) => r.validate(),
            other => panic!("not a run command: {other:?}"),
        }
    }

    #[test]
    fn run_is_the_default_subcommand() {
        let cfg = run(&["--app", "127.0.0.1:8080"]).unwrap();
        assert_eq!(cfg.inbound, "0.0.0.0:15006".parse().unwrap());
        assert_eq!(cfg.outbound, Some("127.0.0.1:15001".parse().unwrap()));
        assert_eq!(cfg.admin, "127.0.0.1:15020".parse().unwrap());
        assert_eq!(cfg.app_ports, vec![8080]);
        assert_eq!(cfg.drain_timeout, Duration::from_secs(5));
        assert_eq!(cfg.detect_timeout, Duration::from_secs(1));
        assert!(cfg.opaque_ports.contains(&3306));
        assert_eq!(cfg.threads, 1);
        let cfg = run(&[]).unwrap();
        assert!(cfg.app.is_none());
        assert!(
            matches!(parse(&["run", "--outbound", "none"]), Ok(Command::Run(r)) if r.outbound.0.is_none())
        );
    }

    #[test]
    fn init_subcommand_parses() {
        assert!(matches!(parse(&["init", "--dry-run"]), Ok(Command::Init(a)) if a.dry_run));
    }

    #[test]
    fn labels_merge_from_both_flags() {
        let cfg = run(&["--label", "app=web", "--labels", "version=v1,tier=front"]).unwrap();
        assert_eq!(cfg.labels.len(), 3);
        assert_eq!(cfg.labels["tier"], "front");
    }

    #[test]
    fn outbound_ports_parse_targets() {
        let cfg = run(&["--outbound-port", "127.0.0.1:15101=reviews.default:9080"]).unwrap();
        assert_eq!(
            cfg.outbound_ports[0].target.to_string(),
            "reviews.default:9080"
        );
        let err = parse(&["--outbound-port", "127.0.0.1:1=reviews:9080"]).unwrap_err();
        assert!(err.to_string().contains("--outbound-port"), "{err}");
    }

    #[test]
    fn control_requires_workload() {
        let err = run(&["--control", "http://127.0.0.1:15010"]).unwrap_err();
        assert_eq!(err.flag, "--workload");
        assert!(run(&["--control", "http://127.0.0.1:15010", "--workload", "web"]).is_ok());
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--detect-timeout", "soon"][..], "--detect-timeout"),
            (&["--inbound", "nowhere"][..], "--inbound"),
            (&["--opaque-ports", "25,x"][..], "--opaque-ports"),
            (&["--label", "novalue"][..], "--label"),
            (&["--threads", "0"][..], "--threads"),
            (&["--log-format", "xml"][..], "--log-format"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        let err = run(&["--inbound", "127.0.0.1:7000", "--admin", "127.0.0.1:7000"]).unwrap_err();
        assert_eq!(err.flag, "--admin");
        assert_eq!(
            run(&["--drain-timeout", "0s"]).unwrap_err().flag,
            "--drain-timeout"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
