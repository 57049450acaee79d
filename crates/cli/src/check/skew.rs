//! The `trellis-version` section of `trellis check`: version skew between this CLI, the control
//! plane and the proxies. A control plane serves proxies one minor version behind it (discovery
//! protocol N-1, see docs/operations.md), so one minor apart is a warning (‼: upgrade soon) and
//! more, or another major, a failure (×). Patch versions do not matter.
//!
//! [`evaluate`] is pure. Where the versions come from: local mode, the control plane's
//! `trellis_control_info{version}` gauge and the `proxy_version` each proxy announced on its
//! discovery stream (`/api/v1/workloads`); Kubernetes, the image tags of the control plane's
//! Deployment and of each meshed pod's proxy container (a tag that is not a version, such as
//! `latest`, is reported as unknown).

use std::net::SocketAddr;

use serde_json::Value;

use super::report::{Category, Check, CheckResult, bad, ok};

pub const SECTION: &str = "trellis-version";
const CONTROL: &str = "control plane and CLI versions match";
const PROXIES: &str = "data plane proxies are within one minor version of the control plane";

/// This CLI's version.
pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `0.3.1`, `v1.2.0-rc.1`, `1.2` -> (major, minor).
pub fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How far apart two versions are: 0 the same minor, 1 one minor apart, 2 two or more (or
/// another major); `None` when either is not a version.
fn distance(a: &str, b: &str) -> Option<u64> {
    let (a, b) = (major_minor(a)?, major_minor(b)?);
    Some(if a.0 != b.0 {
        2
    } else {
        a.1.abs_diff(b.1).min(2)
    })
}

fn apart(d: u64) -> &'static str {
    if d == 1 {
        "one minor version apart"
    } else {
        "more than one minor version apart"
    }
}

/// What the checks compare. `None` versions are unknown (not said, or not a version).
#[derive(Clone, Debug)]
pub struct Versions {
    pub cli: String,
    /// `Err`: why the control plane's version could not be read.
    pub control: Result<Option<String>, String>,
    /// Each proxy (`name.namespace` or `namespace/pod`) and its version; `None` when the
    /// proxies were not looked at (`check` without `--proxy` on a cluster).
    pub proxies: Option<Vec<(String, Option<String>)>>,
}

/// The `trellis-version` section.
pub fn evaluate(v: &Versions) -> Category {
    let mut checks = vec![control_check(v)];
    if let Some(proxies) = &v.proxies {
        checks.push(proxies_check(v, proxies));
    }
    Category {
        name: SECTION.to_string(),
        checks,
    }
}

fn control_check(v: &Versions) -> Check {
    let control = match &v.control {
        Err(e) => {
            return bad(
                CONTROL,
                CheckResult::Warning,
                e.clone(),
                "the control plane's version could not be read; see the checks above",
            );
        }
        Ok(None) => {
            return bad(
                CONTROL,
                CheckResult::Warning,
                "the control plane does not say its version".into(),
                "a control plane older than trellis_control_info, or an image tag that is not a version (`--set image=...:X.Y.Z`)",
            );
        }
        Ok(Some(c)) => c,
    };
    match distance(&v.cli, control) {
        Some(0) => ok(CONTROL),
        Some(d) => bad(
            CONTROL,
            if d == 1 {
                CheckResult::Warning
            } else {
                CheckResult::Error
            },
            format!("CLI {}, control plane {control}: {}", v.cli, apart(d)),
            "use the CLI of the control plane's version, or upgrade the control plane to the CLI's (`trellis upgrade` shows what changes)",
        ),
        None => bad(
            CONTROL,
            CheckResult::Warning,
            format!("cannot compare CLI {} with control plane {control}", v.cli),
            "pin version tags on the images (`--set image=...:X.Y.Z`)",
        ),
    }
}

