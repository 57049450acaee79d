//! The chaos suite (issue 12, "Must show"): faults, churn and hostile clients under a steady
//! load, each test bounded in time, each printing one `chaos figure: <scenario>: <numbers>`
//! line that docs/reliability.md's table is filled from.
//!
//! Scenarios about the mesh (control plane, config, endpoints, identity, proxy shutdown) run in
//! network-namespace pods with the iptables rules of `trellis-proxy init` and need root (or
//! `TRELLIS_SKIP_NETNS=1` to skip); the load comes from `trellis-testkit-load` inside the
//! client pod, captured by its sidecar like any app's traffic. Scenarios about one proxy's
//! listener (slowloris, HTTP/2 rapid reset, header bomb) run on loopback against a standalone
//! proxy in front of an echo app.
//!
//! Every test name contains `chaos`: `cargo nextest run -p trellis-testkit chaos`.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "chaos/control.rs"]
mod control;
#[path = "chaos/endpoints.rs"]
mod endpoints;
#[path = "chaos/fixture.rs"]
mod fixture;
#[path = "chaos/hostile.rs"]
mod hostile;
#[path = "chaos/identity.rs"]
mod identity;
