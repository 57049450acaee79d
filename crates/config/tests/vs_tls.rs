//! VirtualService `tls[]` routes for the mesh: Istio's "egress gateway for HTTPS traffic"
//! VirtualService translates into SNI-matched TCP routes for sidecars and passthrough routes
//! for the gateway; unsupported match conditions are refused by field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use trellis_config::gateways::GatewayResource;
use trellis_config::{Outcome, Resource, parse_documents};

/// Istio's egress-gateway task for HTTPS traffic, as users apply it.
const EGRESS_HTTPS_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
  namespace: default
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

fn outcome(yaml: &str) -> Outcome {
    let mut docs = parse_documents("vs.yaml", yaml.as_bytes());
    assert_eq!(docs.len(), 1);
    docs.remove(0).outcome
}

fn error(yaml: &str) -> String {
    match outcome(yaml) {
        Outcome::Invalid(e) => e.to_string(),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn istio_egress_https_virtual_service_routes_the_mesh_by_sni() {
    let Outcome::Resource(Resource::Gateway(g)) = outcome(EGRESS_HTTPS_VS) else {
        panic!("not a gateway resource");
    };
    let GatewayResource::Routes(routes) = *g else {
        panic!("not gateway routes");
    };
    // The gateway side: one passthrough route for the host.
    assert_eq!(routes.tls.len(), 1);
    assert_eq!(routes.tls[0].sni_hosts, ["edition.cnn.com"]);
    assert_eq!(
        routes.tls[0].route.backends[0].backend.service.name,
        "edition.cnn.com"
    );
    // The mesh side: the sidecars' route to the egress gateway's subset, for TLS to port 443
    // naming the host only.
    let mesh = routes.mesh.expect("mesh routes");
    assert_eq!(mesh.parents.len(), 1);
    assert_eq!(mesh.tcp.len(), 1, "{:?}", mesh.tcp);
    let r = &mesh.tcp[0];
    assert_eq!(r.name, "direct-cnn-through-egress-gateway/tls/0");
    assert_eq!(
        (r.port, &r.sni_hosts[..]),
        (Some(443), &["edition.cnn.com".to_string()][..])
    );
    let b = &r.backends[0].backend;
    assert_eq!(
        (b.service.namespace.as_str(), b.service.name.as_str()),
        ("istio-system", "istio-egressgateway")
    );
    assert_eq!((b.port, b.subset.as_deref()), (Some(443), Some("cnn")));
    assert!(r.admits(443, Some("edition.cnn.com")));
    assert!(!r.admits(443, None));
}

#[test]
fn mesh_only_tls_routes_come_before_tcp_routes() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: db
  namespace: default
spec:
  hosts: [db]
  tcp:
  - route:
    - destination: {host: db-plain}
  tls:
  - match:
    - sniHosts: [\"*.db.example.com\"]
    route:
    - destination: {host: db-v1}
      weight: 50
    - destination: {host: db-v2}
      weight: 50
";
    let Outcome::Resource(Resource::Routes(set)) = outcome(yaml) else {
        panic!("not mesh routes");
    };
    assert_eq!(set.tcp.len(), 2);
    assert_eq!(set.tcp[0].sni_hosts, ["*.db.example.com"]);
    assert_eq!(set.tcp[0].backends.len(), 2);
    assert!(set.tcp[1].sni_hosts.is_empty());
    assert!(set.tcp[0].admits(5432, Some("a.db.example.com")));
    assert!(!set.tcp[0].admits(5432, None));
}

fn mesh_tls(matches: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ext
  namespace: default
spec:
  hosts: [ext.example.com]
  tls:
  - match:
{matches}
    route:
    - destination: {{host: ext.example.com}}
"
    )
}

#[test]
fn unsupported_or_bad_tls_matches_are_refused_by_field() {
    let cases = [
        (
            "    - sniHosts: [a.example.com]\n      sourceLabels: {app: x}",
            "spec.tls[0].match[0].sourceLabels: TLS matching on source labels is not supported yet",
        ),
        (
            "    - sniHosts: [a.example.com]\n      destinationSubnets: [10.0.0.0/8]",
            "spec.tls[0].match[0].destinationSubnets: TLS matching on subnets is not supported yet",
        ),
        (
            "    - sniHosts: [a.example.com]\n      sourceNamespace: default",
            "spec.tls[0].match[0].sourceNamespace: TLS matching on source namespace is not supported yet",
        ),
        (
            "    - port: 443",
            "spec.tls[0].match[0].sniHosts: must name at least one host",
        ),
        (
            "    - sniHosts: [\"a.*.com\"]",
            "spec.tls[0].match[0].sniHosts[0]: must be a host name",
        ),
        (
            "    - sniHosts: [a.example.com]\n      port: 70000",
            "spec.tls[0].match[0].port",
        ),
        (
            "    - sniHosts: [a.example.com]\n      sniHost: [typo]",
            "unknown field `sniHost`",
        ),
    ];
    for (matches, want) in cases {
        let err = error(&mesh_tls(matches));
        assert!(err.contains(want), "{matches}: {err}");
        assert!(err.contains("VirtualService default/ext"), "{err}");
    }
    let no_route = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example.com]
  tls:
  - match: [{sniHosts: [ext.example.com]}]
";
    assert!(error(no_route).contains("spec.tls[0].route: must name a destination"));
}

#[test]
fn unsupported_tcp_matches_are_refused_by_field_like_tls_ones() {
    // The VirtualService in flow style: one `tcp[]` route whose one match block is `matches`.
    let tcp = |matches: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: default}}
spec: {{hosts: [db], tcp: [{{match: [{matches}], route: [{{destination: {{host: db}}}}]}}]}}
"
        )
    };
    for (matches, want) in [
        (
            "{destinationSubnets: [10.0.0.0/8]}",
            "spec.tcp[0].match[0].destinationSubnets: matching on subnets is not supported yet",
        ),
        (
            "{sourceLabels: {app: x}}",
            "spec.tcp[0].match[0].sourceLabels: TCP matching on source labels is not supported yet",
        ),
        (
            "{sourceNamespace: default}",
            "spec.tcp[0].match[0].sourceNamespace: TCP matching on source namespace is not supported yet",
        ),
    ] {
        let err = error(&tcp(matches));
        assert!(err.contains(want), "{matches}: {err}");
    }
}