fn proxies_check(v: &Versions, proxies: &[(String, Option<String>)]) -> Check {
    let Ok(Some(control)) = &v.control else {
        return bad(
            PROXIES,
            CheckResult::Warning,
            "the control plane's version is unknown".into(),
            "see the check above",
        );
    };
    let mut worst = CheckResult::Success;
    let mut lines = Vec::new();
    for (name, version) in proxies {
        let (result, line) = match version.as_deref().map(|p| (p, distance(p, control))) {
            Some((_, Some(0))) => continue,
            Some((p, Some(1))) => (
                CheckResult::Warning,
                format!("{name} runs {p}, control plane {control}: {}", apart(1)),
            ),
            Some((p, Some(d))) => (
                CheckResult::Error,
                format!("{name} runs {p}, control plane {control}: {}", apart(d)),
            ),
            Some((p, None)) => (
                CheckResult::Warning,
                format!("{name} runs {p:?}, which is not a version"),
            ),
            None => (
                CheckResult::Warning,
                format!("{name} does not say its version"),
            ),
        };
        worst = worse(worst, result);
        lines.push(line);
    }
    if lines.is_empty() {
        return ok(PROXIES);
    }
    bad(
        PROXIES,
        worst,
        lines.join("\n"),
        "restart those workloads onto the current proxy image (`kubectl rollout restart`); a control plane serves proxies one minor version behind it, not older",
    )
}

