//! Simulated proxies: discovery streams that say Hello, subscribe, heartbeat at the interval
//! Welcome names and ACK every Update as trellis-proxy does, recording when each Update arrived
//! and how many bytes it was.
//!
//! Updates are decoded into a few "lite" messages that name only the fields the bench reads;
//! prost skips the rest (endpoints stay undecoded bytes), so the load tool's own decoding cost
//! stays small next to the control plane's work, which is what is measured.
//!
//! The proxies take endpoint deltas (Hello lists the feature, as trellis-proxy's does) and apply
//! them to the endpoint count they hold per target, Nacking one based on another version.

use std::time::Duration;

use anyhow::{Context, Result};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use trellis_api::discovery as pb;

/// `ControlMessage` with only Welcome and Update read.
#[derive(Clone, PartialEq, Message)]
pub struct ControlLite {
    #[prost(oneof = "KindLite", tags = "1, 2")]
    pub kind: Option<KindLite>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum KindLite {
    #[prost(message, tag = "1")]
    Welcome(WelcomeLite),
    #[prost(message, tag = "2")]
    Update(UpdateLite),
}

#[derive(Clone, PartialEq, Message)]
pub struct WelcomeLite {
    #[prost(uint64, tag = "2")]
    pub heartbeat_interval_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct UpdateLite {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, optional, tag = "2")]
    pub target: Option<pb::Target>,
    #[prost(message, optional, tag = "3")]
    pub destination: Option<DestinationLite>,
    #[prost(message, optional, tag = "4")]
    pub endpoint_delta: Option<EndpointDeltaLite>,
}

/// `EndpointDelta` with the added endpoints left as bytes: counted, not decoded.
#[derive(Clone, PartialEq, Message)]
pub struct EndpointDeltaLite {
    #[prost(uint64, tag = "1")]
    pub base_version: u64,
    #[prost(string, repeated, tag = "2")]
    pub removed: Vec<String>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub added: Vec<Vec<u8>>,
}

/// What a simulated proxy holds for one target: the version in force, and its destination's
/// service name and endpoint count.
#[derive(Clone, Debug, Default)]
struct Held {
    version: u64,
    service: String,
    endpoints: usize,
}

/// Applies an Update to what is held for its target, as trellis-proxy does; `Err` for a
/// delta it cannot apply (the Nack's text).
fn apply(
    held: &mut std::collections::HashMap<String, Held>,
    u: &UpdateLite,
) -> Result<(String, usize, Option<u32>), String> {
    let key = format!("{:?}", u.target);
    if let Some(delta) = &u.endpoint_delta {
        let h = held
            .get_mut(&key)
            .filter(|h| h.version == delta.base_version)
            .ok_or_else(|| {
                format!(
                    "endpoint_delta.base_version: {} is not in force",
                    delta.base_version
                )
            })?;
        h.endpoints = h
            .endpoints
            .checked_sub(delta.removed.len())
            .ok_or("endpoint_delta.removed: more than held")?
            + delta.added.len();
        h.version = u.version;
        return Ok((h.service.clone(), h.endpoints, None));
    }
    let (service, endpoints, marker) = match &u.destination {
        Some(d) => (
            d.service_name.clone(),
            d.endpoints.len(),
            marker(&d.traffic_json),
        ),
        None => (String::new(), 0, None),
    };
    held.insert(
        key,
        Held {
            version: u.version,
            service: service.clone(),
            endpoints,
        },
    );
    Ok((service, endpoints, marker))
}

#[derive(Clone, PartialEq, Message)]
pub struct DestinationLite {
    #[prost(string, tag = "2")]
    pub service_name: String,
    /// Endpoints left as bytes: counted, not decoded.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub endpoints: Vec<Vec<u8>>,
    #[prost(string, tag = "7")]
    pub traffic_json: String,
}

/// Encodes ProxyMessages; decodes ControlMessages as [`ControlLite`] with their size in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimCodec;

#[derive(Debug)]
pub struct SimEncoder;
#[derive(Debug)]
pub struct SimDecoder;

impl Codec for SimCodec {
    type Encode = pb::ProxyMessage;
    type Decode = (ControlLite, usize);
    type Encoder = SimEncoder;
    type Decoder = SimDecoder;
    fn encoder(&mut self) -> SimEncoder {
        SimEncoder
    }
    fn decoder(&mut self) -> SimDecoder {
        SimDecoder
    }
}

