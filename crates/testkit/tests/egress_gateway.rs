//! Istio's egress gateway pattern in network-namespace pods: a client pod with iptables and
//! its sidecar, an egress gateway (`trellis-proxy --mode gateway`, labels `istio:
//! egressgateway`) in a pod of its own, and an "external" host (a plain server in its own pod)
//! whose name the control plane resolves by DNS. The YAML is Istio's egress-gateway task's,
//! unchanged: a DNS ServiceEntry for `edition.cnn.com`, a Gateway for it on the egress gateway,
//! a DestinationRule subset for the gateway's Service, and a VirtualService bound to `mesh` and
//! the gateway that sends the sidecars' traffic to the gateway and the gateway's on to the host.
//!
//! The client pod may not reach the external host itself (an iptables rule stands for the
//! NetworkPolicy a cluster would use): only the gateway path works. Needs root; see
//! `trellis_testkit::netns::require_root`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod external;
mod support;

use support::egress::{CONVERGE, Egress, HOST, Server, reply};
use trellis_testkit::egress;
use trellis_testkit::mesh::write_config;
use trellis_testkit::netns::require_root;
use trellis_testkit::{Proxy, wait};

/// Where the egress gateway's Gateway port 80 listens in its pod: the `targetPort` of
/// Istio's `istio-egressgateway` Service.
const GATEWAY_TARGET_PORT: u16 = 8080;

/// Istio's egress gateway task for HTTP traffic, as users apply it (in namespace `default`).
const SERVICE_ENTRY: &str = "apiVersion: networking.istio.io/v1
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
    name: https
    protocol: HTTPS
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
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
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
  - istio-egressgateway
  - mesh
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
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
";

/// The egress gateway's Service as Istio's chart installs it (port 80 to the pod's 8080).
const GATEWAY_SERVICE: &str = "apiVersion: v1
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
";

/// Starts it all with `gateway` and `virtual_service` as the Gateway and VirtualService
/// files (beside the ServiceEntry and the gateway's Service): the external server `server`,
/// plain HTTP on port 80, or with `tls` HTTPS only on 443 (a plaintext request could not be
/// answered), which the gateway then trusts as its system roots (`SSL_CERT_FILE`), as a real
/// gateway trusts public CAs. The gateway's Gateway port 80 is bound where the Service's
/// `targetPort` points; sidecars reach it over mTLS through its inbound listener.
fn start(
    server: &str,
    tls: Option<&external::Certs>,
    gateway: &str,
    virtual_service: &str,
) -> Egress {
    let port = if tls.is_some() { 443 } else { 80 };
    Egress::start(
        &[Server {
            name: server,
            port,
            tls,
        }],
        &[
            ("service-entry.yaml", SERVICE_ENTRY),
            ("gateway.yaml", gateway),
            ("virtual-service.yaml", virtual_service),
            ("egressgateway-service.yaml", GATEWAY_SERVICE),
        ],
        |pod, control| {
            let b = egress::egress_gateway(pod, control, 80, GATEWAY_TARGET_PORT);
            match tls {
                Some(certs) => b.env("SSL_CERT_FILE", &certs.ca),
                None => b,
            }
        },
    )
}

/// Requests the gateway sent on to the external host, by its own metrics (a ServiceEntry
/// endpoint's workload is the entry's host).
fn gateway_requests_to_host(gw: &Proxy) -> f64 {
    gw.metrics().sum(
        "trellis_requests_total",
        &[
            ("direction", "outbound"),
            ("destination_workload", HOST),
            ("route", "direct-cnn-through-egress-gateway/1"),
            ("status_code", "200"),
        ],
    )
}

