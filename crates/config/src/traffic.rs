//! What the traffic APIs translate into: route sets attached to services and destination
//! policies with subsets, plus the helpers the adapters share (host names, durations, field
//! errors). The model types (`HttpRoute`, `TrafficPolicy`, ...) are the payload; these types add
//! what the control plane needs to choose among resources (which API, which parent, how old).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use trellis_model::policy::{
    ConnectionPool, LoadBalancer, OutlierDetection, RetryBudget, TrafficPolicy,
};
use trellis_model::route::{HttpRoute, ResourceRef, TcpRoute};
use trellis_model::{CLUSTER_DOMAIN, ServiceKey};

use crate::kube::FieldError;

/// The API family a route came from. The order is the precedence when several families route
/// one service: Gateway API, then Istio, then Linkerd (ServiceProfile with SMI TrafficSplit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum RouteApi {
    GatewayApi,
    Istio,
    /// Linkerd ServiceProfile: per-route timeouts, retries and response classes.
    ServiceProfile,
    /// SMI TrafficSplit: a weighted split of a root service. Combines with a ServiceProfile of
    /// the same service (the profile's routes forward to the split), as in Linkerd.
    TrafficSplit,
}

/// A service (and optionally one of its ports) a route set attaches to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Parent {
    pub service: ServiceKey,
    /// `None`: every port of the service.
    pub port: Option<u16>,
}

/// The routes one resource contributes to the services it names.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RouteSet {
    pub api: RouteApi,
    pub source: ResourceRef,
    /// `metadata.creationTimestamp` (RFC 3339 sorts as text), for the APIs' oldest-wins rules.
    pub created: Option<String>,
    pub parents: Vec<Parent>,
    /// In the resource's own order. Gateway API routes carry one match each, so the control
    /// plane can sort the routes of several resources by match specificity.
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    /// Policy for the parent services themselves (a ServiceProfile's `retryBudget`).
    #[serde(skip_serializing_if = "PolicyLayer::is_empty")]
    pub policy: PolicyLayer,
    /// Fields accepted but not acted on, and why: shown as the resource's status message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Part of a traffic policy: each field set replaces the whole field below it, as Istio merges
/// a DestinationRule's top-level, port-level and subset-level policies.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PolicyLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// DestinationRule `tls.mode`: `Some(true)` for DISABLE, `Some(false)` for ISTIO_MUTUAL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_disabled: Option<bool>,
    /// DestinationRule `tls.mode: SIMPLE`'s settings; a layer that sets a mode replaces the
    /// whole of `tls` below it (so a port-level DISABLE drops a top-level SIMPLE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_origination: Option<trellis_model::policy::TlsOrigination>,
    /// The `trellis.io/health-check` annotation (top level only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<trellis_model::policy::HealthCheck>,
}

impl PolicyLayer {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Lays this layer over `policy`.
    pub fn apply(&self, policy: &mut TrafficPolicy) {
        if let Some(lb) = &self.load_balancer {
            policy.load_balancer = lb.clone();
        }
        if let Some(pool) = &self.connection_pool {
            policy.connection_pool = pool.clone();
        }
        if let Some(od) = &self.outlier_detection {
            policy.outlier_detection = Some(od.clone());
        }
        if let Some(budget) = &self.retry_budget {
            policy.retry_budget = budget.clone();
        }
        if let Some(disabled) = self.mtls_disabled {
            policy.mtls_disabled = disabled;
            policy.tls_origination = self.tls_origination.clone();
        }
        if let Some(hc) = &self.health_check {
            policy.health_check = Some(hc.clone());
        }
    }
}

/// A named subset of a service's endpoints (Istio DestinationRule `subsets[]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "PolicyLayer::is_empty")]
    pub policy: PolicyLayer,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_policies: Vec<(u16, PolicyLayer)>,
}

/// Istio DestinationRule, translated: the policy for one service, per port and per subset.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DestinationPolicy {
    pub source: ResourceRef,
    pub created: Option<String>,
    pub host: ServiceKey,
    #[serde(skip_serializing_if = "PolicyLayer::is_empty")]
    pub policy: PolicyLayer,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_policies: Vec<(u16, PolicyLayer)>,
    pub subsets: Vec<Subset>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl DestinationPolicy {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The merged policy for traffic to `port` (and `subset`) of the host: top level, then its
    /// port level, then the subset, then the subset's port level. `None`: no such subset.
    pub fn policy_for(&self, port: u16, subset: Option<&str>) -> Option<TrafficPolicy> {
        let mut policy = TrafficPolicy::default();
        self.policy.apply(&mut policy);
        apply_port(&self.port_policies, port, &mut policy);
        if let Some(name) = subset {
            let subset = self.subset(name)?;
            subset.policy.apply(&mut policy);
            apply_port(&subset.port_policies, port, &mut policy);
        }
        Some(policy)
    }
}

fn apply_port(layers: &[(u16, PolicyLayer)], port: u16, policy: &mut TrafficPolicy) {
    if let Some((_, layer)) = layers.iter().find(|(p, _)| *p == port) {
        layer.apply(policy);
    }
}

