//! Istio ServiceEntry and the outbound traffic policy in network-namespace pods: a client pod
//! with real iptables and its sidecar, "external" hosts that are plain servers in pods of their
//! own (no proxy), and a control plane run with `--outbound-traffic-policy REGISTRY_ONLY`.
//! Needs root; see `trellis_testkit::netns::require_root`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod external;

use std::time::{Duration, Instant};

use trellis_testkit::egress::{captured_client, registry_only_control};
use trellis_testkit::mesh::config_dir;
use trellis_testkit::netns::require_root;
use trellis_testkit::{ControlPlane, Node, Pod, Proxy, wait};

const CONVERGE: Duration = Duration::from_secs(15);
/// The address the ServiceEntry declares for its host: nobody owns it; the client's sidecar
/// captures connections to it and sends them to the entry's endpoints.
const VIP: &str = "198.18.0.200";
const TLS_VIP: &str = "198.18.0.201";

fn service_entries(ext1: &Pod, ext2: &Pod) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.external.test]
  addresses: [{VIP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  endpoints:
  - {{address: {}, labels: {{version: v1}}}}
  - {{address: {}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.external.test
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
  subsets:
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.external.test]
  http:
  - match: [{{uri: {{prefix: /only-v2}}}}]
    route: [{{destination: {{host: api.external.test, subset: v2}}}}]
  - match: [{{uri: {{prefix: /slow}}}}]
    timeout: 300ms
    route: [{{destination: {{host: api.external.test}}}}]
  - route: [{{destination: {{host: api.external.test}}}}]
",
        ext1.ip(),
        ext2.ip()
    )
}

/// The client pod with iptables and its sidecar, registered with a control plane in the node.
struct Client {
    proxy: Proxy,
    pod: Pod,
}

fn client(node: &Node, control: &ControlPlane) -> Client {
    let pod = node.pod().unwrap();
    let proxy = captured_client(&pod, control, "client-0", "client", CONVERGE).unwrap();
    Client { proxy, pod }
}

fn blocked(proxy: &Proxy) -> f64 {
    proxy.metrics().sum("trellis_outbound_blocked_total", &[])
}

#[test]
fn registry_only_blocks_unknown_hosts_and_allows_service_entry_hosts() {
    if !require_root("registry_only_blocks_unknown_hosts_and_allows_service_entry_hosts") {
        return;
    }
    let node = Node::new().unwrap();
    let ext1 = node.pod().unwrap();
    let ext2 = node.pod().unwrap();
    let unknown = node.pod().unwrap();
    let _s1 = external::start(&ext1, "ext1", 8080, None);
    let _s2 = external::start(&ext2, "ext2", 8080, None);
    let _s3 = external::start(&unknown, "unknown", 8080, None);
    let (_tcp, _) = unknown.start_echo(None, Some(9000)).unwrap();
    let config = config_dir(&[("api.yaml", service_entries(&ext1, &ext2))]).unwrap();
    let control = registry_only_control(&node, config.path()).unwrap();
    let c = client(&node, &control);
    let resolve = format!("api.external.test:80:{VIP}");
    let url = |path: &str| format!("http://api.external.test{path}");

    // The declared host answers, through the entry's endpoints.
    let first = external::curl_ok(&c.pod, &url("/hello"), Some(&resolve), CONVERGE);
    let reply: external::Reply = serde_json::from_str(&first).unwrap();
    assert_eq!(reply.path, "/hello");
    assert_eq!(reply.host, "api.external.test");

    // STATIC with two endpoints and ROUND_ROBIN: 40 requests spread over both.
    let mut ext1_count = 0;
    for i in 0..40 {
        let (code, err, body) =
            external::curl(&c.pod, &url(&format!("/spread/{i}")), Some(&resolve));
        assert_eq!(code, 200, "{err:?} {body}");
        let reply: external::Reply = serde_json::from_str(&body).unwrap();
        if reply.server == "ext1" {
            ext1_count += 1;
        }
    }
    assert!(
        (14..=26).contains(&ext1_count),
        "ext1 served {ext1_count} of 40 requests; round robin over two endpoints gives ~20"
    );

    // The VirtualService routes by path to a subset of the entry's endpoints...
    for i in 0..10 {
        let (code, _, body) =
            external::curl(&c.pod, &url(&format!("/only-v2/{i}")), Some(&resolve));
        assert_eq!(code, 200, "{body}");
        let reply: external::Reply = serde_json::from_str(&body).unwrap();
        assert_eq!(reply.server, "ext2", "subset v2 is ext2 only");
    }
    // ...and its timeout applies: the server waits 2 s, the route allows 300 ms.
    let started = Instant::now();
    let (code, _, body) = external::curl(&c.pod, &url("/slow?delay=2000"), Some(&resolve));
    let took = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(
        took < Duration::from_millis(1500),
        "the timeout took {took:?}"
    );

    // An unknown host: HTTP gets 502 with trellis-error: registry-only, and is counted.
    let before = blocked(&c.proxy);
    let unknown_url = format!("http://{}:8080/not-declared", unknown.ip());
    let (code, err, body) = external::curl(&c.pod, &unknown_url, None);
    assert_eq!(code, 502, "{body}");
    assert_eq!(err.as_deref(), Some("registry-only"));
    // An undeclared port of a declared endpoint is unknown too.
    let (code, _, _) = external::curl(&c.pod, &format!("http://{}:8080/", ext1.ip()), None);
    assert_eq!(code, 502);
    // Opaque TCP to an unknown host: the connection is closed, nothing echoed.
    let script = format!(
        "exec 3<>/dev/tcp/{}/9000 || exit 0; printf 'opaque\\n' >&3; read -t 5 line <&3; echo \"got:$line\"",
        unknown.ip()
    );
    let out = trellis_testkit::tools::run_bounded(
        c.pod.command("bash").args(["-c", &script]),
        Duration::from_secs(15),
    )
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("got:opaque"),
        "the TCP stream reached the unknown host: {said}"
    );
    assert!(
        blocked(&c.proxy) >= before + 3.0,
        "trellis_outbound_blocked_total went from {before} to {}",
        blocked(&c.proxy)
    );
    // The client's requests to the declared host are labelled with it.
    let m = c.proxy.metrics();
    assert!(
        m.sum("trellis_requests_total", &[("direction", "outbound")]) >= 50.0,
        "outbound requests were not counted"
    );
}

