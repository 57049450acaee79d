//! Istio's "egress gateway for HTTPS traffic" in network-namespace pods: the application
//! speaks TLS itself to an external host; its sidecar routes the connection by SNI (a
//! VirtualService `tls[]` route for `mesh`) to the egress gateway, over mesh mTLS, and the
//! gateway passes it through (a `PASSTHROUGH` Gateway server and the same VirtualService's
//! route for the gateway) to the host. No proxy terminates the application's TLS: curl
//! verifies the host's certificate against the test's own CA. The gateway runs without
//! `--app`: its inbound listener hands each mesh TCP stream to the Gateway listener bound on the
//! target port the stream's metadata header (`trellis-mx/1`) names, so one gateway also serves
//! Istio's HTTP egress task on another port at once (the second test).
//!
//! The YAML is Istio's, unchanged but for the gateway Service's ports. The fixtures are those
//! of `egress_gateway.rs` (`support/egress.rs`: a client pod that may not reach the host
//! itself, REGISTRY_ONLY, the host's name resolved by the control plane's node), for TLS on
//! port 443. Needs root; see `trellis_testkit::netns::require_root`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod external;
mod support;

use support::egress::{CONVERGE, Egress, HOST, Server, reply};
use trellis_testkit::egress;
use trellis_testkit::mesh::write_config;
use trellis_testkit::netns::require_root;
use trellis_testkit::{Proxy, wait};

/// Where the egress gateway's Gateway port 443 listens in its pod: the `targetPort` of
/// Istio's `istio-egressgateway` Service for 443.
const GATEWAY_TARGET_PORT: u16 = 8443;

/// Istio's egress gateway task, "Egress gateway for HTTPS traffic", as users apply it.
const SERVICE_ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
";

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.com
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
";

const VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - mesh
  - istio-egressgateway
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
";

/// The egress gateway's Service as Istio's chart installs it (443 to the pod's 8443).
const GATEWAY_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  selector:
    istio: egressgateway
  ports:
  - name: https
    port: 443
    targetPort: 8443
    protocol: TCP
";

/// TCP connections a proxy opened outbound to `workload`, by its own metrics.
fn outbound_tcp_to(proxy: &Proxy, workload: &str) -> f64 {
    proxy.metrics().sum(
        "trellis_tcp_connections_opened_total",
        &[
            ("direction", "outbound"),
            ("destination_workload", workload),
        ],
    )
}

#[test]
fn egress_gateway_passes_https_through_by_sni() {
    if !require_root("egress_gateway_passes_https_through_by_sni") {
        return;
    }
    let certs = external::certs(HOST);
    // The host speaks HTTPS only, with a certificate for its name from the test's CA. The
    // gateway has no `--app`: sidecars reach it over mTLS through its inbound listener, which
    // hands each TCP stream to the Gateway listener bound on the target port the client's
    // metadata header (`trellis-mx/1`) names, 8443 here.
    let e = Egress::start(
        &[Server {
            name: "cnn-https",
            port: 443,
            tls: Some(&certs),
        }],
        &[
            ("service-entry.yaml", SERVICE_ENTRY),
            ("gateway.yaml", GATEWAY),
            ("virtual-service.yaml", VIRTUAL_SERVICE),
            ("egressgateway-service.yaml", GATEWAY_SERVICE),
        ],
        |pod, control| egress::egress_gateway(pod, control, 443, GATEWAY_TARGET_PORT),
    );
    let (gw, client) = (&e.gw, &e.client);

    // curl verifies the host's certificate for its name: the TLS is the host's own, end to
    // end, and the SNI reached it intact.
    let reply = reply(&e.curl_https_ok(&certs.ca, "/politics"));
    assert_eq!(
        (
            reply.server.as_str(),
            reply.path.as_str(),
            reply.host.as_str()
        ),
        ("cnn-https", "/politics", HOST)
    );
    for i in 0..5 {
        let (code, err) = e.curl_https(&certs.ca, &format!("/n/{i}"));
        assert_eq!(code, 200, "{err}");
    }

    // The sidecar sent the streams to the gateway workload over mTLS, and the gateway on to
    // the ServiceEntry host.
    assert!(
        outbound_tcp_to(client, "istio-egressgateway") >= 6.0,
        "the sidecar did not send to the gateway; metrics:\n{}",
        client.admin_get("/metrics").unwrap().1
    );
    let through = outbound_tcp_to(gw, HOST);
    assert!(
        through >= 6.0,
        "the gateway counted {through} connections to {HOST}; metrics:\n{}",
        gw.admin_get("/metrics").unwrap().1
    );
    e.assert_gateway_meshed_inbound();

    // Without the VirtualService the sidecar goes to the host directly, which the client's
    // network does not allow: the call fails and the gateway sees nothing more.
    std::fs::remove_file(e.config.path().join("virtual-service.yaml")).unwrap();
    wait::until(CONVERGE, || match e.curl_https(&certs.ca, "/direct") {
        (200, body) => Err(format!("still answered: {body}")),
        (code, _) => Ok(code),
    })
    .unwrap();
    let before = outbound_tcp_to(gw, HOST);
    let (code, _) = e.curl_https(&certs.ca, "/direct/again");
    assert_eq!(code, 0, "a direct call was answered");
    assert_eq!(outbound_tcp_to(gw, HOST), before);

    // Back again: the VirtualService restores the gateway path.
    write_config(e.config.path(), "virtual-service.yaml", VIRTUAL_SERVICE).unwrap();
    e.curl_https_ok(&certs.ca, "/again");
}

