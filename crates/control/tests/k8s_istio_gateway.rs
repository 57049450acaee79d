//! Istio's `Gateway` in Kubernetes mode, against a REAL kube-apiserver (the testbed of k8s.rs):
//! an Istio `Gateway` (networking.istio.io) and a Gateway API `Gateway`
//! (gateway.networking.k8s.io) with the SAME namespace/name, each with its route, applied with
//! kubectl. Both are watched as two objects: each gets its own conditions (the Gateway API one
//! its listener status too, the Istio one none of it), two real `trellis-proxy --mode gateway`
//! processes serve each its own Gateway's listener (curl through both reaches the backend, a
//! pod the test writes as a kubelet would), and deleting the Istio one takes away its listener
//! only. And an Istio HTTPS server whose `credentialName` Secret the control plane watches in
//! the gateway's namespace, following a certificate replaced in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::net::SocketAddr;
use std::path::Path;

use common::eventually;
use k8s_testbed::Testbed;
use k8s_testbed::cluster::{
    cond, control_plane, install, kube_options, kubectl, kubectl_apply, pair, plain_backend,
    start_installed, status, token_file,
};
use trellis_control::k8s::KubeOptions;
use trellis_control::k8s::manifests::Values;
use trellis_testkit::tools::{CurlReply, curl_http, free_port};
use trellis_testkit::{HttpEcho, Proxy, ProxyBuilder};

const NAMESPACES: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
";

