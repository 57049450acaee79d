//! Istio `RequestAuthentication` (security.istio.io v1, v1beta1) -> [`RequestAuthn`], and the
//! pure rule that gathers the JWT rules in force for a workload ([`jwt_rules_for`]).
//!
//! Scope, as Istio: a policy in the mesh root namespace without a selector or targetRefs is
//! mesh-wide; one in another namespace without them covers that namespace; `selector` covers
//! the matching workloads of its namespace; `targetRefs` to a Service covers the workloads that
//! Service selects. Unlike PeerAuthentication nothing is overridden: every applicable policy's
//! `jwtRules` are merged, so a token from any configured issuer is accepted.
//!
//! Validation happens here, so the proxy gets only rules it can use: an issuer is required,
//! exactly one of `jwks` / `jwksUri` (Istio would fetch the issuer's OpenID discovery document
//! when both are missing; Trellis does not, and says so), `jwks` must be a JWKS document, and
//! `jwksUri` an `http://` or `https://` URL.
//!
//! A policy annotated `trellis.io/dry-run: "true"` (or `istio.io/dry-run`) is kept apart from
//! the merged rules ([`RequestAuthentication::dry_run`]): the proxy validates its tokens and
//! counts failures, but never rejects and never takes a principal from it.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::authn::{
    ClaimToHeader, DryRunAuthentication, JwksSource, JwtHeader, JwtRule, RequestAuthentication,
};
use trellis_model::route::ResourceRef;
use trellis_model::{Service, ServiceKey};

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::from_value;

use super::authorization_policy::{Metadata, dry_run};
use super::policy_target::{Selector, TargetRef, covers, service_targets};

/// A Service a policy is attached to (`targetRefs`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyTarget {
    pub service: ServiceKey,
}

/// One RequestAuthentication, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestAuthn {
    pub source: ResourceRef,
    /// `None`: no selector.
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTarget>,
    pub rules: Vec<JwtRule>,
    /// `trellis.io/dry-run: "true"` (or `istio.io/dry-run`): tokens are validated and failures
    /// counted, never rejected, and a valid token gives no request principal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<TargetRef>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default)]
    jwt_rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    jwks_uri: Option<String>,
    jwks: Option<String>,
    #[serde(default)]
    from_headers: Vec<RawHeader>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    output_payload_to_header: Option<String>,
    #[serde(default)]
    forward_original_token: bool,
    #[serde(default)]
    output_claim_to_headers: Vec<RawClaimToHeader>,
    /// Istio's fetch timeout for `jwksUri`; accepted, the proxy uses its own bound.
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    header: String,
    claim: String,
}

/// The part of a JWKS document the mesh relies on: a `keys` array of objects with a `kty`.
#[derive(Deserialize)]
struct JwksShape {
    keys: Vec<JwkShape>,
}

#[derive(Deserialize)]
struct JwkShape {
    #[allow(dead_code)] // Deserialized to prove it is there.
    kty: String,
}

