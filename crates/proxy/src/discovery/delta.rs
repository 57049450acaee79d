//! Endpoint deltas (`Update.endpoint_delta`): the endpoints removed and added since the
//! destination the proxy holds for a target. Pure: [`apply`] rebuilds the endpoint list by the
//! protocol's rule (remove by address, the rest keeping their order, then insert each added
//! endpoint at its index in the result), or says why it cannot, which becomes the Nack that
//! makes the control plane send the whole destination. The table in `mod.rs` checks the base
//! version and swaps the result in.

use std::collections::HashSet;
use std::net::SocketAddr;

use trellis_model::Endpoint;

/// A delta, validated and converted from the wire.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EndpointDelta {
    /// The Update version (on this stream, for this target) it applies to.
    pub base_version: u64,
    pub removed: Vec<SocketAddr>,
    /// (index in the result, endpoint), in the order given.
    pub added: Vec<(usize, Endpoint)>,
}

/// Why a delta cannot be applied to what the proxy holds. Displays as the Nack's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeltaError {
    #[error(
        "endpoint_delta.base_version: {base} is not the version in force for the target ({})",
        in_force.map_or_else(|| "none".to_string(), |v| v.to_string())
    )]
    Base { base: u64, in_force: Option<u64> },
    #[error("endpoint_delta: no destination is in force for the target to apply it to")]
    NoDestination,
    #[error(
        "endpoint_delta.removed[{i}]: {address} is not an endpoint of the destination in force"
    )]
    UnknownEndpoint { i: usize, address: SocketAddr },
    #[error(
        "endpoint_delta.added[{i}].index: {index} is out of order or past the end ({len} endpoints)"
    )]
    Index { i: usize, index: usize, len: usize },
    #[error("endpoint_delta.added[{i}]: {address} would be an endpoint twice")]
    Duplicate { i: usize, address: SocketAddr },
}

/// `endpoints` with `delta` applied.
pub(crate) fn apply(
    endpoints: &[Endpoint],
    delta: &EndpointDelta,
) -> Result<Vec<Endpoint>, DeltaError> {
    let mut removed = HashSet::with_capacity(delta.removed.len());
    for (i, address) in delta.removed.iter().enumerate() {
        // Each address once, and each one held: otherwise the two ends disagree on the list.
        if !removed.insert(*address) || !endpoints.iter().any(|e| e.address == *address) {
            return Err(DeltaError::UnknownEndpoint {
                i,
                address: *address,
            });
        }
    }
    let mut result: Vec<Endpoint> = Vec::with_capacity(
        (endpoints.len() + delta.added.len()).saturating_sub(delta.removed.len()),
    );
    result.extend(
        endpoints
            .iter()
            .filter(|e| !removed.contains(&e.address))
            .cloned(),
    );
    let mut next = 0;
    for (i, (index, endpoint)) in delta.added.iter().enumerate() {
        // Ascending indices into the result, each at most one past the list built so far.
        if *index < next || *index > result.len() {
            return Err(DeltaError::Index {
                i,
                index: *index,
                len: result.len(),
            });
        }
        if result.iter().any(|e| e.address == endpoint.address) {
            return Err(DeltaError::Duplicate {
                i,
                address: endpoint.address,
            });
        }
        result.insert(*index, endpoint.clone());
        next = index + 1;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            meshed: true,
            identity: None,
            workload: format!("w{port}"),
            labels: Default::default(),
            target_port: 9080,
            remote: None,
        }
    }

    fn delta(removed: &[u16], added: &[(usize, u16)]) -> EndpointDelta {
        EndpointDelta {
            base_version: 1,
            removed: removed.iter().map(|p| endpoint(*p).address).collect(),
            added: added.iter().map(|(i, p)| (*i, endpoint(*p))).collect(),
        }
    }

    fn ports(list: &[Endpoint]) -> Vec<u16> {
        list.iter().map(|e| e.address.port()).collect()
    }

    #[test]
    fn removes_by_address_then_inserts_at_each_index() {
        let held: Vec<Endpoint> = [1, 2, 3, 4].map(endpoint).into();
        let got = apply(&held, &delta(&[2], &[(0, 10), (2, 11), (5, 12)])).unwrap();
        assert_eq!(ports(&got), [10, 1, 11, 3, 4, 12]);
        // An endpoint whose fields changed comes as removed and added at its place.
        let mut changed = endpoint(3);
        changed.labels.insert("version".into(), "v2".into());
        let d = EndpointDelta {
            base_version: 1,
            removed: vec![changed.address],
            added: vec![(2, changed.clone())],
        };
        assert_eq!(apply(&held, &d).unwrap()[2], changed);
        assert!(apply(&held, &delta(&[1, 2, 3, 4], &[])).unwrap().is_empty());
        assert_eq!(ports(&apply(&[], &delta(&[], &[(0, 5)])).unwrap()), [5]);
    }

    #[test]
    fn refuses_what_the_held_list_does_not_match() {
        let held: Vec<Endpoint> = [1, 2, 3].map(endpoint).into();
        let err = apply(&held, &delta(&[9], &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoint_delta.removed[0]: 127.0.0.1:9 is not an endpoint of the destination in force"
        );
        assert!(matches!(
            apply(&held, &delta(&[1, 1], &[])),
            Err(DeltaError::UnknownEndpoint { i: 1, .. })
        ));
        // Past the end, and out of order.
        assert!(matches!(
            apply(&held, &delta(&[], &[(4, 7)])),
            Err(DeltaError::Index {
                index: 4,
                len: 3,
                ..
            })
        ));
        assert!(matches!(
            apply(&held, &delta(&[], &[(2, 7), (1, 8)])),
            Err(DeltaError::Index { i: 1, .. })
        ));
        assert!(matches!(
            apply(&held, &delta(&[], &[(0, 2)])),
            Err(DeltaError::Duplicate { .. })
        ));
    }
}
