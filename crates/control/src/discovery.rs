//! The discovery server: a thin tonic adapter over the registry and [`compile`].
//!
//! One session per proxy stream. It registers the workload on Hello, answers with a Welcome,
//! keeps the stream's subscriptions, and when a change of config or registry can concern it (it
//! is woken through `wake`) recompiles each subscribed target, pushing an Update only when the
//! result differs from what this stream was last sent. Versions count Updates per stream, from 1. Acks and Nacks are recorded per proxy.
//!
//! The session is the stream's response body itself ([`Session::into_stream`]): it runs when
//! HTTP/2 polls the body for its next message, on the task that writes it, and what it sends is
//! handed over as the value polled. It used to be a task of its own, feeding the body through
//! a channel: every Update woke a second task, and each connected proxy held that task and
//! its channel (issue 14: the per-stream cost of a route change at 5,000 proxies). When the
//! proxy's connection ends, HTTP/2 drops the body and with it the session (`Drop` unregisters
//! it).
//!
//! Startup hold-back: the registry lives in memory, so a restarted control plane knows no
//! workloads until their proxies reconnect. For the registration grace after startup (by
//! default the workload expiry: the time a registered workload has to come back before it
//! would have been expired anyway), a destination with no endpoints is not sent; proxies keep the endpoints they had rather than
//! see every service go empty for the seconds their peers take to reconnect.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::{self as pb, proxy_message};
use trellis_identity::SpiffeId;
use trellis_model::{Target, Workload};

use crate::compile::{MeshView, compile_indexed};
use crate::discovery::cache::Compiled;
use crate::discovery::grpc::{OutKind, OutMessage};
use crate::registry::StreamId;
use crate::state::Shared;
use crate::wire;

pub(crate) mod cache;
pub(crate) mod delta;
pub(crate) mod grpc;
mod lock;
pub(crate) mod shapes;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod wake;

#[derive(Debug)]
pub struct DiscoveryService {
    shared: Arc<Shared>,
    next_stream: AtomicU64,
    /// The mesh root namespace: PeerAuthentications there without a selector are mesh-wide.
    root_namespace: Arc<str>,
    /// `--default-inbound-policy`.
    default_inbound_policy: trellis_model::authz::DefaultPolicy,
    /// `--outbound-traffic-policy`.
    outbound_traffic_policy: crate::compile::outbound_policy::OutboundTrafficPolicy,
}

impl DiscoveryService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            next_stream: AtomicU64::new(1),
            root_namespace: Arc::from(crate::DEFAULT_ROOT_NAMESPACE),
            default_inbound_policy: Default::default(),
            outbound_traffic_policy: Default::default(),
        }
    }

    /// Sets the mesh's outbound traffic policy (`--outbound-traffic-policy`).
    pub fn with_outbound_traffic_policy(
        mut self,
        policy: crate::compile::outbound_policy::OutboundTrafficPolicy,
    ) -> Self {
        self.outbound_traffic_policy = policy;
        self
    }

    /// Sets the inbound authorization default (`--default-inbound-policy`).
    pub fn with_default_inbound_policy(
        mut self,
        default: trellis_model::authz::DefaultPolicy,
    ) -> Self {
        self.default_inbound_policy = default;
        self
    }

    /// Sets the mesh root namespace (`--root-namespace`).
    pub fn with_root_namespace(mut self, namespace: &str) -> Self {
        self.root_namespace = Arc::from(namespace);
        self
    }

    /// The gRPC route of `trellis.discovery.v1.Discovery` (see `grpc`).
    pub fn into_server(self) -> grpc::DiscoveryServer {
        grpc::DiscoveryServer::new(self)
    }
}

/// What one `Discovery.Stream` call answers: the stream's outbound messages.
pub(crate) type OutStream = Pin<Box<dyn Stream<Item = Result<OutMessage, Status>> + Send>>;

impl DiscoveryService {
    /// Starts one proxy's stream (`Discovery.Stream`): its session is the response body.
    fn stream(&self, request: Request<Streaming<pb::ProxyMessage>>) -> Response<OutStream> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let peer = request.remote_addr();
        let mut session = Session::new(self.shared.clone(), id);
        session.root_namespace = self.root_namespace.clone();
        session.default_inbound_policy = self.default_inbound_policy;
        session.outbound_traffic_policy = self.outbound_traffic_policy;
        Response::new(Box::pin(session.into_stream(request.into_inner(), peer)))
    }
}

