//! `trellis check --pre` (is this cluster ready for the mesh?) and `trellis check` in
//! Kubernetes mode (is the installed control plane healthy?), in the same Linkerd format as the
//! local-mode check.
//!
//! Everything is read from the API server as kubectl would (`--kubeconfig`, `--context`):
//! `/version`, SelfSubjectAccessReviews (what `kubectl auth can-i` asks), dry-run creates of the
//! CRDs, the webhook configurations and the Deployment. The one call outside the API server is
//! a TLS handshake with a webhook that has a URL (a control plane run outside the cluster), to
//! check that its serving certificate chains to the configuration's `caBundle`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use trellis_control::k8s::kinds::names;
use trellis_control::k8s::manifests::{Values, render};
use trellis_control::webhook::inject::INJECT_KEY;

use super::report::{Category, Check, CheckResult, Report};
use crate::install::cluster::{self, DryRun, KubeArgs};

/// The oldest Kubernetes the mesh supports: TokenRequest (proxy identity) and the v1 admission
/// and CRD APIs are GA there; the test cluster runs it.
pub const MIN_VERSION: (u32, u32) = (1, 20);
/// A webhook's serving certificate closer than this to expiry is a warning (it is renewed by
/// the control plane; one this close means renewal stopped).
const LEAF_WARN: Duration = Duration::from_secs(3600);
/// A caBundle CA closer than this to expiry is a warning: replacing an anchor takes planning.
const CA_WARN: Duration = Duration::from_secs(30 * 24 * 3600);
/// The TLS handshake's deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Names of other meshes' injection webhooks (configuration or webhook name contains one).
const OTHER_MESHES: &[&str] = &[
    "istio",
    "linkerd",
    "kuma",
    "consul",
    "osm",
    "sidecar-injector",
];

fn ok(description: &str) -> Check {
    Check {
        description: description.to_string(),
        result: CheckResult::Success,
        error: None,
        hint: None,
    }
}

fn bad(description: &str, result: CheckResult, error: String, hint: &str) -> Check {
    Check {
        description: description.to_string(),
        result,
        error: Some(error),
        hint: Some(hint.to_string()),
    }
}

fn verdict(description: &str, outcome: Result<(), String>, hint: &str) -> Check {
    match outcome {
        Ok(()) => ok(description),
        Err(e) => bad(description, CheckResult::Error, e, hint),
    }
}

fn report(categories: Vec<Category>) -> Report {
    let success = categories
        .iter()
        .flat_map(|c| &c.checks)
        .all(|k| k.result != CheckResult::Error);
    Report {
        success,
        categories,
    }
}

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

/// `trellis check --pre`.
pub async fn pre(args: &KubeArgs) -> Report {
    let (mut categories, client) = api_checks(args).await;
    let Some(client) = client else {
        return report(categories);
    };
    let mut checks = Vec::new();
    let ns_path = cluster::path("v1", "namespaces", None, Some(names::NAMESPACE));
    checks.push(match cluster::get(&client, &ns_path).await {
        Ok(None) => ok("control plane namespace does not already exist"),
        Ok(Some(_)) => bad(
            "control plane namespace does not already exist",
            CheckResult::Error,
            format!("namespace {} exists", names::NAMESPACE),
            "the mesh is installed already: `trellis check` and `trellis upgrade`, or remove it with `trellis uninstall | kubectl delete -f -`",
        ),
        Err(e) => bad(
            "control plane namespace does not already exist",
            CheckResult::Error,
            e.to_string(),
            "can this user read namespaces?",
        ),
    });
    checks.push(
        access(
            &client,
            "can create non-namespaced resources",
            &[
                ("", "namespaces"),
                ("rbac.authorization.k8s.io", "clusterroles"),
                ("rbac.authorization.k8s.io", "clusterrolebindings"),
                ("apiextensions.k8s.io", "customresourcedefinitions"),
                (
                    "admissionregistration.k8s.io",
                    "mutatingwebhookconfigurations",
                ),
                (
                    "admissionregistration.k8s.io",
                    "validatingwebhookconfigurations",
                ),
            ],
            None,
        )
        .await,
    );
    checks.push(
        access(
            &client,
            "can create namespaced resources in the control plane namespace",
            &[
                ("", "serviceaccounts"),
                ("", "services"),
                ("apps", "deployments"),
            ],
            Some(names::NAMESPACE),
        )
        .await,
    );
    checks.push(crds_installable(&client).await);
    checks.push(other_mesh_webhooks(&client).await);
    categories.push(category("pre-kubernetes-setup", checks));
    report(categories)
}

