//! Command-line flags and their validation into a [`ControlConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use trellis_identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};

use crate::ControlConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The Trellis control plane (local mode): config directories + self-registering proxies.
#[derive(Debug, Parser)]
#[command(name = "trellis-control", version)]
pub struct Args {
    /// A directory of YAML config (Kubernetes Services, ...). Repeatable. Polled for changes.
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dirs: Vec<PathBuf>,
    /// gRPC discovery listen address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    pub discovery: SocketAddr,
    /// HTTP listen address: JSON API, /metrics, /live, /ready and the dashboard.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15014")]
    pub http: SocketAddr,
    #[arg(long, value_name = "TD", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// How often proxies must send a heartbeat (e.g. 2s, 500ms).
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A workload not heard from for this long is removed from the endpoints it backed.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub workload_expiry: Duration,
    /// After startup, how long services without endpoints are held back while proxies
    /// re-register (default: the workload expiry; 0 disables).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub registration_grace: Option<Duration>,
    /// How often config directories are checked for changes.
    #[arg(long, value_name = "DUR", default_value = "300ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Written atomically once listening with the initial config loaded:
    /// {"pid":N,"discovery":"ip:port","http":"ip:port"}.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// A tracing filter: a level (info, debug) or directives (trellis_control=debug,info).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// A directory with the CA to use: root.pem, issuer.pem, issuer-key.pem (default: a CA
    /// generated at startup, in memory).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Lifetime of workload certificates (proxies renew at half of it).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// Refuse certificates to proxies without a valid join token. Without it, local mode
    /// trusts the identity a proxy claims.
    #[arg(long)]
    pub require_join_token: bool,
    /// File holding the secret join tokens are signed with (default: random per process).
    #[arg(long, value_name = "FILE")]
    pub join_token_secret: Option<PathBuf>,
    /// The mesh root namespace: Istio PeerAuthentications there without a selector apply
    /// mesh-wide.
    #[arg(long, value_name = "NS", default_value = crate::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// What a workload's inbound side allows when no Istio ALLOW AuthorizationPolicy covers
    /// it: all-unauthenticated, all-authenticated, cluster-authenticated, deny or audit (as
    /// Linkerd's config.linkerd.io/default-inbound-policy).
    #[arg(long, value_name = "POLICY", default_value = "all-unauthenticated",
          value_parser = crate::compile::authz::parse_default_policy)]
    pub default_inbound_policy: trellis_model::authz::DefaultPolicy,
    /// What proxies do with transparent outbound traffic to a destination the mesh does not
    /// know (no Service, workload or ServiceEntry): ALLOW_ANY passes it through, REGISTRY_ONLY
    /// refuses it (HTTP 502, TCP closed), as Istio's outboundTrafficPolicy.mode.
    #[arg(long, value_name = "MODE", default_value = "ALLOW_ANY",
          value_parser = crate::compile::outbound_policy::parse)]
    pub outbound_traffic_policy: crate::compile::outbound_policy::OutboundTrafficPolicy,
    /// Take the dashboard's numbers from this Prometheus (`http://host:port[/prefix]`, which
    /// scrapes the proxies) instead of scraping proxies' admin ports, as on Kubernetes where
    /// pods' admin ports may be out of reach.
    #[arg(long, value_name = "URL", env = "TRELLIS_PROMETHEUS_URL",
          value_parser = crate::dashboard_api::prometheus::PrometheusUrl::parse)]
    pub prometheus_url: Option<crate::dashboard_api::prometheus::PrometheusUrl>,
    /// Kubernetes mode: read Services, Pods, Namespaces and mesh config from the API server
    /// (instead of --config-dir and self-registration) and serve the admission webhooks.
    #[arg(long)]
    pub kubernetes: bool,
    /// The kubeconfig for --kubernetes (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// HTTPS listen address of the admission webhooks (--kubernetes); `none` disables them.
    #[arg(long, value_name = "ADDR|none", default_value = "0.0.0.0:15017")]
    pub webhook: String,
    /// DNS names/IPs of the webhook serving certificate (repeatable; default: the
    /// trellis-control Service's names).
    #[arg(long = "webhook-name", value_name = "NAME", requires = "kubernetes")]
    pub webhook_names: Vec<String>,
    /// The proxy image injected sidecars run.
    #[arg(long, value_name = "IMAGE", requires = "kubernetes")]
    pub proxy_image: Option<String>,
    /// This control plane's revision (--kubernetes): it injects only the namespaces labelled
    /// `trellis.io/rev=NAME` (or `istio.io/rev=NAME`) and patches the webhook configurations
    /// named `...-NAME`. Without it: the default control plane (unlabelled namespaces).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub revision: Option<String>,
    /// A namespace whose certificate Secrets Gateways may name (`credentialName`,
    /// `certificateRefs`), watched with --kubernetes (repeatable; Istio's rule: the gateway's
    /// own namespace). Secrets elsewhere are never read.
    #[arg(
        long = "gateway-secret-namespace",
        value_name = "NAMESPACE",
        requires = "kubernetes"
    )]
    pub gateway_secret_namespaces: Vec<String>,
}

/// A flag value that cannot work; the binary exits 64 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct UsageError {
    pub flag: &'static str,
    pub message: String,
}

