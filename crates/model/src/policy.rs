//! Per-backend traffic policy: how endpoints are chosen, how many connections and requests a
//! backend may have, when endpoints are ejected, and how much retrying is allowed. Istio's
//! DestinationRule `trafficPolicy` and Linkerd's ServiceProfile `retryBudget` translate here.
//! Defaults are the mesh's safe defaults, documented on each field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a consistent hash is computed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    #[default]
    Ring,
    Maglev,
}

/// How an endpoint is chosen for each request (or connection, for opaque TCP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency weighted by in-flight requests (Linkerd's
    /// default, and the mesh's).
    #[default]
    PeakEwma,
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    Random,
    ConsistentHash {
        key: HashKey,
        algorithm: HashAlgorithm,
    },
}

/// Limits per backend (Istio `connectionPool`). `None` means the mesh default, which is no
/// explicit limit beyond the proxy's global guards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Requests waiting for a connection (`http1MaxPendingRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Concurrent requests to the backend (`http2MaxRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Concurrent retries to the backend (`maxRetries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 requests to meshed endpoints ride an HTTP/2 connection between the
    /// proxies (`h2UpgradePolicy`: `UPGRADE` is `Some(true)`, `DO_NOT_UPGRADE` `Some(false)`).
    /// `None` is the mesh default, which upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade: Option<bool>,
}

/// Passive health checking (Istio `outlierDetection`). Ejection time grows with each ejection
/// of the same endpoint: `base_ejection_time * times ejected`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and connect failures) before ejection. Istio's default: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 answers (and connect failures) before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reconsidered. Istio's default: 10 s.
    pub interval: Duration,
    /// Istio's default: 30 s.
    pub base_ejection_time: Duration,
    /// At most this share of the backend's endpoints is ejected at once. Istio's default: 10%.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// Active health checking of a backend's endpoints: an HTTP GET of `path` on each endpoint
/// every `interval` (jittered), answered 2xx or 3xx within `timeout` to pass. An endpoint that
/// fails `unhealthy_threshold` probes in a row is taken out of the balancer until it passes
/// `healthy_threshold` in a row. Istio has no field for this; Trellis reads the
/// `trellis.io/health-check` annotation of a DestinationRule (docs/observability.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// How much retrying a backend allows: retries may add at most `ratio` of the requests, plus
/// `min_per_second` so low-traffic services can still retry, counted over `ttl` (Linkerd's
/// `retryBudget`). On by default, so a failing backend never sees a retry storm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// Linkerd's defaults: 20% extra, 10 retries/s floor, 10 s window.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Everything that governs traffic to one backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Istio DestinationRule `tls.mode: DISABLE`: meshed hops to this backend stay plaintext
    /// (the default, ISTIO_MUTUAL, is mesh mTLS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mtls_disabled: bool,
    /// Active health checks (`None`: only passive outlier detection, if configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Istio DestinationRule `tls.mode: SIMPLE` or `MUTUAL`: the proxy opens TLS to every
    /// endpoint of this backend itself (TLS origination), in place of mesh mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_origination: Option<TlsOrigination>,
}

/// How the proxy originates TLS to a backend's endpoints (Istio `ClientTLSSettings`, modes
/// `SIMPLE` and `MUTUAL`). Every path is on the proxy's file system and read by the proxy: the
/// control plane does not see those files (on Kubernetes they are in the proxy's pod).
///
/// Verification: unless `insecure_skip_verify`, the server's chain must verify against
/// `ca_certificates` (or the system roots), and the certificate must carry one of
/// `subject_alt_names` (DNS, URI or IP SAN) or, when that list is empty, name `sni`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOrigination {
    /// A PEM file of trusted roots, read by the proxy; `None`: the system roots (which honour
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// The server name sent and verified; `None`: the destination's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `MUTUAL`: the certificate the proxy presents (`None`: `SIMPLE`, no client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
    /// Names the server's certificate must carry one of, in place of `sni` (Istio
    /// `subjectAltNames`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Istio `insecureSkipVerify`: neither the chain nor the names are checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Where these settings come from (`DestinationRule shop/billing spec.trafficPolicy.tls`),
    /// so the proxy's errors about its files name the rule and the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Istio `MUTUAL`'s client certificate: PEM files on the proxy's file system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertificate {
    /// `clientCertificate`: the certificate chain, leaf first.
    pub certificate: String,
    /// `privateKey`: its key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
}
