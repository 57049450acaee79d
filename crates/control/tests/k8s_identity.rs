//! Identity by TokenReview against a REAL kube-apiserver (the testbed of k8s.rs): a proxy
//! proves who it is with a ServiceAccount token minted by the API server's TokenRequest for the
//! audience `trellis`, and the control plane's CA asks the API server (TokenReview) before it
//! signs. Refusals: another SA's token, no token, a token for another audience, a forged or an
//! expired token, a CSR for another identity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, get_json};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_testbed::Testbed;
use k8s_testbed::cluster::{create_namespace, kube_options, start_installed, webhook_values};
use kube::api::{Api, PostParams};
use serde_json::json;
use tonic::Code;
use trellis_api::identity::CertifyRequest;
use trellis_api::identity::identity_client::IdentityClient;
use trellis_control::k8s::KubeOptions;
use trellis_control::{ControlConfig, ControlPlane};
use trellis_identity::SpiffeId;
use trellis_identity::ca::TrustBundle;
use trellis_identity::tls::{LeafKey, MeshTls};

const ISSUER: &str = "https://kubernetes.default.svc";

async fn token(accounts: &Api<ServiceAccount>, sa: &str, audience: &str) -> String {
    let request: TokenRequest = serde_json::from_value(
        json!({"spec": {"audiences": [audience], "expirationSeconds": 600}}),
    )
    .unwrap();
    accounts
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A ServiceAccount JWT as the API server makes them, signed RS256 with `key` (PEM file) by
/// openssl: with the API server's own key and a past `exp` it is a genuine expired token; with
/// another key it is a forgery.
fn jwt(key: &Path, ns: &str, sa: &str, uid: &str, exp: u64) -> String {
    let header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": ISSUER, "aud": ["trellis"], "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": exp - 600, "nbf": exp - 600, "exp": exp,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": uid}},
    });
    let payload = b64url(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("input");
    std::fs::write(&data, &input).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{input}.{}", b64url(&out.stdout))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Asked<'a> {
    sa: &'a str,
    csr_for: &'a str,
    token: &'a str,
}