/// The two Gateways named shop/web and a route for each: the VirtualService binds to the
/// Istio one (`gateways: [web]`), the HTTPRoute to the Gateway API one (`parentRefs`).
const GATEWAYS: &str = "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [istio.example.com]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: via-istio, namespace: shop}
spec:
  hosts: [istio.example.com]
  gateways: [web]
  http:
  - route: [{destination: {host: plain, port: {number: 8080}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: trellis
  listeners:
  - {name: http, port: 8080, protocol: HTTP, hostname: api.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: via-api, namespace: shop}
spec:
  parentRefs: [{name: web}]
  hostnames: [api.example.com]
  rules: [{backendRefs: [{name: plain, port: 8080}]}]
";

const ISTIO_GW: &str = "gateways.networking.istio.io/web";
const API_GW: &str = "gateways.gateway.networking.k8s.io/web";

/// curl `http://127.0.0.1:port/path` with `Host: host` (curl blocks: off the runtime).
async fn curl(port: u16, host: &str, path: &str) -> Result<CurlReply, String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let header = format!("Host: {host}");
    tokio::task::spawn_blocking(move || curl_http(&["-H", &header, &url]))
        .await
        .unwrap()
}

/// A gateway workload (`trellis-proxy --mode gateway`, a real process) in `namespace` with
/// `labels` and the identity `token`; each Gateway port of `ports` is served at the paired free
/// local port.
async fn gateway(
    control: SocketAddr,
    name: &str,
    namespace: &str,
    token: &Path,
    labels: &[(&str, &str)],
    ports: &[(u16, u16)],
) -> Proxy {
    let mut b = ProxyBuilder::loopback(name)
        .namespace(namespace)
        .control(&format!("http://{control}"))
        .arg("--identity-token-file")
        .arg(token)
        .arg("--mode")
        .arg("gateway");
    for (k, v) in labels {
        b = b.label(k, v);
    }
    for (gw, local) in ports {
        b = b
            .arg("--gateway-port")
            .arg(format!("{gw}=127.0.0.1:{local}"));
    }
    // Waits for the ready file (blocking): off the runtime the control plane runs on.
    tokio::task::spawn_blocking(move || b.start().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_and_gateway_api_gateways_of_one_name_are_both_watched_and_served() {
    let Some((testbed, kube)) = start_installed(
        &Values::default(),
        &[
            "gateways.networking.istio.io",
            "gateways.gateway.networking.k8s.io",
        ],
    )
    .await
    else {
        return;
    };
    let kc = testbed.kubeconfig.clone();
    kubectl_apply(&kc, NAMESPACES).await;
    let tokens = tempfile::tempdir().unwrap();
    let istio_token = token_file(&kube, "istio-system", tokens.path()).await;
    let shop_token = token_file(&kube, "shop", tokens.path()).await;
    let echo = HttpEcho::start().unwrap();
    plain_backend(&kube, "shop", echo.addr.port()).await;

    let control = control_plane(kube_options(&kc)).await;
    kubectl_apply(&kc, GATEWAYS).await;

    // Two gateway workloads: the Istio ingress gateway (selected by the Istio Gateway's
    // `selector`) and the Gateway API Gateway's own (its namespace and gateway-name label).
    // Each maps both Gateways' ports, so a listener served by the wrong one would show.
    let (istio_80, istio_8080, api_80, api_8080) =
        (free_port(), free_port(), free_port(), free_port());
    let _ingress = gateway(
        control.discovery_addr,
        "ingressgateway",
        "istio-system",
        &istio_token,
        &[
            ("istio", "ingressgateway"),
            ("app", "trellis-ingressgateway"),
        ],
        &[(80, istio_80), (8080, istio_8080)],
    )
    .await;
    let _web = gateway(
        control.discovery_addr,
        "web-gateway",
        "shop",
        &shop_token,
        &[("gateway.networking.k8s.io/gateway-name", "web")],
        &[(80, api_80), (8080, api_8080)],
    )
    .await;

    // Both served, each by its own workload, into the backend.
    let reply = eventually(
        "the Istio Gateway's listener serving the VirtualService",
        || async {
            curl(istio_80, "istio.example.com", "/via-istio")
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await;
    assert_eq!(reply.echo().path, "/via-istio");
    let reply = eventually(
        "the Gateway API Gateway's listener serving the HTTPRoute",
        || async {
            curl(api_8080, "api.example.com", "/via-api")
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await;
    assert_eq!(reply.echo().path, "/via-api");
    assert!(
        curl(istio_8080, "api.example.com", "/").await.is_err(),
        "the ingress gateway serves no port of the Gateway API Gateway"
    );
    assert!(
        curl(api_80, "istio.example.com", "/").await.is_err(),
        "the Gateway API workload serves no port of the Istio Gateway"
    );

    // Each gets its own conditions; only the Gateway API one gets listener status.
    let istio = eventually("the Istio Gateway Accepted and Programmed", || async {
        let s = status(&kc, ISTIO_GW, "shop").await?;
        (cond(&s["conditions"], "Programmed")? == ("True".into(), "Programmed".into())).then_some(s)
    })
    .await;
    assert_eq!(
        cond(&istio["conditions"], "Accepted"),
        pair("True", "Accepted"),
        "{istio:#}"
    );
    assert!(istio.get("listeners").is_none(), "{istio:#}");
    let api = eventually("the Gateway API Gateway's listener status", || async {
        let s = status(&kc, API_GW, "shop").await?;
        (s["listeners"][0]["attachedRoutes"] == 1).then_some(s)
    })
    .await;
    assert_eq!(
        cond(&api["conditions"], "Accepted"),
        pair("True", "Accepted"),
        "{api:#}"
    );
    assert_eq!(api["listeners"][0]["name"], "http");
    let route = eventually("the VirtualService Accepted", || async {
        let s = status(&kc, "virtualservices.networking.istio.io/via-istio", "shop").await?;
        cond(&s["conditions"], "Accepted")
    })
    .await;
    assert_eq!(Some(route), pair("True", "Accepted"));

    // The control plane lists both, by keys that carry the group.
    let config = common::get_json(control.http_addr, "/api/v1/config")
        .await
        .unwrap();
    let files: Vec<&str> = config["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["file"].as_str())
        .collect();
    for key in [
        "Gateway.networking.istio.io shop/web",
        "Gateway.gateway.networking.k8s.io shop/web",
        "VirtualService shop/via-istio",
    ] {
        assert!(files.contains(&key), "{key} not in {files:?}");
    }

    // Deleting the Istio Gateway takes away its listener only.
    let (ok, out) = kubectl(&kc, &["delete", ISTIO_GW, "-n", "shop"], None).await;
    assert!(ok, "kubectl delete: {out}");
    eventually("the Istio Gateway's port closed", || async {
        curl(istio_80, "istio.example.com", "/")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let reply = curl(api_8080, "api.example.com", "/still").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let api = status(&kc, API_GW, "shop").await.unwrap();
    assert_eq!(api["listeners"][0]["attachedRoutes"], 1, "{api:#}");
    control.stop().await;
}

/// Istio's HTTPS server at the ingress gateway, `credentialName: shop-cert`.
const HTTPS_GATEWAY: &str = "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: secure, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com]
  gateways: [istio-system/secure]
  http:
  - route: [{destination: {host: plain, port: {number: 8080}}}]
";

/// Puts `<name>.pem`/`<name>.key` of `dir` into the `kubernetes.io/tls` Secret
/// `istio-system/shop-cert` (created, or replaced), as a user would with kubectl.
async fn put_tls_secret(kubeconfig: &Path, dir: &Path, name: &str) {
    let cert = format!("--cert={}", dir.join(format!("{name}.pem")).display());
    let key = format!("--key={}", dir.join(format!("{name}.key")).display());
    let args = [
        "create",
        "secret",
        "tls",
        "shop-cert",
        "-n",
        "istio-system",
        &cert,
        &key,
        "--dry-run=client",
        "-o",
        "yaml",
    ];
    let (ok, yaml) = kubectl(kubeconfig, &args, None).await;
    assert!(ok, "kubectl create secret tls: {yaml}");
    kubectl_apply(kubeconfig, &yaml).await;
}

/// `https://secure.example.com:port/path` at 127.0.0.1, trusting only `ca` (curl verifies the
/// chain and the name).
async fn curl_https(port: u16, ca: std::path::PathBuf, path: &str) -> Result<CurlReply, String> {
    let url = format!("https://secure.example.com:{port}{path}");
    let resolve = format!("secure.example.com:{port}:127.0.0.1");
    tokio::task::spawn_blocking(move || {
        curl_http(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ])
    })
    .await
    .unwrap()
}

/// Istio's `credentialName` on a cluster: the certificate Secret in the gateway's namespace,
/// which the control plane watches there (`--gateway-secret-namespace`, the Role `trellis
/// install` renders for it), serves the Gateway's HTTPS server; a new certificate put in the
/// Secret is served next, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_takes_its_certificate_from_a_secret_and_follows_it() {
    let Some(testbed) = Testbed::start() else {
        return;
    };
    let kube = testbed.client().await;
    let mut values = Values::default();
    values.set("gateway.secretNamespaces=istio-system").unwrap();
    let kc = testbed.kubeconfig.clone();
    // The namespaces first: the install puts the Secret-reading Role in istio-system.
    kubectl_apply(&kc, NAMESPACES).await;
    install(&testbed, &kube, &values, &["gateways.networking.istio.io"]).await;
    let certs = tempfile::tempdir().unwrap();
    for (ca, leaf) in [("ca-1", "leaf-1"), ("ca-2", "leaf-2")] {
        trellis_testkit::certs::ca(certs.path(), ca).unwrap();
        trellis_testkit::certs::server_cert(certs.path(), ca, leaf, "secure.example.com").unwrap();
    }
    put_tls_secret(&kc, certs.path(), "leaf-1").await;
    let token = token_file(&kube, "istio-system", certs.path()).await;
    let echo = HttpEcho::start().unwrap();
    plain_backend(&kube, "shop", echo.addr.port()).await;
    let control = control_plane(KubeOptions {
        gateway_secret_namespaces: vec!["istio-system".into()],
        ..kube_options(&kc)
    })
    .await;
    kubectl_apply(&kc, HTTPS_GATEWAY).await;
    let https = free_port();
    let _ingress = gateway(
        control.discovery_addr,
        "ingressgateway",
        "istio-system",
        &token,
        &[("istio", "ingressgateway")],
        &[(443, https)],
    )
    .await;

    let reply = eventually("HTTPS with the Secret's certificate", || async {
        curl_https(https, certs.path().join("ca-1.pem"), "/secure")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(reply.echo().path, "/secure");

    // A new certificate (another CA) in the same Secret: served next, the old one no longer.
    put_tls_secret(&kc, certs.path(), "leaf-2").await;
    eventually("HTTPS with the Secret's new certificate", || async {
        curl_https(https, certs.path().join("ca-2.pem"), "/rotated")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    let old = curl_https(https, certs.path().join("ca-1.pem"), "/old").await;
    assert!(
        old.is_err(),
        "the replaced certificate is still served: {old:?}"
    );
    control.stop().await;
}
