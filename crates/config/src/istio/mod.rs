//! Istio `networking.istio.io` kinds (v1, v1beta1, v1alpha3 spellings are one schema):
//! VirtualService and DestinationRule.

pub mod authorization_policy;
pub mod destination_rule;
mod fault;
pub mod gateway;
pub mod mesh_config;
pub mod peer_authentication;
pub(crate) mod policy_target;
pub mod request_authentication;
mod retries;
pub mod service_entry;
pub mod telemetry;
pub mod virtual_service;
pub mod wasm_plugin;

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::matching::{Regex, StringMatch};
use trellis_model::route::HeaderModifier;

use crate::kube::FieldError;

/// Istio `StringMatch`: exactly one of exact, prefix, regex. `{}` (none) is "present".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioStringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

impl IstioStringMatch {
    /// `None` for `{}`, which Istio reads as "present, any value".
    pub(crate) fn to_model(&self, field: &str) -> Result<Option<StringMatch>, FieldError> {
        match (&self.exact, &self.prefix, &self.regex) {
            (None, None, None) => Ok(None),
            (Some(e), None, None) => Ok(Some(StringMatch::Exact(e.clone()))),
            (None, Some(p), None) => Ok(Some(StringMatch::Prefix(p.clone()))),
            (None, None, Some(r)) => {
                Regex::new(r)
                    .map(|r| Some(StringMatch::Regex(r)))
                    .map_err(|e| {
                        FieldError::new(format!("{field}.regex"), crate::traffic::regex_error(&e))
                    })
            }
            _ => Err(FieldError::new(
                field,
                "must set exactly one of exact, prefix, regex",
            )),
        }
    }
}

/// Istio `Headers.HeaderOperations`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOperations {
    pub(crate) fn to_model(&self) -> HeaderModifier {
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        };
        HeaderModifier {
            set: pairs(&self.set),
            add: pairs(&self.add),
            remove: self.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }
}

/// Istio `Headers`: request and response operations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

impl Headers {
    pub(crate) fn to_model(h: Option<&Self>) -> (HeaderModifier, HeaderModifier) {
        let Some(h) = h else {
            return Default::default();
        };
        let conv = |o: &Option<HeaderOperations>| {
            o.as_ref()
                .map(HeaderOperations::to_model)
                .unwrap_or_default()
        };
        (conv(&h.request), conv(&h.response))
    }
}

/// Istio `PortSelector`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: i64,
}

/// Istio `Percent`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}
