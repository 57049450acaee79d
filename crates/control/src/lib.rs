//! The Trellis control plane, local mode: a config store fed by directories of YAML, a registry
//! of workloads their proxies register, a pure compile step, and the discovery server that
//! streams each proxy what it subscribed to; plus the HTTP API the dashboard and CLI read.
//!
//! Pure logic (`store::ConfigIndex`, `registry`, `compile`) is tested synchronously; `discovery`
//! (tonic) and `http` (axum) are thin adapters over it. This crate must not depend on the proxy
//! crates (tests aside). See docs/control-plane.md for flags and protocol.

pub mod ca;
pub mod cli;
pub mod compile;
pub mod dashboard_api;
pub mod discovery;
pub mod http;
pub mod k8s;
pub mod multicluster;
pub mod protocol_version;
pub mod registry;
mod server;
pub mod service_entry_dns;
pub mod state;
pub mod store;
pub mod tap;
pub mod telemetry;
pub mod webhook;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The mesh root namespace when none is configured: mesh-wide PeerAuthentications live here.
pub const DEFAULT_ROOT_NAMESPACE: &str = "trellis-system";

pub use server::{ControlPlane, StartError};

/// Everything the control plane needs to start, validated by [`ControlConfig::validate`].
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub config_dirs: Vec<PathBuf>,
    pub discovery_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub trust_domain: String,
    pub heartbeat_interval: Duration,
    pub workload_expiry: Duration,
    /// After startup, destinations without endpoints are held back this long so that proxies
    /// of a restarted control plane keep their endpoints while peers re-register. `None`: the
    /// workload expiry (a workload has that long to come back anyway).
    pub registration_grace: Option<Duration>,
    pub poll_interval: Duration,
    pub ready_file: Option<PathBuf>,
    /// The certificate authority (`--ca-dir`, `--cert-ttl`, join tokens).
    pub ca: ca::CaConfig,
    /// The mesh root namespace (`--root-namespace`).
    pub root_namespace: String,
    /// The inbound authorization default where no ALLOW policy applies
    /// (`--default-inbound-policy`).
    pub default_inbound_policy: trellis_model::authz::DefaultPolicy,
    /// `--outbound-traffic-policy`: ALLOW_ANY (the default) or REGISTRY_ONLY.
    pub outbound_traffic_policy: compile::outbound_policy::OutboundTrafficPolicy,
    /// Kubernetes mode: watch the API server instead of `config_dirs` and registrations.
    pub kubernetes: Option<k8s::KubeOptions>,
    /// The dashboard's numbers from this Prometheus instead of scraping proxies
    /// (`--prometheus-url`).
    pub dashboard_prometheus: Option<dashboard_api::prometheus::PrometheusUrl>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            config_dirs: Vec::new(),
            discovery_addr: SocketAddr::from(([127, 0, 0, 1], 15010)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 15014)),
            trust_domain: trellis_identity::DEFAULT_TRUST_DOMAIN.to_string(),
            heartbeat_interval: Duration::from_secs(2),
            workload_expiry: Duration::from_secs(10),
            registration_grace: None,
            poll_interval: Duration::from_millis(300),
            ready_file: None,
            ca: ca::CaConfig::default(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            default_inbound_policy: trellis_model::authz::DefaultPolicy::default(),
            outbound_traffic_policy: Default::default(),
            kubernetes: None,
            dashboard_prometheus: None,
        }
    }
}
