//! Which discovery protocol revision a stream speaks: the proxy announces its revision in
//! `Hello.protocol_version` (absent, 0, from proxies older than the field: revision 1), the
//! control plane serves its own revision and the one before (N-1), and answers the lower of the
//! two in `Welcome.protocol_version`. Pure; the discovery adapter turns a refusal into
//! `FAILED_PRECONDITION`.

/// What a proxy told the control plane about itself on Hello; shown in `/api/v1/workloads`
/// so that `trellis check` can report version skew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyVersions {
    /// The proxy's build version (`Hello.proxy_version`); empty when it sent none.
    pub proxy_version: String,
    /// The protocol revision the stream speaks (after negotiation).
    pub protocol: u32,
    /// The proxy listed `Feature::EndpointDelta` on Hello: it applies endpoint deltas, so an
    /// endpoint change may be sent to it as one (see `discovery::delta`).
    pub endpoint_deltas: bool,
}

/// Whether a Hello's `features` include endpoint deltas. Unknown values (features of a newer
/// proxy) are ignored: a feature is used only when both ends know it.
pub fn endpoint_deltas(features: &[i32]) -> bool {
    features.contains(&(trellis_api::discovery::Feature::EndpointDelta as i32))
}

/// The revision a Hello's `protocol_version` stands for.
pub fn announced(protocol_version: u32) -> u32 {
    protocol_version.max(1)
}

/// Why a proxy's revision is not served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the proxy speaks discovery protocol revision {proxy}, older than this control plane \
     (version {control_version}) serves ({min}..={current}): upgrade the proxy (restart the \
     workload with the current proxy image) before upgrading the control plane further"
)]
pub struct TooOld {
    pub proxy: u32,
    pub min: u32,
    pub current: u32,
    pub control_version: &'static str,
}

/// The revision to speak with a proxy announcing `protocol_version`, for a control plane that
/// serves `min..=current`. A newer proxy is answered with `current`: it must serve the
/// revision before its own, as this one does.
pub fn negotiate(protocol_version: u32, min: u32, current: u32) -> Result<u32, TooOld> {
    let proxy = announced(protocol_version);
    if proxy < min {
        return Err(TooOld {
            proxy,
            min,
            current,
            control_version: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(proxy.min(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_its_own_and_the_previous_revision() {
        // Absent (a proxy from before the field) is revision 1.
        assert_eq!(negotiate(0, 1, 2), Ok(1));
        assert_eq!(negotiate(1, 1, 2), Ok(1));
        assert_eq!(negotiate(2, 1, 2), Ok(2));
        // A newer proxy is answered with this control plane's revision.
        assert_eq!(negotiate(3, 1, 2), Ok(2));
        // Two revisions back is refused, naming both ends.
        let err = negotiate(1, 2, 3).unwrap_err();
        assert_eq!(err.proxy, 1);
        let text = err.to_string();
        assert!(text.contains("revision 1, older"), "{text}");
        assert!(text.contains("(2..=3)"), "{text}");
        assert!(text.contains("upgrade the proxy"), "{text}");
        assert_eq!(negotiate(0, 2, 3).unwrap_err().proxy, 1);
    }

    #[test]
    fn endpoint_deltas_only_when_listed() {
        let delta = trellis_api::discovery::Feature::EndpointDelta as i32;
        assert!(endpoint_deltas(&[delta]));
        assert!(endpoint_deltas(&[99, delta]));
        // An older proxy lists nothing; a newer one may list features this build does not know.
        assert!(!endpoint_deltas(&[]));
        assert!(!endpoint_deltas(&[0, 99]));
    }

    #[test]
    fn this_build_serves_n_minus_one() {
        assert_eq!(
            negotiate(
                trellis_api::DISCOVERY_PROTOCOL - 1,
                trellis_api::DISCOVERY_PROTOCOL_MIN,
                trellis_api::DISCOVERY_PROTOCOL
            ),
            Ok(trellis_api::DISCOVERY_PROTOCOL - 1)
        );
    }
}
