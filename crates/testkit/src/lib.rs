//! Test harness for Trellis: the real binaries as processes, test servers on loopback, and pods as
//! network namespaces.
//!
//! Tests built on it use the least powerful tool that proves the point (DESIGN §8): the
//! processes under test are the `trellis-control` and `trellis-proxy` binaries that users run,
//! and the clients are real ones (curl, h2load, Python grpcio). Every address is on 127.0.0.0/8
//! or inside the test's own network namespaces; every wait is bounded by a deadline.
//!
//! This crate is a dev-dependency only: it must never become a normal dependency of a shipped
//! crate, and it must not reach into the internals of the crates it tests (it talks to them the
//! way users do: flags, ready files, admin endpoints).

pub mod attacks;
pub mod bins;
pub mod certs;
pub mod egress;
pub mod fixture;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod otlp;
pub mod process;
pub mod servers;
pub mod tools;
pub mod wait;
pub mod wasm_plugins;

pub use bins::bin;
pub use fixture::{Mesh, MeshBuilder};
pub use mesh::{ControlPlane, ControlReady, Proxy, ProxyBuilder, ProxyReady, service_yaml};
pub use metrics::Metrics;
pub use netns::{Node, Pod};
pub use process::ManagedProcess;
pub use servers::{HttpEcho, TcpEcho};
