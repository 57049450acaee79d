//! HTTP calls out (`proxy_http_call`): the request path makes the calls a callback
//! dispatched and delivers each answer to `proxy_on_http_call_response`.
//!
//! A call's cluster is a mesh service (`name.namespace:port`,
//! `name.namespace.svc.cluster.local:port`, or Istio's `outbound|port||host`) sent through
//! this proxy's own outbound path (discovery, balancer, mTLS), or `ip:port` sent straight
//! there. A call that does not get an answer from its upstream (no route, connect failure,
//! the timeout) is delivered as an answer without headers, as Envoy delivers a failed call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use trellis_model::Target;

use super::vm::{CallRequest, CallResponse};
use crate::client::UpBody;
use crate::http::{ProxyBody, TRELLIS_ERROR};

/// A call without a timeout (0) gets this one; none waits longer than [`MAX_TIMEOUT`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a call's answer a plugin can read; a longer answer counts as failed.
const MAX_ANSWER: usize = 1 << 20;

/// Sends a call's request to its cluster.
pub trait CallOut: Send + Sync + std::fmt::Debug {
    fn send(
        &self,
        target: Target,
        req: Request<UpBody>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send + 'static>>;
}

/// Calls through the proxy's outbound forwarding.
#[derive(Debug)]
pub struct MeshCalls(pub Arc<crate::serve::Ctx>);

impl CallOut for MeshCalls {
    fn send(
        &self,
        target: Target,
        req: Request<UpBody>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send + 'static>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let dest = match &target {
                Target::Address(addr) => crate::route::Dest::Fixed(*addr),
                Target::Service { .. } => crate::route::Dest::Service {
                    resolution_rx: ctx.discovery.watch(&target),
                    traffic: ctx.traffic(&target),
                },
            };
            crate::forward::HttpForward::new(ctx, crate::telemetry::Direction::Outbound, dest)
                .forward(req)
                .await
        })
    }
}

/// A cluster name as a target: Istio's `outbound|PORT|SUBSET|HOST` or `host:port`.
pub fn target(cluster: &str) -> Option<Target> {
    let name = match cluster.split('|').collect::<Vec<_>>().as_slice() {
        ["outbound", port, _subset, host] => format!("{host}:{port}"),
        _ => cluster.to_string(),
    };
    name.parse().ok()
}

fn request(call: &CallRequest) -> Option<Request<UpBody>> {
    let mut req = Request::new(
        Full::new(Bytes::from(call.body.clone()))
            .map_err(|never| match never {})
            .boxed(),
    );
    for (k, v) in &call.headers {
        match k.as_slice() {
            b":method" => *req.method_mut() = Method::from_bytes(v).ok()?,
            b":path" => *req.uri_mut() = std::str::from_utf8(v).ok()?.parse().ok()?,
            b":authority" => {
                req.headers_mut()
                    .insert(http::header::HOST, HeaderValue::from_bytes(v).ok()?);
            }
            k if k.starts_with(b":") => {}
            k => {
                req.headers_mut().append(
                    HeaderName::from_bytes(k).ok()?,
                    HeaderValue::from_bytes(v).ok()?,
                );
            }
        }
    }
    Some(req)
}

/// Makes one call; a failed one is an empty answer (and a log line naming why).
pub async fn perform(out: &dyn CallOut, plugin: &str, call: &CallRequest) -> CallResponse {
    let failed = |why: &str| {
        tracing::warn!(plugin, cluster = %call.upstream, why, "wasm plugin's http call failed");
        CallResponse::default()
    };
    let Some(target) = target(&call.upstream) else {
        return failed("the cluster is neither a mesh service (name.namespace:port) nor ip:port");
    };
    let Some(req) = request(call) else {
        return failed("the call's headers are not valid HTTP");
    };
    let timeout = if call.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        call.timeout.min(MAX_TIMEOUT)
    };
    let exchange = async {
        let resp = out.send(target, req).await;
        // The proxy's own error answer (no route, connect failure) is no answer from the
        // upstream.
        if resp.status().is_server_error() && resp.headers().contains_key(TRELLIS_ERROR) {
            let reason = resp.headers()[TRELLIS_ERROR]
                .to_str()
                .unwrap_or("error")
                .to_string();
            return Err(reason);
        }
        let (parts, mut body) = resp.into_parts();
        let mut bytes = Vec::new();
        let mut trailers = http::HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
            match frame.into_data() {
                Ok(data) if bytes.len() + data.len() > MAX_ANSWER => {
                    return Err(format!("the answer is longer than {MAX_ANSWER} bytes"));
                }
                Ok(data) => bytes.extend_from_slice(&data),
                Err(frame) => trailers.extend(frame.into_trailers().unwrap_or_default()),
            }
        }
        let mut headers = vec![(
            b":status".to_vec(),
            parts.status.as_str().as_bytes().to_vec(),
        )];
        super::push_headers(&parts.headers, &mut headers);
        let mut trailer_pairs = Vec::new();
        super::push_headers(&trailers, &mut trailer_pairs);
        Ok(CallResponse {
            headers,
            body: bytes,
            trailers: trailer_pairs,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => failed(&why),
        Err(_) => failed("timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_call_clusters_name_mesh_services_or_addresses() {
        assert!(matches!(target("127.0.0.1:8080"), Some(Target::Address(_))));
        assert!(matches!(
            target("auth.default:9000"),
            Some(Target::Service { port: 9000, .. })
        ));
        assert!(matches!(
            target("outbound|9000||auth.default.svc.cluster.local"),
            Some(Target::Service { port: 9000, .. })
        ));
        assert!(target("auth").is_none());
    }
}
