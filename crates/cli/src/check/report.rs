//! The pure half of `trellis check`: what was observed in, Linkerd-style results out.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A proxy's certificate expiry closer than this is a warning.
pub const CERT_WARN_SECS: f64 = 3600.0;

/// One row of the control plane's `/api/v1/workloads`, the fields `check` reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkloadRow {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub acked_version: Option<u64>,
    #[serde(default)]
    pub nacks: u64,
    #[serde(default)]
    pub last_nack: Option<String>,
    /// Targets the proxy watches; a proxy that watches none is sent no updates to ACK.
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

impl WorkloadRow {
    /// Whether the proxy has applied what it was sent: it ACKed an update, or it watches
    /// nothing (the control plane does not expose the last version it sent, so "the latest"
    /// is approximated by "some, and no NACK since" together with the NACK check).
    pub fn up_to_date(&self) -> bool {
        self.acked_version.is_some() || self.subscriptions.is_empty()
    }
}

/// One row of `/api/v1/config`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigRow {
    pub file: String,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: String,
    pub message: Option<String>,
}

/// What one proxy's admin endpoint said.
#[derive(Clone, Debug)]
pub struct ProxyObserved {
    /// `GET /ready` answered 200.
    pub ready: Result<(), String>,
    /// `trellis_identity_cert_expiry_timestamp_seconds` (0: none yet); `None`: not scraped.
    pub cert_expiry_unix: Option<f64>,
}

