//! The Kubernetes kinds the control plane reads as config, one list shared by the watchers,
//! `trellis install` (which CRDs to render) and RBAC (what to grant).

/// One kind read from the API server as a dynamic object and handed to `trellis_config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigKind {
    pub group: &'static str,
    /// The version the control plane watches (CRDs installed by `trellis install` serve it).
    pub version: &'static str,
    /// Every version the installed CRD serves, the watched one first (stored).
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    /// Short names for `kubectl get`.
    pub short_names: &'static [&'static str],
    /// Not a CRD (core kinds): never rendered by `trellis install`.
    pub builtin: bool,
}

impl ConfigKind {
    /// The key of this kind's object `namespace/name` (see [`key_kind`]).
    pub fn key(&self, namespace: &str, name: &str) -> String {
        super::objects::object_key(self.group, self.kind, namespace, name)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn crd(
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
) -> ConfigKind {
    ConfigKind {
        group,
        version: versions[0],
        versions,
        kind,
        plural,
        short_names,
        builtin: false,
    }
}

/// Everything `trellis_config` translates. Foreign CRDs are installed with structural schemas
/// that preserve unknown fields: validation is the mesh's (the validating webhook and status),
/// so that the messages are the same everywhere.
pub const CONFIG_KINDS: &[ConfigKind] = &[
    ConfigKind {
        group: "",
        version: "v1",
        versions: &["v1"],
        kind: "Service",
        plural: "services",
        short_names: &[],
        builtin: true,
    },
    crd(
        "networking.istio.io",
        &["v1beta1", "v1", "v1alpha3"],
        "VirtualService",
        "virtualservices",
        &["vs"],
    ),
    crd(
        "networking.istio.io",
        &["v1beta1", "v1", "v1alpha3"],
        "DestinationRule",
        "destinationrules",
        &["dr"],
    ),
    // External services (compile/service_entry; DNS resolution by service_entry_dns).
    crd(
        "networking.istio.io",
        &["v1beta1", "v1", "v1alpha3"],
        "ServiceEntry",
        "serviceentries",
        &["se"],
    ),
    // Istio ingress/egress gateways (served by `trellis-proxy --mode gateway` whose labels its
    // `selector` matches; compile::gateway). Same kind name as the Gateway API's Gateway below:
    // their keys carry the group (`object_key`).
    crd(
        "networking.istio.io",
        &["v1beta1", "v1", "v1alpha3"],
        "Gateway",
        "gateways",
        &["gw"],
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "HTTPRoute",
        "httproutes",
        &[],
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1", "v1alpha2"],
        "GRPCRoute",
        "grpcroutes",
        &[],
    ),
    // Gateway API gateways (served by `trellis-proxy --mode gateway`; status per the spec:
    // compile::gateway::status) and the grants their certificate references need.
    // GatewayClass is cluster-scoped and not watched: the built-in classes need none.
    crd(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "Gateway",
        "gateways",
        &["gtw"],
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1beta1", "v1alpha2"],
        "ReferenceGrant",
        "referencegrants",
        &["refgrant"],
    ),
    crd(
        "linkerd.io",
        &["v1alpha2"],
        "ServiceProfile",
        "serviceprofiles",
        &["sp"],
    ),
    // Istio security: mTLS mode (compile/mtls), and the authorization and request
    // authentication policies proxies enforce.
    crd(
        "security.istio.io",
        &["v1beta1", "v1"],
        "PeerAuthentication",
        "peerauthentications",
        &["pa"],
    ),
    crd(
        "security.istio.io",
        &["v1beta1", "v1"],
        "AuthorizationPolicy",
        "authorizationpolicies",
        &["ap"],
    ),
    crd(
        "security.istio.io",
        &["v1beta1", "v1"],
        "RequestAuthentication",
        "requestauthentications",
        &["ra"],
    ),
    // Istio observability: tracing, access logging and metric overrides (compile/telemetry).
    crd(
        "telemetry.istio.io",
        &["v1", "v1alpha1"],
        "Telemetry",
        "telemetries",
        &["telemetry"],
    ),
    // Proxy-Wasm plugins (compile/wasm) and the mesh's local rate limits (compile/ratelimit).
    crd(
        "extensions.istio.io",
        &["v1alpha1"],
        "WasmPlugin",
        "wasmplugins",
        &[],
    ),
    crd(
        "trellis.io",
        &["v1alpha1"],
        "RateLimitPolicy",
        "ratelimitpolicies",
        &[],
    ),
    // SMI: the route groups a TrafficSplit's `matches` name must be watched with it.
    crd(
        "specs.smi-spec.io",
        &["v1alpha4", "v1alpha3"],
        "HTTPRouteGroup",
        "httproutegroups",
        &["htr"],
    ),
    crd(
        "split.smi-spec.io",
        &["v1alpha2", "v1alpha1", "v1alpha3", "v1alpha4"],
        "TrafficSplit",
        "trafficsplits",
        &["ts"],
    ),
];

/// Secrets holding a certificate that Gateways name (Istio `credentialName`, Gateway API
/// `certificateRefs`). Not in [`CONFIG_KINDS`]: Secrets are watched only in the namespaces
/// `KubeOptions::gateway_secret_namespaces` names, where `trellis install` grants a Role for
/// them, never cluster-wide.
pub const SECRET: ConfigKind = ConfigKind {
    group: "",
    version: "v1",
    versions: &["v1"],
    kind: "Secret",
    plural: "secrets",
    short_names: &[],
    builtin: true,
};

/// Istio's MeshConfig, the ConfigMap `istio` (key `mesh`: tracing providers). Not in
/// [`CONFIG_KINDS`]: read in the mesh root namespace only, the one ConfigMap by name, where
/// `trellis install` grants a Role for it (`manifests`); no other ConfigMap is ever read.
pub const CONFIG_MAP: ConfigKind = ConfigKind {
    group: "",
    version: "v1",
    versions: &["v1"],
    kind: "ConfigMap",
    plural: "configmaps",
    short_names: &[],
    builtin: true,
};

/// The one ConfigMap watched: RBAC names it (`resourceNames`), and the API server authorizes
/// a list or watch by name only when it carries this selector.
pub const CONFIG_MAP_FIELD_SELECTOR: &str = "metadata.name=istio";

/// Service-account tokens are Secrets too, and the mesh never needs them.
pub const SECRET_FIELD_SELECTOR: &str = "type!=kubernetes.io/service-account-token";

/// The Gateway API's group: its Gateways and routes get the spec's status fields too.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// The config kind `kind` of API group `group` (`""`: core), when the control plane reads it.
pub fn find(group: &str, kind: &str) -> Option<&'static ConfigKind> {
    CONFIG_KINDS
        .iter()
        .find(|k| k.group == group && k.kind == kind)
}

/// How objects of `kind` in `group` are named in keys and messages: the kind alone when no
/// other config kind has its name (`VirtualService`), else qualified with the group as kubectl
/// accepts it (`Gateway.networking.istio.io`, `Gateway.gateway.networking.k8s.io`), so that
/// Istio's and the Gateway API's `Gateway` of one namespace/name are two objects.
pub fn key_kind(group: &str, kind: &str) -> String {
    let shared = CONFIG_KINDS
        .iter()
        .any(|k| k.kind == kind && k.group != group);
    if shared && !group.is_empty() {
        format!("{kind}.{group}")
    } else {
        kind.to_string()
    }
}

/// The mesh config kinds that get status conditions and validation (all but Services).
pub fn mesh_kinds() -> impl Iterator<Item = &'static ConfigKind> {
    CONFIG_KINDS.iter().filter(|k| !k.builtin)
}

