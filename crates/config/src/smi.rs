//! SMI `TrafficSplit` (split.smi-spec.io v1alpha1-v1alpha4) -> one catch-all HTTP route and
//! one TCP route on the root service, splitting across the backend services by weight.
//!
//! Weights are integers or Kubernetes quantities (`900m`, `1`, `0.5`); they are kept in
//! thousandths so `900m` and `100m` split 90/10 exactly. `matches` (v1alpha3/v1alpha4, which
//! point at HTTPRouteGroups) is refused "not supported yet".

use serde::Deserialize;
use trellis_model::ServiceKey;
use trellis_model::route::{
    BackendRef, HeaderModifier, HttpRoute, RouteAction, TcpRoute, WeightedBackend,
};

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, Parent, PolicyLayer, RouteApi, RouteSet, from_value};

#[derive(Debug, Deserialize)]
struct TrafficSplit {
    metadata: Meta,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    service: String,
    #[serde(default)]
    backends: Vec<Backend>,
    #[serde(default)]
    matches: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    service: String,
    weight: serde_yaml::Value,
}

/// A weight in thousandths: `900m` -> 900, `1` -> 1000, `0.5` -> 500.
fn milli_weight(field: &str, v: &serde_yaml::Value) -> Result<u32, FieldError> {
    let bad = |got: String| {
        FieldError::new(
            field,
            format!("must be a non-negative integer or quantity like 900m, got {got}"),
        )
    };
    let value: f64 = match v {
        serde_yaml::Value::Number(n) => n.as_f64().ok_or_else(|| bad(n.to_string()))?,
        serde_yaml::Value::String(s) => {
            let (num, scale) = match s.strip_suffix('m') {
                Some(n) => (n, 1e-3),
                None => (s.as_str(), 1.0),
            };
            num.parse::<f64>().map_err(|_| bad(format!("{s:?}")))? * scale
        }
        other => return Err(bad(format!("{other:?}"))),
    };
    if !(0.0..=1_000_000.0).contains(&value) {
        return Err(bad(value.to_string()));
    }
    Ok((value * 1000.0).round() as u32)
}

fn name_ok(field: &str, s: &str) -> Result<(), FieldError> {
    if crate::kube::is_dns1123_label(s) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be a Service name in the TrafficSplit's namespace, got {s:?}"),
        ))
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let ts: TrafficSplit = from_value(value)?;
    let source = ts.metadata.reference("TrafficSplit")?;
    let spec = ts.spec;
    if !spec.matches.is_empty() {
        return Err(FieldError::new(
            "spec.matches",
            "is not supported yet (HTTPRouteGroup matches)",
        ));
    }
    name_ok("spec.service", &spec.service)?;
    if spec.backends.is_empty() {
        return Err(FieldError::new(
            "spec.backends",
            "must name at least one backend",
        ));
    }
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let f = format!("spec.backends[{i}]");
        name_ok(&format!("{f}.service"), &b.service)?;
        backends.push(WeightedBackend {
            backend: BackendRef {
                service: ServiceKey::new(source.namespace.clone(), b.service.clone()),
                port: None,
                subset: None,
            },
            weight: milli_weight(&format!("{f}.weight"), &b.weight)?,
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
        });
    }
    let root = ServiceKey::new(source.namespace.clone(), spec.service.clone());
    let name = source.name.clone();
    Ok(Translated::Resource(Resource::Routes(Box::new(RouteSet {
        api: RouteApi::TrafficSplit,
        created: ts.metadata.creation_timestamp,
        parents: vec![Parent {
            service: root,
            port: None,
        }],
        http: vec![HttpRoute {
            name: name.clone(),
            source: source.clone(),
            matches: Vec::new(),
            action: RouteAction::Forward(backends.clone()),
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
            rewrite: None,
            mirrors: Vec::new(),
            fault: None,
            timeout: None,
            retry: None,
        }],
        tcp: vec![TcpRoute {
            name,
            source: source.clone(),
            port: None,
            backends,
        }],
        source,
        policy: PolicyLayer::default(),
        notes: Vec::new(),
    }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights() {
        let q = |s: &str| serde_yaml::from_str::<serde_yaml::Value>(s).unwrap();
        assert_eq!(milli_weight("w", &q("900m")).unwrap(), 900);
        assert_eq!(milli_weight("w", &q("1")).unwrap(), 1000);
        assert_eq!(milli_weight("w", &q("\"0.5\"")).unwrap(), 500);
        assert_eq!(milli_weight("w", &q("90")).unwrap(), 90_000);
        assert!(milli_weight("w", &q("-1")).is_err());
        assert!(milli_weight("w", &q("abc")).is_err());
    }
}