impl Encoder for SimEncoder {
    type Item = pb::ProxyMessage;
    type Error = Status;
    fn encode(&mut self, item: pb::ProxyMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }
}

impl Decoder for SimDecoder {
    type Item = (ControlLite, usize);
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        use prost::bytes::Buf;
        let len = src.remaining();
        let msg = ControlLite::decode(src).map_err(|e| Status::internal(format!("decode: {e}")))?;
        Ok(Some((msg, len)))
    }
}

/// What one simulated proxy saw: an Update, when its ACK was handed to the stream.
#[derive(Clone, Debug)]
pub struct UpdateEvent {
    pub proxy: u32,
    pub service: String,
    pub bytes: usize,
    pub endpoints: usize,
    /// The `change-N` marker in the route config, if any.
    pub marker: Option<u32>,
    pub acked_at: Instant,
}

/// The workload a simulated proxy registers.
#[derive(Clone, Debug)]
pub struct SimWorkload {
    pub name: String,
    pub app: String,
    pub inbound: String,
    pub extra_labels: Vec<(String, String)>,
}

impl SimWorkload {
    pub fn hello(&self, proxy_id: &str) -> pb::ProxyMessage {
        let mut labels: std::collections::HashMap<String, String> =
            self.extra_labels.iter().cloned().collect();
        labels.insert("app".into(), self.app.clone());
        pb::ProxyMessage {
            kind: Some(pb::proxy_message::Kind::Hello(pb::Hello {
                proxy_id: proxy_id.to_string(),
                workload: Some(pb::Workload {
                    name: self.name.clone(),
                    namespace: "default".into(),
                    service_account: "default".into(),
                    labels,
                    inbound_address: self.inbound.clone(),
                    ports: vec![9080],
                    admin_address: String::new(),
                }),
                join_token: String::new(),
                proxy_version: "bench-cp".into(),
                protocol_version: trellis_api::DISCOVERY_PROTOCOL,
                features: vec![pb::Feature::EndpointDelta as i32],
            })),
        }
    }
}

pub fn service_target(name: &str, port: u32) -> pb::Target {
    pb::Target {
        kind: Some(pb::target::Kind::Service(pb::ServiceTarget {
            name: name.to_string(),
            namespace: "default".into(),
            port,
        })),
    }
}

fn msg(kind: pb::proxy_message::Kind) -> pb::ProxyMessage {
    pb::ProxyMessage { kind: Some(kind) }
}

/// One HTTP/2 connection to the discovery port (a real proxy has its own).
pub async fn connect(discovery: &str) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{discovery}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {discovery}"))
}

/// An open discovery stream: what to send on it, and what arrives.
pub struct SimStream {
    pub tx: mpsc::Sender<pb::ProxyMessage>,
    pub inbound: tonic::Streaming<(ControlLite, usize)>,
}

/// Opens a stream and sends `first` on it.
pub async fn open(channel: Channel, first: Vec<pb::ProxyMessage>) -> Result<SimStream> {
    let (tx, rx) = mpsc::channel(64);
    for m in first {
        tx.send(m).await.ok().context("stream closed")?;
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("discovery not ready")?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/trellis.discovery.v1.Discovery/Stream",
    );
    let resp = grpc
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            SimCodec,
        )
        .await
        .context("opening the discovery stream")?;
    Ok(SimStream {
        tx,
        inbound: resp.into_inner(),
    })
}

/// Registers a workload and leaves: Hello, wait for Welcome (bounded), close. The control
/// plane keeps the workload (and its endpoint) until the workload expiry.
pub async fn register_and_leave(channel: Channel, w: &SimWorkload) -> Result<()> {
    let mut s = open(channel, vec![w.hello(&w.name)]).await?;
    let welcome = tokio::time::timeout(Duration::from_secs(30), s.inbound.message())
        .await
        .context("no Welcome within 30 s")??;
    match welcome {
        Some((
            ControlLite {
                kind: Some(KindLite::Welcome(_)),
            },
            _,
        )) => Ok(()),
        other => anyhow::bail!("expected Welcome, got {other:?}"),
    }
}