/// Where the control plane runs and how the API server reaches it, shared by the control
/// plane and `trellis install`.
pub mod names {
    pub const NAMESPACE: &str = "trellis-system";
    pub const CONTROL: &str = "trellis-control";
    pub const INJECTOR_WEBHOOK: &str = "trellis-sidecar-injector";
    pub const VALIDATING_WEBHOOK: &str = "trellis-config-validator";
    pub const INJECT_PATH: &str = "/inject";
    pub const VALIDATE_PATH: &str = "/validate";
    pub const WEBHOOK_PORT: u16 = 15017;
    pub const DISCOVERY_PORT: u16 = 15010;
    pub const HTTP_PORT: u16 = 15014;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_qualified_only_where_two_groups_share_them() {
        assert_eq!(
            key_kind("networking.istio.io", "VirtualService"),
            "VirtualService"
        );
        assert_eq!(key_kind("", "Service"), "Service");
        assert_eq!(
            key_kind("networking.istio.io", "Gateway"),
            "Gateway.networking.istio.io"
        );
        assert_eq!(
            key_kind(GATEWAY_API_GROUP, "Gateway"),
            "Gateway.gateway.networking.k8s.io"
        );
        // Every watched kind has one key name of its own.
        let mut names: Vec<String> = CONFIG_KINDS
            .iter()
            .map(|k| key_kind(k.group, k.kind))
            .collect();
        names.sort();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "{names:?}");
        assert!(find("networking.istio.io", "Gateway").is_some());
        assert!(find("networking.istio.io", "HTTPRoute").is_none());
    }
}