/// An HTTP field name: a non-empty RFC 9110 token.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `http://host[:port]/...` or `https://...` with a non-empty host and no whitespace.
fn is_http_url(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"));
    rest.is_some_and(|r| {
        let authority = r.split(['/', '?', '#']).next().unwrap_or_default();
        !authority.is_empty()
            && !authority.starts_with(':')
            && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

fn rule(field: &str, raw: RawRule, notes: &mut Vec<String>) -> Result<JwtRule, FieldError> {
    if raw.issuer.is_empty() {
        return Err(FieldError::new(format!("{field}.issuer"), "is required"));
    }
    let jwks = match (raw.jwks, raw.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                field,
                "must set only one of jwks and jwksUri",
            ));
        }
        (Some(doc), None) => {
            match serde_json::from_str::<JwksShape>(&doc) {
                Ok(shape) if !shape.keys.is_empty() => {}
                Ok(_) => {
                    return Err(FieldError::new(
                        format!("{field}.jwks"),
                        "is a JWKS with no keys",
                    ));
                }
                Err(e) => {
                    return Err(FieldError::new(
                        format!("{field}.jwks"),
                        format!("is not a JWKS document ({{\"keys\": [...]}}): {e}"),
                    ));
                }
            }
            JwksSource::Inline(doc)
        }
        (None, Some(uri)) => {
            if !is_http_url(&uri) {
                return Err(FieldError::new(
                    format!("{field}.jwksUri"),
                    format!("must be an http:// or https:// URL, got {uri:?}"),
                ));
            }
            JwksSource::Uri(uri)
        }
        (None, None) => {
            return Err(FieldError::new(
                field,
                "must set jwks or jwksUri (OpenID discovery from the issuer is not supported)",
            ));
        }
    };
    for (i, h) in raw.from_headers.iter().enumerate() {
        if !is_header_name(&h.name) {
            return Err(FieldError::new(
                format!("{field}.fromHeaders[{i}].name"),
                format!("is not a valid header name: {:?}", h.name),
            ));
        }
    }
    for (i, p) in raw.from_params.iter().enumerate() {
        if p.is_empty() {
            return Err(FieldError::new(
                format!("{field}.fromParams[{i}]"),
                "must not be empty",
            ));
        }
    }
    if !raw.from_cookies.is_empty() {
        notes.push(format!("{field}.fromCookies ignored: not supported"));
    }
    if raw.timeout.is_some() {
        notes.push(format!(
            "{field}.timeout ignored: the proxy bounds jwksUri fetches itself"
        ));
    }
    if let Some(h) = &raw.output_payload_to_header
        && !is_header_name(h)
    {
        return Err(FieldError::new(
            format!("{field}.outputPayloadToHeader"),
            format!("is not a valid header name: {h:?}"),
        ));
    }
    for (i, c) in raw.output_claim_to_headers.iter().enumerate() {
        if !is_header_name(&c.header) {
            return Err(FieldError::new(
                format!("{field}.outputClaimToHeaders[{i}].header"),
                format!("is not a valid header name: {:?}", c.header),
            ));
        }
        if c.claim.is_empty() {
            return Err(FieldError::new(
                format!("{field}.outputClaimToHeaders[{i}].claim"),
                "must not be empty",
            ));
        }
    }
    Ok(JwtRule {
        issuer: raw.issuer,
        audiences: raw.audiences,
        jwks,
        from_headers: raw
            .from_headers
            .into_iter()
            .map(|h| JwtHeader {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix,
            })
            .collect(),
        from_params: raw.from_params,
        output_payload_to_header: raw.output_payload_to_header.map(|h| h.to_ascii_lowercase()),
        forward_original_token: raw.forward_original_token,
        output_claim_to_headers: raw
            .output_claim_to_headers
            .into_iter()
            .map(|c| ClaimToHeader {
                header: c.header.to_ascii_lowercase(),
                claim: c.claim,
            })
            .collect(),
    })
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let raw: Raw = from_value(value)?;
    let source = raw.metadata.meta.reference("RequestAuthentication")?;
    let dry_run = dry_run(&raw.metadata.annotations)?;
    let spec = raw.spec;
    let mut notes = Vec::new();
    let target_refs = service_targets(
        &source.namespace,
        "policy",
        spec.selector.is_some(),
        spec.target_ref,
        spec.target_refs,
        &mut notes,
    )?
    .into_iter()
    .map(|service| PolicyTarget { service })
    .collect();
    let mut rules = Vec::new();
    for (i, r) in spec.jwt_rules.into_iter().enumerate() {
        rules.push(rule(&format!("spec.jwtRules[{i}]"), r, &mut notes)?);
    }
    Ok(Translated::Resource(Resource::RequestAuthentication(
        Box::new(RequestAuthn {
            source,
            selector: spec.selector.map(|s| s.match_labels),
            target_refs,
            rules,
            dry_run,
            notes,
        }),
    )))
}

impl RequestAuthn {
    /// Whether this policy covers a workload in `namespace` with `labels`.
    pub fn applies_to(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        services: &BTreeMap<ServiceKey, Service>,
    ) -> bool {
        covers(
            &self.source.namespace,
            self.selector.as_ref(),
            self.target_refs.iter().map(|t| &t.service),
            root_namespace,
            namespace,
            labels,
            services,
        )
    }
}

/// The pure rule: every JWT rule that applies to a workload, in a stable order (mesh-wide
/// policies first, then by namespace/name), with the policies they came from.
pub fn jwt_rules_for(
    policies: &[RequestAuthn],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    services: &BTreeMap<ServiceKey, Service>,
) -> RequestAuthentication {
    let mut applicable: Vec<&RequestAuthn> = policies
        .iter()
        .filter(|p| p.applies_to(root_namespace, namespace, labels, services))
        .collect();
    applicable.sort_by_key(|p| {
        (
            p.source.namespace != root_namespace,
            &p.source.namespace,
            &p.source.name,
        )
    });
    let mut out = RequestAuthentication::default();
    for p in applicable {
        if p.rules.is_empty() {
            continue;
        }
        if p.dry_run {
            out.dry_run.push(DryRunAuthentication {
                policy: format!("{}/{}", p.source.namespace, p.source.name),
                rules: p.rules.clone(),
            });
            continue;
        }
        out.policies
            .push(format!("{}/{}", p.source.namespace, p.source.name));
        for r in &p.rules {
            if !out.rules.contains(r) {
                out.rules.push(r.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
