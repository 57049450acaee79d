//! `trellis check --pre` (is this cluster ready for the mesh?) and `trellis check` in
//! Kubernetes mode (is the installed control plane healthy?), in the same Linkerd format as the
//! local-mode check.
//!
//! Everything is read from the API server as kubectl would (`--kubeconfig`, `--context`):
//! `/version`, SelfSubjectAccessReviews (what `kubectl auth can-i` asks), dry-run creates of the
//! CRDs, the webhook configurations and the Deployment. The one call outside the API server is
//! a TLS handshake with a webhook that has a URL (a control plane run outside the cluster), to
//! check that its serving certificate chains to the configuration's `caBundle`. `--proxy` adds
//! the data-plane section ([`proxy`]): meshed pods ready and on the control plane's proxy image.

mod installed;
mod pre;
pub mod proxy;
mod webhook_tls;

use kube::Client;

pub use installed::installed;
pub use pre::{overlapping_injectors, pre, selects};

use super::report::{Category, Check, CheckResult};
pub(super) use super::report::{bad, check as verdict, ok};
use crate::install::cluster::{self, KubeArgs};

/// The oldest Kubernetes the mesh supports: TokenRequest (proxy identity) and the v1 admission
/// and CRD APIs are GA there; the test cluster runs it.
pub const MIN_VERSION: (u32, u32) = (1, 20);

/// `v1.20.2`, `1.27+` -> (1, 20), (1, 27).
pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        s.trim_start_matches('v')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    Some((digits(major)?, digits(minor)?))
}

/// The first two categories of both modes: can we talk to the cluster, and is it recent enough.
/// `None` client: the later checks are skipped.
async fn api_checks(args: &KubeArgs) -> (Vec<Category>, Option<Client>) {
    let mut api = Vec::new();
    let client = match cluster::connect(args).await {
        Ok(c) => {
            api.push(ok("can initialize the client"));
            c
        }
        Err(e) => {
            api.push(bad(
                "can initialize the client",
                CheckResult::Error,
                e.to_string(),
                "check --kubeconfig/--context (or $KUBECONFIG): `kubectl config view --minify`",
            ));
            return (vec![category("kubernetes-api", api)], None);
        }
    };
    let version = cluster::get(&client, "/version").await;
    let version = match version {
        Ok(Some(v)) => {
            api.push(ok("can query the Kubernetes API"));
            v
        }
        Ok(None) | Err(_) => {
            let e = version
                .err()
                .map_or_else(|| "/version: 404".into(), |e| e.to_string());
            api.push(bad(
                "can query the Kubernetes API",
                CheckResult::Error,
                e,
                "is the API server up and reachable from here? `kubectl version`",
            ));
            return (vec![category("kubernetes-api", api)], None);
        }
    };
    let parsed = parse_version(
        version["major"].as_str().unwrap_or(""),
        version["minor"].as_str().unwrap_or(""),
    );
    let git = version["gitVersion"].as_str().unwrap_or("?").to_string();
    let min = format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1);
    let version_check = match parsed {
        Some(v) if v >= MIN_VERSION => ok("is running the minimum Kubernetes API version"),
        Some(_) => bad(
            "is running the minimum Kubernetes API version",
            CheckResult::Error,
            format!("the API server is {git}; the mesh needs {min} or later"),
            "upgrade the cluster",
        ),
        None => bad(
            "is running the minimum Kubernetes API version",
            CheckResult::Warning,
            format!("cannot read the version from {version}"),
            "check `kubectl version`",
        ),
    };
    (
        vec![
            category("kubernetes-api", api),
            category("kubernetes-version", vec![version_check]),
        ],
        Some(client),
    )
}

fn category(name: &str, checks: Vec<Check>) -> Category {
    Category {
        name: name.to_string(),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1", "20"), Some((1, 20)));
        assert_eq!(parse_version("1", "27+"), Some((1, 27)));
        assert_eq!(parse_version("", "x"), None);
    }
}
