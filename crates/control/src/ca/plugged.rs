//! A CA the user brings for an anchor rotation: the PEMs `trellis identity rotate prepare
//! --from-dir` sends in the body of `POST /api/v1/identity/rotate/prepare`, keyed by Istio's
//! `cacerts` file names (the names the plug-in CA Secret uses, `crate::k8s::cacerts`).
//!
//! They are checked exactly as the plug-in CA is (`Authority::from_plugged`: each part parses,
//! the issuer is a CA, the key is the issuer's, the issuer chains to the root through
//! `cert-chain.pem` when given), so every error names the file that is wrong.

use serde::Deserialize;
use trellis_identity::ca::{Authority, CaError, PluggedCa};

use crate::k8s::cacerts::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};

/// The body of a `prepare` that brings its own CA. Every field absent (`{}` or no body): the
/// control plane generates the new root and issuer, as before.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluggedPems {
    #[serde(rename = "root-cert.pem")]
    pub root_cert: Option<String>,
    #[serde(rename = "ca-cert.pem")]
    pub ca_cert: Option<String>,
    #[serde(rename = "ca-key.pem")]
    pub ca_key: Option<String>,
    #[serde(rename = "cert-chain.pem")]
    pub cert_chain: Option<String>,
}

/// Why the CA the user brought cannot be used; the text goes back to the CLI.
#[derive(Debug, thiserror::Error)]
pub enum PluggedError {
    #[error("{file} is missing (root-cert.pem, ca-cert.pem and ca-key.pem are required)")]
    Missing { file: &'static str },
    #[error("{0}")]
    Invalid(#[from] CaError),
}

impl PluggedPems {
    /// Whether the body brings no CA at all.
    pub fn is_empty(&self) -> bool {
        self.root_cert.is_none()
            && self.ca_cert.is_none()
            && self.ca_key.is_none()
            && self.cert_chain.is_none()
    }

    /// The CA these PEMs make for `trust_domain`, checked as the plug-in CA is.
    pub fn authority(&self, trust_domain: &str) -> Result<Authority, PluggedError> {
        fn required<'a>(
            file: &'static str,
            pem: Option<&'a str>,
        ) -> Result<(&'static str, &'a str), PluggedError> {
            pem.map(|text| (file, text))
                .ok_or(PluggedError::Missing { file })
        }
        let plugged = PluggedCa {
            root: required(ROOT_CERT, self.root_cert.as_deref())?,
            issuer: required(CA_CERT, self.ca_cert.as_deref())?,
            key: required(CA_KEY, self.ca_key.as_deref())?,
            chain: self.cert_chain.as_deref().map(|pem| (CERT_CHAIN, pem)),
        };
        Ok(Authority::from_plugged(trust_domain, &plugged)?)
    }
}
