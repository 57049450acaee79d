//! Identity by TokenReview: in Kubernetes mode a proxy proves who it is with its projected
//! ServiceAccount token (audience [`DEFAULT_AUDIENCE`]), and the CA asks the API server
//! (`authentication.k8s.io/v1` TokenReview) whose token it is before signing.
//!
//! [`reviewed`] is pure (a TokenReview status in, the identity it proves out); [`KubeReviewer`]
//! is the adapter the CA calls through [`TokenReviewer`]. The API server checks the signature,
//! expiry, audience and that the ServiceAccount (and the pod the token is bound to) still
//! exists; this module checks what the API server says back.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::ca::{ReviewError, ReviewFuture, ReviewedIdentity, TokenReviewer};

/// The audience proxies' tokens are minted for (the injector's projected volume asks for it).
pub const DEFAULT_AUDIENCE: &str = "trellis";

/// The prefix of a ServiceAccount's user name: `system:serviceaccount:<ns>:<name>`.
const SA_PREFIX: &str = "system:serviceaccount:";

/// The identity a TokenReview status proves for `audience`. The API server must say the token
/// is authenticated, for `audience` (a server that ignores `spec.audiences` does not echo it:
/// such a token might have been minted for anything), and for a ServiceAccount.
pub fn reviewed(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<ReviewedIdentity, ReviewError> {
    let Some(status) = status else {
        return Err(ReviewError::Unavailable(
            "the TokenReview came back without a status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(ReviewError::Refused(why));
    }
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(ReviewError::Refused(format!(
            "the token is not for the audience {audience:?}"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(ReviewError::Refused(format!(
            "the token is for the user {username:?}, not a ServiceAccount"
        )));
    };
    Ok(ReviewedIdentity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

/// Asks the API server. Needs `create` on `tokenreviews` (granted by `trellis install`'s RBAC).
#[derive(Clone)]
pub struct KubeReviewer {
    client: Client,
    audience: String,
}

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl KubeReviewer {
    pub fn new(client: Client, audience: &str) -> Self {
        Self {
            client,
            audience: audience.to_string(),
        }
    }

    async fn ask(&self, token: &str) -> Result<ReviewedIdentity, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| ReviewError::Unavailable(err.to_string()))?;
        reviewed(answer.status.as_ref(), &self.audience)
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(self.ask(token))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(json: serde_json::Value) -> TokenReviewStatus {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_service_account_token_for_the_audience_proves_its_identity() {
        let s = status(serde_json::json!({
            "authenticated": true,
            "audiences": ["trellis"],
            "user": {"username": "system:serviceaccount:shop:reviews", "uid": "u"},
        }));
        assert_eq!(
            reviewed(Some(&s), "trellis").unwrap(),
            ReviewedIdentity {
                namespace: "shop".into(),
                service_account: "reviews".into()
            }
        );
    }

    #[test]
    fn refused_tokens_say_why() {
        let not = status(serde_json::json!({"authenticated": false, "error": "token expired"}));
        assert_eq!(
            reviewed(Some(&not), "trellis").unwrap_err(),
            ReviewError::Refused("token expired".into())
        );
        let other_aud = status(serde_json::json!({
            "authenticated": true, "audiences": ["api"],
            "user": {"username": "system:serviceaccount:shop:reviews"},
        }));
        assert!(
            reviewed(Some(&other_aud), "trellis")
                .unwrap_err()
                .to_string()
                .contains("audience \"trellis\"")
        );
        let no_aud = status(serde_json::json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:shop:reviews"},
        }));
        assert!(reviewed(Some(&no_aud), "trellis").is_err());
        for user in [
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount::x",
        ] {
            let s = status(serde_json::json!({
                "authenticated": true, "audiences": ["trellis"], "user": {"username": user},
            }));
            let err = reviewed(Some(&s), "trellis").unwrap_err();
            assert!(
                err.to_string().contains("not a ServiceAccount"),
                "{user}: {err}"
            );
        }
        assert!(matches!(
            reviewed(None, "trellis"),
            Err(ReviewError::Unavailable(_))
        ));
    }
}
