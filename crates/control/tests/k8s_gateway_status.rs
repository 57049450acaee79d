//! Gateway API status against a REAL kube-apiserver (the testbed of k8s.rs): Gateways and
//! HTTPRoutes applied with kubectl get the status the spec asks of their controller, read
//! back with kubectl: the Gateway's `Accepted`/`Programmed` conditions and its listeners
//! (`attachedRoutes`, `supportedKinds`, `ResolvedRefs`), each route's `parents[]` with
//! `controllerName` and `Accepted`/`ResolvedRefs`; refused routes say why with the spec's
//! reasons, a ReferenceGrant applied later changes the listener's, and a Gateway of another
//! controller's class is left without status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::path::Path;

use common::eventually;
use k8s_testbed::cluster::{
    cond, control_plane, find, kube_options, kubectl, kubectl_apply, pair, start_installed, status,
};
use serde_json::Value;
use trellis_control::k8s::manifests::Values;

const NAMESPACES: &str = "apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: certs}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{port: 9080}]
";

const GATEWAYS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: trellis
  listeners:
  - name: web
    port: 80
    protocol: HTTP
    hostname: '*.example.com'
    allowedRoutes: {namespaces: {from: All}}
  - name: internal
    port: 8080
    protocol: HTTP
  - name: secure
    port: 443
    protocol: HTTPS
    hostname: secure.example.com
    tls: {certificateRefs: [{name: cert, namespace: certs}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: infra}
spec:
  gatewayClassName: someone-else
  listeners: [{name: web, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: web}]
  hostnames: [shop.example.com]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wrong-host, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: web}]
  hostnames: [shop.other.test]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: not-allowed, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: internal}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
";

const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: edge-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: '', kind: Secret}]
";

/// The route's one parent status, once written.
async fn route_parent(kubeconfig: &Path, route: &str) -> Option<Value> {
    let s = status(
        kubeconfig,
        &format!("httproutes.gateway.networking.k8s.io/{route}"),
        "shop",
    )
    .await?;
    let parents = s["parents"].as_array()?;
    (parents.len() == 1).then(|| parents[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_status_is_written_for_gateways_and_routes() {
    let Some((testbed, _)) =
        start_installed(&Values::default(), &["gateways.gateway.networking.k8s.io"]).await
    else {
        return;
    };
    let kc = testbed.kubeconfig.clone();
    kubectl_apply(&kc, NAMESPACES).await;

    let control = control_plane(kube_options(&kc)).await;
    kubectl_apply(&kc, GATEWAYS).await;

    // The Gateway: Accepted and Programmed (no proxy connected: "programmed: no proxy
    // concerned"), one listener status per listener, the attached route counted where it
    // attached.
    let gw = eventually("the Gateway's listener status", || async {
        let s = status(&kc, "gateways.gateway.networking.k8s.io/edge", "infra").await?;
        let web = find(&s["listeners"], "name", "web")?;
        (web["attachedRoutes"] == 1).then_some(s)
    })
    .await;
    assert_eq!(
        cond(&gw["conditions"], "Accepted"),
        pair("True", "Accepted"),
        "{gw:#}"
    );
    assert_eq!(
        cond(&gw["conditions"], "Programmed"),
        pair("True", "Programmed"),
        "{gw:#}"
    );
    let web = find(&gw["listeners"], "name", "web").unwrap();
    assert_eq!(
        cond(&web["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        cond(&web["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    assert_eq!(web["supportedKinds"][0]["kind"], "HTTPRoute");
    assert!(
        web["conditions"][0]["lastTransitionTime"].is_string(),
        "{web:#}"
    );
    assert_eq!(web["conditions"][0]["observedGeneration"], 1);
    let internal = find(&gw["listeners"], "name", "internal").unwrap();
    assert_eq!(
        internal["attachedRoutes"], 0,
        "the route from shop is not allowed there"
    );
    let secure = find(&gw["listeners"], "name", "secure").unwrap();
    assert_eq!(
        cond(&secure["conditions"], "ResolvedRefs"),
        pair("False", "RefNotPermitted"),
        "{secure:#}"
    );
    assert_eq!(
        cond(&secure["conditions"], "Programmed"),
        pair("False", "Invalid")
    );

    // Routes: parents[] with the controller's name and the spec's reasons.
    let shop = eventually("the attached route's parent status", || {
        route_parent(&kc, "shop")
    })
    .await;
    assert_eq!(shop["controllerName"], "trellis.io/gateway-controller");
    assert_eq!(shop["parentRef"]["name"], "edge");
    assert_eq!(shop["parentRef"]["namespace"], "infra");
    assert_eq!(shop["parentRef"]["sectionName"], "web");
    assert_eq!(
        cond(&shop["conditions"], "Accepted"),
        pair("True", "Accepted"),
        "{shop:#}"
    );
    assert_eq!(
        cond(&shop["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    let wrong = eventually("the wrong host's parent status", || {
        route_parent(&kc, "wrong-host")
    })
    .await;
    assert_eq!(
        cond(&wrong["conditions"], "Accepted"),
        pair("False", "NoMatchingListenerHostname"),
        "{wrong:#}"
    );
    let not_allowed = eventually("the not-allowed route's parent status", || {
        route_parent(&kc, "not-allowed")
    })
    .await;
    assert_eq!(
        cond(&not_allowed["conditions"], "Accepted"),
        pair("False", "NotAllowedByListeners"),
        "{not_allowed:#}"
    );

    // A Gateway of another controller's class gets nothing from this one.
    let theirs = status(&kc, "gateways.gateway.networking.k8s.io/theirs", "infra")
        .await
        .unwrap();
    assert!(
        theirs.get("listeners").is_none() && cond(&theirs["conditions"], "Accepted").is_none(),
        "{theirs:#}"
    );

    // A ReferenceGrant in the Secret's namespace permits the reference (the Secret itself is
    // not read on a cluster yet, so the listener's refs stay unresolved, for that reason).
    kubectl_apply(&kc, GRANT).await;
    eventually("RefNotPermitted lifted by the grant", || async {
        let s = status(&kc, "gateways.gateway.networking.k8s.io/edge", "infra").await?;
        let secure = find(&s["listeners"], "name", "secure")?;
        (cond(&secure["conditions"], "ResolvedRefs") == pair("False", "InvalidCertificateRef"))
            .then_some(())
    })
    .await;

    // `kubectl wait` on the Gateway, as users script it.
    let (ok, out) = kubectl(
        &kc,
        &[
            "wait",
            "-n",
            "infra",
            "--for=condition=Accepted",
            "gateways.gateway.networking.k8s.io/edge",
            "--timeout=10s",
        ],
        None,
    )
    .await;
    assert!(ok, "kubectl wait: {out}");
    control.stop().await;
}