/// One Certify for `shop/<sa>` with a CSR for `shop/<csr_for>`; the SPIFFE ID of the leaf.
async fn certify(control: SocketAddr, asked: Asked<'_>) -> Result<String, tonic::Status> {
    let mut client = IdentityClient::connect(format!("http://{control}"))
        .await
        .unwrap();
    let key = LeafKey::generate().unwrap();
    let csr_id = SpiffeId::new("cluster.local", "shop", asked.csr_for).unwrap();
    let response = client
        .certify(CertifyRequest {
            namespace: "shop".into(),
            service_account: asked.sa.into(),
            csr_pem: key.csr_pem(&csr_id).unwrap(),
            join_token: asked.token.into(),
        })
        .await?
        .into_inner();
    let bundle = TrustBundle {
        roots_pem: response.bundle.unwrap().roots_pem,
    };
    let tls = MeshTls::new(&response.certificate_chain_pem, &key, &bundle).unwrap();
    Ok(tls.id().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_service_account_token_and_token_review() {
    let Some(testbed) = Testbed::start() else {
        return;
    };
    let kube = testbed.client().await;
    create_namespace(&kube, "shop", json!({})).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), "shop");
    let mut uids = std::collections::BTreeMap::new();
    for sa in ["reviews", "ratings"] {
        let created = accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await
            .unwrap();
        uids.insert(sa, created.metadata.uid.unwrap());
    }

    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let control = ControlPlane::start(ControlConfig {
        discovery_addr: any,
        http_addr: any,
        kubernetes: Some(kube_options(&testbed.kubeconfig)),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let discovery = control.discovery_addr;

    // 1. The reviews token (audience trellis) gets exactly shop/reviews.
    let reviews = token(&accounts, "reviews", "trellis").await;
    let id = certify(
        discovery,
        Asked {
            sa: "reviews",
            csr_for: "reviews",
            token: &reviews,
        },
    )
    .await
    .unwrap();
    assert_eq!(id, "spiffe://cluster.local/ns/shop/sa/reviews");

    // 2. Refusals, each with the reason the proxy logs.
    let ratings = token(&accounts, "ratings", "trellis").await;
    let refused = |code: Code, contains: &'static str| {
        move |result: Result<String, tonic::Status>| {
            let status = result.expect_err("must be refused");
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(contains),
                "{:?} does not say {contains:?}",
                status.message()
            );
        }
    };
    refused(
        Code::PermissionDenied,
        "the token is for shop/ratings, not shop/reviews",
    )(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "reviews",
                token: &ratings,
            },
        )
        .await,
    );
    refused(Code::PermissionDenied, "the CSR asks for")(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "ratings",
                token: &reviews,
            },
        )
        .await,
    );
    refused(Code::Unauthenticated, "a ServiceAccount token is required")(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "reviews",
                token: "",
            },
        )
        .await,
    );
    // A genuine token of reviews, but minted for the API server's audience, not the mesh's.
    let api_token = token(&accounts, "reviews", ISSUER).await;
    refused(Code::Unauthenticated, "token was refused")(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "reviews",
                token: &api_token,
            },
        )
        .await,
    );
    // Tokens made here: with the API server's key and a future expiry the method is sound (it
    // is accepted); with a past expiry, or another key, refused.
    let sa_key = testbed.run.path().join("sa.key");
    let uid = &uids["reviews"];
    let own = jwt(&sa_key, "shop", "reviews", uid, now_unix() + 300);
    assert_eq!(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "reviews",
                token: &own,
            }
        )
        .await
        .unwrap(),
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
    let expired = jwt(&sa_key, "shop", "reviews", uid, now_unix() - 600);
    refused(Code::Unauthenticated, "token was refused")(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "reviews",
                token: &expired,
            },
        )
        .await,
    );
    let other_key = testbed.run.path().join("forger.key");
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&other_key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(out.status.success());
    let forged = jwt(&other_key, "shop", "reviews", uid, now_unix() + 300);
    refused(Code::Unauthenticated, "token was refused")(
        certify(
            discovery,
            Asked {
                sa: "reviews",
                csr_for: "reviews",
                token: &forged,
            },
        )
        .await,
    );

    // 3. A real proxy with --identity-token-file gets its certificate; one given another SA's
    //    token stays unready and says why.
    let dir = tempfile::tempdir().unwrap();
    let good_file = dir.path().join("reviews-token");
    std::fs::write(&good_file, format!("{reviews}\n")).unwrap();
    let bad_file = dir.path().join("ratings-token");
    std::fs::write(&bad_file, &ratings).unwrap();
    let start_proxy = |file: std::path::PathBuf, name: &str| {
        let mut config = trellis_proxy::config::ProxyConfig::local(None);
        config.workload = Some(name.to_string());
        config.namespace = "shop".into();
        config.service_account = "reviews".into();
        config.control = Some(format!("http://{discovery}"));
        config.identity_token_file = Some(file);
        trellis_proxy::proxy::Proxy::start(config)
    };
    let good = start_proxy(good_file, "reviews-1").await.unwrap();
    let bad = start_proxy(bad_file, "reviews-2").await.unwrap();
    let good_admin = good.addrs().admin;
    let bad_admin = bad.addrs().admin;
    eventually("the proxy's certificate", || async {
        let dump = get_json(good_admin, "/config_dump").await?;
        (dump["identity"]["identity"] == "spiffe://cluster.local/ns/shop/sa/reviews").then_some(())
    })
    .await;
    let why = eventually("the refused proxy's error", || async {
        let dump = get_json(bad_admin, "/config_dump").await?;
        dump["identity"]["last_error"].as_str().map(str::to_string)
    })
    .await;
    assert!(
        why.contains("the token is for shop/ratings, not shop/reviews"),
        "{why}"
    );
    let dump = get_json(bad_admin, "/config_dump").await.unwrap();
    assert!(dump["identity"]["identity"].is_null(), "{dump}");

    good.shutdown_token().cancel();
    bad.shutdown_token().cancel();
    good.wait().await;
    bad.wait().await;
    control.stop().await;
}

