//! Gateway API `ReferenceGrant` (v1beta1, v1alpha2): which resources of other namespaces may
//! refer to resources of this one. The gateway compile checks it for a listener's
//! `certificateRefs` to a Secret in another namespace and for routes' backends elsewhere.

use serde::Deserialize;

use crate::document::{Resource, Translated};
use crate::gateways::{GatewayResource, ReferenceGrant};
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value};

#[derive(Debug, Deserialize)]
struct Grant {
    metadata: Meta,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    from: Vec<From>,
    to: Vec<To>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct From {
    group: String,
    kind: String,
    namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    group: String,
    kind: String,
    name: Option<String>,
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let grant: Grant = from_value(value)?;
    let source = grant.metadata.reference("ReferenceGrant")?;
    if grant.spec.from.is_empty() {
        return Err(FieldError::new("spec.from", "must have at least one entry"));
    }
    if grant.spec.to.is_empty() {
        return Err(FieldError::new("spec.to", "must have at least one entry"));
    }
    for (i, f) in grant.spec.from.iter().enumerate() {
        if !crate::kube::is_dns1123_label(&f.namespace) {
            return Err(FieldError::new(
                format!("spec.from[{i}].namespace"),
                format!("must be a DNS-1123 label, got {:?}", f.namespace),
            ));
        }
    }
    Ok(Translated::Resource(Resource::Gateway(Box::new(
        GatewayResource::ReferenceGrant(ReferenceGrant {
            source,
            from: grant
                .spec
                .from
                .into_iter()
                .map(|f| (f.group, f.kind, f.namespace))
                .collect(),
            to: grant
                .spec
                .to
                .into_iter()
                .map(|t| (t.group, t.kind, t.name))
                .collect(),
        }),
    ))))
}