/// One proxy's stream.
struct Session {
    shared: Arc<Shared>,
    id: StreamId,
    /// What the last step produced, handed to HTTP/2 one message per poll. Boxed: a stream
    /// keeps the queue's slots between changes, a pointer each rather than a whole message
    /// (an InboundPolicy is a few hundred bytes inline).
    outbox: VecDeque<Box<OutMessage>>,
    /// Set when the stream is to end: its final status (`None`: OK, nothing to tell), sent
    /// once the outbox is empty.
    end: Option<Option<Status>>,
    /// Woken by a registry or config publication that can concern this stream (see `wake`).
    wake: Arc<tokio::sync::Notify>,
    /// The config this stream's inbound policy was last computed from: a wake-up with a newer
    /// one recomputes it.
    seen_config: Option<Arc<crate::store::ConfigSnapshot>>,
    /// Set by Hello: the proxy id and workload, kept to re-register after an expiry.
    hello: Option<(String, Arc<Workload>)>,
    /// What the proxy said about its versions on Hello, kept to re-register after an expiry.
    versions: crate::protocol_version::ProxyVersions,
    /// Each subscribed target and the value it was last sent: `None` when nothing was sent yet
    /// (held back); a sent value's `dest` is `None` for "nothing there". Shared with every
    /// stream sent the same value (see `cache`).
    subscriptions: BTreeMap<Target, Option<Arc<Compiled>>>,
    version: u64,
    root_namespace: Arc<str>,
    default_inbound_policy: trellis_model::authz::DefaultPolicy,
    outbound_traffic_policy: crate::compile::outbound_policy::OutboundTrafficPolicy,
    /// The InboundPolicy message last sent (after Welcome, then on change), shared with the
    /// streams of the same workload shape (see `shapes`).
    inbound_policy: Option<Arc<pb::InboundPolicy>>,
    /// The gateway config last sent (`None`: never sent: no Gateway selects the workload).
    gateway: Option<pb::GatewayConfig>,
    /// Updates sent because of a change and not yet ACKed: (version, when the change reached
    /// this stream), oldest first, for the propagation-latency histogram. Bounded.
    unacked: std::collections::VecDeque<(u64, Instant)>,
    /// When the change being pushed reached this stream; `None` for pushes a subscription
    /// asked for.
    changed_at: Option<Instant>,
    /// For `Programmed`: the highest version ACKed, and the config revision this stream will be
    /// in sync with once that version reaches the one noted.
    acked: u64,
    awaiting_sync: Option<(u64, u64)>,
    /// Endpoint deltas on this stream: negotiated on Hello, base versions, deltas to resend.
    deltas: delta::StreamDeltas,
}

/// Most updates remembered for propagation timing per stream; older ones are forgotten.
const MAX_UNACKED: usize = 256;

/// Why a stream ended early; becomes the stream's final status.
#[derive(Debug)]
enum End {
    /// The proxy went away or the server is stopping: nothing to tell it.
    Quiet,
    Status(Status),
}

impl Session {
    fn new(shared: Arc<Shared>, id: StreamId) -> Self {
        Self {
            shared,
            id,
            outbox: VecDeque::new(),
            end: None,
            wake: Arc::new(tokio::sync::Notify::new()),
            seen_config: None,
            hello: None,
            versions: Default::default(),
            subscriptions: BTreeMap::new(),
            version: 0,
            root_namespace: Arc::from(crate::DEFAULT_ROOT_NAMESPACE),
            default_inbound_policy: Default::default(),
            outbound_traffic_policy: Default::default(),
            inbound_policy: None,
            gateway: None,
            unacked: std::collections::VecDeque::new(),
            changed_at: None,
            acked: 0,
            awaiting_sync: None,
            deltas: Default::default(),
        }
    }

    /// Reports the proxy in sync with config `revision` once every update sent so far is ACKed
    /// (at once when nothing is outstanding).
    fn note_sync(&mut self, revision: u64) {
        if self.hello.is_none() {
            return;
        }
        if self.acked >= self.version {
            self.awaiting_sync = None;
            self.shared.programmed.synced(self.id, revision);
        } else {
            self.awaiting_sync = Some((self.version, revision));
        }
    }

