//! Bookinfo, Istio's sample application, as native Rust services the demo runs in-process.
//!
//! Four services (productpage, details, reviews, ratings) and six workloads (reviews in v1, v2
//! and v3) behave as Istio's sample does, so that routing by version or by the `end-user`
//! header shows up in what the entry answers. Each workload listens on its own loopback socket
//! and reaches other services only through its own sidecar's explicit outbound ports, whose
//! addresses it is handed (through [`Upstreams`]) once that sidecar is ready: the apps never
//! learn where another app listens.
//!
//! `catalog` says which workloads exist, `handlers` holds the pure answers (routes, JSON and
//! HTML) and `server` is the hyper adapter.

mod catalog;
pub mod handlers;
mod server;

pub use catalog::{APPS, App, NAMESPACE, ReviewsVersion, SERVICE_PORT, Service, Upstreams};
pub use server::{RunningApp, bind};
