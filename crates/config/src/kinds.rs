//! Which kinds the mesh reads, and why the others are ignored.

/// API groups of the mesh configuration families DESIGN §3 commits to reading. Documents of
/// these groups are recognised but not translated yet, so the user hears "not supported yet"
/// rather than "not a mesh kind".
const PLANNED_GROUPS: &[&str] = &[
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
    "extensions.istio.io",
    "gateway.networking.k8s.io",
    "linkerd.io",
    "policy.linkerd.io",
    "split.smi-spec.io",
    "specs.smi-spec.io",
    "access.smi-spec.io",
    "trellis.io",
    "multicluster.x-k8s.io",
];

/// The reason a document of this `apiVersion`/`kind` is ignored, or `None` when it is read.
pub(crate) fn ignored_reason(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let read = match (group, kind) {
        ("", "Service" | "Secret" | "ConfigMap") => version == "v1",
        ("networking.istio.io", "Gateway") => matches!(version, "v1" | "v1beta1" | "v1alpha3"),
        ("gateway.networking.k8s.io", "Gateway" | "GatewayClass") => {
            matches!(version, "v1" | "v1beta1")
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            matches!(version, "v1beta1" | "v1alpha2")
        }
        ("networking.istio.io", "VirtualService" | "DestinationRule" | "ServiceEntry") => {
            matches!(version, "v1" | "v1beta1" | "v1alpha3")
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            matches!(version, "v1" | "v1beta1" | "v1alpha2")
        }
        ("gateway.networking.k8s.io", "GRPCRoute") => matches!(version, "v1" | "v1alpha2"),
        ("security.istio.io", "PeerAuthentication") => matches!(version, "v1" | "v1beta1"),
        ("security.istio.io", "AuthorizationPolicy") => matches!(version, "v1" | "v1beta1"),
        ("security.istio.io", "RequestAuthentication") => matches!(version, "v1" | "v1beta1"),
        ("telemetry.istio.io", "Telemetry") => matches!(version, "v1" | "v1alpha1"),
        ("extensions.istio.io", "WasmPlugin") => version == "v1alpha1",
        ("linkerd.io", "ServiceProfile") => version == "v1alpha2",
        ("trellis.io", "RateLimitPolicy") => version == "v1alpha1",
        ("multicluster.trellis.io", "Link") => version == "v1alpha1",
        ("multicluster.x-k8s.io", "ServiceExport") => version == "v1alpha1",
        ("split.smi-spec.io", "TrafficSplit") => {
            matches!(version, "v1alpha1" | "v1alpha2" | "v1alpha3" | "v1alpha4")
        }
        ("specs.smi-spec.io", "HTTPRouteGroup") => matches!(version, "v1alpha3" | "v1alpha4"),
        _ => false,
    };
    if read {
        return None;
    }
    if PLANNED_GROUPS
        .iter()
        .any(|g| group == *g || group.ends_with(&format!(".{g}")))
    {
        return Some(format!("{kind} ({api_version}) is not supported yet"));
    }
    if kind == "Service" {
        return Some(format!(
            "Service of apiVersion {api_version} is not a Kubernetes v1 Service"
        ));
    }
    Some(format!("{kind} ({api_version}) is not read by the mesh"))
}

#[cfg(test)]
mod tests {
    use super::ignored_reason;

    #[test]
    fn classifies_kinds() {
        assert_eq!(ignored_reason("v1", "Service"), None);
        assert!(
            ignored_reason("v1", "ServiceAccount")
                .unwrap()
                .contains("not read")
        );
        assert!(
            ignored_reason("apps/v1", "Deployment")
                .unwrap()
                .contains("not read")
        );
        assert_eq!(
            ignored_reason("networking.istio.io/v1beta1", "VirtualService"),
            None
        );
        assert_eq!(
            ignored_reason("gateway.networking.k8s.io/v1", "HTTPRoute"),
            None
        );
        assert_eq!(
            ignored_reason("linkerd.io/v1alpha2", "ServiceProfile"),
            None
        );
        assert_eq!(
            ignored_reason("split.smi-spec.io/v1alpha4", "TrafficSplit"),
            None
        );
        assert_eq!(
            ignored_reason("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup"),
            None
        );
        let tcp = ignored_reason("specs.smi-spec.io/v1alpha4", "TCPRoute").unwrap();
        assert!(tcp.contains("not supported yet"), "{tcp}");
        assert_eq!(ignored_reason("networking.istio.io/v1", "Gateway"), None);
        let old = ignored_reason("networking.istio.io/v1alpha1", "VirtualService").unwrap();
        assert!(old.contains("not supported yet"), "{old}");
        assert!(ignored_reason("serving.knative.dev/v1", "Service").is_some());
    }
}
