//! Istio `PeerAuthentication` (security.istio.io v1, v1beta1) -> [`PeerAuthn`], and the pure
//! rule that picks the one in force for a workload ([`inbound_mtls`]).
//!
//! Scope, as Istio: a policy in the mesh root namespace without a selector is mesh-wide; one in
//! another namespace without a selector covers that namespace; one with
//! `selector.matchLabels` covers the matching workloads of its namespace. The most specific
//! wins (workload > namespace > mesh); among equals, the oldest (then the first by
//! namespace/name). `mtls.mode: UNSET` (or no `mtls`) inherits from the wider scope;
//! `portLevelMtls` (workload scope only, as Istio) overrides per application port. With no
//! policy the mode is PERMISSIVE.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::route::ResourceRef;

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::from_value;

use super::authorization_policy::{Metadata, dry_run};
use super::policy_target::Selector;

/// PeerAuthentication's modes (UNSET is `None` where a mode is optional).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    Permissive,
    Strict,
    Disable,
}

/// One PeerAuthentication, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerAuthn {
    pub source: ResourceRef,
    pub created: Option<String>,
    /// `None`: no selector (namespace or mesh scope).
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: UNSET (inherit).
    pub mode: Option<MtlsMode>,
    pub port_modes: Vec<(u16, MtlsMode)>,
    /// `trellis.io/dry-run: "true"` (or `istio.io/dry-run`): left out of the enforced policy;
    /// what it would change is reported by the proxy ([`inbound_mtls_dry_run`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PeerAuthentication {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    mtls: Option<Mtls>,
    #[serde(default)]
    port_level_mtls: BTreeMap<String, Mtls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mtls {
    mode: Option<String>,
}

fn mode(field: &str, m: Option<&Mtls>) -> Result<Option<MtlsMode>, FieldError> {
    match m.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => Ok(None),
        Some("PERMISSIVE") => Ok(Some(MtlsMode::Permissive)),
        Some("STRICT") => Ok(Some(MtlsMode::Strict)),
        Some("DISABLE") => Ok(Some(MtlsMode::Disable)),
        Some(other) => Err(FieldError::new(
            format!("{field}.mode"),
            format!("must be UNSET, PERMISSIVE, STRICT or DISABLE, got {other:?}"),
        )),
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let pa: PeerAuthentication = from_value(value)?;
    let source = pa.metadata.meta.reference("PeerAuthentication")?;
    let dry_run = dry_run(&pa.metadata.annotations)?;
    let spec = pa.spec;
    let selector = spec.selector.map(|s| s.match_labels);
    let mut notes = Vec::new();
    let mut port_modes = Vec::new();
    for (port, m) in &spec.port_level_mtls {
        let field = format!("spec.portLevelMtls[{port}]");
        let n: u16 =
            port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                FieldError::new(&field, format!("{port:?} is not a port (1-65535)"))
            })?;
        // UNSET at port level means "as the policy"; nothing to record.
        if let Some(m) = mode(&field, Some(m))? {
            port_modes.push((n, m));
        }
    }
    if !port_modes.is_empty() && selector.is_none() {
        // Istio applies portLevelMtls only with a workload selector.
        notes.push("spec.portLevelMtls ignored: it needs spec.selector (as in Istio)".to_string());
        port_modes.clear();
    }
    Ok(Translated::Resource(Resource::PeerAuthentication(
        Box::new(PeerAuthn {
            source,
            created: pa.metadata.meta.creation_timestamp,
            selector,
            mode: mode("spec.mtls", spec.mtls.as_ref())?,
            port_modes,
            dry_run,
            notes,
        }),
    )))
}

/// The inbound mTLS policy of one workload: a mode and port overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboundMtls {
    /// PERMISSIVE when nothing says otherwise.
    pub mode: Option<MtlsMode>,
    pub ports: BTreeMap<u16, MtlsMode>,
}

fn oldest<'a>(candidates: impl Iterator<Item = &'a PeerAuthn>) -> Option<&'a PeerAuthn> {
    candidates.min_by(|a, b| {
        (
            a.created.as_deref().unwrap_or("~"),
            &a.source.namespace,
            &a.source.name,
        )
            .cmp(&(
                b.created.as_deref().unwrap_or("~"),
                &b.source.namespace,
                &b.source.name,
            ))
    })
}

/// The enforced policy of a workload: [`resolve`] over the policies that are not dry-run.
pub fn inbound_mtls(
    policies: &[&PeerAuthn],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> InboundMtls {
    let enforced: Vec<&PeerAuthn> = policies.iter().copied().filter(|p| !p.dry_run).collect();
    resolve(&enforced, root_namespace, namespace, labels)
}

/// The policy that would apply if the dry-run policies were enforced too; `None` when no
/// dry-run policy applies or it would change nothing.
pub fn inbound_mtls_dry_run(
    policies: &[&PeerAuthn],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<InboundMtls> {
    if !policies.iter().any(|p| p.dry_run) {
        return None;
    }
    let would = resolve(policies, root_namespace, namespace, labels);
    (would != inbound_mtls(policies, root_namespace, namespace, labels)).then_some(would)
}

/// The pure rule: which PeerAuthentication applies to a workload in `namespace` with
/// `labels`, given the mesh `root_namespace`. See the module docs.
fn resolve(
    policies: &[&PeerAuthn],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> InboundMtls {
    let all = || policies.iter().copied();
    let mesh =
        oldest(all().filter(|p| p.source.namespace == root_namespace && p.selector.is_none()));
    let ns = oldest(
        all()
            .filter(|p| p.source.namespace == namespace && p.selector.is_none())
            .filter(|_| namespace != root_namespace),
    );
    let workload = oldest(
        all()
            .filter(|p| p.source.namespace == namespace)
            .filter(|p| {
                p.selector.as_ref().is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
            }),
    );
    let mode = [workload, ns, mesh]
        .into_iter()
        .flatten()
        .find_map(|p| p.mode);
    InboundMtls {
        mode,
        ports: workload
            .map(|p| p.port_modes.iter().copied().collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
