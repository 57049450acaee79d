//! Certificate rotation under load, in pods: leaves that live 4 s (so every sidecar renews
//! several times during the load) and, in the same run, a full trust-anchor rotation (prepare,
//! activate, retire, as `trellis identity rotate` drives it), with connections retired every 200
//! requests (5 new handshakes a second per connection at 1,000 rps) so fresh mTLS handshakes keep using whatever is current.

use std::time::{Duration, Instant};

use trellis_testkit::netns::require_root;
use trellis_testkit::{Proxy, wait};

use crate::fixture::{
    CONVERGE, PodMesh, PodMeshSpec, assert_no_failures, figure, mesh_rate, metric,
};

const SHORT_CONNECTIONS: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  trafficPolicy:\n    connectionPool:\n      http: {maxRequestsPerConnection: 200}\n";

/// A field of the proxy's `/config_dump` `identity` object.
fn identity_u64(proxy: &Proxy, field: &str) -> u64 {
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    let json: serde_json::Value = serde_json::from_str(&dump).unwrap();
    json["identity"][field].as_u64().unwrap_or(0)
}

fn wait_all(mesh: &PodMesh, field: &str, want: u64) {
    wait::until(CONVERGE, || {
        for p in mesh.proxies() {
            let got = identity_u64(p, field);
            if got != want {
                return Err(format!("{}: {field} is {got}, want {want}", p.name));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn chaos_certificate_and_trust_anchor_rotation_under_load() {
    let name = "chaos_certificate_and_trust_anchor_rotation_under_load";
    if !require_root(name) {
        return;
    }
    let mesh = PodMesh::start(PodMeshSpec {
        servers: 2,
        config: vec![("dr.yaml", SHORT_CONNECTIONS.to_string())],
        control_args: vec!["--cert-ttl", "4s"],
        ..Default::default()
    });
    let renewals_before: Vec<u64> = mesh
        .proxies()
        .map(|p| identity_u64(p, "renewals"))
        .collect();
    let handshakes_before = metric(&mesh.client, "trellis_tls_handshakes_total");
    let rate = mesh_rate();
    let duration = Duration::from_secs(16);
    let before = mesh.server_requests();
    let load = mesh.load(rate, duration);
    mesh.wait_flowing(before, f64::from(rate) / 2.0);

    let t0 = Instant::now();
    // 1. A new anchor joins the bundle; every sidecar holds both before anything is issued
    //    from it.
    let (code, body) = mesh.control_post("/api/v1/identity/rotate/prepare");
    assert_eq!(code, 200, "{body}");
    wait_all(&mesh, "trust_anchors", 2);
    // 2. The new issuer signs; every sidecar renews at once.
    let (code, body) = mesh.control_post("/api/v1/identity/rotate/activate");
    assert_eq!(code, 200, "{body}");
    wait_all(&mesh, "issuer_generation", 2);
    // The scenario, not a wait: for 2 s new leaves meet old ones under load.
    std::thread::sleep(Duration::from_secs(2));
    // 3. The old anchor is retired.
    let (code, body) = mesh.control_post("/api/v1/identity/rotate/retire");
    assert_eq!(code, 200, "{body}");
    wait_all(&mesh, "trust_anchors", 1);
    let rotated_in = t0.elapsed();

    let report = load.finish().unwrap();
    assert_no_failures(name, &report, rate, duration);
    let renewals: Vec<u64> = mesh
        .proxies()
        .zip(&renewals_before)
        .map(|(p, before)| identity_u64(p, "renewals") - before)
        .collect();
    // 4 s leaves renewed at about half-life over a 16 s load: at least 3 each.
    assert!(
        renewals.iter().all(|r| *r >= 3),
        "too few renewals during the load: {renewals:?}"
    );
    let handshakes = metric(&mesh.client, "trellis_tls_handshakes_total") - handshakes_before;
    assert!(handshakes >= 20.0, "only {handshakes} new mTLS handshakes");
    assert_eq!(
        metric(&mesh.client, "trellis_tls_handshake_failures_total"),
        0.0
    );
    figure(
        "certificate and trust-anchor rotation",
        &format!(
            "{rate} rps for {} s, 4 s leaves ({renewals:?} renewals per sidecar), {handshakes:.0} handshakes, full anchor rotation in {:.1} s: {}",
            duration.as_secs(),
            rotated_in.as_secs_f64(),
            report.summary()
        ),
    );
}
