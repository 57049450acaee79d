//! Which workloads a policy covers, as the policy kinds spell it: `selector.matchLabels`,
//! `targetRef` / `targetRefs` to Services, or neither (the namespace, or the mesh from the root
//! namespace). Shared by AuthorizationPolicy, RequestAuthentication, PeerAuthentication,
//! Telemetry, WasmPlugin and Trellis's RateLimitPolicy, so each kind reads and checks these
//! fields the same way. Reading and the pure coverage rule only; what a policy does is its
//! kind's module.
//!
//! Two readings of `targetRefs`, kept apart on purpose:
//! - [`scope`] (AuthorizationPolicy, RateLimitPolicy): anything but a Service is refused,
//!   because a policy that silently covers nothing is a security hole (or a limit not applied).
//! - [`service_targets`] (RequestAuthentication, WasmPlugin): a Gateway target is accepted
//!   with a note and ignored, as Istio accepts it and gateway mode runs no request authentication
//!   or Wasm plugins yet.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::authz::Scope;
use trellis_model::{Service, ServiceKey};

use crate::kube::FieldError;

/// `selector`: only `matchLabels`, as Istio's `WorkloadSelector`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Selector {
    #[serde(default)]
    pub(crate) match_labels: BTreeMap<String, String>,
}

/// One `targetRef` / `targetRefs[]` entry (Istio's `PolicyTargetReference`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetRef {
    #[serde(default)]
    pub(crate) group: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
}

impl TargetRef {
    fn is_service(&self) -> bool {
        matches!(self.group.as_str(), "" | "core") && self.kind == "Service"
    }

    /// A target may only name the policy's own namespace (Istio has no cross-namespace
    /// policy attachment).
    fn check_namespace(&self, field: &str, namespace: &str, owner: &str) -> Result<(), FieldError> {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err(FieldError::new(
                format!("{field}.namespace"),
                format!("must be the {owner}'s own namespace"),
            ));
        }
        Ok(())
    }
}

/// The strict reading (AuthorizationPolicy, RateLimitPolicy): `targetRef` and `targetRefs`
/// exclusive, every target a Service of the policy's `namespace`, and `selector` exclusive
/// with targets.
pub(crate) fn scope(
    namespace: &str,
    selector: Option<Selector>,
    target_ref: Option<&TargetRef>,
    target_refs: &[TargetRef],
) -> Result<Scope, FieldError> {
    let refs: Vec<(String, &TargetRef)> = match target_ref {
        Some(r) if target_refs.is_empty() => vec![("spec.targetRef".into(), r)],
        Some(_) => {
            return Err(FieldError::new(
                "spec.targetRef",
                "cannot be set together with spec.targetRefs",
            ));
        }
        None => target_refs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r))
            .collect(),
    };
    let mut services = Vec::with_capacity(refs.len());
    for (field, r) in refs {
        if !r.is_service() {
            return Err(FieldError::new(
                format!("{field}.kind"),
                format!(
                    "only Services (group \"\", kind Service) are supported, got {}/{}",
                    r.group, r.kind
                ),
            ));
        }
        r.check_namespace(&field, namespace, "policy")?;
        services.push(r.name.clone());
    }
    if selector.is_some() && !services.is_empty() {
        return Err(FieldError::new(
            "spec.selector",
            "cannot be set together with spec.targetRefs",
        ));
    }
    Ok(Scope {
        namespace: namespace.to_string(),
        selector: selector.map(|s| s.match_labels),
        services,
    })
}

/// The lenient reading (RequestAuthentication, WasmPlugin): `targetRef` and `targetRefs`
/// together, Services of the `namespace` kept, Gateway targets noted in `notes` and ignored,
/// anything else refused. `owner` names the resource in errors ("policy", "plugin").
pub(crate) fn service_targets(
    namespace: &str,
    owner: &str,
    selector: bool,
    target_ref: Option<TargetRef>,
    target_refs: Vec<TargetRef>,
    notes: &mut Vec<String>,
) -> Result<Vec<ServiceKey>, FieldError> {
    let refs: Vec<(String, TargetRef)> = target_ref
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(
            target_refs
                .into_iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        )
        .collect();
    if selector && !refs.is_empty() {
        return Err(FieldError::new(
            "spec.selector",
            "must not be set together with targetRefs",
        ));
    }
    let mut services = Vec::new();
    for (field, r) in refs {
        r.check_namespace(&field, namespace, owner)?;
        if r.is_service() {
            services.push(ServiceKey::new(namespace.to_string(), r.name));
        } else if r.kind == "Gateway" {
            // Valid in Istio, but gateway mode does not run these policies yet.
            notes.push(format!(
                "{field} ignored: Gateway targets are not supported yet"
            ));
        } else {
            return Err(FieldError::new(
                format!("{field}.kind"),
                format!(
                    "must be a Service (or Gateway), got {:?} in group {:?}",
                    r.kind, r.group
                ),
            ));
        }
    }
    Ok(services)
}

