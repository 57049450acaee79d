//! Generated code for the Trellis discovery protocol (`proto/trellis/discovery/v1`).
//!
//! This crate holds no hand-written logic: the proxy and the control plane convert these wire
//! types to and from `trellis-model` at their edges.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// `trellis.discovery.v1`: the proxy <-> control plane stream.
pub mod discovery {
    tonic::include_proto!("trellis.discovery.v1");
}

/// `trellis.identity.v1`: the mesh CA (certificates and trust bundles).
pub mod identity {
    tonic::include_proto!("trellis.identity.v1");
}
