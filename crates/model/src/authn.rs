//! End-user authentication (Istio `RequestAuthentication`) as plain data: the JWT rules a
//! workload's inbound proxy enforces, and what a validated token tells the authorization step.
//!
//! This module holds no crypto and does no I/O; the proxy's `authn` module validates tokens
//! against these rules and fetches `jwks_uri` keys.

use serde::{Deserialize, Serialize};

/// What a valid JWT proved about the request's end user. The inbound proxy puts it into the
/// request's `http::Extensions` after authentication, so authorization (`requestPrincipals`,
/// `request.auth.claims[...]`) reads it without parsing the token again.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`, Istio's request principal.
    pub principal: String,
    /// The token's `aud` claim (a single string is a list of one).
    pub audiences: Vec<String>,
    /// The `azp` claim (authorized presenter), if any.
    pub presenter: Option<String>,
    /// Every claim of the token's payload, for `request.auth.claims[...]`.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Where a workload's inbound proxy finds the key set a token's signature is checked with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    /// The JWKS document itself (Istio `jwks`), already checked to parse as a JWKS.
    Inline(String),
    /// An HTTP(S) URL the proxy fetches and refreshes (Istio `jwksUri`).
    Uri(String),
}

/// A header a token may be carried in, with the prefix before the token (`Bearer `).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

/// Copy one claim of a valid token into a request header (Istio `outputClaimToHeaders`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// One issuer a workload accepts tokens from (one entry of Istio's `jwtRules`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtRule {
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Headers to look for a token in. When both this and `from_params` are empty, the token
    /// is read from `Authorization: Bearer <token>` (Istio's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters to look for a token in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Header that receives the token's payload (base64url JSON), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request forwarded to the app (default: it is removed).
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// The JWT rules that apply to one workload: the union of every applicable
/// `RequestAuthentication`'s `jwtRules`, as Istio merges them. Empty means no authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAuthentication {
    /// `namespace/name` of each policy the rules came from, for logs and `explain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<JwtRule>,
    /// Policies annotated `trellis.io/dry-run: "true"` (or `istio.io/dry-run`), each with its
    /// own rules: their tokens are validated and a failure is logged and counted, never
    /// answered with 401, and a valid one yields no request principal (Istio: a dry-run policy
    /// has no effect on the request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRunAuthentication>,
}

/// One dry-run `RequestAuthentication` that applies to a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunAuthentication {
    /// `namespace/name`, the `policy` label of `trellis_authn_dry_run_rejected_total`.
    pub policy: String,
    pub rules: Vec<JwtRule>,
}

impl RequestAuthentication {
    /// No rules at all, enforced or dry-run.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.dry_run.is_empty()
    }
}
