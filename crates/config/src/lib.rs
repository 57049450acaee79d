//! The configuration APIs the mesh reads, as serde types, validated with precise errors and
//! translated into `trellis_model`.
//!
//! The entry point is [`parse_documents`]: the bytes of one file (multi-document YAML or JSON)
//! become one [`Document`] per YAML document, each a translated [`Resource`], an
//! [`Outcome::Ignored`] kind this mesh does not read (yet), or an [`Outcome::Invalid`] error that
//! names the file, the resource and the field. Today only Kubernetes `v1 Service` is read.
//!
//! This crate does no I/O beyond parsing the bytes it is given, and never panics on any input:
//! the control plane feeds it whatever a user drops into a config directory.

mod document;
mod error;
mod kinds;
pub mod kube;

pub use document::{Document, Outcome, Resource, parse_documents};
pub use error::{ConfigError, ResourceRef};
