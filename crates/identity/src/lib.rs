//! Workload identity: SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`,
//! the mesh CA ([`ca`]: issue, verify, rotate), join tokens ([`token`]) and the mesh's rustls
//! configs and handshakes ([`tls`]), and TLS to public servers ([`public_tls`]).
//!
//! This is the only crate that touches rustls and certificate generation. It must not know
//! about HTTP, gRPC or Kubernetes: the control plane's CA server and the proxy's certificate
//! manager are thin adapters over it.

pub mod ca;
mod client_config;
pub mod gateway_tls;
pub mod origination;
pub mod public_tls;
pub mod serving;
pub mod tls;
pub mod token;
mod verify;

use std::fmt;
use std::str::FromStr;

/// The trust domain used when the mesh configures none, as in Istio and Linkerd.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload's SPIFFE ID in the Kubernetes shape the mesh issues.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a spiffe:// URI")]
    Scheme(String),
    #[error("{0:?} does not have the path /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error("{part} {value:?} is not a valid name (lowercase letters, digits, '-', '.')")]
    Name { part: &'static str, value: String },
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        for (part, value) in [
            ("trust domain", trust_domain),
            ("namespace", namespace),
            ("service account", service_account),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 253
                && value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok {
                return Err(SpiffeIdError::Name {
                    part,
                    value: value.to_string(),
                });
            }
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.into()))?;
        let mut parts = rest.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Self::new(td, ns, sa),
            _ => Err(SpiffeIdError::Path(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn rejects_other_shapes() {
        assert!(matches!(
            "https://x/ns/a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Scheme(_))
        ));
        assert!(matches!(
            "spiffe://td/ns/a".parse::<SpiffeId>(),
            Err(SpiffeIdError::Path(_))
        ));
        assert!(matches!(
            "spiffe://td/ns/A/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Name {
                part: "namespace",
                ..
            })
        ));
    }
}
