//! Join tokens: the proof a workload shows in local mode (no Kubernetes ServiceAccount token).
//!
//! A token is `t1.<payload>.<mac>` (base64url, no padding): the payload is
//! `<namespace>/<service-account>/<expiry unix seconds, 0 = none>` and the MAC is HMAC-SHA256
//! of the payload under the control plane's secret. So the control plane issues tokens
//! without storing them, and a token proves exactly one namespace and service account.
//! Pure: the caller passes the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "t1.";

/// Why a token was refused. The messages are safe to send back to the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is malformed")]
    Malformed,
    #[error("the join token's signature is invalid")]
    BadSignature,
    #[error("the join token expired")]
    Expired,
}

/// What a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub namespace: String,
    pub service_account: String,
}

/// Issues and checks join tokens under one secret.
pub struct JoinTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens { .. }")
    }
}

impl JoinTokens {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// 32 random bytes, for a control plane that was given no secret (its tokens then last as
    /// long as the process).
    pub fn random_secret() -> Result<[u8; 32], aws_lc_rs::error::Unspecified> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret)?;
        Ok(secret)
    }

    /// A token for `namespace`/`service_account`, valid for `ttl` from `now` (`None`: no
    /// expiry).
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> String {
        let expiry = ttl
            .map(|ttl| {
                (now + ttl)
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs().max(1))
            })
            .unwrap_or(0);
        let payload = format!("{namespace}/{service_account}/{expiry}");
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Checks the MAC (in constant time) and the expiry, and returns what the token proves.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenError> {
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (payload_b64, mac_b64) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, &payload, &mac).map_err(|_| TokenError::BadSignature)?;
        let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        let mut parts = payload.split('/');
        let (Some(ns), Some(sa), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if exp != 0 && now >= exp {
            return Err(TokenError::Expired);
        }
        Ok(TokenClaims {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expiry_and_forgery() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tokens = JoinTokens::new(b"secret");
        let t = tokens.issue("default", "web", Some(Duration::from_secs(60)), now);
        let claims = tokens.verify(&t, now).unwrap();
        assert_eq!(claims.namespace, "default");
        assert_eq!(claims.service_account, "web");
        assert_eq!(
            tokens.verify(&t, now + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        let forever = tokens.issue("default", "web", None, now);
        assert!(
            tokens
                .verify(&forever, now + Duration::from_secs(1 << 40))
                .is_ok()
        );
        // Another secret, a changed payload, garbage: all refused.
        assert_eq!(
            JoinTokens::new(b"other").verify(&t, now),
            Err(TokenError::BadSignature)
        );
        let (_, mac) = t.rsplit_once('.').unwrap();
        let forged = format!("t1.{}.{mac}", URL_SAFE_NO_PAD.encode("default/admin/0"));
        assert_eq!(tokens.verify(&forged, now), Err(TokenError::BadSignature));
        assert_eq!(tokens.verify("nope", now), Err(TokenError::Malformed));
    }
}
