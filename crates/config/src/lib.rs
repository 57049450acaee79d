//! The configuration APIs the mesh reads, as serde types, validated with precise errors and
//! translated into `trellis_model`.
//!
//! The entry point is [`parse_documents`]: the bytes of one file (multi-document YAML or JSON)
//! become one [`Document`] per YAML document, each a translated [`Resource`], an
//! [`Outcome::Ignored`] kind this mesh does not read (yet), or an [`Outcome::Invalid`] error that
//! names the file, the resource and the field. Read today: Kubernetes `v1 Service`; Istio
//! `VirtualService` and `DestinationRule`; Gateway API `HTTPRoute` and `GRPCRoute` with Service
//! parents; Linkerd `ServiceProfile`; SMI `TrafficSplit` and `HTTPRouteGroup` (see
//! docs/traffic-config.md).
//!
//! This crate does no I/O beyond parsing the bytes it is given, and never panics on any input:
//! the control plane feeds it whatever a user drops into a config directory.

mod document;
mod error;
pub mod gateway;
pub mod gateways;
pub mod health_check;
pub mod istio;
mod kinds;
pub mod kube;
pub mod linkerd;
pub mod multicluster;
pub mod no_route;
pub mod smi;
pub mod traffic;
pub mod trellis;

pub use document::{Document, Outcome, Resource, parse_documents};
pub use error::{ConfigError, ResourceRef};