/// Istio's HTTP and HTTPS egress tasks on one egress gateway: the ServiceEntry's two ports,
/// the Gateway's two servers and the gateway Service's two ports (80 to 8080, 443 to 8443).
/// Each mesh hop names its own target port (HTTP in `trellis-target-port`, the TLS stream in its
/// metadata header), so one gateway without `--app` serves both to the sidecars.
const BOTH_CONFIG: [(&str, &str); 4] = [
    (
        "service-entry.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
",
    ),
    (
        "gateway.yaml",
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - edition.cnn.com
    tls:
      mode: PASSTHROUGH
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
",
    ),
    (
        "virtual-service.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - mesh
  - istio-egressgateway
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
  tls:
  - match:
    - gateways:
      - mesh
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 443
  - match:
    - gateways:
      - istio-egressgateway
      port: 443
      sniHosts:
      - edition.cnn.com
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
",
    ),
    (
        "egressgateway-service.yaml",
        "apiVersion: v1
kind: Service
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  selector:
    istio: egressgateway
  ports:
  - name: http2
    port: 80
    targetPort: 8080
    protocol: TCP
  - name: https
    port: 443
    targetPort: 8443
    protocol: TCP
",
    ),
];

#[test]
fn one_egress_gateway_without_app_serves_https_passthrough_and_http_to_the_mesh() {
    if !require_root("one_egress_gateway_without_app_serves_https_passthrough_and_http_to_the_mesh")
    {
        return;
    }
    let certs = external::certs(HOST);
    let e = Egress::start(
        &[
            Server {
                name: "cnn-https",
                port: 443,
                tls: Some(&certs),
            },
            Server {
                name: "cnn-http",
                port: 80,
                tls: None,
            },
        ],
        &BOTH_CONFIG,
        // Gateway port 443 on 8443 (the fixture), 80 on 8080; HTTP requests may name 8080.
        |pod, control| {
            egress::egress_gateway(pod, control, 443, GATEWAY_TARGET_PORT)
                .app_port(8080)
                .arg("--gateway-port")
                .arg("80=0.0.0.0:8080")
        },
    );
    let (gw, client) = (&e.gw, &e.client);

    let https = e.curl_https_ok(&certs.ca, "/tls");
    let http = e.curl_ok("/plain");
    // Interleaved, each reaches its own server through its own Gateway listener.
    for i in 0..3 {
        let (code, err) = e.curl_https(&certs.ca, &format!("/tls/{i}"));
        assert_eq!(code, 200, "{err}");
        let (code, err, _) = e.curl(&format!("/plain/{i}"));
        assert_eq!(code, 200, "{err:?}");
    }
    let https = reply(&https);
    assert_eq!(
        (https.server.as_str(), https.path.as_str()),
        ("cnn-https", "/tls")
    );
    let http = reply(&http);
    assert_eq!(
        (http.server.as_str(), http.path.as_str()),
        ("cnn-http", "/plain")
    );

    assert!(outbound_tcp_to(client, "istio-egressgateway") >= 4.0);
    assert!(
        outbound_tcp_to(gw, HOST) >= 4.0,
        "the gateway did not pass the TLS streams on; metrics:\n{}",
        gw.admin_get("/metrics").unwrap().1
    );
    e.assert_gateway_meshed_inbound();
}
