//! A gateway proxy's listeners as plain data: what the control plane compiles from Istio
//! `Gateway`s and Gateway API `Gateway`s with the routes bound to them, and what
//! `trellis-proxy --mode gateway` serves. Travels as JSON over discovery, like `traffic_json`.
//!
//! The pure decisions a gateway makes per connection and request live here too, so the proxy
//! and the control plane's tests decide alike: which virtual host a `Host`/SNI selects
//! ([`host_matches`], [`best_host`]).

use serde::{Deserialize, Serialize};

use crate::Destination;

/// Everything one gateway workload serves. Empty: no Gateway selects the workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// One per port, in port order.
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

/// What arrives on a listener: plain HTTP, or TLS (terminated and then HTTP, or passed through
/// by SNI), or opaque TCP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    #[default]
    Http,
    /// TLS terminated with `tls_hosts`' certificates, HTTP inside.
    Https,
    /// TLS: terminated (`tls_hosts`) or passed through (`passthrough`) by SNI.
    Tls,
    Tcp,
}

/// One port of the gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayListener {
    /// The port the Gateway names (the proxy may bind it elsewhere: `--gateway-port`).
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// The resources that declared this port (`Gateway ns/name`), for logs and status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// HTTP routing by `Host` (for HTTP, and inside terminated TLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Hosts whose plain-HTTP requests get a 301 to `https://` (Istio `tls.httpsRedirect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub https_redirect: Vec<String>,
    /// Certificates by SNI for TLS termination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_hosts: Vec<TlsHost>,
    /// TLS passed through untouched to a backend chosen by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<PassthroughHost>,
    /// Only connections the gateway's own inbound listener hands over (mesh mTLS, already
    /// verified there): an Istio server with `tls.mode: ISTIO_MUTUAL`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh_only: bool,
}

/// Routes for some host names: `destination.routes` (first match wins) with every backend
/// they name resolved in `destination.backends`. `destination.endpoints` is empty: a request
/// no route takes gets the catch-all's 404.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// `*`, `*.example.com` or `bookinfo.example.com`, lowercase.
    pub hosts: Vec<String>,
    pub destination: Destination,
}

/// A certificate for some SNI names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsHost {
    pub hosts: Vec<String>,
    pub cert: CertSource,
    /// Client certificates are required and verified against these roots (Istio `MUTUAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<CertSource>,
}

/// Where a certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    /// PEM read by the control plane (a Secret named by `credentialName`).
    Pem {
        cert_chain: String,
        #[serde(default)]
        private_key: String,
    },
    /// Files on the gateway's own filesystem (Istio `serverCertificate`/`privateKey`).
    Files {
        cert_chain: String,
        #[serde(default)]
        private_key: String,
    },
}

/// TLS passed through to the backends of `destination.tcp_routes` for some SNI names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PassthroughHost {
    pub hosts: Vec<String>,
    pub destination: Destination,
}

/// Whether `pattern` (`*`, `*.example.com`, `example.com`) covers `host` (lowercase, no port).
/// A wildcard covers one or more labels in front of its suffix, as Istio and Gateway API say.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// How specific a pattern is: exact names first, then longer wildcard suffixes, `*` last.
fn specificity(pattern: &str) -> (bool, usize) {
    (!pattern.starts_with('*'), pattern.len())
}

/// The index of the item whose hosts cover `host` most specifically (exact > longest
/// wildcard > `*`); the first such item on ties.
pub fn best_host<'a, T>(
    items: impl IntoIterator<Item = (&'a [String], T)>,
    host: &str,
) -> Option<T> {
    let mut best: Option<((bool, usize), T)> = None;
    for (patterns, item) in items {
        for p in patterns {
            if host_matches(p, host) {
                let s = specificity(p);
                if best.as_ref().is_none_or(|(b, _)| s > *b) {
                    best = Some((s, item));
                    break;
                }
            }
        }
    }
    best.map(|(_, item)| item)
}

/// The host a request names, lowercase and without its port.
pub fn request_host(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal keeps its brackets; a port follows the last colon otherwise.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_subdomains_only() {
        assert!(host_matches("*", "anything"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("Example.com", "example.com"));
        assert!(!host_matches("example.com", "a.example.com"));
    }

    #[test]
    fn the_most_specific_host_wins() {
        let star = ["*".to_string()];
        let wild = ["*.example.com".to_string()];
        let exact = ["a.example.com".to_string()];
        let items = || [(&star[..], 0), (&wild[..], 1), (&exact[..], 2)];
        assert_eq!(best_host(items(), "a.example.com"), Some(2));
        assert_eq!(best_host(items(), "b.example.com"), Some(1));
        assert_eq!(best_host(items(), "other.org"), Some(0));
        assert_eq!(best_host([(&exact[..], 2)], "other.org"), None);
    }

    #[test]
    fn request_host_drops_the_port() {
        assert_eq!(
            request_host("Bookinfo.example.com:8443"),
            "bookinfo.example.com"
        );
        assert_eq!(request_host("example.com"), "example.com");
        assert_eq!(request_host("[::1]:80"), "[::1]");
    }
}
