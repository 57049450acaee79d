//! One JWT (RFC 7519, JWS compact form) checked against one rule: pure, no I/O. The order of
//! checks and the failure messages are Envoy's `jwt_authn` ones (issuer, then time, then
//! audiences, then the signature), so a user sees the reason Istio would give.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};
use trellis_model::authn::{JwtRule, RequestAuth};

use super::keys::{Alg, KeySet};

/// Tolerated clock difference between the issuer and this proxy for `exp` and `nbf` (Envoy's
/// default `clock_skew_seconds`).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a token was refused; `message` is what the 401 body says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid JSON")]
    BadHeader,
    #[error("Jwt payload is an invalid JSON")]
    BadPayload,
    #[error("Jwt signature is not base64url encoded")]
    BadSignatureEncoding,
    #[error("Jwt algorithm is not supported")]
    UnsupportedAlg,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    VerificationFails,
    #[error("Jwks remote fetch is failed")]
    JwksFetchFailed,
}

impl JwtError {
    /// A short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadFormat | Self::BadHeader | Self::BadPayload | Self::BadSignatureEncoding => {
                "malformed"
            }
            Self::UnsupportedAlg => "unsupported_alg",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::AudienceNotAllowed => "audience",
            Self::NoMatchingKey => "no_matching_key",
            Self::VerificationFails => "signature",
            Self::JwksFetchFailed => "jwks_unavailable",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// A token split and decoded, not yet trusted.
#[derive(Debug)]
pub struct Token<'a> {
    pub alg: Alg,
    alg_name: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// The base64url payload as it came, for `outputPayloadToHeader`.
    pub payload_b64: &'a str,
    signing_input: &'a str,
    signature: Vec<u8>,
}

/// Decodes a compact JWS; nothing is verified yet.
pub fn parse(token: &str) -> Result<Token<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    let decode = |part: &str, err| URL_SAFE_NO_PAD.decode(part).map_err(|_| err);
    let header: Header = serde_json::from_slice(&decode(h, JwtError::BadHeader)?)
        .map_err(|_| JwtError::BadHeader)?;
    let claims: Map<String, Value> = serde_json::from_slice(&decode(p, JwtError::BadPayload)?)
        .map_err(|_| JwtError::BadPayload)?;
    let signature = decode(s, JwtError::BadSignatureEncoding)?;
    let alg = Alg::parse(&header.alg).ok_or(JwtError::UnsupportedAlg)?;
    Ok(Token {
        alg,
        alg_name: header.alg,
        kid: header.kid,
        claims,
        payload_b64: p,
        // The signature covers "header.payload" exactly as sent.
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

impl Token<'_> {
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// `aud` as a list: a single string is a list of one.
    pub fn audiences(&self) -> Vec<String> {
        match self.claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `exp` and `nbf` against `now`, with [`CLOCK_SKEW`]. A token without `exp` does not
    /// expire (Istio does not require one).
    pub fn check_time(&self, now: SystemTime) -> Result<(), JwtError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let skew = CLOCK_SKEW.as_secs_f64();
        let num = |name: &str| self.claims.get(name).and_then(Value::as_f64);
        if num("exp").is_some_and(|exp| now > exp + skew) {
            return Err(JwtError::Expired);
        }
        if num("nbf").is_some_and(|nbf| now + skew < nbf) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// Any of the token's audiences among the rule's; no configured audiences accepts any.
    pub fn check_audiences(&self, rule: &JwtRule) -> Result<(), JwtError> {
        if rule.audiences.is_empty() {
            return Ok(());
        }
        let ours: Vec<&str> = rule.audiences.iter().map(|a| normalize(a)).collect();
        if self
            .audiences()
            .iter()
            .any(|a| ours.contains(&normalize(a)))
        {
            Ok(())
        } else {
            Err(JwtError::AudienceNotAllowed)
        }
    }

    /// The signature against the keys that may have made it.
    pub fn verify(&self, keys: &KeySet) -> Result<(), JwtError> {
        let mut any = false;
        for key in keys.candidates(self.kid.as_deref(), self.alg, &self.alg_name) {
            any = true;
            if key.verify(self.alg, self.signing_input.as_bytes(), &self.signature) {
                return Ok(());
            }
        }
        Err(if any {
            JwtError::VerificationFails
        } else {
            JwtError::NoMatchingKey
        })
    }

    /// What authorization learns from a valid token.
    pub fn request_auth(&self) -> RequestAuth {
        let text = |name: &str| self.claims.get(name).and_then(Value::as_str);
        RequestAuth {
            principal: format!(
                "{}/{}",
                text("iss").unwrap_or(""),
                text("sub").unwrap_or("")
            ),
            audiences: self.audiences(),
            presenter: text("azp").map(str::to_string),
            claims: self.claims.clone(),
        }
    }

    /// A claim as a header value: strings as they are, numbers and booleans printed; a dotted
    /// name reaches into nested objects when no top-level claim has that name. Other values
    /// (objects, arrays, null) give no header, as in Envoy.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        let value = self.claims.get(name).or_else(|| {
            let mut parts = name.split('.');
            let mut v = self.claims.get(parts.next()?)?;
            for p in parts {
                v = v.get(p)?;
            }
            Some(v)
        })?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Envoy compares audiences without the scheme and a trailing slash.
fn normalize(aud: &str) -> &str {
    let a = aud
        .strip_prefix("https://")
        .or_else(|| aud.strip_prefix("http://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a)
}