#[test]
fn service_entry_host_with_tls_origination_simple() {
    if !require_root("service_entry_host_with_tls_origination_simple") {
        return;
    }
    let host = "secure.external.test";
    let certs = external::certs(host);
    let node = Node::new().unwrap();
    let ext = node.pod().unwrap();
    let _server = external::start(&ext, "secure", 8443, Some((&certs.cert, &certs.key)));
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [{host}]
  addresses: [{TLS_VIP}]
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]
  endpoints: [{{address: {ip}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: {host}
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, sni: {host}}}
",
        ip = ext.ip(),
        ca = certs.ca.display()
    );
    let config = config_dir(&[("secure.yaml", yaml)]).unwrap();
    let control = registry_only_control(&node, config.path()).unwrap();
    let c = client(&node, &control);
    // The application speaks plain HTTP; its sidecar opens TLS to the host, verifying the
    // server's certificate against the DestinationRule's CA and name.
    let resolve = format!("{host}:80:{TLS_VIP}");
    let body = external::curl_ok(
        &c.pod,
        &format!("http://{host}/over-tls"),
        Some(&resolve),
        CONVERGE,
    );
    let reply: external::Reply = serde_json::from_str(&body).unwrap();
    assert_eq!(reply.server, "secure");
    assert_eq!(reply.path, "/over-tls");
    // Plain HTTP straight to the TLS port would fail; the server only answered because the
    // proxy originated TLS. A name the certificate does not carry is refused.
    let wrong = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: {host}
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, sni: other.external.test}}
",
        ca = certs.ca.display()
    );
    let se_only = std::fs::read_to_string(config.path().join("secure.yaml"))
        .unwrap()
        .split("---")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        config.path().join("secure.yaml"),
        format!("{se_only}---\n{wrong}"),
    )
    .unwrap();
    wait::until(CONVERGE, || {
        match external::curl(&c.pod, &format!("http://{host}/wrong-name"), Some(&resolve)) {
            (502, Some(err), _) if err.contains("TLS") => Ok(()),
            (code, err, body) => Err(format!("got {code} {err:?} {body}")),
        }
    })
    .unwrap();
}
