//! Discovery client: the proxy's half of the `trellis.discovery.v1` stream.
//!
//! Registers the workload (Hello), subscribes lazily to the targets traffic needs, applies each
//! Update into a per-target `watch` channel (the hot path only reads snapshots), answers every
//! Update with Ack or Nack, sends heartbeats, and reconnects with jittered backoff. With the
//! control plane gone, every watch keeps its last value. It must not touch sockets other than
//! the gRPC channel, nor know about HTTP routing.
//!
//! Layout: this module holds the public handle and the target table (pure, tested without a
//! network); `client` runs the stream; `wire` converts and validates messages; `delta` applies
//! endpoint deltas; `backoff` paces reconnects.

mod backoff;
mod client;
mod delta;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_api::discovery as pb;
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
    /// Updates applied as an endpoint delta (also counted as acked).
    pub endpoint_deltas: u64,
}

/// What the control plane answered Hello with, and the connection it answered on. The
/// certificate manager waits for this (the SPIFFE ID it must ask for) and sends its CSR on
/// the same connection: the control plane serves its CA on the discovery port.
#[derive(Clone, Debug)]
pub struct Registration {
    /// This workload's SPIFFE ID, from Welcome.
    pub identity: String,
    /// The discovery connection (tonic reconnects it by itself if it breaks).
    pub channel: tonic::transport::Channel,
}

/// A target with no receivers for this long is unsubscribed and forgotten.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle targets are looked for.
const SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// Cheap to clone; all clones share one stream.
#[derive(Clone, Debug)]
pub struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct TargetEntry {
    tx: watch::Sender<Resolution>,
    /// When the last receiver was seen gone; `None` while someone watches.
    idle_since: Option<Instant>,
    /// The version of the Update (on the current stream) whose value `tx` holds: what an
    /// endpoint delta must be based on. `None` before any, and after a reconnect.
    version: Option<u64>,
}

/// State shared by the handles and the stream task. Locks are held for map operations only,
/// never across an await.
#[derive(Debug)]
struct Inner {
    enabled: bool,
    targets: Mutex<HashMap<Target, TargetEntry>>,
    /// Tells the stream task about new targets. `None` when disabled.
    subscribe_tx: Option<mpsc::UnboundedSender<Target>>,
    status: Mutex<DiscoveryStatus>,
    /// The one answer a disabled discovery gives; its receivers never see a change.
    not_found: watch::Sender<Resolution>,
    /// This workload's inbound mTLS policy, as last sent by the control plane.
    inbound_policy: watch::Sender<crate::tls::InboundPolicy>,
    /// This workload's authorization (`InboundPolicy.authorization_json`), as last sent.
    authorization: watch::Sender<Arc<str>>,
    /// This workload's telemetry settings (`InboundPolicy.telemetry_json`), as last sent.
    telemetry: watch::Sender<Arc<str>>,
    /// This workload's JWT rules (`InboundPolicy.request_authentication_json`), as last sent.
    request_authn: watch::Sender<Arc<str>>,
    /// The outbound traffic policy (`InboundPolicy.outbound_traffic_policy`), as last sent.
    outbound_policy: Arc<crate::outbound::registry_only::OutboundPolicy>,
    /// The mesh-wide HTTP/2 upgrade default (`InboundPolicy.h2_upgrade_policy`), as last sent.
    mesh_h2_upgrade: crate::client::h2_upgrade::MeshH2Upgrade,
    /// This gateway's listeners (`GatewayConfig.config_json`), as last sent; see `gateway`.
    gateway: watch::Sender<Arc<str>>,
    /// This workload's Wasm plugins (`InboundPolicy.wasm_plugins_json`), as last sent.
    wasm_plugins: watch::Sender<Arc<str>>,
    /// This workload's rate limits (`InboundPolicy.rate_limits_json`), as last sent.
    rate_limits: watch::Sender<Arc<str>>,
    /// The last Welcome and its connection; `None` until the first.
    registration: watch::Sender<Option<Registration>>,
}

/// A channel of JSON text from the control plane: `""` until it sends one.
fn text_channel() -> watch::Sender<Arc<str>> {
    watch::channel(Arc::from("")).0
}

