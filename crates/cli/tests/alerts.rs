//! The mesh's alerting rules (`deploy/alerts/`): Prometheus' own `promtool` checks the rules
//! and runs the unit tests in which every alert fires and then resolves; `trellis install
//! --set alerts=true` renders the same groups as a PrometheusRule; every alert links a runbook
//! in docs/runbooks/ that exists, and the runbooks' `trellis` commands and flags exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use trellis_testkit::tools;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules_path() -> PathBuf {
    root().join("deploy/alerts/trellis.rules.yml")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every alerting rule: (alert name, the rule).
fn alerts() -> Vec<(String, Value)> {
    let rules = yaml(&rules_path());
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            out.push((name.to_string(), rule.clone()));
        }
    }
    assert!(!out.is_empty());
    out
}

/// `promtool ARGS` in deploy/alerts, bounded (testkit's `require` names the Debian package
/// when it is missing).
fn promtool(args: &[&str]) -> Output {
    tools::run_bounded(
        Command::new(tools::require("promtool", "prometheus"))
            .args(args)
            .current_dir(root().join("deploy/alerts")),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn alerts_promtool_check_and_test_rules() {
    let check = promtool(&["check", "rules", "trellis.rules.yml"]);
    let report = text(&check);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", alerts().len())),
        "{report}"
    );

    let test = promtool(&["test", "rules", "trellis.rules.test.yml"]);
    let report = text(&test);
    assert!(test.status.success(), "{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

/// The unit tests cover every alert both ways: some evaluation expects it firing, some
/// expects it not (after it fired: the cases are written firing first, then resolved).
#[test]
fn alerts_each_has_a_firing_and_a_resolving_case() {
    let tests = yaml(&root().join("deploy/alerts/trellis.rules.test.yml"));
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for case in tests["tests"].as_array().expect("tests") {
        let evals = case["alert_rule_test"].as_array().expect("alert_rule_test");
        for eval in evals {
            let name = eval["alertname"].as_str().unwrap().to_string();
            let firing = eval["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let entry = seen.entry(name).or_default();
            if firing {
                entry.0 = true;
            } else {
                entry.1 = true;
            }
        }
    }
    for (name, _) in alerts() {
        let (fires, resolves) = seen.get(&name).copied().unwrap_or_default();
        assert!(fires, "{name}: no promtool case where it fires");
        assert!(resolves, "{name}: no promtool case where it resolves");
    }
}

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .output()
        .expect("run trellis")
}

fn documents(yaml_text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml_text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn alerts_install_renders_the_same_groups_as_a_prometheus_rule() {
    let out = trellis(&["install", "--set", "alerts=true"]);
    assert!(out.status.success(), "{}", text(&out));
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let rules: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let rule = rules[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "trellis-system");
    assert_eq!(rule["spec"]["groups"], yaml(&rules_path())["groups"]);
    // Applied after the control plane it alerts on.
    assert_eq!(docs.last().unwrap()["kind"], "PrometheusRule");

    // Off unless asked for; uninstall names it when it was installed.
    let out = trellis(&["install"]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8(out.stdout)
            .unwrap()
            .contains("PrometheusRule")
    );
    let out = trellis(&["uninstall", "--set", "alerts=true"]);
    let text_out = String::from_utf8(out.stdout).unwrap();
    assert!(
        text_out.starts_with("---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"),
        "{text_out}"
    );

    let out = trellis(&["install", "--set", "alerts=sometimes"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).contains("alerts: \"sometimes\" is not true or false"),
        "{}",
        text(&out)
    );
}

/// `docs/runbooks/<page>.md` of a runbook URL.
fn runbook_file(url: &str) -> PathBuf {
    let page = url
        .split("/docs/runbooks/")
        .nth(1)
        .unwrap_or_else(|| panic!("{url}: not a docs/runbooks/ page"));
    root().join("docs/runbooks").join(page)
}

#[test]
fn alerts_each_links_a_runbook_that_exists() {
    for (name, rule) in alerts() {
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url annotation"));
        let file = runbook_file(url);
        let page = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", file.display()));
        assert!(
            page.contains(&name),
            "{}: does not name the alert {name}",
            file.display()
        );
        for section in ["## Diagnose", "## Fix"] {
            assert!(
                page.contains(section),
                "{}: no {section:?} section",
                file.display()
            );
        }
    }
}

/// The subcommand (one or two words) and the long flags of each `trellis ...` line in the
/// runbooks' shell blocks.
fn runbook_commands() -> BTreeMap<Vec<String>, BTreeSet<String>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let dir = root().join("docs/runbooks");
    let mut pages = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        pages += 1;
        let page = std::fs::read_to_string(&path).unwrap();
        let mut in_block = false;
        for line in page.lines() {
            if line.starts_with("```") {
                in_block = !in_block;
                continue;
            }
            // Commands may follow a pipe or `&&`: take every `trellis ` segment.
            if !in_block {
                continue;
            }
            for segment in line.split(['|', ';']).map(str::trim) {
                let segment = segment.trim_start_matches("&& ");
                let Some(rest) = segment.strip_prefix("trellis ") else {
                    continue;
                };
                let words: Vec<&str> = rest.split_whitespace().collect();
                let mut sub = vec![words[0].to_string()];
                // `identity rotate` and the like: a second word that is a subcommand.
                if words.len() > 1
                    && !words[1].starts_with('-')
                    && words[1].chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    && words[0] == "identity"
                {
                    sub.push(words[1].to_string());
                }
                let flags = out.entry(sub).or_default();
                for w in &words {
                    if let Some(flag) = w.strip_prefix("--") {
                        let flag = flag.split('=').next().unwrap();
                        flags.insert(format!("--{flag}"));
                    }
                }
            }
        }
    }
    assert!(pages >= 10, "{}: only {pages} runbooks", dir.display());
    out
}

#[test]
fn alerts_runbooks_use_only_commands_and_flags_that_exist() {
    let commands = runbook_commands();
    assert!(commands.contains_key(&vec!["check".to_string()]));
    for (sub, flags) in commands {
        let mut args: Vec<&str> = sub.iter().map(String::as_str).collect();
        args.push("--help");
        let out = trellis(&args);
        let help = text(&out);
        assert!(
            out.status.success(),
            "`trellis {}` from a runbook is not a command:\n{help}",
            sub.join(" ")
        );
        for flag in flags {
            assert!(
                help.contains(&flag),
                "`trellis {}` has no flag {flag} (a runbook uses it)",
                sub.join(" ")
            );
        }
    }
}
