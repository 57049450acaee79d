use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{CLUSTER_DOMAIN, ServiceKey};

/// What a proxy asks discovery about: a named service port, or an address its transparent
/// listener captured.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Service { service: ServiceKey, port: u16 },
    Address(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTargetError(pub String);

impl fmt::Display for ParseTargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid target {:?}: expected NAME.NAMESPACE:PORT, NAME.NAMESPACE.svc.cluster.local:PORT or IP:PORT",
            self.0
        )
    }
}

impl std::error::Error for ParseTargetError {}

impl FromStr for Target {
    type Err = ParseTargetError;

    /// Parses `reviews.default:9080`, `reviews.default.svc.cluster.local:9080` or `10.0.0.1:80`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Address(addr));
        }
        let err = || ParseTargetError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        let host = host
            .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
            .unwrap_or(host);
        let host = host.strip_suffix(".svc").unwrap_or(host);
        let (name, namespace) = host.split_once('.').ok_or_else(err)?;
        let valid = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if port == 0 || !valid(name) || !valid(namespace) {
            return Err(err());
        }
        Ok(Self::Service {
            service: ServiceKey::new(namespace, name),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { service, port } if service.is_external() => {
                write!(f, "{}:{port}", service.name)
            }
            Self::Service { service, port } => {
                write!(f, "{}.{}:{port}", service.name, service.namespace)
            }
            Self::Address(addr) => write!(f, "{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_full_service_names() {
        let want = Target::Service {
            service: ServiceKey::new("default", "reviews"),
            port: 9080,
        };
        assert_eq!("reviews.default:9080".parse::<Target>().unwrap(), want);
        assert_eq!(
            "reviews.default.svc.cluster.local:9080"
                .parse::<Target>()
                .unwrap(),
            want
        );
        assert_eq!(want.to_string(), "reviews.default:9080");
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "127.0.0.1:80".parse::<Target>().unwrap(),
            Target::Address("127.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "reviews:9080",
            "reviews.default",
            "Reviews.default:1",
            "a.b:0",
            "a.b:x",
            "",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} should not parse");
        }
    }
}
