//! The demo's ingress gateway: a `trellis-proxy --mode gateway` workload carrying the labels of
//! Istio's own (`istio: ingressgateway`, `app: trellis-ingressgateway`), so that Bookinfo's
//! `bookinfo-gateway` selects it unchanged, and the Gateway API GatewayClass `trellis`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use crate::bookinfo::{NAMESPACE, SERVICE_PORT};

/// The gateway workload's name, service account and `app` label.
pub const WORKLOAD: &str = "trellis-ingressgateway";

/// The port Bookinfo's Gateway declares (Istio's sample uses 8080); the gateway serves it on a
/// free local port (`--gateway-port 8080=127.0.0.1:P`), so the demo needs no privileges and
/// never collides with what already listens on 8080.
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

/// A local port nothing listens on now, for the gateway's listener. Another process could
/// take it before the gateway binds; the gateway then fails to start and the demo says so.
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_config::{Outcome, parse_documents};

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