fn worse(a: CheckResult, b: CheckResult) -> CheckResult {
    let rank = |r: CheckResult| match r {
        CheckResult::Success => 0,
        CheckResult::Warning => 1,
        CheckResult::Error => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The version in `trellis_control_info{version="..."}` of a control plane's metrics text.
pub fn control_version_from_metrics(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("trellis_control_info{"))
        .and_then(|l| l.split("version=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
}

/// The version an image reference's tag names (`ghcr.io/x/proxy:0.2.1` -> `0.2.1`); `None` for
/// no tag, a digest, or a tag that is not a version (`latest`).
pub fn image_version(image: &str) -> Option<String> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    major_minor(tag).map(|_| tag.to_string())
}

/// Local mode: the control plane's version from its `/metrics`, each registered proxy's from
/// `/api/v1/workloads` (`proxy_version`).
pub async fn local(control: SocketAddr) -> Versions {
    let client = crate::http_client::HttpClient::new();
    let control_version = super::get_ok(&client, control, "/metrics")
        .await
        .map(|m| control_version_from_metrics(&String::from_utf8_lossy(&m)));
    let proxies = super::get_json::<Vec<Value>>(&client, control, "/api/v1/workloads")
        .await
        .ok()
        .map(|rows| {
            rows.iter()
                .map(|w| {
                    let name = format!(
                        "{}.{}",
                        w["name"].as_str().unwrap_or("?"),
                        w["namespace"].as_str().unwrap_or("?")
                    );
                    let version = w["proxy_version"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_string);
                    (name, version)
                })
                .collect()
        });
    Versions {
        cli: CLI_VERSION.to_string(),
        control: control_version,
        proxies,
    }
}

/// Kubernetes: the control plane's Deployment image tag, and with `proxies` (`--proxy`: the
/// namespace, or all) each meshed pod's proxy image tag.
pub async fn kubernetes(client: &kube::Client, proxies: Option<Option<&str>>) -> Versions {
    use trellis_control::k8s::kinds::names;

    use crate::install::cluster;
    let path = cluster::path(
        "apps/v1",
        "deployments",
        Some(names::NAMESPACE),
        Some(names::CONTROL),
    );
    let control = match cluster::get(client, &path).await {
        Ok(Some(d)) => Ok(d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.first())
            .and_then(|c| c["image"].as_str())
            .and_then(image_version)),
        Ok(None) => Err(format!(
            "deployment {}/{} not found",
            names::NAMESPACE,
            names::CONTROL
        )),
        Err(e) => Err(e.to_string()),
    };
    let proxies = match proxies {
        None => None,
        Some(namespace) => {
            let path = cluster::path("v1", "pods", namespace, None);
            match cluster::get(client, &path).await {
                Ok(Some(list)) => Some(
                    super::k8s::proxy::meshed_pods(&list)
                        .into_iter()
                        .map(|p| {
                            let version = image_version(&p.image);
                            (p.name, version.or(Some(p.image)))
                        })
                        .collect(),
                ),
                // The data-plane section reports a pod list that cannot be read.
                Ok(None) | Err(_) => None,
            }
        }
    };
    Versions {
        cli: CLI_VERSION.to_string(),
        control,
        proxies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(cli: &str, control: Option<&str>, proxies: &[(&str, Option<&str>)]) -> Versions {
        Versions {
            cli: cli.into(),
            control: Ok(control.map(str::to_string)),
            proxies: Some(
                proxies
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
                    .collect(),
            ),
        }
    }

    fn text(c: &Category) -> String {
        crate::check::report::render(&crate::check::report::Report::new(vec![c.clone()]))
    }

    #[test]
    fn parses_versions_and_tags() {
        assert_eq!(major_minor("0.3.1"), Some((0, 3)));
        assert_eq!(major_minor("v1.20.0-rc.1"), Some((1, 20)));
        assert_eq!(major_minor("latest"), None);
        assert_eq!(
            image_version("ghcr.io/trellis-mesh/proxy:0.2.1").as_deref(),
            Some("0.2.1")
        );
        assert_eq!(
            image_version("localhost:5000/proxy:v0.2.0").as_deref(),
            Some("v0.2.0")
        );
        assert_eq!(image_version("localhost:5000/proxy"), None);
        assert_eq!(image_version("ghcr.io/trellis-mesh/proxy:latest"), None);
        assert_eq!(image_version("proxy@sha256:abcd"), None);
        let metrics = "# TYPE trellis_control_info gauge\ntrellis_control_info{version=\"0.4.2\",discovery_protocol=\"2\"} 1\n";
        assert_eq!(
            control_version_from_metrics(metrics).as_deref(),
            Some("0.4.2")
        );
        assert_eq!(control_version_from_metrics("up 1\n"), None);
    }

    #[test]
    fn same_minor_passes_one_minor_warns_more_fails() {
        let c = evaluate(&versions(
            "0.3.0",
            Some("0.3.2"),
            &[("a.default", Some("0.3.1"))],
        ));
        assert!(
            c.checks.iter().all(|k| k.result == CheckResult::Success),
            "{}",
            text(&c)
        );

        let c = evaluate(&versions(
            "0.4.0",
            Some("0.3.0"),
            &[
                ("a.default", Some("0.2.9")),
                ("b.default", Some("0.1.0")),
                ("c.default", Some("0.3.0")),
            ],
        ));
        let t = text(&c);
        assert!(t.contains("‼ control plane and CLI versions match\n    CLI 0.4.0, control plane 0.3.0: one minor version apart\n    hint: "), "{t}");
        assert!(t.contains("× data plane proxies are within one minor version of the control plane\n    a.default runs 0.2.9, control plane 0.3.0: one minor version apart\n    b.default runs 0.1.0, control plane 0.3.0: more than one minor version apart\n    hint: restart"), "{t}");
        assert!(!t.contains("c.default"), "{t}");

        let c = evaluate(&versions("1.0.0", Some("0.9.0"), &[]));
        assert_eq!(c.checks[0].result, CheckResult::Error, "{}", text(&c));
        assert_eq!(c.checks[1].result, CheckResult::Success);
    }

    #[test]
    fn unknown_versions_warn() {
        let c = evaluate(&versions("0.3.0", None, &[("a", None)]));
        assert_eq!(c.checks[0].result, CheckResult::Warning);
        assert_eq!(c.checks[1].result, CheckResult::Warning);
        let mut v = versions("0.3.0", Some("0.3.0"), &[("a", None)]);
        let c = evaluate(&v);
        assert!(text(&c).contains("a does not say its version"));
        v.proxies = None;
        assert_eq!(evaluate(&v).checks.len(), 1);
    }
}
