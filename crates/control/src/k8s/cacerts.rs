//! The plug-in CA: when a Secret `cacerts` exists in the control plane's namespace, its
//! certificates and key are the mesh CA (as Istio's plug-in CA), instead of a generated one.
//!
//! Keys, as Istio names them: `ca-cert.pem` (the signing certificate, usually an intermediate),
//! `ca-key.pem` (its key), `root-cert.pem` (the trust anchor proxies get) and `cert-chain.pem`
//! (the intermediates between leaves and the root, `ca-cert.pem` first; optional). The Secret
//! is read once at startup: a replaced Secret takes effect on restart.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use trellis_identity::ca::{Authority, CaError, PluggedCa};

/// The Secret's name (Istio's).
pub const SECRET: &str = "cacerts";
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// The plug-in CA Secret is there but unusable; startup stops.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("cannot read Secret {namespace}/{SECRET}: {source}")]
    Read {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{SECRET} has no key {key}")]
    Missing {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{SECRET} key {key} is not UTF-8 PEM text")]
    NotText {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{SECRET}: {source}")]
    Invalid {
        namespace: String,
        #[source]
        source: CaError,
    },
}

/// The plug-in CA from `namespace`/`cacerts`, or `None` when there is no such Secret.
pub async fn read(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<Option<Authority>, CaSecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(SECRET)
        .await
        .map_err(|source| CaSecretError::Read {
            namespace: namespace.to_string(),
            source,
        })?;
    match secret {
        None => Ok(None),
        Some(secret) => {
            from_data(namespace, trust_domain, &secret.data.unwrap_or_default()).map(Some)
        }
    }
}

/// The CA from a Secret's data (pure, so the checks are testable without an API server).
pub fn from_data(
    namespace: &str,
    trust_domain: &str,
    data: &BTreeMap<String, ByteString>,
) -> Result<Authority, CaSecretError> {
    let text = |key: &'static str| -> Result<Option<&str>, CaSecretError> {
        data.get(key)
            .map(|bytes| {
                std::str::from_utf8(&bytes.0).map_err(|_| CaSecretError::NotText {
                    namespace: namespace.to_string(),
                    key,
                })
            })
            .transpose()
    };
    let required = |key: &'static str| -> Result<&str, CaSecretError> {
        text(key)?.ok_or_else(|| CaSecretError::Missing {
            namespace: namespace.to_string(),
            key,
        })
    };
    let plugged = PluggedCa {
        root: (ROOT_CERT, required(ROOT_CERT)?),
        issuer: (CA_CERT, required(CA_CERT)?),
        key: (CA_KEY, required(CA_KEY)?),
        chain: text(CERT_CHAIN)?.map(|pem| (CERT_CHAIN, pem)),
    };
    Authority::from_plugged(trust_domain, &plugged).map_err(|source| CaSecretError::Invalid {
        namespace: namespace.to_string(),
        source,
    })
}
