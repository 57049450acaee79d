//! The stream task: connect, Hello, re-subscribe, then apply Updates and send heartbeats until
//! the stream breaks; back off and do it again, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use trellis_api::discovery::{
    self as pb, control_message, discovery_client::DiscoveryClient, proxy_message,
};
use trellis_model::Target;

use super::backoff::Backoff;
use super::{DiscoveryConfig, Inner, SWEEP_PERIOD, replace_if_changed, wire};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Lower bound on the heartbeat period, whatever the control plane asks.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("invalid control plane address {control:?}: {source}")]
    Address {
        control: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

pub(super) async fn run(
    inner: Arc<Inner>,
    config: DiscoveryConfig,
    mut subscribe_rx: mpsc::UnboundedReceiver<Target>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    // Bounded by the shutdown token: every wait below also watches it.
    loop {
        let result = session(&inner, &config, &mut subscribe_rx, &shutdown, &mut backoff).await;
        inner.status().connected = false;
        match result {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(control = %config.control, error = %err, "discovery disconnected; serving last known config")
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn message(kind: proxy_message::Kind) -> pb::ProxyMessage {
    pb::ProxyMessage { kind: Some(kind) }
}

fn subscribe(target: &Target) -> pb::ProxyMessage {
    message(proxy_message::Kind::Subscribe(pb::Subscribe {
        target: Some(wire::target_to_wire(target)),
    }))
}

/// One connection. `Ok` only on shutdown.
async fn session(
    inner: &Inner,
    config: &DiscoveryConfig,
    subscribe_rx: &mut mpsc::UnboundedReceiver<Target>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let endpoint = Endpoint::from_shared(control_uri(&config.control))
        .map_err(|source| SessionError::Address {
            control: config.control.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        // Notices a control plane that vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        channel = endpoint.connect() => channel.map_err(SessionError::Connect)?,
    };

    let (out_tx, out_rx) = mpsc::unbounded_channel();
    // Everything queued so far is covered by re-subscribing every live target below.
    while subscribe_rx.try_recv().is_ok() {}
    let hello = pb::Hello {
        proxy_id: config.proxy_id.clone(),
        workload: Some(wire::workload_to_wire(&config.workload)),
        join_token: config.join_token.clone().unwrap_or_default(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: announced_protocol(),
        features: announced_features(),
    };
    inner.forget_versions();
    let _ = out_tx.send(message(proxy_message::Kind::Hello(hello)));
    for target in inner.live_targets() {
        let _ = out_tx.send(subscribe(&target));
    }
    let mut client = DiscoveryClient::new(channel.clone());
    let mut inbound = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        response = client.stream(UnboundedReceiverStream::new(out_rx)) => response?.into_inner(),
    };
    tracing::debug!(control = %config.control, "discovery stream open");

    let mut heartbeat: Option<Interval> = None;
    let mut sweep = tokio::time::interval(SWEEP_PERIOD);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            Some(target) = subscribe_rx.recv() => {
                let _ = out_tx.send(subscribe(&target));
            }
            msg = inbound.message() => {
                let kind = msg?.ok_or(SessionError::Closed)?.kind;
                match kind {
                    Some(control_message::Kind::Welcome(welcome)) => {
                        tracing::info!(
                            control = %config.control, identity = %welcome.identity,
                            control_version = %welcome.control_version,
                            protocol = welcome.protocol_version.max(1),
                            "registered with the control plane"
                        );
                        // Connected means registered: the control plane has answered Hello.
                        {
                            let mut status = inner.status();
                            status.identity = Some(welcome.identity.clone());
                            status.connected = true;
                        }
                        // Wakes the certificate manager, which certifies on this connection.
                        inner.registration.send_replace(Some(super::Registration {
                            identity: welcome.identity,
                            channel: channel.clone(),
                        }));
                        let period = Duration::from_millis(welcome.heartbeat_interval_ms).max(MIN_HEARTBEAT);
                        let mut ticker = tokio::time::interval(period);
                        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        heartbeat = Some(ticker);
                        // A full handshake: the next failure starts backing off from the bottom.
                        backoff.reset();
                    }
                    Some(control_message::Kind::Update(update)) => {
                        let _ = out_tx.send(inner.apply_update(update));
                    }
                    Some(control_message::Kind::InboundPolicy(policy)) => {
                        inner.outbound_policy.set_from_wire(policy.outbound_traffic_policy);
                        inner.mesh_h2_upgrade.set_from_wire(policy.h2_upgrade_policy);
                        replace_if_changed(&inner.authorization, &policy.authorization_json);
                        replace_if_changed(&inner.rate_limits, &policy.rate_limits_json);
                        replace_if_changed(&inner.wasm_plugins, &policy.wasm_plugins_json);
                        replace_if_changed(&inner.request_authn, &policy.request_authentication_json);
                        replace_if_changed(&inner.telemetry, &policy.telemetry_json);
                        let policy = crate::tls::InboundPolicy::from_wire(&policy);
                        inner.inbound_policy.send_if_modified(|current| {
                            let changed = *current != policy;
                            *current = policy;
                            changed
                        });
                    }
                    Some(control_message::Kind::Gateway(gateway)) => {
                        for problem in &gateway.problems {
                            tracing::warn!(%problem, "gateway config not served in full");
                        }
                        replace_if_changed(&inner.gateway, &gateway.config_json);
                    }
                    None => tracing::debug!("ignoring an empty control message"),
                }
            }
            _ = tick(&mut heartbeat) => {
                let _ = out_tx.send(message(proxy_message::Kind::Heartbeat(pb::Heartbeat {})));
            }
            _ = sweep.tick() => {
                for target in inner.sweep_idle(Instant::now()) {
                    tracing::debug!(%target, "unsubscribing idle target");
                    let unsub = pb::Unsubscribe { target: Some(wire::target_to_wire(&target)) };
                    let _ = out_tx.send(message(proxy_message::Kind::Unsubscribe(unsub)));
                }
            }
        }
    }
}

/// Hidden, for the cross-version tests: `TRELLIS_DISCOVERY_PROTOCOL=1` makes this proxy speak
/// as a proxy of the previous protocol revision does, leaving out `Hello.protocol_version`.
const PROTOCOL_ENV: &str = "TRELLIS_DISCOVERY_PROTOCOL";

/// The `Hello.protocol_version` to send: this build's revision, or the revision the hidden
/// environment variable names, sent as a proxy of that revision would (revision 1: absent).
fn announced_protocol() -> u32 {
    match std::env::var(PROTOCOL_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(1) => 0,
        Some(revision) => revision,
        None => trellis_api::DISCOVERY_PROTOCOL,
    }
}

/// The `Hello.features` to send: every feature this proxy applies (endpoint deltas), or none
/// when it speaks as a proxy of revision 1, from before features.
fn announced_features() -> Vec<i32> {
    if announced_protocol() == 0 {
        Vec::new()
    } else {
        vec![pb::Feature::EndpointDelta as i32]
    }
}

/// Accepts `ip:port` as well as `http://ip:port`: a bare address is what users type.
pub(super) fn control_uri(control: &str) -> String {
    if control.contains("://") {
        control.to_string()
    } else {
        format!("http://{control}")
    }
}

/// Ticks when heartbeats have started (after Welcome); never before.
async fn tick(heartbeat: &mut Option<Interval>) -> Instant {
    match heartbeat {
        Some(ticker) => ticker.tick().await,
        None => std::future::pending().await,
    }
}
