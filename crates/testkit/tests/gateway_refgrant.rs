//! Gateway API cross-namespace backendRefs as real processes: a control plane reading a config
//! directory, a gateway proxy (`--mode gateway`) serving a Gateway in `infra`, an HTTPRoute in
//! `shop` whose backend is a Service in `other`, and that backend behind its sidecar. The
//! backend takes traffic only while a ReferenceGrant in `other` allows HTTPRoutes of `shop`
//! (the spec's `RefNotPermitted`: 500 otherwise); the grant is added and removed by editing the
//! directory, as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trellis_testkit::mesh::{config_dir, write_config};
use trellis_testkit::tools::{curl_http, free_port};
use trellis_testkit::{ControlPlane, HttpEcho, ProxyBuilder, service_yaml, wait};

const CONVERGE: Duration = Duration::from_secs(30);

const ROUTES: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: trellis
  listeners:
  - {name: web, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /reviews}}]
    backendRefs: [{name: reviews, namespace: other, port: 9080}]
";

const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: '', kind: Service, name: reviews}]
";

/// The status of `GET url`, `Err` while curl cannot connect (the gateway not listening yet).
fn status(url: &str) -> Result<u16, String> {
    curl_http(&["--max-time", "5", url]).map(|r| r.status)
}

/// Retries until `GET url` answers `want`, for at most `CONVERGE`.
fn until_status(url: &str, want: u16, what: &str) {
    wait::until(CONVERGE, || match status(url) {
        Ok(s) if s == want => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("{what}: GET {url} never answered {want}: {e}"));
}

#[test]
fn a_backend_in_another_namespace_is_reached_only_while_a_reference_grant_allows_it() {
    let dir = config_dir(&[
        ("routes.yaml", ROUTES.to_string()),
        (
            "reviews.yaml",
            service_yaml("reviews", "other", 9080, 9080, "reviews"),
        ),
    ])
    .unwrap();
    let mut control = ControlPlane::start(dir.path()).unwrap();
    let echo = HttpEcho::start().unwrap();
    let _reviews = ProxyBuilder::loopback("reviews-v1")
        .namespace("other")
        .label("app", "reviews")
        .control(&control.url())
        .app(echo.addr)
        .app_port(9080)
        .start()
        .unwrap();
    let port = free_port();
    let _gateway = ProxyBuilder::loopback("edge")
        .namespace("infra")
        .label("gateway.networking.k8s.io/gateway-name", "edge")
        .control(&control.url())
        .arg("--mode")
        .arg("gateway")
        .arg("--gateway-port")
        .arg(format!("80=127.0.0.1:{port}"))
        .start()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/reviews/1");

    // No grant: the route is served, its only backend is not, and the spec's answer is 500.
    until_status(&url, 500, "without a ReferenceGrant");
    for _ in 0..5 {
        assert_eq!(status(&url), Ok(500));
    }
    assert_eq!(echo.requests(), 0, "the refused backend got traffic");
    let log = control.process().log();
    assert!(
        log.contains(
            "HTTPRoute shop/reviews: backendRef Service other/reviews is in another namespace and no ReferenceGrant there allows HTTPRoute from namespace"
        ) && log.contains("RefNotPermitted"),
        "the control plane names the refused reference: {log}"
    );

    // The grant, added as a new file: the same request now reaches the backend.
    write_config(dir.path(), "grant.yaml", GRANT).unwrap();
    until_status(&url, 200, "with the ReferenceGrant");
    let reply = curl_http(&[&url]).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().path, "/reviews/1");
    assert!(echo.requests() >= 2, "the backend served the requests");

    // The grant removed: refused again.
    std::fs::remove_file(dir.path().join("grant.yaml")).unwrap();
    until_status(&url, 500, "after the ReferenceGrant is removed");
}
