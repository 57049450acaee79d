//! SMI `HTTPRouteGroup` (specs.smi-spec.io v1alpha3, v1alpha4): named HTTP matches that a
//! TrafficSplit's `spec.matches` point at. Each match is `pathRegex` AND `methods` AND every
//! `headers` entry (a header name -> regex map); a group is only read here, it routes nothing
//! by itself.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::matching::{HeaderMatch, HttpMatch, PathMatch, Regex, StringMatch};
use trellis_model::route::ResourceRef;

use crate::kube::FieldError;
use crate::traffic::{Meta, from_value, regex_error};

/// The methods SMI's schema allows, besides `*` (any).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

#[derive(Debug, Deserialize)]
struct Raw {
    metadata: Meta,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    matches: Vec<RawMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    name: String,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// One named match of a group, as model match blocks: several methods become several blocks
/// (any of them matches), the other conditions repeated in each.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NamedMatch {
    pub name: String,
    pub blocks: Vec<HttpMatch>,
}

/// An HTTPRouteGroup, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HttpRouteGroup {
    pub source: ResourceRef,
    pub matches: Vec<NamedMatch>,
}

impl HttpRouteGroup {
    pub fn find(&self, name: &str) -> Option<&NamedMatch> {
        self.matches.iter().find(|m| m.name == name)
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<HttpRouteGroup, FieldError> {
    let raw: Raw = from_value(value)?;
    let source = raw.metadata.reference("HTTPRouteGroup")?;
    if raw.spec.matches.is_empty() {
        return Err(FieldError::new(
            "spec.matches",
            "must list at least one match",
        ));
    }
    let mut matches: Vec<NamedMatch> = Vec::new();
    for (i, m) in raw.spec.matches.iter().enumerate() {
        let field = format!("spec.matches[{i}]");
        if m.name.is_empty() {
            return Err(FieldError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        if matches.iter().any(|seen| seen.name == m.name) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("{:?} is already the name of an earlier match", m.name),
            ));
        }
        matches.push(NamedMatch {
            name: m.name.clone(),
            blocks: blocks(&field, m)?,
        });
    }
    Ok(HttpRouteGroup { source, matches })
}

fn blocks(field: &str, m: &RawMatch) -> Result<Vec<HttpMatch>, FieldError> {
    let mut base = HttpMatch::default();
    if let Some(p) = &m.path_regex {
        let regex = Regex::new(p)
            .map_err(|e| FieldError::new(format!("{field}.pathRegex"), regex_error(&e)))?;
        base.path = Some(PathMatch::Regex(regex));
    }
    for (name, pattern) in &m.headers {
        let header_field = format!("{field}.headers.{name}");
        if !is_token(name) {
            return Err(FieldError::new(
                header_field,
                format!("{name:?} is not a valid header name"),
            ));
        }
        let regex =
            Regex::new(pattern).map_err(|e| FieldError::new(&header_field, regex_error(&e)))?;
        base.headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: Some(StringMatch::Regex(regex)),
            invert: false,
        });
    }
    let mut methods: Vec<String> = Vec::new();
    for (j, method) in m.methods.iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        if upper == "*" {
            // Any method: no method condition at all.
            return Ok(vec![base]);
        }
        if !METHODS.contains(&upper.as_str()) {
            return Err(FieldError::new(
                format!("{field}.methods[{j}]"),
                format!(
                    "must be an HTTP method ({}) or *, got {method:?}",
                    METHODS.join(", ")
                ),
            ));
        }
        if !methods.contains(&upper) {
            methods.push(upper);
        }
    }
    if methods.is_empty() {
        return Ok(vec![base]);
    }
    Ok(methods
        .into_iter()
        .map(|method| HttpMatch {
            method: Some(method),
            ..base.clone()
        })
        .collect())
}

/// An HTTP header name: a non-empty RFC 9110 token.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
