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
