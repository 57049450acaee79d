//! Multi-cluster: the SNI an east-west gateway routes by, and which endpoints a balancer may
//! use given their cluster.
//!
//! A client reaches a service's endpoints in another cluster through that cluster's east-west
//! gateway. The gateway does not terminate the mesh mTLS (identities stay end to end), so the
//! only thing it can route by is the ClientHello's SNI. The form is Istio's AUTO_PASSTHROUGH
//! one, `outbound_.PORT_._.HOST`: the service port and the service's FQDN (the `_` between
//! them is the subset, which is not used here).
//!
//! Failover follows Istio's `localityLbSetting` default with outlier detection: endpoints of
//! the proxy's own cluster are used while any is available; the other clusters' endpoints
//! only when none is (all gone, ejected or failing health checks).

use crate::{CLUSTER_DOMAIN, Endpoint, ServiceKey};

/// The SNI naming `service`'s `port`: `outbound_.9080_._.reviews.default.svc.cluster.local`.
pub fn sni(service: &ServiceKey, port: u16) -> String {
    format!("outbound_.{port}_._.{}", service.fqdn())
}

/// The service and port an east-west SNI names; `None` for any other name (including a
/// subset, or a host outside the cluster domain: the gateway forwards only to services).
pub fn parse_sni(sni: &str) -> Option<(ServiceKey, u16)> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = rest.strip_prefix("_.")?;
    let host = host.strip_suffix('.').unwrap_or(host);
    let names = host.strip_suffix(CLUSTER_DOMAIN)?.strip_suffix('.')?;
    let (name, namespace) = names.split_once('.')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (ok(name) && ok(namespace)).then(|| (ServiceKey::new(namespace, name), port))
}

/// Whether an endpoint is in this proxy's own cluster.
pub fn is_local(endpoint: &Endpoint) -> bool {
    endpoint.remote.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_round_trips() {
        let key = ServiceKey::new("default", "echo");
        let name = sni(&key, 8080);
        assert_eq!(name, "outbound_.8080_._.echo.default.svc.cluster.local");
        assert_eq!(parse_sni(&name), Some((key, 8080)));
    }

    #[test]
    fn other_names_are_not_routed() {
        for bad in [
            "echo.default.svc.cluster.local",
            "outbound_.0_._.echo.default.svc.cluster.local",
            "outbound_.80_.v1.echo.default.svc.cluster.local",
            "outbound_.80_._.example.com",
            "outbound_.80_._.echo.svc.cluster.local",
            "outbound_.80_._.a.b.c.svc.cluster.local",
            "outbound_.x_._.echo.default.svc.cluster.local",
        ] {
            assert_eq!(parse_sni(bad), None, "{bad}");
        }
    }
}