/// Everything `check` learned; errors are the adapter's description of what failed.
#[derive(Clone, Debug)]
pub struct Observed {
    pub control: String,
    pub live: Result<(), String>,
    pub ready: Result<(), String>,
    pub config: Result<Vec<ConfigRow>, String>,
    pub workloads: Result<Vec<(WorkloadRow, ProxyObserved)>, String>,
    pub now_unix: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckResult {
    Success,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub description: String,
    pub result: CheckResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Category {
    #[serde(rename = "categoryName")]
    pub name: String,
    pub checks: Vec<Check>,
}

/// Linkerd's `check -o json` shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub success: bool,
    pub categories: Vec<Category>,
}

impl Report {
    /// Succeeds unless some check errored (warnings do not fail it).
    pub(crate) fn new(categories: Vec<Category>) -> Self {
        let success = categories
            .iter()
            .flat_map(|c| &c.checks)
            .all(|k| k.result != CheckResult::Error);
        Report {
            success,
            categories,
        }
    }
}

pub(crate) fn ok(description: &str) -> Check {
    Check {
        description: description.to_string(),
        result: CheckResult::Success,
        error: None,
        hint: None,
    }
}

pub(crate) fn bad(description: &str, result: CheckResult, error: String, hint: &str) -> Check {
    Check {
        description: description.to_string(),
        result,
        error: Some(error),
        hint: Some(hint.to_string()),
    }
}

pub(crate) fn check(description: &str, outcome: Result<(), String>, hint: &str) -> Check {
    match outcome {
        Ok(()) => ok(description),
        Err(e) => bad(description, CheckResult::Error, e, hint),
    }
}

/// The checks, in order; `per_proxy` adds one line per proxy (`check --proxy`).
pub fn evaluate(o: &Observed, per_proxy: bool) -> Report {
    let mut categories = Vec::new();
    let control = vec![
        check(
            "control plane is reachable",
            o.live.clone(),
            &format!("is trellis-control running with --http {}?", o.control),
        ),
        check(
            "control plane is ready",
            o.ready.clone(),
            "the control plane has not loaded its config yet; see its log",
        ),
    ];
    categories.push(Category {
        name: "trellis-control".into(),
        checks: control,
    });

    let mut config = Vec::new();
    match &o.config {
        Err(e) => config.push(bad(
            "config has no invalid resources",
            CheckResult::Error,
            e.clone(),
            "the control plane's /api/v1/config did not answer",
        )),
        Ok(rows) => {
            let describe = describe_row;
            let invalid: Vec<String> = rows
                .iter()
                .filter(|r| r.status == "Invalid")
                .map(describe)
                .collect();
            config.push(if invalid.is_empty() {
                ok("config has no invalid resources")
            } else {
                bad(
                    "config has no invalid resources",
                    CheckResult::Error,
                    invalid.join("\n"),
                    "fix the files (`trellis validate DIR` names the field); the last good version of each stays in force",
                )
            });
            let conflicted: Vec<String> = rows
                .iter()
                .filter(|r| r.status == "Conflicted")
                .map(describe)
                .collect();
            config.push(if conflicted.is_empty() {
                ok("config has no conflicting resources")
            } else {
                bad(
                    "config has no conflicting resources",
                    CheckResult::Warning,
                    conflicted.join("\n"),
                    "merge or remove the resources that do not take precedence",
                )
            });
        }
    }
    categories.push(Category {
        name: "trellis-config".into(),
        checks: config,
    });

    categories.push(Category {
        name: "trellis-data-plane".into(),
        checks: data_plane(o, per_proxy),
    });
    Report::new(categories)
}

fn data_plane(o: &Observed, per_proxy: bool) -> Vec<Check> {
    let rows = match &o.workloads {
        Ok(rows) => rows,
        Err(e) => {
            return vec![bad(
                "proxies are registered",
                CheckResult::Error,
                e.clone(),
                "the control plane's /api/v1/workloads did not answer",
            )];
        }
    };
    let name = |w: &WorkloadRow| format!("{}.{}", w.name, w.namespace);
    let list = |f: &dyn Fn(&(WorkloadRow, ProxyObserved)) -> Option<String>| -> Vec<String> {
        rows.iter().filter_map(f).collect()
    };
    let all = |description: &str, failures: Vec<String>, result: CheckResult, hint: &str| {
        if failures.is_empty() {
            ok(description)
        } else {
            bad(description, result, failures.join("\n"), hint)
        }
    };
    let mut checks = vec![
        all(
            "every registered proxy is connected",
            list(&|(w, _)| (!w.connected).then(|| format!("{} is not connected", name(w)))),
            CheckResult::Error,
            "the proxy lost its discovery stream; it reconnects on its own, else see its log",
        ),
        all(
            "every proxy has ACKed its configuration",
            list(&|(w, _)| {
                (!w.up_to_date()).then(|| {
                    format!(
                        "{} watches {} target(s) and has acknowledged no update yet",
                        name(w),
                        w.subscriptions.len()
                    )
                })
            }),
            CheckResult::Error,
            "the proxy has not applied any configuration; see its log",
        ),
        all(
            "no proxy has refused (NACKed) configuration",
            list(&|(w, _)| {
                (w.nacks > 0).then(|| {
                    format!(
                        "{}: {} NACK(s), last: {}",
                        name(w),
                        w.nacks,
                        w.last_nack.as_deref().unwrap_or("-")
                    )
                })
            }),
            CheckResult::Error,
            "the proxy keeps its last good config for that target; the error names the field",
        ),
        all(
            "every proxy is ready",
            list(&|(w, p)| p.ready.clone().err().map(|e| format!("{}: {e}", name(w)))),
            CheckResult::Error,
            "see the proxy's /ready and log",
        ),
    ];
    let mut expired = Vec::new();
    let mut near = Vec::new();
    for (w, p) in rows {
        match p.cert_expiry_unix {
            Some(t) if t <= 0.0 => near.push(format!("{} has no certificate yet", name(w))),
            Some(t) if t <= o.now_unix => expired.push(format!("{}: certificate expired", name(w))),
            Some(t) if t - o.now_unix < CERT_WARN_SECS => near.push(format!(
                "{}: certificate expires in {:.0}s",
                name(w),
                t - o.now_unix
            )),
            _ => {}
        }
    }
    let hint = "the proxy renews at 40-50% of its certificate's life; if it cannot, see its log (`cannot get a workload certificate`)";
    checks.push(if !expired.is_empty() {
        expired.extend(near);
        bad(
            "proxy certificates are not near expiry",
            CheckResult::Error,
            expired.join("\n"),
            hint,
        )
    } else {
        all(
            "proxy certificates are not near expiry",
            near,
            CheckResult::Warning,
            hint,
        )
    });
    if per_proxy {
        for (w, p) in rows {
            let healthy = w.connected && w.up_to_date() && w.nacks == 0 && p.ready.is_ok();
            let detail = format!(
                "connected={} subscriptions={} acked_version={} nacks={} ready={}",
                w.connected,
                w.subscriptions.len(),
                w.acked_version.map_or("-".to_string(), |v| v.to_string()),
                w.nacks,
                p.ready.is_ok()
            );
            let description = format!(
                "proxy {} (admin {})",
                name(w),
                w.admin.as_deref().unwrap_or("-")
            );
            checks.push(if healthy {
                ok(&description)
            } else {
                bad(
                    &description,
                    CheckResult::Error,
                    detail,
                    "see the checks above",
                )
            });
        }
    }
    checks
}

/// Linkerd's text format.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    for c in &report.categories {
        let _ = writeln!(s, "{}\n{}", c.name, "-".repeat(c.name.chars().count()));
        for k in &c.checks {
            let mark = match k.result {
                CheckResult::Success => "√",
                CheckResult::Warning => "‼",
                CheckResult::Error => "×",
            };
            let _ = writeln!(s, "{mark} {}", k.description);
            if let Some(e) = &k.error {
                for line in e.lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
            if let Some(h) = &k.hint {
                let _ = writeln!(s, "    hint: {h}");
            }
        }
        s.push('\n');
    }
    let mark = if report.success { "√" } else { "×" };
    let _ = writeln!(s, "Status check results are {mark}");
    s
}

