//! The `Programmed` condition and the Istio security kinds against a REAL kube-apiserver (the
//! testbed of k8s.rs): a VirtualService applied with the API gets `Programmed=True` with "programmed
//! on N/N proxies" once the proxies it concerns have ACKed it (those subscribed to its host: one
//! subscribed to another host is not counted), `kubectl wait
//! --for=condition=Programmed` returns, the count follows proxies leaving and new generations;
//! a PeerAuthentication is watched, reaches the proxies of its namespace as their inbound
//! policy and gets its conditions too; so are ServiceEntry and WasmPlugin. A pod without the proxy is a plain endpoint (its own
//! IP and port, not meshed, no identity) that a real proxy reaches in plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::net::SocketAddr;
use std::time::Duration;

use common::{client, eventually, found, workload};
use k8s_openapi::api::core::v1::Service;
use k8s_testbed::cluster::{
    control_plane, create_namespace, kube_options, plain_backend, start_installed, token_file,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trellis_control::k8s::manifests::Values;
use trellis_model::Target;
use trellis_proxy::tls::policy::MtlsMode;

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The condition `kind` of `name`, if written.
async fn condition(api: &Api<DynamicObject>, name: &str, kind: &str) -> Option<Value> {
    let obj = api.get(name).await.ok()?;
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_counts_acks_and_security_kinds_are_watched() {
    let Some((testbed, kube)) = start_installed(
        &Values::default(),
        &[
            "virtualservices.networking.istio.io",
            "peerauthentications.security.istio.io",
        ],
    )
    .await
    else {
        return;
    };
    create_namespace(&kube, "shop", json!({})).await;
    let vs_api: Api<DynamicObject> = Api::namespaced_with(
        kube.clone(),
        "shop",
        &resource(
            "networking.istio.io",
            "v1beta1",
            "VirtualService",
            "virtualservices",
        ),
    );
    let pa_api: Api<DynamicObject> = Api::namespaced_with(
        kube.clone(),
        "shop",
        &resource(
            "security.istio.io",
            "v1beta1",
            "PeerAuthentication",
            "peerauthentications",
        ),
    );
    let services: Api<Service> = Api::namespaced(kube.clone(), "shop");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "reviews"}, "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080}]}})).unwrap(),
        )
        .await
        .unwrap();

    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ratings"}, "spec": {"selector": {"app": "ratings"}, "ports": [{"port": 9080}]}})).unwrap(),
        )
        .await
        .unwrap();

    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let control = control_plane(kube_options(&testbed.kubeconfig)).await;

    // Two proxies of the shop namespace, subscribed to reviews (their discovery clients ACK).
    let target: Target = "reviews.shop:9080".parse().unwrap();
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let mut a_workload = workload("web-1", "web", "127.0.0.1:1");
    a_workload.namespace = "shop".into();
    let mut b_workload = workload("web-2", "web", "127.0.0.1:2");
    b_workload.namespace = "shop".into();
    let a = client(control.discovery_addr, a_workload, &stop_a);
    let b = client(control.discovery_addr, b_workload, &stop_b);
    let a_rx = a.watch(&target);
    let b_rx = b.watch(&target);
    // A third proxy, of another namespace, subscribed to ratings only: no VirtualService for
    // reviews or policy of the shop namespace concerns it, so it is never counted for them.
    let stop_c = CancellationToken::new();
    let mut c_workload = workload("batch-1", "batch", "127.0.0.1:3");
    c_workload.namespace = "other".into();
    let c = client(control.discovery_addr, c_workload, &stop_c);
    let ratings: Target = "ratings.shop:9080".parse().unwrap();
    let c_rx = c.watch(&ratings);
    eventually("reviews known to both, ratings to the third", || async {
        (found(&a_rx).is_some() && found(&b_rx).is_some() && found(&c_rx).is_some()).then_some(())
    })
    .await;

    // 1. A VirtualService applied with kubectl: Accepted, then Programmed on both proxies.
    let vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - timeout: 3s\n    route: [{destination: {host: reviews}}]\n";
    let mut apply = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", &testbed.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = apply.stdin.take().unwrap();
        stdin.write_all(vs.as_bytes()).await.unwrap();
    }
    let out = apply.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let programmed = eventually("Programmed=True on 2/2", || async {
        let c = condition(&vs_api, "reviews", "Programmed").await?;
        (c["status"] == "True" && c["message"] == "programmed on 2/2 proxies").then_some(c)
    })
    .await;
    assert_eq!(programmed["reason"], "Programmed");
    assert_eq!(programmed["observedGeneration"], 1);
    assert!(found(&a_rx).is_some_and(|d| !d.routes.is_empty()));
    let accepted = condition(&vs_api, "reviews", "Accepted").await.unwrap();
    assert_eq!(accepted["status"], "True");

    // `kubectl wait --for=condition=Programmed` returns at once.
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", &testbed.kubeconfig)
        .args([
            "wait",
            "-n",
            "shop",
            "--for=condition=Programmed",
            "virtualservices.networking.istio.io/reviews",
            "--timeout=10s",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. A proxy leaves: the count follows. Two proxies stay connected, subscribed to
    //    different hosts: the VirtualService for reviews counts the one it concerns (1/1, not
    //    1/2).
    stop_b.cancel();
    eventually("programmed on 1/1 after a proxy left", || async {
        let c = condition(&vs_api, "reviews", "Programmed").await?;
        (c["message"] == "programmed on 1/1 proxies").then_some(())
    })
    .await;

    // 3. A new generation is programmed again, with its observedGeneration.
    let patch = json!({"spec": {"http": [{"timeout": "5s", "route": [{"destination": {"host": "reviews"}}]}]}});
    vs_api
        .patch("reviews", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("Programmed for generation 2", || async {
        let c = condition(&vs_api, "reviews", "Programmed").await?;
        (c["observedGeneration"] == 2 && c["status"] == "True").then_some(())
    })
    .await;
    assert!(
        found(&a_rx).is_some_and(|d| d.routes[0].timeout == Some(Duration::from_secs(5))),
        "the proxy that counts as programmed has the new route"
    );

    // 4. PeerAuthentication is watched: STRICT reaches the shop proxy, with conditions.
    let pa: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }))
    .unwrap();
    pa_api.create(&PostParams::default(), &pa).await.unwrap();
    let mut policy_rx = a.inbound_policy_rx();
    eventually("STRICT inbound policy at the proxy", || {
        let mode = policy_rx.borrow_and_update().mode;
        async move { (mode == MtlsMode::Strict).then_some(()) }
    })
    .await;
    let pa_programmed = eventually("PeerAuthentication Programmed", || async {
        let c = condition(&pa_api, "default", "Programmed").await?;
        (c["status"] == "True").then_some(c)
    })
    .await;
    assert_eq!(pa_programmed["message"], "programmed on 1/1 proxies");

    // 4b. ServiceEntry and WasmPlugin are watched too (their CRDs installed): both are read
    //     and accepted, and the ServiceEntry is programmed on the connected proxies. It resolves
    //     by DNS: the DNS answers join the config on its way to the proxies, and what they are
    //     sent must still count as programmed (it once never did).
    let se_api: Api<DynamicObject> = Api::namespaced_with(
        kube.clone(),
        "shop",
        &resource(
            "networking.istio.io",
            "v1beta1",
            "ServiceEntry",
            "serviceentries",
        ),
    );
    let se: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "ServiceEntry",
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {"hosts": ["api.payments.example"], "location": "MESH_EXTERNAL",
                 "resolution": "DNS", "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                 "endpoints": [{"address": "localhost"}]},
    }))
    .unwrap();
    se_api.create(&PostParams::default(), &se).await.unwrap();
    // No proxy is subscribed to its host: nothing to wait for, and it says so.
    eventually("ServiceEntry Accepted and Programmed", || async {
        let accepted = condition(&se_api, "payments", "Accepted").await?;
        let programmed = condition(&se_api, "payments", "Programmed").await?;
        (accepted["status"] == "True"
            && programmed["status"] == "True"
            && programmed["message"] == "programmed: no proxy concerned")
            .then_some(())
    })
    .await;
    // ...and so does a new generation of another object after it.
    let patch = json!({"spec": {"http": [{"timeout": "4s", "route": [{"destination": {"host": "reviews"}}]}]}});
    vs_api
        .patch("reviews", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(
        "the VirtualService's next generation Programmed",
        || async {
            let c = condition(&vs_api, "reviews", "Programmed").await?;
            let generation = vs_api.get("reviews").await.ok()?.metadata.generation?;
            (c["status"] == "True" && c["observedGeneration"] == generation).then_some(())
        },
    )
    .await;
    let wasm_api: Api<DynamicObject> = Api::namespaced_with(
        kube.clone(),
        "shop",
        &resource(
            "extensions.istio.io",
            "v1alpha1",
            "WasmPlugin",
            "wasmplugins",
        ),
    );
    let plugin: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "add-header", "namespace": "shop"},
        // For no workload here: its module cannot be fetched, and FAIL_CLOSE would refuse the
        // requests of the proxy below.
        "spec": {"selector": {"matchLabels": {"app": "nobody"}},
                 "url": "http://127.0.0.1:1/add-header.wasm", "phase": "STATS"},
    }))
    .unwrap();
    wasm_api
        .create(&PostParams::default(), &plugin)
        .await
        .unwrap();
    eventually("WasmPlugin Accepted", || async {
        let c = condition(&wasm_api, "add-header", "Accepted").await?;
        (c["status"] == "True").then_some(())
    })
    .await;

    // 5. A pod without the proxy: Ready at 127.0.0.1 (written as a kubelet would) with a real
    //    application on a free port, selected by the `plain` Service.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Bounded by the test: the task ends with the runtime.
        while let Ok((mut conn, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nunmeshed")
                    .await;
            });
        }
    });
    plain_backend(&kube, "shop", app_port).await;
    let plain: Target = "plain.shop:8080".parse().unwrap();
    let plain_rx = a.watch(&plain);
    let dest = eventually("the plain pod as an endpoint", || async {
        found(&plain_rx).filter(|d| !d.endpoints.is_empty())
    })
    .await;
    let ep = &dest.endpoints[0];
    assert_eq!(ep.address, SocketAddr::from(([127, 0, 0, 1], app_port)));
    assert!(!ep.meshed, "no proxy there: not meshed");
    assert_eq!(ep.identity, None);

    // A real proxy, with a certificate (so mTLS is on for meshed hops), dials it in plaintext.
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_file(&kube, "shop", token_dir.path()).await;
    let mut config = trellis_proxy::config::ProxyConfig::local(None);
    config.identity_token_file = Some(token_file);
    config.workload = Some("web-3".into());
    config.namespace = "shop".into();
    config.control = Some(format!("http://{}", control.discovery_addr));
    let db: Target = "db.shop:5432".parse().unwrap();
    config.outbound_ports = vec![
        trellis_proxy::config::OutboundPort {
            listen: any,
            target: plain.clone(),
        },
        trellis_proxy::config::OutboundPort {
            listen: any,
            target: db.clone(),
        },
    ];
    let proxy = trellis_proxy::proxy::Proxy::start(config).await.unwrap();
    let listen = proxy.addrs().outbound_ports[&plain.to_string()];
    let admin = proxy.addrs().admin;
    eventually("the proxy's certificate", || async {
        let dump = common::get_json(admin, "/config_dump").await?;
        (dump["identity"]["identity"] == "spiffe://cluster.local/ns/shop/sa/default").then_some(())
    })
    .await;
    let (code, body) = eventually("a response from the unmeshed pod", || async {
        common::get(listen, "/")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "unmeshed"));
    let metrics = common::get(proxy.addrs().admin, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("trellis_tls_handshakes_total{direction=\"outbound\"} 0\n"),
        "no TLS towards a pod without a proxy:\n{metrics}"
    );

    // 6. EndpointSlices: the 1.20 server serves only discovery.k8s.io/v1beta1, so the control
    //    plane falls back to it. A Service without a selector gets its endpoints from a slice
    //    someone else manages: a plain endpoint, reached in plaintext.
    assert!(
        kube.list_api_group_resources("discovery.k8s.io/v1")
            .await
            .is_err(),
        "the testbed serves EndpointSlice v1: the fallback is not exercised"
    );
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432, "targetPort": app_port}]}})).unwrap(),
        )
        .await
        .unwrap();
    let slices: Api<DynamicObject> = Api::namespaced_with(
        kube.clone(),
        "shop",
        &resource(
            "discovery.k8s.io",
            "v1beta1",
            "EndpointSlice",
            "endpointslices",
        ),
    );
    let slice: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": "db-1", "labels": {
            "kubernetes.io/service-name": "db",
            "endpointslice.kubernetes.io/managed-by": "staff.example.org",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": app_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let db_rx = a.watch(&db);
    let dest = eventually("the slice's address as an endpoint", || async {
        found(&db_rx).filter(|d| !d.endpoints.is_empty())
    })
    .await;
    assert_eq!(dest.endpoints.len(), 1);
    assert_eq!(
        dest.endpoints[0].address,
        SocketAddr::from(([127, 0, 0, 1], app_port))
    );
    assert!(!dest.endpoints[0].meshed);
    let db_listen = proxy.addrs().outbound_ports[&db.to_string()];
    let (_, body) = eventually("a response through the slice's endpoint", || async {
        common::get(db_listen, "/")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    assert_eq!(body, "unmeshed");
    // Deleting the slice takes the endpoint away.
    slices
        .delete("db-1", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually("no endpoints once the slice is gone", || async {
        found(&db_rx).filter(|d| d.endpoints.is_empty())
    })
    .await;

    proxy.shutdown_token().cancel();
    proxy.wait().await;
    stop_a.cancel();
    stop_c.cancel();
    control.stop().await;
}