    /// The stream's outbound messages: each poll hands over the next message the session has
    /// to send, running it (reading the proxy's messages, waking on changes) until it has one.
    fn into_stream(
        self,
        inbound: Streaming<pb::ProxyMessage>,
        peer: Option<std::net::SocketAddr>,
    ) -> impl Stream<Item = Result<OutMessage, Status>> + Send + 'static {
        // From now on a config change that may concern any stream wakes this one.
        self.shared.wakers.open(self.id, &self.wake);
        let holding_back = Instant::now() < self.shared.hold_back_until;
        let live = Live {
            session: self,
            inbound,
            peer,
            holding_back,
        };
        futures_util::stream::unfold(live, |mut live| async move {
            let next = live.next().await?;
            Some((next, live))
        })
    }

    fn handle(&mut self, msg: pb::ProxyMessage) -> Result<(), End> {
        let Some(kind) = msg.kind else {
            return Err(End::Status(Status::invalid_argument("empty ProxyMessage")));
        };
        if self.hello.is_none() && !matches!(kind, proxy_message::Kind::Hello(_)) {
            return Err(End::Status(Status::failed_precondition(
                "the first message must be Hello",
            )));
        }
        let id = self.id;
        match kind {
            proxy_message::Kind::Hello(hello) => self.hello(hello),
            proxy_message::Kind::Subscribe(sub) => {
                let target = wire::target_from_wire(sub.target)
                    .map_err(|e| End::Status(Status::invalid_argument(e.to_string())))?;
                self.shared.with_registry(|r| {
                    r.set_subscribed(id, &target, true);
                    ((), false)
                });
                // Before compiling: a publication from now on wakes this stream.
                self.shared
                    .wakers
                    .set_subscribed(&target, id, &self.wake, true);
                self.shared.programmed.subscribed(id, &target, true);
                // Always answer a Subscribe, even with "nothing there", so the proxy stops
                // waiting; a repeated Subscribe is answered again.
                self.subscriptions.insert(target.clone(), None);
                let revision = self.shared.config_rx.borrow().revision;
                self.push(&target);
                self.note_sync(revision);
                Ok(())
            }
            proxy_message::Kind::Unsubscribe(unsub) => {
                let target = wire::target_from_wire(unsub.target)
                    .map_err(|e| End::Status(Status::invalid_argument(e.to_string())))?;
                self.subscriptions.remove(&target);
                self.shared
                    .wakers
                    .set_subscribed(&target, id, &self.wake, false);
                self.deltas.forget(&target);
                self.shared.with_registry(|r| {
                    r.set_subscribed(id, &target, false);
                    ((), false)
                });
                self.shared.programmed.subscribed(id, &target, false);
                Ok(())
            }
            proxy_message::Kind::Ack(ack) => {
                self.shared.metrics.ack();
                self.ack_propagation(ack.version);
                self.acked = self.acked.max(ack.version);
                if let Some((version, revision)) = self.awaiting_sync.take() {
                    if self.acked >= version {
                        self.shared.programmed.synced(id, revision);
                    } else {
                        self.awaiting_sync = Some((version, revision));
                    }
                }
                self.shared.with_registry(|r| {
                    r.ack(id, ack.version);
                    ((), false)
                });
                Ok(())
            }
            proxy_message::Kind::Nack(nack) => {
                self.shared.metrics.nack();
                tracing::warn!(stream = id, version = nack.version, error = %nack.error, "proxy refused an update");
                self.shared.with_registry(|r| {
                    r.nack(id, &nack.error);
                    ((), false)
                });
                // A delta the proxy could not apply: send the whole destination, as to a new
                // subscriber.
                if let Some(target) = self.deltas.nacked(nack.version)
                    && self.subscriptions.contains_key(&target)
                {
                    self.subscriptions.insert(target.clone(), None);
                    self.push(&target);
                }
                Ok(())
            }
            proxy_message::Kind::Heartbeat(_) => {
                let alive = self
                    .shared
                    .with_registry(|r| (r.heartbeat(id, Instant::now()), false));
                if !alive {
                    // Expired while the stream stayed open (e.g. heartbeats delayed): register
                    // again rather than leave a live proxy out of the mesh.
                    if let Some((proxy_id, workload)) = self.hello.clone() {
                        tracing::info!(stream = id, workload = %workload.name, "re-registering expired workload on heartbeat");
                        let versions = self.versions.clone();
                        self.shared.with_registry(|r| {
                            let changed = r.reregister(id, &proxy_id, workload, Instant::now());
                            r.set_versions(id, versions);
                            ((), changed)
                        });
                    }
                }
                Ok(())
            }
        }
    }

    fn hello(&mut self, hello: pb::Hello) -> Result<(), End> {
        let invalid = |e: String| End::Status(Status::invalid_argument(e));
        let protocol = crate::protocol_version::negotiate(
            hello.protocol_version,
            trellis_api::DISCOVERY_PROTOCOL_MIN,
            trellis_api::DISCOVERY_PROTOCOL,
        )
        .map_err(|e| {
            tracing::warn!(stream = self.id, proxy = %hello.proxy_id, error = %e, "proxy refused");
            End::Status(Status::failed_precondition(e.to_string()))
        })?;
        self.versions = crate::protocol_version::ProxyVersions {
            proxy_version: hello.proxy_version.clone(),
            protocol,
            endpoint_deltas: crate::protocol_version::endpoint_deltas(&hello.features),
        };
        self.deltas.enable(self.versions.endpoint_deltas);
        let w = hello
            .workload
            .ok_or_else(|| invalid("Hello.workload is required".into()))?;
        let workload = wire::workload_from_wire(w, &self.shared.trust_domain)
            .map(Arc::new)
            .map_err(|e| invalid(e.to_string()))?;
        let identity = SpiffeId::new(
            &self.shared.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
        .map_err(|e| invalid(e.to_string()))?;
        if self.hello.is_none() {
            self.shared.metrics.proxy_connected();
        }
        tracing::info!(
            stream = self.id, proxy = %hello.proxy_id, workload = %workload.name,
            namespace = %workload.namespace, inbound = %workload.inbound_address,
            proxy_version = %hello.proxy_version, protocol, "proxy registered"
        );
        let (id, proxy_id) = (self.id, hello.proxy_id.clone());
        let registered = workload.clone();
        let versions = self.versions.clone();
        self.shared.with_registry(|r| {
            let changed = r.register(id, &proxy_id, registered, Instant::now());
            r.set_versions(id, versions);
            ((), changed)
        });
        self.hello = Some((hello.proxy_id, workload));
        let heartbeat_interval_ms =
            u64::try_from(self.shared.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        let welcome = pb::Welcome {
            identity: identity.to_string(),
            heartbeat_interval_ms,
            protocol_version: protocol,
            control_version: env!("CARGO_PKG_VERSION").to_string(),
            features: self.deltas.features(),
        };
        self.send(OutKind::Welcome(welcome));
        if let Some((_, workload)) = &self.hello {
            self.shared.programmed.connected(self.id, workload);
        }
        let config = self.shared.config_rx.borrow().clone();
        self.seen_config = Some(config.clone());
        self.push_inbound_policy();
        self.push_gateway();
        self.note_sync(config.revision);
        Ok(())
    }

    /// Compiles this workload's gateway listeners (`compile::gateway`, once per workload
    /// shape per snapshot: see `shapes`) and sends them when they changed; nothing for a
    /// workload no Gateway has ever selected.
    fn push_gateway(&mut self) {
        let Some((_, workload)) = &self.hello else {
            return;
        };
        let config = self.shared.config_rx.borrow().clone();
        if config.gateways.is_empty() && self.gateway.is_none() {
            // No Gateway can select it: compiling would give the empty config not sent.
            return;
        }
        let workloads = self.shared.workloads();
        let compiled = self.shared.gateways.get(
            &(config.clone(), workloads.clone()),
            |a, b| Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1),
            shapes::Shape::of(workload),
            || {
                let view = MeshView {
                    services: &config.services,
                    traffic: &config.traffic,
                    workloads: &workloads,
                    trust_domain: &self.shared.trust_domain,
                };
                let compiled =
                    crate::compile::gateway::compile_gateway(view, &config.gateways, workload);
                shapes::GatewayMessage {
                    serves: !compiled.gateways.is_empty(),
                    message: pb::GatewayConfig {
                        config_json: serde_json::to_string(&compiled.config).unwrap_or_default(),
                        problems: compiled.problems,
                    },
                }
            },
        );
        if !compiled.serves && self.gateway.is_none() {
            return;
        }
        let message = &compiled.message;
        if self.gateway.as_ref() == Some(message) {
            return;
        }
        for problem in &message.problems {
            tracing::warn!(stream = self.id, workload = %workload.name, %problem, "gateway config not served in full");
        }
        let message = message.clone();
        if self.gateway.is_none() {
            // Its listeners' backends list endpoints: every publication may change them.
            self.shared.wakers.set_every(self.id, &self.wake, true);
        }
        self.gateway = Some(message.clone());
        self.send(OutKind::Gateway(message));
    }

    /// Compiles this workload's inbound policies (mTLS, authorization, JWT, telemetry, rate
    /// limits, Wasm plugins, outbound traffic policy) and sends them when they changed.
    fn push_inbound_policy(&mut self) {
        let Some((_, workload)) = &self.hello else {
            return;
        };
        // One snapshot for every field, so that they all describe the same config.
        let config = self.shared.config_rx.borrow().clone();
        let mode = (
            self.root_namespace.clone(),
            self.default_inbound_policy,
            self.outbound_traffic_policy,
        );
        let policy = self.shared.inbound_policies.get(
            &(config.clone(), mode),
            |a, b| Arc::ptr_eq(&a.0, &b.0) && a.1 == b.1,
            shapes::Shape::of(workload),
            || {
                let root = &*self.root_namespace;
                pb::InboundPolicy {
                    telemetry_json: crate::compile::telemetry::telemetry_json(
                        &config.telemetries,
                        crate::compile::telemetry::MeshInputs {
                            mesh_configs: &config.mesh_configs,
                            service_entries: &config.traffic.service_entries.by_key,
                        },
                        root,
                        workload,
                    ),
                    authorization_json: crate::compile::authz::authorization_json(
                        &config.authorization_policies,
                        &config.services,
                        root,
                        self.default_inbound_policy,
                        workload,
                    ),
                    rate_limits_json: crate::compile::ratelimit::rate_limits_json(
                        &config.rate_limit_policies,
                        &config.services,
                        root,
                        workload,
                    ),
                    request_authentication_json: crate::compile::authn::request_authentication_json(
                        &config.request_authentications,
                        &config.services,
                        root,
                        workload,
                    ),
                    wasm_plugins_json: crate::compile::wasm::wasm_plugins_json(
                        &config.wasm_plugins,
                        &config.services,
                        root,
                        workload,
                    ),
                    outbound_traffic_policy: self.outbound_traffic_policy.to_wire(),
                    h2_upgrade_policy: crate::compile::h2_upgrade::mesh_h2_upgrade(
                        &config.mesh_configs,
                        root,
                    ) as i32,
                    ..crate::compile::mtls::inbound_policy(
                        &config.peer_authentications,
                        root,
                        workload,
                    )
                }
            },
        );
        // Streams of one shape share the value: equal to what was sent means the same pointer
        // (see `shapes`), and only a changed policy is compared by value.
        if self
            .inbound_policy
            .as_ref()
            .is_some_and(|sent| Arc::ptr_eq(sent, &policy) || **sent == *policy)
        {
            return;
        }
        self.inbound_policy = Some(policy.clone());
        self.send(OutKind::InboundPolicy((*policy).clone()));
    }
    /// Pushes what a config or workload change altered, timing each update until its ACK.
    /// The inbound policies read only the config and this stream's own workload (whose
    /// changes come by Hello, which pushes them), so a registry change alone skips them:
    /// with thousands of streams, each registration woke every stream to recompute six
    /// policies that could not have changed.
    fn push_changed(&mut self) {
        // Taken first: what is pushed below is at least this recent.
        let config = self.shared.config_rx.borrow().clone();
        let revision = config.revision;
        let config_changed = self.hello.is_some()
            && !self
                .seen_config
                .as_ref()
                .is_some_and(|seen| Arc::ptr_eq(seen, &config));
        if config_changed {
            self.seen_config = Some(config);
            self.push_inbound_policy();
        }
        self.push_gateway();
        self.changed_at = Some(Instant::now());
        self.push_changes();
        self.changed_at = None;
        self.note_sync(revision);
    }

    /// An ACK covers its version (versions of one stream only grow): observe it, forget older.
    fn ack_propagation(&mut self, version: u64) {
        while let Some(&(v, at)) = self.unacked.front() {
            if v > version {
                break;
            }
            self.unacked.pop_front();
            if v == version {
                self.shared.metrics.propagated(at.elapsed());
            }
        }
    }

    /// Pushes each subscribed target that changed (see [`Session::push_one`]).
    fn push_changes(&mut self) {
        // Taken out for the walk, so that the targets are not copied to be borrowed.
        let mut subscriptions = std::mem::take(&mut self.subscriptions);
        for (target, sent) in &mut subscriptions {
            self.push_one(target, sent);
        }
        self.subscriptions = subscriptions;
    }

    /// Compiles `target` and sends it if it differs from what this stream last sent for it.
    fn push(&mut self, target: &Target) {
        let Some(mut sent) = self.subscriptions.get(target).cloned() else {
            return;
        };
        self.push_one(target, &mut sent);
        if let Some(slot) = self.subscriptions.get_mut(target) {
            *slot = sent;
        }
    }

    /// Compiles `target` and sends it if it differs from `sent` (what this stream last sent
    /// for it, `None`: nothing yet), which becomes what was sent.
    fn push_one(&mut self, target: &Target, sent: &mut Option<Arc<Compiled>>) {
        let compiled = self.compiled(target);
        if matches!(sent, Some(sent) if sent.same_as(&compiled)) {
            return;
        }
        // Startup hold-back (see the module docs): the endpoints may only be not back yet.
        let empty = compiled
            .dest
            .as_ref()
            .is_some_and(|d| d.endpoints.is_empty());
        if empty && Instant::now() < self.shared.hold_back_until {
            return;
        }
        self.version += 1;
        let update = self.deltas.update(
            self.version,
            target,
            sent.as_ref(),
            &compiled,
            &self.shared.metrics,
        );
        *sent = Some(compiled);
        if let Some(at) = self.changed_at {
            if self.unacked.len() >= MAX_UNACKED {
                self.unacked.pop_front();
            }
            self.unacked.push_back((self.version, at));
        }
        self.shared.metrics.push();
        self.send(OutKind::Update(update));
    }

    /// `target` compiled against the current snapshot, shared with every stream that asks for
    /// it before the next change (see `cache`).
    fn compiled(&self, target: &Target) -> Arc<Compiled> {
        let config = self.shared.config_rx.borrow().clone();
        let workloads = self.shared.workloads();
        let config_rx = &self.shared.config_rx;
        self.shared
            .compiled
            .get(config_rx, &config, &workloads, target, || {
                let view = MeshView {
                    services: &config.services,
                    traffic: &config.traffic,
                    workloads: &workloads,
                    trust_domain: &self.shared.trust_domain,
                };
                compile_indexed(view, Some(workloads.index()), target)
            })
    }

    /// Queues `kind` for the proxy: handed to HTTP/2 as the stream's next message.
    fn send(&mut self, kind: OutKind) {
        self.outbox
            .push_back(Box::new(OutMessage { kind: Some(kind) }));
    }
}

