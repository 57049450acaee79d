use serde::{Deserialize, Serialize};

/// The application protocol of a port, as declared (Kubernetes `appProtocol`, or Istio's
/// port-name prefix convention). `Unknown` means the proxy detects it per connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    #[default]
    Unknown,
}

impl AppProtocol {
    /// Reads an `appProtocol` value, falling back to the port name's prefix before the first
    /// `-` (`http-web`, `grpc`, `tcp-db`), as Istio does for ports without `appProtocol`.
    pub fn declared(app_protocol: Option<&str>, port_name: Option<&str>) -> Self {
        let from = |s: &str| match s.to_ascii_lowercase().as_str() {
            "http" | "http1" | "kubernetes.io/http" => Some(Self::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Self::Http2),
            "grpc" | "grpc-web" => Some(Self::Grpc),
            "tcp" | "mysql" | "mongo" | "redis" | "tls" | "https" => Some(Self::Tcp),
            _ => None,
        };
        app_protocol
            .and_then(from)
            .or_else(|| port_name.and_then(|n| from(n.split('-').next().unwrap_or(n))))
            .unwrap_or_default()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
            Self::Unknown => "",
        }
    }

    /// Inverse of [`AppProtocol::as_str`]; anything else is `Unknown`.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "http" => Self::Http,
            "http2" => Self::Http2,
            "grpc" => Self::Grpc,
            "tcp" => Self::Tcp,
            _ => Self::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AppProtocol;

    #[test]
    fn app_protocol_wins_over_name() {
        assert_eq!(
            AppProtocol::declared(Some("grpc"), Some("http")),
            AppProtocol::Grpc
        );
    }

    #[test]
    fn name_prefix_is_the_fallback() {
        assert_eq!(
            AppProtocol::declared(None, Some("http-web")),
            AppProtocol::Http
        );
        assert_eq!(AppProtocol::declared(None, Some("tcp")), AppProtocol::Tcp);
        assert_eq!(
            AppProtocol::declared(None, Some("web")),
            AppProtocol::Unknown
        );
        assert_eq!(AppProtocol::declared(None, None), AppProtocol::Unknown);
    }

    #[test]
    fn wire_round_trip() {
        for p in [
            AppProtocol::Http,
            AppProtocol::Http2,
            AppProtocol::Grpc,
            AppProtocol::Tcp,
        ] {
            assert_eq!(AppProtocol::from_wire(p.as_str()), p);
        }
    }
}