/// One SelfSubjectAccessReview per resource: every one must allow `create`.
async fn access(
    client: &Client,
    description: &str,
    resources: &[(&str, &str)],
    namespace: Option<&str>,
) -> Check {
    let mut denied = Vec::new();
    for (group, resource) in resources {
        match cluster::can_i(client, "create", group, resource, namespace).await {
            Ok(true) => {}
            Ok(false) => denied.push(if group.is_empty() {
                (*resource).to_string()
            } else {
                format!("{resource}.{group}")
            }),
            Err(e) => {
                return bad(
                    description,
                    CheckResult::Error,
                    e.to_string(),
                    "can this user create SelfSubjectAccessReviews?",
                );
            }
        }
    }
    verdict(
        description,
        if denied.is_empty() {
            Ok(())
        } else {
            Err(format!("this user may not create: {}", denied.join(", ")))
        },
        "install as a cluster administrator (`kubectl auth can-i create <resource>` shows what is missing)",
    )
}

/// Dry-run creates of every CRD the install renders: schema, admission and RBAC in one go.
async fn crds_installable(client: &Client) -> Check {
    const D: &str = "mesh CRDs can be installed";
    let mut exist = Vec::new();
    let mut refused = Vec::new();
    for crd in render(&Values::default())
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or("?").to_string();
        let path = cluster::path(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            None,
            None,
        );
        match cluster::dry_run_create(client, &path, &crd).await {
            Ok(DryRun::Allowed) => {}
            Ok(DryRun::Exists) => exist.push(name),
            Ok(DryRun::Refused(m)) => refused.push(format!("{name}: {m}")),
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    if !refused.is_empty() {
        return bad(
            D,
            CheckResult::Error,
            refused.join("\n"),
            "install as a cluster administrator",
        );
    }
    if !exist.is_empty() {
        return bad(
            D,
            CheckResult::Warning,
            format!("already defined (by another mesh?): {}", exist.join(", ")),
            "`trellis install` replaces these definitions; resources stored in them are kept and read by the mesh",
        );
    }
    ok(D)
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) selects `labels`; an absent
/// selector selects everything, as the API server reads it.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector["matchLabels"].as_object().is_none_or(|m| {
        m.iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    });
    let by_exprs = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or("") {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    by_labels && by_exprs
}

/// Whether a webhook intercepts pod creation (what sidecar injectors do).
fn mutates_pods(webhook: &Value) -> bool {
    webhook["rules"].as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            let has = |field: &str, want: &str| {
                r[field]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
            };
            has("resources", "pods") && has("operations", "CREATE") && has("apiGroups", "")
        })
    })
}

/// Namespaces both another mesh's injector and the mesh's own would inject pods into.
pub fn overlapping_injectors(
    configurations: &[Value],
    namespaces: &[(String, BTreeMap<String, String>)],
) -> Vec<String> {
    let ours = |labels: &BTreeMap<String, String>| {
        labels.get(INJECT_KEY).map(String::as_str) != Some("disabled")
    };
    let mut out = Vec::new();
    for conf in configurations {
        let conf_name = conf["metadata"]["name"].as_str().unwrap_or("");
        if conf_name == names::INJECTOR_WEBHOOK {
            continue;
        }
        for hook in conf["webhooks"].as_array().into_iter().flatten() {
            let hook_name = hook["name"].as_str().unwrap_or("");
            let text = format!("{conf_name} {hook_name}").to_ascii_lowercase();
            if !mutates_pods(hook) || !OTHER_MESHES.iter().any(|m| text.contains(m)) {
                continue;
            }
            let shared: Vec<&str> = namespaces
                .iter()
                .filter(|(ns, labels)| {
                    ns != names::NAMESPACE
                        && ours(labels)
                        && selects(&hook["namespaceSelector"], labels)
                })
                .map(|(ns, _)| ns.as_str())
                .collect();
            if !shared.is_empty() {
                out.push(format!(
                    "{conf_name} ({hook_name}) injects pods in: {}",
                    shared.join(", ")
                ));
            }
        }
    }
    out
}

async fn other_mesh_webhooks(client: &Client) -> Check {
    const D: &str = "no other mesh's injection webhook on the namespaces the mesh injects";
    let hooks = cluster::get(
        client,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    )
    .await;
    let namespaces = cluster::get(client, "/api/v1/namespaces").await;
    let (hooks, namespaces) = match (hooks, namespaces) {
        (Ok(h), Ok(n)) => (h.unwrap_or_default(), n.unwrap_or_default()),
        (Err(e), _) | (_, Err(e)) => {
            return bad(
                D,
                CheckResult::Error,
                e.to_string(),
                "can this user list mutatingwebhookconfigurations and namespaces?",
            );
        }
    };
    let confs: Vec<Value> = hooks["items"].as_array().cloned().unwrap_or_default();
    let namespaces: Vec<(String, BTreeMap<String, String>)> = namespaces["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
            let labels =
                serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default();
            (name, labels)
        })
        .collect();
    let overlaps = overlapping_injectors(&confs, &namespaces);
    verdict(
        D,
        if overlaps.is_empty() {
            Ok(())
        } else {
            Err(overlaps.join("\n"))
        },
        &format!(
            "two sidecars in one pod fight over its traffic: label those namespaces {INJECT_KEY}=disabled, or remove the other mesh from them"
        ),
    )
}