impl Args {
    /// Validates values clap cannot check alone. Directories are checked when the store opens.
    pub fn into_config(self) -> Result<ControlConfig, UsageError> {
        let config = ControlConfig {
            config_dirs: self.config_dirs,
            discovery_addr: self.discovery,
            http_addr: self.http,
            trust_domain: self.trust_domain,
            heartbeat_interval: self.heartbeat_interval,
            workload_expiry: self.workload_expiry,
            registration_grace: self.registration_grace,
            poll_interval: self.poll_interval,
            ready_file: self.ready_file,
            kubernetes: None,
            ca: crate::ca::CaConfig {
                dir: self.ca_dir,
                cert_ttl: self.cert_ttl,
                require_join_token: self.require_join_token,
                join_token_secret: self.join_token_secret,
            },
            root_namespace: self.root_namespace,
            default_inbound_policy: self.default_inbound_policy,
            outbound_traffic_policy: self.outbound_traffic_policy,
            dashboard_prometheus: self.prometheus_url,
        };
        let mut config = config;
        if self.kubernetes {
            config.kubernetes = Some(kube_options(
                self.kubeconfig,
                &self.webhook,
                self.webhook_names,
                self.proxy_image,
            )?);
        }
        if let Some(kube) = config.kubernetes.as_mut() {
            kube.gateway_secret_namespaces = self.gateway_secret_namespaces;
        }
        if let (Some(kube), Some(revision)) = (config.kubernetes.as_mut(), self.revision) {
            crate::webhook::revision::validate(&revision).map_err(|message| UsageError {
                flag: "revision",
                message,
            })?;
            // A revision is reached through its own Service, `trellis-control-NAME`: the
            // address its proxies dial and its webhook certificate's names, unless given.
            let service = format!("{}-{revision}", crate::k8s::kinds::names::CONTROL);
            let ns = crate::k8s::kinds::names::NAMESPACE;
            if kube.inject.control_url
                == crate::webhook::inject::InjectConfig::default().control_url
            {
                kube.inject.control_url = format!(
                    "http://{service}.{ns}.svc:{}",
                    crate::k8s::kinds::names::DISCOVERY_PORT
                );
            }
            if kube.webhook_names == crate::k8s::KubeOptions::default().webhook_names {
                kube.webhook_names = vec![
                    format!("{service}.{ns}.svc"),
                    format!("{service}.{ns}.svc.cluster.local"),
                ];
            }
            kube.inject.revision = Some(revision);
        }
        config.validate()?;
        Ok(config)
    }
}

impl ControlConfig {
    pub fn validate(&self) -> Result<(), UsageError> {
        let usage = |flag, message: String| Err(UsageError { flag, message });
        if let Err(err) = SpiffeId::new(&self.trust_domain, "ns", "sa") {
            return usage("trust-domain", err.to_string());
        }
        for (flag, d) in [
            ("heartbeat-interval", self.heartbeat_interval),
            ("workload-expiry", self.workload_expiry),
            ("poll-interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return usage(flag, "must be greater than zero".into());
            }
        }
        // A workload must get several chances to heartbeat before it is expired.
        if self.workload_expiry < self.heartbeat_interval * 2 {
            return usage(
                "workload-expiry",
                format!(
                    "must be at least twice --heartbeat-interval ({:?}), got {:?}",
                    self.heartbeat_interval, self.workload_expiry
                ),
            );
        }
        // Renewal at half-life with jitter needs a few seconds to work with.
        if self.ca.cert_ttl < Duration::from_secs(2) {
            return usage(
                "cert-ttl",
                format!("must be at least 2s, got {:?}", self.ca.cert_ttl),
            );
        }
        if self.discovery_addr.port() != 0 && self.discovery_addr == self.http_addr {
            return usage("http", "must differ from --discovery".into());
        }
        Ok(())
    }
}

fn kube_options(
    kubeconfig: Option<PathBuf>,
    webhook: &str,
    webhook_names: Vec<String>,
    proxy_image: Option<String>,
) -> Result<crate::k8s::KubeOptions, UsageError> {
    let mut options = crate::k8s::KubeOptions {
        kubeconfig,
        ..Default::default()
    };
    options.webhook_addr = match webhook {
        "none" => None,
        addr => Some(addr.parse().map_err(|_| UsageError {
            flag: "webhook",
            message: format!("{addr:?} is not ip:port or none"),
        })?),
    };
    if !webhook_names.is_empty() {
        options.webhook_names = webhook_names;
    }
    if let Some(image) = proxy_image {
        options.inject.proxy_image = image;
    }
    Ok(options)
}

/// Parses `300ms`, `2s`, `1m`, `1h`, or `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration (e.g. 300ms, 2s, 1m)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "5", "s", "1x", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_validation() {
        let args = Args::try_parse_from(["trellis-control"]).unwrap();
        let config = args.into_config().unwrap();
        assert_eq!(config.discovery_addr, "127.0.0.1:15010".parse().unwrap());
        assert_eq!(config.http_addr, "127.0.0.1:15014".parse().unwrap());
        assert_eq!(config.workload_expiry, Duration::from_secs(10));
        assert_eq!(config.poll_interval, Duration::from_millis(300));
        let bad = Args::try_parse_from(["x", "--trust-domain", "Bad TD"]).unwrap();
        assert_eq!(bad.into_config().unwrap_err().flag, "trust-domain");
        let bad = Args::try_parse_from(["x", "--workload-expiry", "1s"]).unwrap();
        assert_eq!(bad.into_config().unwrap_err().flag, "workload-expiry");
        assert!(Args::try_parse_from(["x", "--poll-interval", "fast"]).is_err());
    }

    #[test]
    fn prometheus_url_is_parsed_before_anything_starts() {
        let args =
            Args::try_parse_from(["x", "--prometheus-url", "http://127.0.0.1:9090/prom/"]).unwrap();
        let url = args.into_config().unwrap().dashboard_prometheus.unwrap();
        assert_eq!(url.authority, "127.0.0.1:9090");
        assert_eq!(url.prefix, "/prom");
        let err = Args::try_parse_from(["x", "--prometheus-url", "https://prom:9090"]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("--prometheus-url"), "{message}");
        assert!(message.contains("only http://"), "{message}");
    }
}
