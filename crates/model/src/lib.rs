//! The mesh model: services, workloads, endpoints, destinations, routes and traffic policies as
//! plain data, plus the pure decisions made on them (which route matches a request, which
//! backend a weighted draw picks, what a fault injection does, what URL a rewrite or redirect
//! makes).
//!
//! Both the proxy and the control plane (and `trellis explain`) work on these types, so a
//! decision computed here is the same wherever it is computed. This crate does no I/O and must
//! not depend on tokio, hyper, kube or tonic: every type is data in, data out.

pub mod anomaly;
pub mod authn;
pub mod authz;
mod destination;
pub mod gateway;
pub mod matching;
pub mod multicluster;
pub mod policy;
mod protocol;
pub mod ratelimit;
pub mod rewrite;
pub mod route;
mod service;
mod target;
pub mod wasm;
mod workload;

pub use destination::{Backend, Destination, Endpoint, RemoteCluster};
pub use protocol::AppProtocol;
pub use service::{Service, ServiceKey, ServicePort, TargetPort};
pub use target::{ParseTargetError, Target};
pub use workload::Workload;

/// The DNS suffix services are named under, as in Kubernetes' default cluster domain.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";
