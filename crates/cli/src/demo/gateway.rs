//! The demo's ingress gateway: a `trellis-proxy --mode gateway` workload carrying the labels of
//! Istio's own (`istio: ingressgateway`, `app: trellis-ingressgateway`), so that Bookinfo's
//! `bookinfo-gateway` selects it unchanged, and the Gateway API GatewayClass `trellis`.

use std::net::SocketAddr;

use crate::bookinfo::{NAMESPACE, SERVICE_PORT};

/// The gateway workload's name, service account and `app` label.
pub const WORKLOAD: &str = "trellis-ingressgateway";

/// The port Bookinfo's Gateway declares (Istio's sample uses 8080); the gateway serves it on a
/// local port the OS picks (`--gateway-port 8080=127.0.0.1:0`), so the demo needs no privileges
/// and never collides with what already listens on 8080.
pub const GATEWAY_PORT: u16 = 8080;

/// The labels Istio's ingress gateway pods carry, which Gateway selectors name.
pub const LABELS: &[(&str, &str)] = &[("istio", "ingressgateway"), ("app", WORKLOAD)];

/// Istio's `bookinfo-gateway` sample (a Gateway on port 8080 for any host and the
/// VirtualService bound to it, exposing productpage's pages), and the GatewayClass `trellis`.
pub fn config_yaml() -> String {
    format!(
        r#"# Written by `trellis demo`: Bookinfo's ingress, as Istio's bookinfo-gateway.yaml.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: {NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {GATEWAY_PORT}
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
  namespace: {NAMESPACE}
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: {SERVICE_PORT}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: trellis
spec:
  controllerName: trellis.io/gateway-controller
"#
    )
}

/// Where a gateway's `/config_dump` (JSON) says it bound [`GATEWAY_PORT`], if it has. The
/// gateway binds `--gateway-port 8080=127.0.0.1:0` itself: a port picked here and handed over
/// could be taken by another process in between.
pub fn bound_listener(config_dump: &[u8]) -> Option<SocketAddr> {
    let dump: serde_json::Value = serde_json::from_slice(config_dump).ok()?;
    dump["gateway_listeners"][GATEWAY_PORT.to_string()]
        .as_str()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_config::{Outcome, parse_documents};

    #[test]
    fn the_bound_listener_is_read_from_the_config_dump() {
        let dump = br#"{"gateway_listeners": {"8080": "127.0.0.1:41234"}}"#;
        assert_eq!(
            bound_listener(dump),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(bound_listener(br#"{"gateway_listeners": {}}"#), None);
        assert_eq!(bound_listener(b"not json"), None);
    }

    #[test]
    fn the_gateway_config_is_read_whole() {
        let docs = parse_documents("bookinfo-gateway.yaml", config_yaml().as_bytes());
        assert_eq!(docs.len(), 3);
        for d in docs {
            assert!(
                matches!(d.outcome, Outcome::Resource(_)),
                "not read: {:?}",
                d.outcome
            );
        }
    }
}