/// The caBundle of both webhook configurations, decoded.
async fn ca_bundles(kube: &kube::Client) -> Option<(String, String)> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(kube.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(kube.clone());
    let m = mutating.get("trellis-sidecar-injector").await.ok()?;
    let v = validating.get("trellis-config-validator").await.ok()?;
    let m = m.webhooks?.first()?.client_config.ca_bundle.clone()?;
    let v = v.webhooks?.first()?.client_config.ca_bundle.clone()?;
    Some((
        String::from_utf8(m.0).unwrap(),
        String::from_utf8(v.0).unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_certificate_from_the_mesh_ca_through_an_anchor_rotation() {
    use k8s_openapi::api::core::v1::Pod;
    use trellis_control::ca::RotationStep;

    let webhook: SocketAddr = format!("127.0.0.1:{}", k8s_testbed::free_port())
        .parse()
        .unwrap();
    let mut values = webhook_values(webhook);
    // Fail: a webhook the API server cannot verify refuses the pod instead of skipping it.
    values.set("webhook.failurePolicy=Fail").unwrap();
    let Some((testbed, kube)) = start_installed(&values, &[]).await else {
        return;
    };
    create_namespace(&kube, "shop", json!({"trellis.io/inject": "enabled"})).await;

    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let control = ControlPlane::start(ControlConfig {
        discovery_addr: any,
        http_addr: any,
        kubernetes: Some(KubeOptions {
            kubeconfig: Some(testbed.kubeconfig.clone()),
            webhook_addr: Some(webhook),
            webhook_names: vec!["127.0.0.1".into()],
            sync_timeout: Duration::from_secs(20),
            ..KubeOptions::default()
        }),
        ..ControlConfig::default()
    })
    .await
    .unwrap();
    let ca = control.ca().clone();
    let roots = || ca.bundle_rx().borrow().bundle.roots_pem.clone();

    // The caBundle is the mesh's root, not a CA of the webhook's own.
    let want = roots().concat();
    eventually("caBundle = the mesh root", || async {
        let (m, v) = ca_bundles(&kube).await?;
        (m == want && v == want).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "shop");
    let mut n = 0;
    let mut injected = |what: &'static str| {
        n += 1;
        let pods = pods.clone();
        let name = format!("web-{n}");
        async move {
            let pod = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            }))
            .unwrap();
            let created = pods
                .create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let first = created.spec.unwrap().containers[0].name.clone();
            assert_eq!(first, "trellis-proxy", "{what}");
        }
    };
    injected("before the rotation").await;

    // prepare: both roots in the caBundle; activate: the serving leaf is reissued by the new
    // issuer (trusted through the new root); retire: only the new root, and the API server
    // still reaches the webhook.
    ca.rotate(RotationStep::Prepare).unwrap();
    let want = roots().concat();
    assert_eq!(roots().len(), 2);
    eventually("caBundle with both roots", || async {
        let (m, v) = ca_bundles(&kube).await?;
        (m == want && v == want).then_some(())
    })
    .await;
    injected("prepared").await;
    ca.rotate(RotationStep::Activate).unwrap();
    injected("activated").await;
    ca.rotate(RotationStep::Retire).unwrap();
    let new_root = roots();
    assert_eq!(new_root.len(), 1);
    let want = new_root.concat();
    eventually("caBundle with the new root only", || async {
        let (m, v) = ca_bundles(&kube).await?;
        (m == want && v == want).then_some(())
    })
    .await;
    injected("retired").await;
    control.stop().await;
}
