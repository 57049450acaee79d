//! `trellis validate`: the Bookinfo corpus is clean, each broken fixture is found at its exact
//! field with its code, the exit codes, and golden table/JSON output. Pure: no mesh runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use clap::Parser;
use trellis_cli::validate::{self, Finding, Severity};
use trellis_cli::{Cli, Command};

/// The corpus copies crates/config's tests already hold (Bookinfo's platform and networking).
const CORPUS: &str = "../config/tests/fixtures";
const BROKEN: &str = "tests/fixtures/validate/broken";

/// Runs `trellis <args>` in-process; returns (exit code, stdout, stderr).
fn trellis(args: &[&str]) -> (u8, String, String) {
    let cli = Cli::try_parse_from(std::iter::once("trellis").chain(args.iter().copied())).unwrap();
    let Command::Validate(args) = cli.command else {
        panic!("not validate");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = validate::run(&args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn findings(paths: &[String]) -> Vec<Finding> {
    let paths: Vec<_> = paths.iter().map(Into::into).collect();
    validate::analyze(&validate::read_inputs(&paths).unwrap())
}

fn platform() -> Vec<String> {
    vec![
        format!("{CORPUS}/bookinfo.yaml"),
        format!("{CORPUS}/bookinfo-versions.yaml"),
    ]
}

#[test]
fn every_bookinfo_routing_file_is_clean() {
    let dir = format!("{CORPUS}/networking");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let file = format!("{dir}/{name}");
        let text = std::fs::read_to_string(&file).unwrap();
        let mut set = platform();
        set.push(file.clone());
        // A file with its own DestinationRules would conflict with destination-rule-all's
        // (two rules for one host is a real conflict): it is checked with the platform only.
        if !text.contains("kind: DestinationRule") {
            set.push(format!("{dir}/destination-rule-all.yaml"));
        }
        let errors: Vec<_> = findings(&set)
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

/// One broken file per check: (file, extra inputs, code, resource name, field).
const CASES: &[(&str, bool, &str, &str, &str)] = &[
    (
        "field-error.yaml",
        true,
        "TRL1001",
        "reviews",
        "spec.http[0].timeout",
    ),
    (
        "unknown-host.yaml",
        true,
        "TRL2001",
        "reviewz",
        "spec.hosts[0]",
    ),
    (
        "unknown-host.yaml",
        true,
        "TRL2001",
        "ratings",
        "spec.http[0].route[0].destination.host",
    ),
    (
        "unknown-subset.yaml",
        true,
        "TRL2002",
        "reviews",
        "spec.http[0].route[1].destination.subset",
    ),
    (
        "subset-no-workload.yaml",
        false,
        "TRL2003",
        "reviews",
        "spec.subsets[1].labels",
    ),
    (
        "zero-weights.yaml",
        true,
        "TRL2004",
        "reviews",
        "spec.rules[0].backendRefs",
    ),
    (
        "conflict.yaml",
        true,
        "TRL2005",
        "reviews-b",
        "spec.hosts[0]",
    ),
    (
        "policy-selects-nothing.yaml",
        true,
        "TRL2006",
        "strict-nothing",
        "spec.selector.matchLabels",
    ),
    (
        "service-selects-nothing.yaml",
        true,
        "TRL2007",
        "reviews-v9",
        "spec.selector",
    ),
];

#[test]
fn each_broken_file_is_found_at_its_field() {
    for &(file, with_rules, code, name, field) in CASES {
        let path = format!("{BROKEN}/{file}");
        let mut set = platform();
        set.push(path.clone());
        if with_rules {
            set.push(format!("{CORPUS}/networking/destination-rule-all.yaml"));
        }
        let all = findings(&set);
        let hit = all
            .iter()
            .find(|f| f.file == path && f.code.as_str() == code && f.name.as_deref() == Some(name));
        let hit = hit.unwrap_or_else(|| panic!("{file}: no {code} for {name}: {all:#?}"));
        assert_eq!(hit.field.as_deref(), Some(field), "{file}: {hit:#?}");
        assert!(!hit.hint.is_empty());
        // Nothing else in the set is an error or warning besides what the case is about (the
        // corpus DestinationRule's subsets for versions Bookinfo does not run aside).
        let others: Vec<_> = all
            .iter()
            .filter(|f| f.severity > Severity::Info && f.file == path && f.code.as_str() != code)
            .collect();
        assert!(others.is_empty(), "{file}: {others:#?}");
    }
}

#[test]
fn exit_codes() {
    let clean = format!("{CORPUS}/networking/virtual-service-reviews-jason-v2-v3.yaml");
    let rules = format!("{CORPUS}/networking/destination-rule-all.yaml");
    let services = format!("{CORPUS}/bookinfo.yaml");
    assert_eq!(trellis(&["validate", &clean, &rules, &services]).0, 0);
    // Warnings (subsets of versions Bookinfo's platform file does not run) fail only when
    // the threshold says so.
    let (code, _, _) = trellis(&[
        "validate",
        "--failure-threshold",
        "warning",
        &clean,
        &rules,
        &services,
    ]);
    assert_eq!(code, validate::EXIT_FINDINGS);
    let broken = format!("{BROKEN}/unknown-subset.yaml");
    let (code, _, err) = trellis(&["analyze", &broken, &rules, &services]);
    assert_eq!(code, 79, "{err}");
    assert!(err.contains("1 error(s)"), "{err}");
    let (code, _, err) = trellis(&["validate", "/nonexistent/trellis.yaml"]);
    assert_eq!(code, 65, "{err}");
    assert_eq!(
        trellis_cli::main_with_args(["trellis", "validate"]),
        std::process::ExitCode::from(64)
    );
    assert_eq!(
        trellis_cli::main_with_args(["trellis", "validate", "-o", "xml", &clean]),
        std::process::ExitCode::from(64)
    );
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new("tests/fixtures/validate/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, expected, "{name} (UPDATE_GOLDEN=1 to accept)");
}

#[test]
fn golden_table_and_json() {
    let broken = format!("{BROKEN}/unknown-subset.yaml");
    let services = format!("{CORPUS}/bookinfo.yaml");
    let rules = format!("{CORPUS}/networking/destination-rule-reviews.yaml");
    let args = ["validate", &broken, &rules, &services];
    let (_, table, _) = trellis(&args);
    golden("unknown-subset.txt", &table);
    let mut wide = args.to_vec();
    wide.extend(["-o", "wide"]);
    golden("unknown-subset-wide.txt", &trellis(&wide).1);
    let mut json = args.to_vec();
    json.extend(["-o", "json"]);
    let (_, json, _) = trellis(&json);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["summary"]["errors"], 1, "{json}");
    assert_eq!(parsed["findings"][10]["code"], "TRL2002", "{json}");
    golden("unknown-subset.json", &json);
}