/// Whether a policy of `policy_namespace` with this `selector` and these Service `targets`
/// ([`service_targets`]) covers a workload in `namespace` with `labels`: the targets' workloads
/// of its namespace; else the selected workloads of its namespace, or of every namespace from
/// `root_namespace` (as Istio, and as AuthorizationPolicy's `Scope::covers`; an empty selector
/// selects all, as in Kubernetes); else its namespace, or the mesh from `root_namespace`.
pub(crate) fn covers<'a>(
    policy_namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
    mut targets: impl ExactSizeIterator<Item = &'a ServiceKey>,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    services: &BTreeMap<ServiceKey, Service>,
) -> bool {
    if targets.len() > 0 {
        return policy_namespace == namespace
            && targets.any(|t| services.get(t).is_some_and(|s| s.selects(labels)));
    }
    match selector {
        Some(sel) => {
            (policy_namespace == namespace || policy_namespace == root_namespace)
                && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        None => policy_namespace == namespace || policy_namespace == root_namespace,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use trellis_model::ServiceKey;

    use crate::{Outcome, Resource, parse_documents};

    fn outcome(api_kind: &str, spec: &str) -> Outcome {
        let yaml = format!("{api_kind}\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}");
        parse_documents("p.yaml", yaml.as_bytes()).remove(0).outcome
    }

    const RATE: &str = "apiVersion: trellis.io/v1alpha1\nkind: RateLimitPolicy";
    const LIMIT: &str = "  limits: [{requestsPerUnit: 5, unit: second}]\n";
    const WASM: &str = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin";
    const URL: &str = "  url: file:///a.wasm\n";

    fn invalid_field(out: Outcome) -> String {
        let Outcome::Invalid(err) = out else {
            panic!("should be invalid: {out:?}")
        };
        err.field.unwrap_or_default()
    }

    #[test]
    fn strict_reading_keeps_services_of_the_own_namespace_only() {
        let out = outcome(
            RATE,
            &format!("  targetRefs: [{{kind: Service, name: web, namespace: shop}}]\n{LIMIT}"),
        );
        let Outcome::Resource(Resource::RateLimitPolicy(p)) = out else {
            panic!("{out:?}")
        };
        assert_eq!(p.scope.services, ["web"]);
        for (refs, field) in [
            (
                "[{kind: Service, name: web, namespace: other}]",
                "spec.targetRefs[0].namespace",
            ),
            (
                "[{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]",
                "spec.targetRefs[0].kind",
            ),
        ] {
            let out = outcome(RATE, &format!("  targetRefs: {refs}\n{LIMIT}"));
            assert_eq!(invalid_field(out), field, "{refs}");
        }
    }

    #[test]
    fn lenient_reading_notes_gateways_and_merges_both_spellings() {
        let out = outcome(
            WASM,
            &format!(
                "{URL}  targetRef: {{kind: Service, name: a}}\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: gw}}, {{kind: Service, name: b}}]\n"
            ),
        );
        let Outcome::Resource(Resource::WasmPlugin(p)) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            p.target_refs,
            [ServiceKey::new("shop", "a"), ServiceKey::new("shop", "b")]
        );
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("spec.targetRefs[0] ignored")),
            "{:?}",
            p.notes
        );
        let out = outcome(
            WASM,
            &format!(
                "{URL}  selector: {{matchLabels: {{app: a}}}}\n  targetRef: {{kind: Service, name: a}}\n"
            ),
        );
        assert_eq!(invalid_field(out), "spec.selector");
        let out = outcome(
            WASM,
            &format!("{URL}  targetRefs: [{{kind: Deployment, group: apps, name: a}}]\n"),
        );
        assert_eq!(invalid_field(out), "spec.targetRefs[0].kind");
    }

    #[test]
    fn a_root_namespace_selector_covers_matching_workloads_everywhere() {
        use std::collections::BTreeMap;
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let sel: BTreeMap<String, String> = labels.clone();
        let other: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        let services = BTreeMap::new();
        let none = std::iter::empty::<&ServiceKey>;
        let covers = |policy_ns: &str, sel: Option<&BTreeMap<String, String>>, ns: &str, l| {
            super::covers(policy_ns, sel, none(), "istio-system", ns, l, &services)
        };
        // A selector in the root namespace reaches matching workloads of any namespace.
        assert!(covers("istio-system", Some(&sel), "shop", &labels));
        assert!(!covers("istio-system", Some(&sel), "shop", &other));
        // Elsewhere a selector stays in its own namespace.
        assert!(covers("shop", Some(&sel), "shop", &labels));
        assert!(!covers("bank", Some(&sel), "shop", &labels));
        // No selector: the namespace, or the mesh from the root namespace.
        assert!(covers("istio-system", None, "shop", &other));
        assert!(!covers("bank", None, "shop", &other));
    }
}
