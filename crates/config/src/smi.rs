//! SMI `TrafficSplit` (split.smi-spec.io v1alpha1-v1alpha4) -> one catch-all HTTP route and
//! one TCP route on the root service, splitting across the backend services by weight.
//!
//! Weights are integers or Kubernetes quantities (`900m`, `1`, `0.5`); they are kept in
//! thousandths so `900m` and `100m` split 90/10 exactly.
//!
//! A split with `matches` (v1alpha3/v1alpha4) applies only to the requests that match the
//! HTTPRouteGroup matches it names; the others go to the root service as usual (or to a split
//! of it without matches). The group may live in another file, so such a split translates to
//! [`MatchedSplit`], resolved against the config set's groups by [`resolve`].

mod resolve;
mod route_group;

pub use resolve::{MatchRef, MatchedSplit, resolve};
pub use route_group::{HttpRouteGroup, NamedMatch};

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
    matches: Vec<RawMatchRef>,
}

/// `spec.matches[]`: `{kind: HTTPRouteGroup, name, matches: [matchName]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatchRef {
    kind: String,
    name: String,
    #[serde(default, rename = "apiGroup")]
    _api_group: Option<String>,
    #[serde(default)]
    matches: Vec<String>,
}

/// The SMI resources whose meaning depends on other resources of the config set: an
/// HTTPRouteGroup, and a TrafficSplit with `matches` that names groups.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pending {
    RouteGroup(HttpRouteGroup),
    Split(Box<MatchedSplit>),
}

impl Pending {
    /// Fields accepted but not acted on.
    pub fn notes(&self) -> &[String] {
        match self {
            Self::RouteGroup(_) => &[],
            Self::Split(s) => &s.routes.notes,
        }
    }
}

pub(crate) fn translate_route_group(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let group = route_group::translate(value)?;
    Ok(Translated::Resource(Resource::Smi(Box::new(
        Pending::RouteGroup(group),
    ))))
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
    let mut refs = Vec::new();
    for (i, m) in spec.matches.iter().enumerate() {
        let field = format!("spec.matches[{i}]");
        if m.kind != "HTTPRouteGroup" {
            return Err(FieldError::new(
                format!("{field}.kind"),
                format!("must be HTTPRouteGroup, got {:?}", m.kind),
            ));
        }
        if m.name.is_empty() {
            return Err(FieldError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        refs.push(MatchRef {
            field,
            group: m.name.clone(),
            names: m.matches.clone(),
        });
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
    // With matches only the matching HTTP requests are split: no TCP route.
    let tcp = if refs.is_empty() {
        vec![TcpRoute {
            name: name.clone(),
            source: source.clone(),
            port: None,
            sni_hosts: Vec::new(),
            backends: backends.clone(),
        }]
    } else {
        Vec::new()
    };
    let set = RouteSet {
        api: RouteApi::TrafficSplit,
        created: ts.metadata.creation_timestamp,
        parents: vec![Parent {
            service: root,
            port: None,
        }],
        http: vec![HttpRoute {
            name,
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
        tcp,
        source,
        policy: PolicyLayer::default(),
        notes: Vec::new(),
    };
    if refs.is_empty() {
        return Ok(Translated::Resource(Resource::Routes(Box::new(set))));
    }
    Ok(Translated::Resource(Resource::Smi(Box::new(
        Pending::Split(Box::new(MatchedSplit { routes: set, refs })),
    ))))
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
