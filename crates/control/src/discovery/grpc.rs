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
    use prost::Message as _;

    use super::*;

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
