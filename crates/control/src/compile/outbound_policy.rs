//! The mesh's outbound traffic policy (Istio's `meshConfig.outboundTrafficPolicy.mode`), set
//! with `trellis-control --outbound-traffic-policy` and carried to every proxy in its
//! `InboundPolicy.outbound_traffic_policy`. Pure: parsing and the wire value.

use trellis_api::discovery as pb;

/// What transparent outbound traffic to a destination the mesh does not know meets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    /// Passed through to the original destination (Istio's default).
    #[default]
    AllowAny,
    /// Refused: HTTP 502 `trellis-error: registry-only`, TCP closed. Only Services, workloads
    /// and ServiceEntry hosts are reachable.
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowAny => "ALLOW_ANY",
            Self::RegistryOnly => "REGISTRY_ONLY",
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            Self::AllowAny => pb::OutboundTrafficPolicy::AllowAny as i32,
            Self::RegistryOnly => pb::OutboundTrafficPolicy::RegistryOnly as i32,
        }
    }
}

/// Parses a `--outbound-traffic-policy` value: `ALLOW_ANY` or `REGISTRY_ONLY` (any case, `-`
/// for `_`).
pub fn parse(text: &str) -> Result<OutboundTrafficPolicy, String> {
    match text.to_ascii_uppercase().replace('-', "_").as_str() {
        "ALLOW_ANY" => Ok(OutboundTrafficPolicy::AllowAny),
        "REGISTRY_ONLY" => Ok(OutboundTrafficPolicy::RegistryOnly),
        _ => Err(format!("must be ALLOW_ANY or REGISTRY_ONLY, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings_and_refuses_others() {
        assert_eq!(
            parse("REGISTRY_ONLY"),
            Ok(OutboundTrafficPolicy::RegistryOnly)
        );
        assert_eq!(
            parse("registry-only"),
            Ok(OutboundTrafficPolicy::RegistryOnly)
        );
        assert_eq!(parse("allow_any"), Ok(OutboundTrafficPolicy::AllowAny));
        assert!(
            parse("DENY")
                .unwrap_err()
                .contains("ALLOW_ANY or REGISTRY_ONLY")
        );
        assert_eq!(
            OutboundTrafficPolicy::RegistryOnly.to_wire(),
            pb::OutboundTrafficPolicy::RegistryOnly as i32
        );
    }
}
