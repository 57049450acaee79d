//! The discovery service's gRPC route, with an outbound message type that carries a
//! destination as bytes encoded once and shared by every stream that sends it.
//!
//! A route change used to have each of thousands of streams clone the same ≈ 5.5 kB
//! `Destination` (fifty endpoints, each with its strings and labels) into its own
//! `ControlMessage` and have prost encode it again. [`OutMessage`] mirrors `ControlMessage`
//! field for field, except that an Update's destination is `bytes`: the `Destination` message
//! already encoded (`cache::Compiled::encoded`). An embedded message and a `bytes` field are both
//! length-delimited fields, so what goes on the wire is byte for byte what `ControlMessage`
//! gives (the test below holds it); proxies decode it with the generated types unchanged.
//!
//! The route itself is what tonic's generated `DiscoveryServer` does for this one method, with
//! prost's codec on [`OutMessage`] instead of `ControlMessage`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, StdError, http};
use trellis_api::discovery as pb;

use super::DiscoveryService;

/// `trellis.discovery.v1.ControlMessage` as the control plane sends it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutMessage {
    #[prost(oneof = "OutKind", tags = "1, 2, 3, 4")]
    pub kind: Option<OutKind>,
}

/// `ControlMessage.kind`, same tags.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OutKind {
    #[prost(message, tag = "1")]
    Welcome(pb::Welcome),
    #[prost(message, tag = "2")]
    Update(SharedUpdate),
    #[prost(message, tag = "3")]
    InboundPolicy(pb::InboundPolicy),
    #[prost(message, tag = "4")]
    Gateway(pb::GatewayConfig),
}

/// `trellis.discovery.v1.Update`, with `destination` (field 3) as the encoded `Destination`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SharedUpdate {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, optional, tag = "2")]
    pub target: Option<pb::Target>,
    /// The `Destination` message's encoding (`None`: absent, as in `Update`).
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub destination: Option<Bytes>,
    #[prost(message, optional, tag = "4")]
    pub endpoint_delta: Option<pb::EndpointDelta>,
}

/// The gRPC path of `Discovery.Stream`.
const STREAM_PATH: &str = "/trellis.discovery.v1.Discovery/Stream";

/// The discovery service as a tonic route (`Routes::add_service`).
#[derive(Clone, Debug)]
pub struct DiscoveryServer {
    inner: Arc<DiscoveryService>,
}

impl DiscoveryServer {
    pub fn new(service: DiscoveryService) -> Self {
        Self {
            inner: Arc::new(service),
        }
    }
}

impl tonic::server::NamedService for DiscoveryServer {
    const NAME: &'static str = "trellis.discovery.v1.Discovery";
}

/// One call of `Discovery.Stream`.
struct StreamCall(Arc<DiscoveryService>);