/// `trellis check` against a cluster with the mesh installed.
pub async fn installed(args: &KubeArgs) -> Report {
    let (mut categories, client) = api_checks(args).await;
    let Some(client) = client else {
        return report(categories);
    };
    let mut checks = Vec::new();
    let ns = cluster::path("v1", "namespaces", None, Some(names::NAMESPACE));
    checks.push(verdict(
        "control plane namespace exists",
        exists(&client, &ns).await,
        "install the mesh: `trellis check --pre`, then `trellis install | kubectl apply -f -`",
    ));
    checks.push(crds_present(&client).await);
    checks.push(deployment_ready(&client).await);
    let mut webhook_checks = Vec::new();
    for (kind, plural, name) in [
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            names::INJECTOR_WEBHOOK,
        ),
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            names::VALIDATING_WEBHOOK,
        ),
    ] {
        let path = cluster::path("admissionregistration.k8s.io/v1", plural, None, Some(name));
        let description = format!("{kind} {name} exists");
        match cluster::get(&client, &path).await {
            Ok(Some(conf)) => {
                checks.push(ok(&description));
                webhook_checks.extend(webhook_certs(&conf, name).await);
            }
            Ok(None) => checks.push(bad(
                &description,
                CheckResult::Error,
                format!("{kind} {name} not found"),
                "re-apply the install: `trellis install | kubectl apply -f -`",
            )),
            Err(e) => checks.push(bad(
                &description,
                CheckResult::Error,
                e.to_string(),
                "can this user read webhook configurations?",
            )),
        }
    }
    categories.push(category("trellis-control-plane", checks));
    categories.push(category("trellis-webhooks", webhook_checks));
    report(categories)
}

async fn exists(client: &Client, path: &str) -> Result<(), String> {
    match cluster::get(client, path).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("{path} not found")),
        Err(e) => Err(e.to_string()),
    }
}

async fn crds_present(client: &Client) -> Check {
    const D: &str = "mesh CRDs are installed";
    let mut missing = Vec::new();
    for crd in render(&Values::default())
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or("?");
        let path = cluster::path(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            None,
            Some(name),
        );
        match cluster::get(client, &path).await {
            Ok(Some(live)) => {
                let established = live["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
                if !established {
                    missing.push(format!("{name} (not Established)"));
                }
            }
            Ok(None) => missing.push(name.to_string()),
            Err(e) => {
                return bad(
                    D,
                    CheckResult::Error,
                    e.to_string(),
                    "can this user read CRDs?",
                );
            }
        }
    }
    verdict(
        D,
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing: {}", missing.join(", ")))
        },
        "re-apply the install: `trellis install | kubectl apply -f -`",
    )
}