#[test]
fn egress_gateway_routes_a_service_entry_host_through_the_gateway() {
    if !require_root("egress_gateway_routes_a_service_entry_host_through_the_gateway") {
        return;
    }
    let e = start("cnn", None, GATEWAY, VIRTUAL_SERVICE);
    let (gw, client) = (&e.gw, &e.client);

    // The client resolves the name as DNS would and calls it; its sidecar sends the request
    // to the egress gateway, which sends it on to the host.
    let reply = reply(&e.curl_ok("/politics"));
    assert_eq!(reply.server, "cnn");
    assert_eq!(reply.path, "/politics");
    assert_eq!(reply.host, HOST);
    for i in 0..10 {
        let (code, err, body) = e.curl(&format!("/n/{i}"));
        assert_eq!(code, 200, "{err:?} {body}");
    }

    // The gateway saw them: over mesh mTLS from the sidecar (its inbound), and on to the
    // external host (its outbound, labelled with the ServiceEntry host).
    let through = gateway_requests_to_host(gw);
    assert!(
        through >= 11.0,
        "the gateway counted {through} requests to {HOST}; metrics:\n{}",
        gw.admin_get("/metrics").unwrap().1
    );
    e.assert_gateway_meshed_inbound();
    let client_metrics = client.metrics();
    assert!(
        client_metrics.sum(
            "trellis_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_workload", "istio-egressgateway")
            ]
        ) >= 11.0,
        "the client's sidecar did not send to the gateway workload"
    );

    // Without the VirtualService the sidecar goes to the host directly, which the client's
    // network does not allow: the call fails and the gateway sees nothing more.
    std::fs::remove_file(e.config.path().join("virtual-service.yaml")).unwrap();
    wait::until(CONVERGE, || match e.curl("/direct") {
        (200, _, body) => Err(format!("still answered: {body}")),
        (code, err, _) => Ok((code, err)),
    })
    .unwrap();
    let before = gateway_requests_to_host(gw);
    for i in 0..3 {
        let (code, err, body) = e.curl(&format!("/direct/{i}"));
        assert!(
            code >= 500 || code == 0,
            "a direct call answered {code} {err:?} {body}"
        );
    }
    assert_eq!(gateway_requests_to_host(gw), before);
    // And REGISTRY_ONLY is on: a port the entry does not declare is refused by the sidecar.
    let (code, err, _) = external::curl(&e.sleep, &format!("http://{}:8081/", e.ext.ip()), None);
    assert_eq!((code, err.as_deref()), (502, Some("registry-only")));

    // Back again: the VirtualService restores the gateway path.
    write_config(e.config.path(), "virtual-service.yaml", VIRTUAL_SERVICE).unwrap();
    e.curl_ok("/again");
}

/// Istio's "egress gateway with TLS origination": the gateway's route goes to the host's port
/// 443, where a DestinationRule makes the gateway originate TLS (`SIMPLE`); the application
/// still speaks plain HTTP to port 80.
const VIRTUAL_SERVICE_TO_443: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
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
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls-for-edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: SIMPLE # initiates HTTPS for connections to edition.cnn.com
";

#[test]
fn egress_gateway_originates_tls_simple_to_the_external_host() {
    if !require_root("egress_gateway_originates_tls_simple_to_the_external_host") {
        return;
    }
    let certs = external::certs(HOST);
    // The rule names no `caCertificates`: the gateway verifies against its system roots,
    // which the fixture points at the test's CA.
    let e = start("cnn-tls", Some(&certs), GATEWAY, VIRTUAL_SERVICE_TO_443);

    let reply = reply(&e.curl_ok("/over-tls"));
    assert_eq!(reply.server, "cnn-tls");
    assert_eq!(reply.path, "/over-tls");
    assert_eq!(reply.host, HOST);
    assert!(gateway_requests_to_host(&e.gw) >= 1.0);
    e.assert_gateway_meshed_inbound();
}

/// Istio's current "egress gateway with TLS origination": the sidecar-to-gateway hop is
/// declared as mesh mTLS (`ISTIO_MUTUAL` on the Gateway server and the gateway's subset), and
/// the gateway originates TLS to the host's port 443.
const ISTIO_MUTUAL_GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: https-port-for-tls-origination
      protocol: HTTPS
    hosts:
    - edition.cnn.com
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
      portLevelSettings:
      - port:
          number: 80
        tls:
          mode: ISTIO_MUTUAL
          sni: edition.cnn.com
";

#[test]
fn egress_gateway_istio_mutual_server_takes_mesh_traffic_only() {
    if !require_root("egress_gateway_istio_mutual_server_takes_mesh_traffic_only") {
        return;
    }
    let certs = external::certs(HOST);
    let e = start(
        "cnn-tls",
        Some(&certs),
        ISTIO_MUTUAL_GATEWAY,
        VIRTUAL_SERVICE_TO_443,
    );
    let gw = &e.gw;

    let reply = reply(&e.curl_ok("/mutual"));
    assert_eq!(
        (reply.server.as_str(), reply.path.as_str()),
        ("cnn-tls", "/mutual")
    );
    e.assert_gateway_meshed_inbound();
    let through = gateway_requests_to_host(gw);
    assert!(through >= 1.0);

    // The gateway's port itself takes no plaintext from the network: a client in another pod
    // that skips the mesh is closed on, and the gateway sends nothing on.
    let direct = format!("http://{}:{GATEWAY_TARGET_PORT}/bypass", e.egress.ip());
    let out = e
        .ext
        .curl(
            None,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Host: {HOST}"),
                &direct,
            ],
        )
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        code, "000",
        "a plaintext request to the ISTIO_MUTUAL port was answered"
    );
    assert_eq!(gateway_requests_to_host(gw), through);
}
