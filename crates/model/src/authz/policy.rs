//! Authorization policies as plain data: what the control plane compiles for one workload and
//! sends to its proxy (as JSON), and what [`super::evaluate`] reads. Field names follow Istio's
//! `AuthorizationPolicy` so the JSON reads like the YAML it came from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Cidr;
use crate::ServiceKey;

/// What a policy does when one of its rules matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    /// Counted and logged, never blocks.
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        }
    }
}

/// One AuthorizationPolicy, reduced to what evaluation needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// `namespace/name`, the label of metrics and logs.
    pub name: String,
    pub action: Action,
    /// Empty: the policy matches nothing (Istio's `spec: {}` is "allow nothing" as ALLOW).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// `trellis.io/dry-run` / `istio.io/dry-run`: evaluated and reported, never enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// A rule matches when any `from` matches (or there is none), any `to` matches (or there is
/// none) and every `when` holds. `rules: [{}]` therefore matches every request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `rules[].from[].source`: every field set must match; inside a field, any value (or, for the
/// `not_*` forms, none).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<Cidr>,
}

/// `rules[].to[].operation`, with the same AND / OR / NOT shape as [`Source`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// The attribute a `when` condition reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// `request.headers[name]` (name lowercased).
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    Audiences,
    Presenter,
    /// `request.auth.claims[a][b]`: the path into nested claims.
    Claim(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
}

impl Key {
    /// Keys that only HTTP requests have (request headers and the JWT attributes).
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            Self::RequestHeader(_)
                | Self::RequestPrincipal
                | Self::Audiences
                | Self::Presenter
                | Self::Claim(_)
        )
    }

    /// Keys whose values are IP blocks.
    pub fn is_ip(&self) -> bool {
        matches!(self, Self::SourceIp | Self::RemoteIp | Self::DestinationIp)
    }
}

/// The values a condition compares with: IP blocks for the IP keys, patterns otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Values {
    Patterns(Vec<String>),
    Cidrs(Vec<Cidr>),
}

impl Values {
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Patterns(v) => v.is_empty(),
            Self::Cidrs(v) => v.is_empty(),
        }
    }
}

/// `rules[].when[]`: holds when the attribute matches one of `values` (if any) and none of
/// `not_values` (if any).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub key: Key,
    pub values: Values,
    pub not_values: Values,
}

/// Which workloads a policy covers, as Istio scopes it. Used by the control plane when it
/// compiles a proxy's policies; the proxy never sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// The policy's own namespace.
    pub namespace: String,
    /// `selector.matchLabels`; `None` without a selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// `targetRefs` to Services (names in the policy's namespace).
    pub services: Vec<String>,
}

impl Scope {
    /// Whether the policy covers a workload in `namespace` with `labels`, backing
    /// `services`. A policy in the mesh `root_namespace` without selector covers the mesh; with
    /// a selector, matching workloads of every namespace. Elsewhere it covers its namespace (or
    /// the selected / targeted workloads of it).
    pub fn covers(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        services: &[ServiceKey],
    ) -> bool {
        let in_scope = self.namespace == namespace || self.namespace == root_namespace;
        if !in_scope {
            return false;
        }
        if !self.services.is_empty() {
            return services
                .iter()
                .any(|s| s.namespace == self.namespace && self.services.contains(&s.name));
        }
        match &self.selector {
            None => true,
            Some(sel) => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

/// The mesh-wide default when no ALLOW policy covers a workload, as Linkerd's
/// `config.linkerd.io/default-inbound-policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Everything is allowed (Istio's behaviour without policies).
    #[default]
    AllUnauthenticated,
    /// Only mesh mTLS peers (any identity).
    AllAuthenticated,
    /// Only mesh mTLS peers whose address is in the cluster networks.
    ClusterAuthenticated,
    /// Nothing.
    Deny,
    /// Everything is allowed; what `all-authenticated` would refuse is counted as audit.
    Audit,
}

impl DefaultPolicy {
    pub const NAMES: &[&str] = &[
        "all-unauthenticated",
        "all-authenticated",
        "cluster-authenticated",
        "deny",
        "audit",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all-unauthenticated" => Self::AllUnauthenticated,
            "all-authenticated" => Self::AllAuthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated,
            "deny" => Self::Deny,
            "audit" => Self::Audit,
            _ => return None,
        })
    }
}

/// Everything one proxy enforces inbound: the default and the policies covering its workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadAuthz {
    #[serde(default)]
    pub default: DefaultPolicy,
    /// Networks `cluster-authenticated` accepts; empty means the private and loopback ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_networks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}
