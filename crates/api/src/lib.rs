//! Generated code for the Trellis discovery protocol (`proto/trellis/discovery/v1`).
//!
//! This crate holds no hand-written logic: the proxy and the control plane convert these wire
//! types to and from `trellis-model` at their edges.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// `trellis.discovery.v1`: the proxy <-> control plane stream.
pub mod discovery {
    tonic::include_proto!("trellis.discovery.v1");
}

/// The revision of `trellis.discovery.v1` this build speaks (`Hello.protocol_version`,
/// `Welcome.protocol_version`). Revision 2 added those two fields and `Welcome.control_version`;
/// revision 1 is every proxy from before them. Bump it when the stream's meaning changes in a
/// way an older peer must know about; keep serving the revision before. What a peer may
/// support or not (`discovery::Feature`, such as endpoint deltas) is negotiated per stream on
/// Hello and Welcome instead, with no new revision.
pub const DISCOVERY_PROTOCOL: u32 = 2;

/// The oldest revision a control plane of this build serves: one before its own (N-1).
pub const DISCOVERY_PROTOCOL_MIN: u32 = DISCOVERY_PROTOCOL - 1;

/// `trellis.identity.v1`: the mesh CA (certificates and trust bundles).
pub mod identity {
    tonic::include_proto!("trellis.identity.v1");
}