impl tonic::server::StreamingService<pb::ProxyMessage> for StreamCall {
    type Response = OutMessage;
    type ResponseStream = super::OutStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<pb::ProxyMessage>>,
    ) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { Ok(inner.stream(request)) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for DiscoveryServer
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let call = StreamCall(self.inner.clone());
        Box::pin(async move {
            // Small per-stream buffers (server/codec.rs): thousands of streams stay open.
            let codec =
                crate::server::codec::DiscoveryCodec::<OutMessage, pb::ProxyMessage>::default();
            Ok(tonic::server::Grpc::new(codec).streaming(call, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message as _;

    use super::*;

    /// The discovery proto the generated types come from.
    const PROTO: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/proto/trellis/discovery/v1/discovery.proto"
    ));

    /// The fields (number → name) `message` declares in [`PROTO`], its oneofs' included.
    fn proto_fields(message: &str) -> BTreeMap<u64, String> {
        let head = format!("message {message} {{");
        let start = PROTO
            .lines()
            .position(|l| l.trim_end() == head)
            .unwrap_or_else(|| panic!("discovery.proto: no `{head}`"));
        let mut fields = BTreeMap::new();
        let mut depth = 0;
        for line in PROTO.lines().skip(start) {
            let line = line.split("//").next().unwrap_or_default().trim();
            depth += line.matches('{').count();
            depth -= line.matches('}').count();
            if depth == 0 {
                break;
            }
            // `Type name = N;` (a map's type has no space inside: `map<string, string>` is
            // split on its last space before the name).
            let Some((decl, number)) = line.strip_suffix(';').and_then(|l| l.split_once(" = "))
            else {
                continue;
            };
            if decl.starts_with("reserved") || decl.starts_with("option") {
                continue;
            }
            let name = decl.rsplit(' ').next().unwrap_or_default().to_string();
            let number = number.split_whitespace().next().unwrap_or_default();
            let number = number
                .parse()
                .unwrap_or_else(|_| panic!("discovery.proto: {message}.{name}: number {number}"));
            fields.insert(number, name);
        }
        fields
    }

    /// The field numbers at the top level of an encoded message, in order.
    fn field_numbers(mut bytes: &[u8]) -> Vec<u64> {
        let mut numbers = Vec::new();
        while !bytes.is_empty() {
            let key = prost::encoding::decode_varint(&mut bytes).expect("a key");
            numbers.push(key >> 3);
            let skip = match key & 7 {
                0 => {
                    prost::encoding::decode_varint(&mut bytes).expect("a varint");
                    0
                }
                1 => 8,
                2 => usize::try_from(prost::encoding::decode_varint(&mut bytes).expect("a length"))
                    .expect("a length"),
                5 => 4,
                other => panic!("wire type {other}"),
            };
            bytes = &bytes[skip..];
        }
        numbers
    }

    /// Every `OutKind` (the match has no wildcard: a variant added to the mirror must be
    /// added here) with each message's fields set, and the generated `ControlMessage` that
    /// must encode the same.
    fn every_kind() -> Vec<(OutKind, pb::ControlMessage)> {
        let update = pb::Update {
            version: 9,
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Address("10.0.0.1:80".into())),
            }),
            destination: Some(pb::Destination {
                service_name: "svc-0".into(),
                ..Default::default()
            }),
            endpoint_delta: Some(pb::EndpointDelta {
                base_version: 3,
                removed: vec!["127.0.0.1:1".into()],
                added: vec![],
            }),
        };
        let welcome = pb::Welcome {
            identity: "spiffe://td/ns/a/sa/b".into(),
            ..Default::default()
        };
        let policy = pb::InboundPolicy {
            authorization_json: "{}".into(),
            ..Default::default()
        };
        let gateway = pb::GatewayConfig {
            config_json: "{}".into(),
            problems: vec!["p".into()],
        };
        let kinds = [
            OutKind::Welcome(welcome),
            OutKind::Update(SharedUpdate {
                version: update.version,
                target: update.target.clone(),
                destination: update
                    .destination
                    .as_ref()
                    .map(|d| Bytes::from(d.encode_to_vec())),
                endpoint_delta: update.endpoint_delta.clone(),
            }),
            OutKind::InboundPolicy(policy),
            OutKind::Gateway(gateway),
        ];
        kinds
            .into_iter()
            .map(|kind| {
                use pb::control_message::Kind;
                let generated = match &kind {
                    OutKind::Welcome(m) => Kind::Welcome(m.clone()),
                    OutKind::Update(_) => Kind::Update(update.clone()),
                    OutKind::InboundPolicy(m) => Kind::InboundPolicy(m.clone()),
                    OutKind::Gateway(m) => Kind::Gateway(m.clone()),
                };
                (
                    kind,
                    pb::ControlMessage {
                        kind: Some(generated),
                    },
                )
            })
            .collect()
    }

    /// The mirror (`OutMessage`, `SharedUpdate`) is written by hand: a field added to
    /// `ControlMessage` or `Update` in the proto and not here would never be sent. This
    /// compares the field numbers the proto declares with those the mirror encodes.
    #[test]
    fn the_mirror_has_every_field_of_the_proto() {
        let kinds = every_kind();
        // ControlMessage: one field per oneof member; each kind encodes as its own number.
        let mirror: BTreeMap<u64, String> = kinds
            .iter()
            .map(|(kind, _)| {
                let bytes = OutMessage {
                    kind: Some(kind.clone()),
                }
                .encode_to_vec();
                (field_numbers(&bytes)[0], format!("{kind:?}"))
            })
            .collect();
        let proto = proto_fields("ControlMessage");
        assert_eq!(
            proto.keys().collect::<Vec<_>>(),
            mirror.keys().collect::<Vec<_>>(),
            "ControlMessage in discovery.proto has fields {proto:?}; grpc.rs's OutKind sends \
             {:?}: add the missing ones to OutKind (and to every_kind here)",
            mirror.keys().collect::<Vec<_>>()
        );
        // Update: every field set (`every_kind` lists them without `..`), so every field the
        // mirror has is on the wire.
        let (update, _) = kinds
            .iter()
            .find(|(k, _)| matches!(k, OutKind::Update(_)))
            .expect("an Update");
        let OutKind::Update(shared) = update else {
            unreachable!()
        };
        let mut sent = field_numbers(&shared.encode_to_vec());
        sent.sort_unstable();
        let proto = proto_fields("Update");
        assert_eq!(
            proto.keys().copied().collect::<Vec<_>>(),
            sent,
            "Update in discovery.proto has fields {proto:?}; grpc.rs's SharedUpdate sends \
             {sent:?}: add the missing ones to SharedUpdate"
        );
        // And each kind encodes byte for byte as the generated ControlMessage, and reads back
        // through the mirror unchanged (a field the mirror lacks would be dropped).
        for (kind, generated) in kinds {
            let bytes = generated.encode_to_vec();
            let mirrored = OutMessage {
                kind: Some(kind.clone()),
            };
            assert_eq!(mirrored.encode_to_vec(), bytes, "{kind:?}");
            let read = OutMessage::decode(&bytes[..]).expect("decodes through the mirror");
            assert_eq!(
                read.encode_to_vec(),
                bytes,
                "{kind:?} read through the mirror"
            );
        }
    }

    #[test]
    fn the_proto_reader_finds_fields() {
        let fields = proto_fields("Update");
        assert_eq!(fields.get(&3).map(String::as_str), Some("destination"));
        assert_eq!(proto_fields("ControlMessage").len(), 4);
    }

    #[test]
    fn an_update_with_shared_bytes_encodes_as_control_message_does() {
        let dest = pb::Destination {
            traffic_json: r#"{"policy":{}}"#.into(),
            traffic_schema: 1,
            authority: "svc-0.default.svc.cluster.local:9080".into(),
            service_name: "svc-0".into(),
            service_namespace: "default".into(),
            port: 9080,
            protocol: "http".into(),
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1:15006".into(),
                meshed: true,
                identity: "spiffe://cluster.local/ns/default/sa/x".into(),
                workload: "w".into(),
                labels: [("app".to_string(), "svc-0".to_string())].into(),
                target_port: 9080,
                remote: None,
            }],
        };
        let target = pb::Target {
            kind: Some(pb::target::Kind::Address("10.0.0.1:80".into())),
        };
        let delta = pb::EndpointDelta {
            base_version: 3,
            removed: vec!["127.0.0.1:1".into()],
            added: vec![],
        };
        for (destination, endpoint_delta) in [
            (Some(dest.clone()), None),
            (Some(pb::Destination::default()), None),
            (None, None),
            (None, Some(delta)),
        ] {
            let generated = pb::ControlMessage {
                kind: Some(pb::control_message::Kind::Update(pb::Update {
                    version: 7,
                    target: Some(target.clone()),
                    destination: destination.clone(),
                    endpoint_delta: endpoint_delta.clone(),
                })),
            };
            let shared = OutMessage {
                kind: Some(OutKind::Update(SharedUpdate {
                    version: 7,
                    target: Some(target.clone()),
                    destination: destination.map(|d| Bytes::from(d.encode_to_vec())),
                    endpoint_delta,
                })),
            };
            let bytes = shared.encode_to_vec();
            assert_eq!(bytes, generated.encode_to_vec());
            assert_eq!(pb::ControlMessage::decode(&bytes[..]).unwrap(), generated);
        }
        let welcome = pb::Welcome {
            identity: "spiffe://td/ns/a/sa/b".into(),
            ..Default::default()
        };
        assert_eq!(
            OutMessage {
                kind: Some(OutKind::Welcome(welcome.clone()))
            }
            .encode_to_vec(),
            pb::ControlMessage {
                kind: Some(pb::control_message::Kind::Welcome(welcome))
            }
            .encode_to_vec()
        );
    }
}