/// Publishes `text` unless it equals what `tx` holds. The control plane resends a whole
/// InboundPolicy when any one field changed, so this keeps the others' receivers from waking
/// (and re-parsing) for nothing.
fn replace_if_changed(tx: &watch::Sender<Arc<str>>, text: &str) {
    tx.send_if_modified(|current| {
        let changed = **current != *text;
        if changed {
            *current = Arc::from(text);
        }
        changed
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent between statements, so a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn new(enabled: bool, subscribe_tx: Option<mpsc::UnboundedSender<Target>>) -> Self {
        Self {
            enabled,
            targets: Mutex::new(HashMap::new()),
            subscribe_tx,
            status: Mutex::new(DiscoveryStatus {
                enabled,
                ..Default::default()
            }),
            not_found: watch::channel(Resolution::NotFound).0,
            inbound_policy: watch::channel(crate::tls::InboundPolicy::default()).0,
            authorization: text_channel(),
            telemetry: text_channel(),
            request_authn: text_channel(),
            outbound_policy: Arc::default(),
            mesh_h2_upgrade: Default::default(),
            gateway: text_channel(),
            wasm_plugins: text_channel(),
            rate_limits: text_channel(),
            registration: watch::channel(None).0,
        }
    }

    fn status(&self) -> MutexGuard<'_, DiscoveryStatus> {
        lock(&self.status)
    }

    /// Every target still tracked, to re-subscribe after a reconnect.
    fn live_targets(&self) -> Vec<Target> {
        lock(&self.targets).keys().cloned().collect()
    }

    /// Stores a new value for `target` (if still tracked), from Update `version`; receivers
    /// wake only on a change.
    fn publish(&self, target: &Target, resolution: Resolution, version: Option<u64>) {
        if let Some(entry) = lock(&self.targets).get_mut(target) {
            entry.tx.send_if_modified(|current| {
                let changed = *current != resolution;
                *current = resolution;
                changed
            });
            entry.version = version;
        }
    }

    /// Applies an endpoint delta from Update `version` to the destination held for `target`,
    /// swapping the result in as a whole update does. A target no longer tracked is skipped
    /// (Acked, as a whole update for it is).
    fn apply_delta(
        &self,
        target: &Target,
        delta: &delta::EndpointDelta,
        version: u64,
    ) -> Result<(), delta::DeltaError> {
        let mut targets = lock(&self.targets);
        let Some(entry) = targets.get_mut(target) else {
            return Ok(());
        };
        if entry.version != Some(delta.base_version) {
            return Err(delta::DeltaError::Base {
                base: delta.base_version,
                in_force: entry.version,
            });
        }
        let next = match &*entry.tx.borrow() {
            Resolution::Found(held) => Destination {
                endpoints: delta::apply(&held.endpoints, delta)?,
                authority: held.authority.clone(),
                service: held.service.clone(),
                port: held.port,
                protocol: held.protocol,
                policy: held.policy.clone(),
                routes: held.routes.clone(),
                tcp_routes: held.tcp_routes.clone(),
                backends: held.backends.clone(),
            },
            Resolution::Pending | Resolution::NotFound => {
                return Err(delta::DeltaError::NoDestination);
            }
        };
        entry.tx.send_replace(Resolution::Found(Arc::new(next)));
        entry.version = Some(version);
        Ok(())
    }

    /// A new stream numbers its Updates from 1 again: no delta may build on the last one's.
    fn forget_versions(&self) {
        for entry in lock(&self.targets).values_mut() {
            entry.version = None;
        }
    }

    /// Forgets targets nobody has watched for `IDLE_TIMEOUT`; returns them for Unsubscribe.
    fn sweep_idle(&self, now: Instant) -> Vec<Target> {
        let mut targets = lock(&self.targets);
        let mut idle = Vec::new();
        for (target, entry) in targets.iter_mut() {
            if entry.tx.receiver_count() > 0 {
                entry.idle_since = None;
            } else {
                let since = *entry.idle_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= IDLE_TIMEOUT {
                    idle.push(target.clone());
                }
            }
        }
        for target in &idle {
            targets.remove(target);
        }
        idle
    }

    /// Applies one Update and returns the answer for the control plane: Ack when applied (or
    /// about a target no longer tracked), Nack with the error when invalid, in which case the
    /// target keeps its last good value.
    fn apply_update(&self, update: pb::Update) -> pb::ProxyMessage {
        use pb::proxy_message::Kind;
        let version = update.version;
        let applied = wire::update_from_wire(update).and_then(|(target, change)| match change {
            wire::Change::Full(resolution) => {
                self.publish(&target, resolution, Some(version));
                Ok(false)
            }
            wire::Change::Delta(delta) => {
                self.apply_delta(&target, &delta, version)?;
                tracing::debug!(version, %target, removed = delta.removed.len(), added = delta.added.len(), "applied endpoint delta");
                Ok(true)
            }
        });
        let kind = match applied {
            Ok(was_delta) => {
                let mut status = self.status();
                status.last_acked_version = Some(version);
                status.endpoint_deltas += u64::from(was_delta);
                Kind::Ack(pb::Ack { version })
            }
            Err(err) => {
                tracing::warn!(version, error = %err, "refusing discovery update; keeping the last good value");
                self.status().nacks += 1;
                Kind::Nack(pb::Nack {
                    version,
                    error: err.to_string(),
                })
            }
        };
        pb::ProxyMessage { kind: Some(kind) }
    }
}

impl Discovery {
    /// Starts the stream task (reconnecting until `shutdown` is cancelled).
    pub fn spawn(config: DiscoveryConfig, shutdown: CancellationToken) -> Self {
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner::new(true, Some(subscribe_tx)));
        tokio::spawn(client::run(inner.clone(), config, subscribe_rx, shutdown));
        Self { inner }
    }

    /// A proxy with no control plane: every target resolves to `NotFound` at once.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner::new(false, None)),
        }
    }

    /// The watch for `target`, subscribing on first use. Targets with no receivers left are
    /// unsubscribed after an idle period, so memory follows what the workload talks to.
    pub fn watch(&self, target: &Target) -> watch::Receiver<Resolution> {
        if !self.inner.enabled {
            return self.inner.not_found.subscribe();
        }
        let rx = {
            let mut targets = lock(&self.inner.targets);
            if let Some(entry) = targets.get_mut(target) {
                entry.idle_since = None;
                return entry.tx.subscribe();
            }
            let (tx, rx) = watch::channel(Resolution::Pending);
            targets.insert(
                target.clone(),
                TargetEntry {
                    tx,
                    idle_since: None,
                    version: None,
                },
            );
            rx
        };
        if let Some(subscribe_tx) = &self.inner.subscribe_tx {
            // Fails only once the stream task has ended (shutdown): nothing to subscribe then.
            let _ = subscribe_tx.send(target.clone());
        }
        rx
    }

    /// Waits up to `wait` for a first answer about `target`; returns whatever is known then.
    pub async fn resolve(&self, target: &Target, wait: Duration) -> Resolution {
        let mut rx = self.watch(target);
        // A timeout or a closed channel both leave the current value as the answer.
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| *r != Resolution::Pending)).await;
        rx.borrow().clone()
    }

    pub fn status(&self) -> DiscoveryStatus {
        self.inner.status().clone()
    }

    /// The outbound traffic policy the control plane sends for this workload (ALLOW_ANY until
    /// it says otherwise), with its counter.
    pub fn outbound_policy(&self) -> Arc<crate::outbound::registry_only::OutboundPolicy> {
        self.inner.outbound_policy.clone()
    }

    /// The mesh-wide HTTP/2 upgrade default the control plane sends (UPGRADE until it says
    /// otherwise); read per request to a meshed destination without its own policy.
    pub fn mesh_h2_upgrade(&self) -> &crate::client::h2_upgrade::MeshH2Upgrade {
        &self.inner.mesh_h2_upgrade
    }

    /// The inbound mTLS policy the control plane sends for this workload (PERMISSIVE until
    /// it says otherwise).
    pub fn inbound_policy_rx(&self) -> watch::Receiver<crate::tls::InboundPolicy> {
        self.inner.inbound_policy.subscribe()
    }

    /// The rate-limit JSON the control plane sends for this workload (`""`: no limits); see
    /// `resilience::ratelimit::follow`.
    pub fn rate_limits_rx(&self) -> watch::Receiver<Arc<str>> {
        self.inner.rate_limits.subscribe()
    }

    /// The authorization JSON the control plane sends for this workload (`""` until it sends
    /// one: no policy); see `authz::follow`.
    pub fn authorization_rx(&self) -> watch::Receiver<Arc<str>> {
        self.inner.authorization.subscribe()
    }

    /// The telemetry settings JSON the control plane sends for this workload (`""` until it
    /// sends one); see `trace::settings`.
    pub fn telemetry_rx(&self) -> watch::Receiver<Arc<str>> {
        self.inner.telemetry.subscribe()
    }

    /// The JWT rules JSON the control plane sends for this workload (`""`: none); see
    /// `authn::follow`.
    pub fn request_authentication_rx(&self) -> watch::Receiver<Arc<str>> {
        self.inner.request_authn.subscribe()
    }

    /// The Wasm plugins JSON the control plane sends for this workload (`""`: none); see
    /// `wasm::follow`.
    pub fn wasm_plugins_rx(&self) -> watch::Receiver<Arc<str>> {
        self.inner.wasm_plugins.subscribe()
    }

    /// The last Welcome and the connection it came on (`None` until the first, and forever
    /// without a control plane); see `tls::manager`.
    pub fn registration_rx(&self) -> watch::Receiver<Option<Registration>> {
        self.inner.registration.subscribe()
    }

    /// The gateway config JSON the control plane sends for this workload (`""` until it sends
    /// one); see `gateway::run`.
    pub fn gateway_rx(&self) -> watch::Receiver<Arc<str>> {
        self.inner.gateway.subscribe()
    }

    /// Everything discovery holds, as JSON, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let mut targets: Vec<(String, serde_json::Value)> = lock(&self.inner.targets)
            .iter()
            .map(|(target, entry)| {
                let value = match &*entry.tx.borrow() {
                    Resolution::Pending => serde_json::json!({"state": "pending"}),
                    Resolution::NotFound => serde_json::json!({"state": "not_found"}),
                    Resolution::Found(dest) => serde_json::json!({
                        "state": "found",
                        "destination": serde_json::to_value(&**dest).unwrap_or_default(),
                    }),
                };
                (target.to_string(), value)
            })
            .collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        serde_json::json!({
            "status": self.status(),
            "targets": targets.into_iter().map(|(t, mut v)| {
                if let Some(o) = v.as_object_mut() {
                    o.insert("target".into(), t.into());
                }
                v
            }).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests;