/// Resolves a host as Istio does against the resource's namespace: `reviews`,
/// `reviews.default`, `reviews.default.svc` and `reviews.default.svc.cluster.local` name a
/// cluster Service; any other valid DNS name of three or more labels (`api.example.com`) is an
/// external host ([`ServiceKey::external`]), which a ServiceEntry may declare; wildcards and
/// malformed names are `None`. A two-label name (`httpbin.org`) reads as `name.namespace`.
pub fn resolve_host(host: &str, namespace: &str) -> Option<ServiceKey> {
    cluster_host(host, namespace).or_else(|| external_host(host))
}

/// The external key for a host that is not a cluster Service name: lowercase DNS labels, at
/// least three of them, no wildcard.
fn external_host(host: &str) -> Option<ServiceKey> {
    let host = host.trim_end_matches('.');
    let labels: Vec<&str> = host.split('.').collect();
    let valid = host.len() <= 253
        && labels.len() >= 3
        && labels.iter().all(|l| crate::kube::is_dns1123_label(l));
    valid.then(|| ServiceKey::external(host))
}

/// The cluster Service a host names, if it is one (see [`resolve_host`]).
fn cluster_host(host: &str, namespace: &str) -> Option<ServiceKey> {
    let host = host.trim_end_matches('.');
    if host.contains('*') || host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    let suffix: Vec<&str> = CLUSTER_DOMAIN.split('.').collect();
    let key = match parts.as_slice() {
        [name] => ServiceKey::new(namespace, *name),
        [name, ns] => ServiceKey::new(*ns, *name),
        [name, ns, rest @ ..] if !rest.is_empty() && suffix.starts_with(rest) => {
            ServiceKey::new(*ns, *name)
        }
        _ => return None,
    };
    let ok = |s: &str| crate::kube::is_dns1123_label(s);
    (ok(&key.name) && ok(&key.namespace)).then_some(key)
}

/// Parses a duration as Istio (protobuf Duration in text: `7s`, `0.5s`, `1m`) and Gateway API
/// (GEP-2257: `1h30m`, `500ms`) write them: one or more `<decimal><unit>` with units h, m, s,
/// ms, us, ns.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("must be a duration like 7s, 500ms or 1h30m, got {text:?}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    // Bounded far above any real timeout, so the conversion cannot overflow.
    if !(0.0..=1e9).contains(&total) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Deserializes a resource with the path of a type error (`spec.http[0].route`).
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        FieldError {
            field: (path != ".").then_some(path),
            message: err.into_inner().to_string(),
        }
    })
}

/// The common object metadata of the traffic kinds.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub creation_timestamp: Option<String>,
}

impl Meta {
    /// The resource's reference, validating its name and namespace.
    pub(crate) fn reference(&self, kind: &str) -> Result<ResourceRef, FieldError> {
        let name = self
            .name
            .clone()
            .ok_or_else(|| FieldError::new("metadata.name", "is required"))?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| crate::kube::DEFAULT_NAMESPACE.to_string());
        if !crate::kube::is_dns1123_label(&namespace) {
            return Err(FieldError::new(
                "metadata.namespace",
                format!("must be a DNS-1123 label, got {namespace:?}"),
            ));
        }
        if name.is_empty() || name.len() > 253 {
            return Err(FieldError::new(
                "metadata.name",
                format!("must be 1-253 characters, got {name:?}"),
            ));
        }
        Ok(ResourceRef {
            kind: kind.to_string(),
            namespace,
            name,
        })
    }
}

/// A percentage field (Istio `Percent{value}`), checked to lie in [0, 100].
pub(crate) fn percent(
    field: &str,
    value: f64,
) -> Result<trellis_model::route::Percent, FieldError> {
    if (0.0..=100.0).contains(&value) {
        Ok(trellis_model::route::Percent(value))
    } else {
        Err(FieldError::new(
            field,
            format!("must be 0-100, got {value}"),
        ))
    }
}

/// A regex error on one line, without the anchoring the model adds to the source.
pub(crate) fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text.lines().last().unwrap_or_default().trim();
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    format!("invalid regex: {reason}")
}

pub(crate) fn duration(field: &str, text: &str) -> Result<Duration, FieldError> {
    parse_duration(text).map_err(|m| FieldError::new(field, m))
}

pub(crate) fn port(field: &str, n: i64) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, format!("must be 1-65535, got {n}")))
}

pub(crate) fn non_negative_u32(field: &str, n: i64) -> Result<u32, FieldError> {
    u32::try_from(n).map_err(|_| FieldError::new(field, format!("must be 0 or more, got {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7s").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "7", "s", "7x", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        let k = |ns: &str, n: &str| Some(ServiceKey::new(ns, n));
        assert_eq!(resolve_host("reviews", "default"), k("default", "reviews"));
        assert_eq!(
            resolve_host("reviews.prod", "default"),
            k("prod", "reviews")
        );
        assert_eq!(
            resolve_host("reviews.prod.svc.cluster.local", "default"),
            k("prod", "reviews")
        );
        assert_eq!(
            resolve_host("reviews.prod.svc", "default"),
            k("prod", "reviews")
        );
        assert_eq!(
            resolve_host("www.googleapis.com.", "default"),
            Some(ServiceKey::external("www.googleapis.com"))
        );
        assert_eq!(resolve_host("Bad_Host.example.com", "default"), None);
        assert_eq!(resolve_host("*", "default"), None);
        assert_eq!(resolve_host("*.example.com", "default"), None);
    }
}