/// One config row as `FILE: Kind ns/name: what is wrong`. The control plane's messages already
/// begin with the file and resource (the config crate's errors name them): used as they are.
fn describe_row(r: &ConfigRow) -> String {
    let message = r.message.as_deref().unwrap_or(&r.status);
    if message.starts_with(&format!("{}: ", r.file)) {
        return message.to_string();
    }
    let res = match (&r.kind, &r.namespace, &r.name) {
        (Some(k), Some(ns), Some(n)) => format!("{k} {ns}/{n}"),
        (Some(k), _, _) => k.clone(),
        _ => "document".into(),
    };
    format!("{}: {res}: {message}", r.file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observed {
        let w = WorkloadRow {
            name: "reviews-v1".into(),
            namespace: "default".into(),
            admin: Some("127.0.0.1:1".into()),
            connected: true,
            acked_version: Some(3),
            ..WorkloadRow::default()
        };
        let p = ProxyObserved {
            ready: Ok(()),
            cert_expiry_unix: Some(100_000.0),
        };
        Observed {
            control: "127.0.0.1:15014".into(),
            live: Ok(()),
            ready: Ok(()),
            config: Ok(vec![]),
            workloads: Ok(vec![(w, p)]),
            now_unix: 1000.0,
        }
    }

    #[test]
    fn healthy_mesh_passes() {
        let report = evaluate(&healthy(), true);
        assert!(report.success);
        let text = render(&report);
        assert!(
            text.contains("√ every proxy has ACKed its configuration"),
            "{text}"
        );
        assert!(
            text.contains("√ proxy reviews-v1.default (admin 127.0.0.1:1)"),
            "{text}"
        );
        assert!(text.ends_with("Status check results are √\n"), "{text}");
    }

    #[test]
    fn failures_warnings_and_hints() {
        let mut o = healthy();
        o.config = Ok(vec![ConfigRow {
            file: "bad.yaml".into(),
            kind: Some("VirtualService".into()),
            namespace: Some("default".into()),
            name: Some("reviews".into()),
            status: "Invalid".into(),
            message: Some("spec.http[0].timeout: bad".into()),
        }]);
        if let Ok(rows) = &mut o.workloads {
            rows[0].0.nacks = 2;
            rows[0].0.last_nack = Some("boom".into());
            rows[0].1.cert_expiry_unix = Some(1100.0);
        }
        let report = evaluate(&o, false);
        assert!(!report.success);
        let text = render(&report);
        assert!(text.contains("× config has no invalid resources\n    bad.yaml: VirtualService default/reviews: spec.http[0].timeout: bad\n    hint: "), "{text}");
        assert!(text.contains("× no proxy has refused (NACKed) configuration\n    reviews-v1.default: 2 NACK(s), last: boom"), "{text}");
        assert!(text.contains("‼ proxy certificates are not near expiry\n    reviews-v1.default: certificate expires in 100s"), "{text}");
        assert!(text.ends_with("Status check results are ×\n"));
        o.live = Err("connection refused".into());
        let json = serde_json::to_value(evaluate(&o, false)).unwrap();
        assert_eq!(json["categories"][0]["categoryName"], "trellis-control");
        assert_eq!(json["categories"][0]["checks"][0]["result"], "error");
    }

    fn golden(name: &str, actual: &str) {
        crate::golden::assert_golden("check", name, actual);
    }

    #[test]
    fn golden_text_and_json() {
        let mut o = healthy();
        if let Ok(rows) = &mut o.workloads {
            let mut stale = rows[0].clone();
            stale.0.name = "ratings-v1".into();
            stale.0.subscriptions = vec!["ratings.default:9080".into()];
            stale.0.acked_version = None;
            rows.push(stale);
        }
        let report = evaluate(&o, true);
        golden("proxy.txt", &render(&report));
        let json = crate::output::structured(crate::output::OutputFormat::Json, &report).unwrap();
        golden("proxy.json", &json);
    }
}
