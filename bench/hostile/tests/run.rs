//! `bench-hostile` as bench/hostile.sh runs it, shortened: against the debug `trellis-proxy` it
//! reports one attack in the JSON shape the script's table reads, and it refuses bad flags with
//! a message naming them. Numbers are not asserted here beyond what a user would rely on (the
//! good client answered, the attack reached the proxy): speed is the benchmark's to measure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bench-hostile");

fn bench(args: &[&str]) -> std::process::Output {
    let proxy = trellis_testkit::bin("trellis-proxy");
    let mut c = Command::new(BIN);
    c.arg("--proxy").arg(proxy).args(args);
    trellis_testkit::tools::run_bounded(&mut c, Duration::from_secs(50)).unwrap()
}

/// The report of a `bench-hostile` run that must succeed; a failed run fails the test with its
/// stderr, a report that is not JSON with the stdout it printed.
fn run_json(args: &[&str]) -> serde_json::Value {
    let out = bench(args);
    assert!(
        out.status.success(),
        "bench-hostile {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn one_short_round_of_slowloris_is_reported_as_json() {
    let r = run_json(&[
        "--attacks",
        "slowloris",
        "--rounds",
        "1",
        "--rate",
        "100",
        "--baseline-secs",
        "1",
        "--attack-secs",
        "4",
    ]);
    assert_eq!(r["benchmark"], "hostile");
    let attacks = r["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 1);
    let a = &attacks[0];
    assert_eq!(a["attack"], "slowloris");
    assert_eq!(
        a["proxy_args"],
        serde_json::json!(["--header-read-timeout", "2s"])
    );
    assert_eq!(r["attacker_policy"], "idle");
    assert_eq!(r["control"], true);
    let round = &a["rounds"][0];
    // The schedule: 100 rps for 1 s alone, then for 4 s less 1 s with the attack on the control
    // listener, then on the proxy.
    assert_eq!(round["baseline"]["sent"], 100, "{round}");
    assert_eq!(round["under_attack"]["sent"], 300, "{round}");
    assert_eq!(a["failures"], 0, "{round}");
    assert!(
        round["sent"].as_u64().unwrap() > 0,
        "the attack opened nothing: {round}"
    );
    // The control: the same attack reached the plain listener, while the good client, through
    // the proxy, was answered.
    let control = &round["control"];
    assert_eq!(control["latency"]["sent"], 300, "{control}");
    assert_eq!(control["latency"]["failed"], 0, "{control}");
    assert!(
        control["listener"]["accepted"].as_u64().unwrap() > 0,
        "{control}"
    );
    assert!(control["sent"].as_u64().unwrap() > 0, "{control}");
    for key in [
        "baseline_p99_ms",
        "attack_p99_ms",
        "p99_ratio",
        "control_p99_ms",
        "control_p99_ratio",
        "rss_before_mib",
        "rss_peak_mib",
    ] {
        assert!(a[key].as_f64().unwrap() > 0.0, "{key}: {a}");
    }
    assert!(a["rss_peak_mib"].as_f64() >= a["rss_before_mib"].as_f64());
}

#[test]
fn without_control_rounds_the_attack_is_on_the_proxy_only() {
    let r = run_json(&[
        "--attacks",
        "http2-rapid-reset",
        "--rounds",
        "1",
        "--rate",
        "100",
        "--baseline-secs",
        "1",
        "--attack-secs",
        "2",
        "--no-control",
        "--attacker-policy",
        "normal",
    ]);
    assert_eq!(r["control"], false);
    assert_eq!(r["attacker_policy"], "normal");
    let a = &r["attacks"][0];
    assert!(a["control_p99_ratio"].is_null(), "{a}");
    assert!(a["rounds"][0]["control"].is_null(), "{a}");
    assert_eq!(a["rounds"][0]["under_attack"]["sent"], 100, "{a}");
}

#[test]
fn bad_flags_are_refused_by_name() {
    let out = bench(&["--attacks", "slowloris,teardrop"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown attack \"teardrop\""), "{stderr}");

    let out = bench(&["--rounds", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds"));

    let out = bench(&["--attacker-policy", "fifo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--attacker-policy"));
}
