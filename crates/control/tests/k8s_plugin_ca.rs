//! The plug-in CA against a REAL kube-apiserver (the testbed of k8s.rs): a root and an
//! intermediate made here with the openssl CLI go into the Secret `trellis-system/cacerts`
//! (Istio's keys); trellis-control --kubernetes signs with the intermediate, proxies get the
//! root as their trust bundle, and a workload leaf verifies to the root with `openssl verify`.
//! A malformed Secret (bad PEM, key of another certificate, a certificate that is not a CA)
//! stops startup with an error naming the Secret and the key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod k8s_testbed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_testbed::Testbed;
use k8s_testbed::cluster::create_namespace;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use trellis_api::identity::CertifyRequest;
use trellis_api::identity::identity_client::IdentityClient;
use trellis_control::k8s::KubeOptions;
use trellis_control::{ControlConfig, ControlPlane, StartError};
use trellis_identity::SpiffeId;
use trellis_identity::ca::TrustBundle;
use trellis_identity::tls::{LeafKey, MeshTls};

/// The test's PKI (`trellis_testkit::certs::plug_in_ca`), in a directory of its own.
fn make_pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    trellis_testkit::certs::plug_in_ca(dir.path(), "Test plug-in").unwrap();
    dir
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Creates (or replaces) `trellis-system/cacerts` with `data`.
async fn put_secret(secrets: &Api<Secret>, data: &[(&str, String)]) {
    let _ = secrets.delete("cacerts", &DeleteParams::default()).await;
    // Deletion of a Secret is immediate (no finalizers); bounded wait for it anyway.
    for _ in 0..50 {
        if secrets.get_opt("cacerts").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let string_data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "cacerts"},
                "stringData": string_data,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
}

/// A Secret's keys and values.
type SecretData = Vec<(&'static str, String)>;

async fn start(kubeconfig: PathBuf) -> Result<ControlPlane, StartError> {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ControlPlane::start(ControlConfig {
        discovery_addr: any,
        http_addr: any,
        kubernetes: Some(KubeOptions {
            kubeconfig: Some(kubeconfig),
            webhook_addr: None,
            sync_timeout: Duration::from_secs(20),
            ..KubeOptions::default()
        }),
        ..ControlConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plug_in_ca_from_cacerts_secret() {
    let Some(testbed) = Testbed::start() else {
        return;
    };
    let kube = testbed.client().await;
    for ns in ["trellis-system", "shop"] {
        create_namespace(&kube, ns, json!({})).await;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), "shop");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "reviews"}})).unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "trellis-system");
    let pki = make_pki();
    let d = pki.path();
    let root = read(d, "root-cert.pem");
    let ca_cert = read(d, "ca-cert.pem");
    let ca_key = read(d, "ca-key.pem");

    // 1. A well-formed Secret: the control plane signs with the intermediate.
    put_secret(
        &secrets,
        &[
            ("ca-cert.pem", ca_cert.clone()),
            ("ca-key.pem", ca_key.clone()),
            ("root-cert.pem", root.clone()),
            ("cert-chain.pem", ca_cert.clone()),
        ],
    )
    .await;
    let control = start(testbed.kubeconfig.clone()).await.unwrap();
    let request: TokenRequest = serde_json::from_value(
        json!({"spec": {"audiences": ["trellis"], "expirationSeconds": 600}}),
    )
    .unwrap();
    let token = accounts
        .create_token_request("reviews", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let mut client = IdentityClient::connect(format!("http://{}", control.discovery_addr))
        .await
        .unwrap();
    let leaf_key = LeafKey::generate().unwrap();
    let id = SpiffeId::new("cluster.local", "shop", "reviews").unwrap();
    let response = client
        .certify(CertifyRequest {
            namespace: "shop".into(),
            service_account: "reviews".into(),
            csr_pem: leaf_key.csr_pem(&id).unwrap(),
            join_token: token,
        })
        .await
        .unwrap()
        .into_inner();
    let bundle = response.bundle.unwrap().roots_pem;
    assert_eq!(
        bundle,
        vec![root.clone()],
        "proxies trust the plugged root only"
    );
    let chain = response.certificate_chain_pem;
    let tls = MeshTls::new(
        &chain,
        &leaf_key,
        &TrustBundle {
            roots_pem: bundle.clone(),
        },
    )
    .unwrap();
    assert_eq!(
        tls.id().to_string(),
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
    // The chain is leaf + intermediate; openssl checks it ends at the test's root.
    let leaf_end = chain.find("-----END CERTIFICATE-----").unwrap() + 25;
    std::fs::write(d.join("leaf.pem"), &chain[..leaf_end]).unwrap();
    std::fs::write(d.join("chain.pem"), &chain[leaf_end..]).unwrap();
    assert!(chain[leaf_end..].contains(ca_cert.trim()));
    let verify = Command::new("openssl")
        .current_dir(d)
        .args([
            "verify",
            "-x509_strict",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // Without the intermediate the leaf does not verify: it is signed by the plugged issuer,
    // not by a generated one or the root directly.
    let alone = Command::new("openssl")
        .current_dir(d)
        .args(["verify", "-CAfile", "root-cert.pem", "leaf.pem"])
        .output()
        .unwrap();
    assert!(!alone.status.success());
    control.stop().await;

    // 2. Malformed Secrets stop startup with the Secret and the key named.
    let cases: [(&str, SecretData, &str); 4] = [
        (
            "bad PEM",
            vec![
                ("ca-cert.pem", ca_cert.clone()),
                ("ca-key.pem", ca_key.clone()),
                ("root-cert.pem", "not a certificate".into()),
            ],
            "root-cert.pem is not a usable PEM",
        ),
        (
            "key of another certificate",
            vec![
                ("ca-cert.pem", ca_cert.clone()),
                ("ca-key.pem", read(d, "other-key.pem")),
                ("root-cert.pem", root.clone()),
            ],
            "ca-key.pem is not the private key of ca-cert.pem",
        ),
        (
            "not a CA",
            vec![
                ("ca-cert.pem", read(d, "leaf-cert.pem")),
                ("ca-key.pem", read(d, "leaf-key.pem")),
                ("root-cert.pem", root.clone()),
            ],
            "ca-cert.pem is not a CA certificate",
        ),
        (
            "missing key",
            vec![
                ("ca-cert.pem", ca_cert.clone()),
                ("root-cert.pem", root.clone()),
            ],
            "has no key ca-key.pem",
        ),
    ];
    for (what, data, says) in cases {
        put_secret(&secrets, &data).await;
        let err = start(testbed.kubeconfig.clone())
            .await
            .expect_err(what)
            .to_string();
        assert!(
            err.contains("Secret trellis-system/cacerts") && err.contains(says),
            "{what}: {err:?} does not name the Secret and say {says:?}"
        );
    }
}