async fn deployment_ready(client: &Client) -> Check {
    const D: &str = "control plane Deployment is ready";
    let path = cluster::path(
        "apps/v1",
        "deployments",
        Some(names::NAMESPACE),
        Some(names::CONTROL),
    );
    let hint =
        "`kubectl -n trellis-system describe deployment trellis-control` and its pods' events";
    match cluster::get(client, &path).await {
        Ok(Some(d)) => {
            let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
            let ready = d["status"]["readyReplicas"].as_u64().unwrap_or(0);
            verdict(
                D,
                if ready >= want && ready > 0 {
                    Ok(())
                } else {
                    Err(format!("{ready}/{want} replicas ready"))
                },
                hint,
            )
        }
        Ok(None) => bad(
            D,
            CheckResult::Error,
            format!(
                "deployment {}/{} not found",
                names::NAMESPACE,
                names::CONTROL
            ),
            hint,
        ),
        Err(e) => bad(D, CheckResult::Error, e.to_string(), hint),
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Expired: error; within `warn`: warning.
fn expiry(description: &str, not_after: SystemTime, warn: Duration, now: SystemTime) -> Check {
    let left = not_after.duration_since(now);
    match left {
        Err(_) => bad(
            description,
            CheckResult::Error,
            format!("expired at unix time {}", unix(not_after)),
            "restart the control plane (it makes a new serving certificate and patches the caBundle)",
        ),
        Ok(left) if left < warn => bad(
            description,
            CheckResult::Warning,
            format!("expires in {}s", left.as_secs()),
            "renew it before it expires",
        ),
        Ok(_) => ok(description),
    }
}

/// caBundle set and valid; the serving certificate (when the webhook has a URL) chains to it;
/// neither near expiry.
async fn webhook_certs(conf: &Value, conf_name: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for hook in conf["webhooks"].as_array().into_iter().flatten() {
        let hook_name = hook["name"].as_str().unwrap_or("?");
        let d_bundle = format!("{hook_name}: caBundle holds a CA certificate");
        let bundle = hook["clientConfig"]["caBundle"].as_str().unwrap_or("");
        let certs: Vec<CertificateDer<'static>> = base64_decode(bundle)
            .map(|pem| {
                CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect()
            })
            .unwrap_or_default();
        if certs.is_empty() {
            out.push(bad(
                &d_bundle,
                CheckResult::Error,
                format!("{conf_name}: caBundle is {}", if bundle.is_empty() { "empty" } else { "not a PEM certificate" }),
                "the control plane writes it when it starts: is it running? (`trellis check` above)",
            ));
            continue;
        }
        out.push(ok(&d_bundle));
        for c in &certs {
            if let Some(t) = trellis_identity::tls::not_after(c) {
                out.push(expiry(
                    &format!("{hook_name}: caBundle CA is not near expiry"),
                    t,
                    CA_WARN,
                    now,
                ));
                break;
            }
        }
        let d_match = format!("{hook_name}: serving certificate is signed by the caBundle");
        match hook["clientConfig"]["url"].as_str() {
            Some(url) => match handshake(url, &certs).await {
                Ok(leaf) => {
                    out.push(ok(&d_match));
                    if let Some(t) = leaf.as_deref().and_then(trellis_identity::tls::not_after) {
                        out.push(expiry(&format!("{hook_name}: serving certificate is not near expiry"), t, LEAF_WARN, now));
                    }
                }
                Err(e) => out.push(bad(
                    &d_match,
                    CheckResult::Error,
                    format!("{url}: {e}"),
                    "the API server will refuse this webhook: restart the control plane so it patches the caBundle with its CA",
                )),
            },
            None => out.push(bad(
                &d_match,
                CheckResult::Warning,
                "the webhook calls an in-cluster Service, which is not reachable from here: not checked".into(),
                "the API server's audit log or `kubectl get events` show webhook TLS failures",
            )),
        }
    }
    out
}

/// A TLS handshake with the webhook at `url` trusting only `roots`; the leaf it presented.
async fn handshake(
    url: &str,
    roots: &[CertificateDer<'static>],
) -> Result<Option<Vec<u8>>, String> {
    let rest = url.strip_prefix("https://").ok_or("not an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|e| format!("port: {e}"))?,
        ),
        _ => (authority, 443),
    };
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let run = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        Ok::<_, String>(leaf)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn versions_and_selectors() {
        assert_eq!(parse_version("1", "20"), Some((1, 20)));
        assert_eq!(parse_version("1", "27+"), Some((1, 27)));
        assert_eq!(parse_version("", "x"), None);
        let sel = json!({"matchLabels": {"istio-injection": "enabled"}});
        assert!(selects(&sel, &labels(&[("istio-injection", "enabled")])));
        assert!(!selects(&sel, &labels(&[])));
        assert!(selects(&Value::Null, &labels(&[])));
        let not_in =
            json!({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["off"]}]});
        assert!(selects(&not_in, &labels(&[])));
        assert!(!selects(&not_in, &labels(&[("k", "off")])));
    }

    #[test]
    fn other_meshes_on_shared_namespaces() {
        let istio = json!({"metadata": {"name": "istio-sidecar-injector"}, "webhooks": [{
            "name": "namespace.sidecar-injector.istio.io",
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
        }]});
        let other = json!({"metadata": {"name": "cert-manager-webhook"}, "webhooks": [{
            "name": "webhook.cert-manager.io",
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        }]});
        let namespaces = vec![
            (
                "shop".to_string(),
                labels(&[("istio-injection", "enabled")]),
            ),
            (
                "quiet".to_string(),
                labels(&[("istio-injection", "enabled"), (INJECT_KEY, "disabled")]),
            ),
            ("plain".to_string(), labels(&[])),
        ];
        assert_eq!(
            overlapping_injectors(&[istio, other], &namespaces),
            ["istio-sidecar-injector (namespace.sidecar-injector.istio.io) injects pods in: shop"]
        );
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert!(base64_decode("*").is_none());
    }
}
