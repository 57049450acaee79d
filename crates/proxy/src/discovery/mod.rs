//! Discovery client: the proxy's half of the `trellis.discovery.v1` stream.
//!
//! Registers the workload (Hello), subscribes lazily to the targets traffic needs, applies each
//! Update into a per-target `watch` channel (the hot path only reads snapshots), answers every
//! Update with Ack or Nack, sends heartbeats, and reconnects with jittered backoff. With the
//! control plane gone, every watch keeps its last value. It must not touch sockets other than
//! the gRPC channel, nor know about HTTP routing.
//!
//! INTERFACE CONTRACT (stub; implemented by the discovery work): the signatures below are what
//! the data path calls.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_model::{Destination, Target, Workload};

/// How to reach and register with the control plane.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// `http://127.0.0.1:15010`
    pub control: String,
    pub workload: Workload,
    /// Unique per proxy process.
    pub proxy_id: String,
    pub join_token: Option<String>,
}

/// What discovery currently says about one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Resolution {
    /// No answer yet (subscribed, or the control plane unreachable before any answer).
    #[default]
    Pending,
    /// The control plane knows nothing at that target.
    NotFound,
    Found(Arc<Destination>),
}

/// Connection state, for `/ready` and `/config_dump`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DiscoveryStatus {
    pub enabled: bool,
    pub connected: bool,
    /// Set once the control plane has answered Hello.
    pub identity: Option<String>,
    pub last_acked_version: Option<u64>,
    pub nacks: u64,
}

/// Cheap to clone; all clones share one stream.
#[derive(Clone, Debug)]
pub struct Discovery {
    _private: (),
}

impl Discovery {
    /// Starts the stream task (reconnecting until `shutdown` is cancelled).
    pub fn spawn(config: DiscoveryConfig, shutdown: CancellationToken) -> Self {
        let _ = (config, shutdown);
        Self { _private: () }
    }

    /// A proxy with no control plane: every target resolves to `NotFound` at once.
    pub fn disabled() -> Self {
        Self { _private: () }
    }

    /// The watch for `target`, subscribing on first use. Targets with no receivers left are
    /// unsubscribed after an idle period, so memory follows what the workload talks to.
    pub fn watch(&self, target: &Target) -> watch::Receiver<Resolution> {
        let _ = target;
        watch::channel(Resolution::NotFound).1
    }

    /// Waits up to `wait` for a first answer about `target`; returns whatever is known then.
    pub async fn resolve(&self, target: &Target, wait: Duration) -> Resolution {
        let _ = wait;
        self.watch(target).borrow().clone()
    }

    pub fn status(&self) -> DiscoveryStatus {
        DiscoveryStatus::default()
    }

    /// Everything discovery holds, as JSON, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