/// Runs one simulated proxy until `stop`: Hello, Subscribe to `targets`, ACK every Update,
/// heartbeat at the interval Welcome names.
pub async fn run_proxy(
    proxy: u32,
    channel: Channel,
    w: SimWorkload,
    targets: Vec<pb::Target>,
    events: mpsc::UnboundedSender<UpdateEvent>,
    stop: CancellationToken,
) -> Result<()> {
    let mut first = vec![w.hello(&w.name)];
    first.extend(targets.into_iter().map(|t| {
        msg(pb::proxy_message::Kind::Subscribe(pb::Subscribe {
            target: Some(t),
        }))
    }));
    let SimStream { tx, mut inbound } = open(channel, first).await?;
    // Until Welcome says otherwise; a long first period, the control plane's expiry is long.
    let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
    heartbeat.reset();
    let mut held = std::collections::HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                let _ = tx.try_send(msg(pb::proxy_message::Kind::Heartbeat(pb::Heartbeat {})));
            }
            m = inbound.message() => {
                let Some((m, bytes)) = m.context("discovery stream failed")? else {
                    anyhow::bail!("the control plane closed the stream");
                };
                match m.kind {
                    Some(KindLite::Welcome(welcome)) => {
                        let every = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
                        heartbeat = tokio::time::interval_at(Instant::now() + every, every);
                    }
                    Some(KindLite::Update(u)) => {
                        let version = u.version;
                        let (answer, applied) = match apply(&mut held, &u) {
                            Ok(applied) => (pb::proxy_message::Kind::Ack(pb::Ack { version }), Some(applied)),
                            Err(error) => (pb::proxy_message::Kind::Nack(pb::Nack { version, error }), None),
                        };
                        tx.send(msg(answer)).await.ok().context("stream closed")?;
                        let acked_at = Instant::now();
                        if let Some((service, endpoints, marker)) = applied {
                            let _ = events.send(UpdateEvent { proxy, service, bytes, endpoints, marker, acked_at });
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// The N of a `change-N` header value the bench writes into its route.
pub fn marker(traffic_json: &str) -> Option<u32> {
    let at = traffic_json.find("change-")? + "change-".len();
    let digits: String = traffic_json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_read_from_route_json() {
        assert_eq!(marker(r#"{"routes":[{"exact":"change-12"}]}"#), Some(12));
        assert_eq!(marker("{}"), None);
    }

    #[test]
    fn lite_update_reads_a_full_update() {
        let full = pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Update(pb::Update {
                version: 7,
                target: Some(service_target("svc-0", 9080)),
                destination: Some(pb::Destination {
                    service_name: "svc-0".into(),
                    endpoints: vec![pb::Endpoint::default(); 3],
                    traffic_json: "change-4".into(),
                    ..Default::default()
                }),
                endpoint_delta: None,
            })),
        };
        let bytes = full.encode_to_vec();
        let lite = ControlLite::decode(bytes.as_slice()).unwrap();
        let Some(KindLite::Update(u)) = lite.kind else {
            panic!("not an update")
        };
        assert_eq!(u.version, 7);
        let mut held = std::collections::HashMap::new();
        let applied = apply(&mut held, &u).unwrap();
        assert_eq!(applied, ("svc-0".to_string(), 3, Some(4)));
        let d = u.destination.unwrap();
        assert_eq!((d.endpoints.len(), marker(&d.traffic_json)), (3, Some(4)));

        // A delta on version 7 applies; one on another version is refused.
        let delta = |version, base_version| {
            let m = pb::ControlMessage {
                kind: Some(pb::control_message::Kind::Update(pb::Update {
                    version,
                    target: Some(service_target("svc-0", 9080)),
                    destination: None,
                    endpoint_delta: Some(pb::EndpointDelta {
                        base_version,
                        removed: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                        added: vec![pb::PlacedEndpoint::default()],
                    }),
                })),
            };
            match ControlLite::decode(m.encode_to_vec().as_slice())
                .unwrap()
                .kind
            {
                Some(KindLite::Update(u)) => u,
                _ => panic!("not an update"),
            }
        };
        assert_eq!(
            apply(&mut held, &delta(8, 7)).unwrap(),
            ("svc-0".to_string(), 2, None)
        );
        assert!(apply(&mut held, &delta(9, 7)).is_err());
        assert_eq!(apply(&mut held, &delta(9, 8)).unwrap().1, 1);
    }
}
