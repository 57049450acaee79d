//! `trellis identity rotate prepare --from-dir DIR`: rotating the running demo (real control
//! plane and proxies, mTLS on every meshed hop) from its generated CA to a root and an
//! intermediate the user made with the openssl CLI, Istio's cacerts files in DIR, while
//! productpage -> reviews requests keep flowing: none may fail, and afterwards every proxy's
//! inbound presents a leaf that `openssl s_client` verifies against the user's root alone,
//! issued by the user's intermediate. A directory with a missing file, or a key that is not the
//! intermediate's, is refused (exit 1, the file named) and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::process::{Command, Stdio};

use trellis_testkit::tools;

mod support;
use support::Demo;
use support::rotate::{SteadyLoad, get_reviews, rotate};

/// Requests answered under steady load before and after each rotation step, so that traffic
/// crosses every step (three waits: at least the 100 requests the end asserts).
const STEP_REQUESTS: usize = 40;

/// A cacerts directory with `files` copied from `pki` (each `(name in dir, name in pki)`).
fn cacerts_dir(pki: &Path, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, from) in files {
        std::fs::copy(pki.join(from), dir.path().join(name)).unwrap();
    }
    dir
}

/// What `openssl s_client` says about the certificate a proxy's inbound listener presents to
/// a mesh client (ALPN `h2` plus the mesh marker), verified against `ca_file` alone. No client
/// certificate is sent, so the handshake may end there; the server's chain is checked first.
fn inbound_cert(inbound: &str, ca_file: &Path) -> String {
    let out = Command::new("timeout")
        .arg("10")
        .arg(tools::require("openssl", "openssl"))
        .args(["s_client", "-connect", inbound, "-alpn", "h2,trellis-mesh"])
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-showcerts")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn rotation_to_the_users_ca_with_the_cli_while_traffic_flows() {
    let pki = tempfile::tempdir().unwrap();
    trellis_testkit::certs::plug_in_ca(pki.path(), "User").unwrap();
    let config = tempfile::tempdir().unwrap();
    let demo = Demo::start(config.path());
    let control = demo.control_url();
    let entry = demo.status["entry"].as_str().unwrap().to_string();
    let idle = "control plane: 1 trust anchor(s), issuer generation 1, rotation idle";

    // Refused, naming the file, and nothing changes: a missing key file (caught by the CLI),
    // then a key that is not the intermediate's (caught by the control plane's checks).
    let missing = cacerts_dir(
        pki.path(),
        &[
            ("root-cert.pem", "root-cert.pem"),
            ("ca-cert.pem", "ca-cert.pem"),
        ],
    );
    let dir = missing.path().to_str().unwrap();
    let (code, out, err) = rotate(&control, &["prepare", "--from-dir", dir]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "trellis identity rotate prepare: --from-dir {dir}: {dir}/ca-key.pem is missing"
        )),
        "{err}"
    );
    let wrong_key = cacerts_dir(
        pki.path(),
        &[
            ("root-cert.pem", "root-cert.pem"),
            ("ca-cert.pem", "ca-cert.pem"),
            ("ca-key.pem", "other-key.pem"),
        ],
    );
    let (code, out, err) = rotate(
        &control,
        &["prepare", "--from-dir", wrong_key.path().to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "the control plane refused this CA: ca-key.pem is not the private key of ca-cert.pem"
        ),
        "{err}"
    );
    let (code, out, err) = rotate(&control, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(idle), "a refused CA changed the CA:\n{out}");

    // Before: the proxies' leaves come from the generated CA, which the user's root does not
    // verify (so the check at the end can fail).
    let root = pki.path().join("root-cert.pem");
    let first = demo.status["workloads"][0]["inbound"].as_str().unwrap();
    let seen = inbound_cert(first, &root);
    assert!(seen.contains("Verify return code: "), "{seen}");
    assert!(!seen.contains("Verify return code: 0 (ok)"), "{seen}");

    // Steady traffic through a meshed hop for the whole rotation (bounded in time).
    let load = SteadyLoad::start(&entry);
    load.wait_for_more(STEP_REQUESTS);

    let good = cacerts_dir(
        pki.path(),
        &[
            ("root-cert.pem", "root-cert.pem"),
            ("ca-cert.pem", "ca-cert.pem"),
            ("ca-key.pem", "ca-key.pem"),
            ("cert-chain.pem", "cert-chain.pem"),
        ],
    );
    let (code, out, err) = rotate(
        &control,
        &["prepare", "--from-dir", good.path().to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2 trust anchor(s), issuer generation 1, rotation prepared"),
        "{out}"
    );
    let (code, out, err) = rotate(&control, &["activate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2 trust anchor(s), issuer generation 2, rotation activated"),
        "{out}"
    );
    load.wait_for_more(STEP_REQUESTS); // new leaves meet old ones under load
    let (code, out, err) = rotate(&control, &["retire"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 trust anchor(s), issuer generation 2, rotation idle"),
        "{out}"
    );
    load.wait_for_more(STEP_REQUESTS);
    let codes = load.finish();

    let failed: Vec<&u16> = codes.iter().filter(|c| **c != 200).collect();
    assert!(codes.len() >= 100, "only {} requests", codes.len());
    eprintln!("{} requests during the rotation", codes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {failed:?}\n{}",
        failed.len(),
        codes.len(),
        demo.log()
    );
    assert_eq!(
        get_reviews(&entry),
        200,
        "the mesh works on the user's root alone"
    );

    // Every proxy now presents a leaf from the user's intermediate that verifies against the
    // user's root alone.
    let workloads = demo.status["workloads"].as_array().unwrap();
    assert!(workloads.len() >= 4);
    for w in workloads {
        let inbound = w["inbound"].as_str().unwrap();
        let seen = inbound_cert(inbound, &root);
        assert!(
            seen.contains("Verify return code: 0 (ok)"),
            "{}: {seen}",
            w["workload"]
        );
        assert!(
            seen.contains("CN=User intermediate") || seen.contains("CN = User intermediate"),
            "{}: {seen}",
            w["workload"]
        );
    }
}