/// A session with what its stream reads: the proxy's messages and the startup hold-back.
struct Live {
    session: Session,
    inbound: Streaming<pb::ProxyMessage>,
    peer: Option<std::net::SocketAddr>,
    holding_back: bool,
}

impl Live {
    /// The stream's next message: what the session queued, else what it queues once the proxy
    /// says something or a change wakes it; `None` once the stream has ended (after its final
    /// status, if any).
    async fn next(&mut self) -> Option<Result<OutMessage, Status>> {
        loop {
            let session = &mut self.session;
            if let Some(msg) = session.outbox.pop_front() {
                return Some(Ok(*msg));
            }
            if let Some(end) = &mut session.end {
                return end.take().map(Err);
            }
            let hold_back_until = session.shared.hold_back_until;
            let step = tokio::select! {
                () = session.shared.shutdown.cancelled() => Err(End::Quiet),
                () = tokio::time::sleep_until(hold_back_until), if self.holding_back => {
                    self.holding_back = false;
                    session.push_changes();
                    Ok(())
                }
                msg = self.inbound.message() => match msg {
                    Ok(Some(msg)) => session.handle(msg),
                    Ok(None) => Err(End::Quiet),
                    Err(status) => {
                        tracing::debug!(stream = session.id, %status, "stream error");
                        Err(End::Quiet)
                    }
                },
                () = session.wake.notified() => {
                    session.push_changed();
                    Ok(())
                }
            };
            match step {
                Ok(()) => {}
                Err(End::Quiet) => session.end = Some(None),
                Err(End::Status(status)) => {
                    tracing::warn!(stream = session.id, peer = ?self.peer, %status, "closing discovery stream");
                    session.end = Some(Some(status));
                }
            }
        }
    }
}

impl Drop for Session {
    /// The stream ended (the proxy left, the server stops, or it was refused): the session
    /// leaves the wake index and its workload is marked disconnected.
    fn drop(&mut self) {
        self.shared
            .wakers
            .remove(self.id, self.subscriptions.keys());
        if let Some((_, workload)) = &self.hello {
            self.shared.programmed.disconnected(self.id);
            tracing::info!(stream = self.id, workload = %workload.name, namespace = %workload.namespace, "proxy disconnected");
            self.shared.metrics.proxy_disconnected();
            let id = self.id;
            self.shared.with_registry(|r| {
                r.disconnect(id, Instant::now());
                ((), false)
            });
        }
    }
}
