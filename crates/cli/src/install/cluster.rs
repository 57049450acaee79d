//! Reaching a Kubernetes cluster as kubectl does (`--kubeconfig`, `--context`, `$KUBECONFIG`,
//! `~/.kube/config`), and the few raw API calls the cluster commands (`check --pre`, `check`
//! in Kubernetes mode, `validate --cluster`, `upgrade`) make: read JSON by path, ask the API
//! server whether this user may do something, dry-run a create. Every call has a deadline.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// Each API call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// kubectl's connection flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeArgs {
    /// The kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl KubeArgs {
    /// Whether any cluster flag was given.
    pub fn given(&self) -> bool {
        self.kubeconfig.is_some() || self.context.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    #[error("{what}: {message}")]
    Api { what: String, message: String },
    #[error("{what}: no answer within {CALL_TIMEOUT:?}")]
    Timeout { what: String },
}

impl ClusterError {
    /// The HTTP status the API server answered, when it did.
    fn api(what: &str, err: kube::Error) -> Self {
        let message = match &err {
            kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
            other => other.to_string(),
        };
        Self::Api {
            what: what.to_string(),
            message,
        }
    }
}

/// A client for the cluster `args` name.
pub async fn connect(args: &KubeArgs) -> Result<Client, ClusterError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))
}

async fn send(
    client: &Client,
    what: &str,
    req: http::Request<Vec<u8>>,
) -> Result<Value, ClusterError> {
    match tokio::time::timeout(CALL_TIMEOUT, client.request::<Value>(req)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClusterError::api(what, e)),
        Err(_) => Err(ClusterError::Timeout {
            what: what.to_string(),
        }),
    }
}

fn request(
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<http::Request<Vec<u8>>, ClusterError> {
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .map_err(|e| ClusterError::Config(format!("{path}: {e}")))
}

/// `GET path`; `Ok(None)` when the API server answers 404 (no such object or kind).
pub async fn get(client: &Client, path: &str) -> Result<Option<Value>, ClusterError> {
    let req = request(http::Method::GET, path, None)?;
    match tokio::time::timeout(CALL_TIMEOUT, client.request::<Value>(req)).await {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(None),
        Ok(Err(e)) => Err(ClusterError::api(&format!("GET {path}"), e)),
        Err(_) => Err(ClusterError::Timeout {
            what: format!("GET {path}"),
        }),
    }
}

/// `POST path` with a JSON body.
pub async fn post(client: &Client, path: &str, body: &Value) -> Result<Value, ClusterError> {
    let req = request(http::Method::POST, path, Some(body))?;
    send(client, &format!("POST {path}"), req).await
}

/// The outcome of a dry-run create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DryRun {
    Allowed,
    /// 409: the object is there already.
    Exists,
    /// Anything else the API server refused, with its message.
    Refused(String),
}

/// `POST path?dryRun=All`: would the API server create `object` (admission, schema, RBAC)?
pub async fn dry_run_create(
    client: &Client,
    path: &str,
    object: &Value,
) -> Result<DryRun, ClusterError> {
    let req = request(
        http::Method::POST,
        &format!("{path}?dryRun=All"),
        Some(object),
    )?;
    match tokio::time::timeout(CALL_TIMEOUT, client.request::<Value>(req)).await {
        Ok(Ok(_)) => Ok(DryRun::Allowed),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(DryRun::Exists),
        Ok(Err(kube::Error::Api(status))) => Ok(DryRun::Refused(format!(
            "{} ({})",
            status.message, status.code
        ))),
        Ok(Err(e)) => Err(ClusterError::api(&format!("POST {path}"), e)),
        Err(_) => Err(ClusterError::Timeout {
            what: format!("POST {path}"),
        }),
    }
}

/// May the current user `verb` `resource` (of `group`, in `namespace` or cluster-wide)?
/// Asked with a SelfSubjectAccessReview, as `kubectl auth can-i` does.
pub async fn can_i(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool, ClusterError> {
    let mut attrs = json!({"verb": verb, "group": group, "resource": resource});
    if let Some(ns) = namespace {
        attrs["namespace"] = Value::String(ns.to_string());
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    });
    let answer = post(
        client,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        &review,
    )
    .await?;
    Ok(answer["status"]["allowed"].as_bool().unwrap_or(false))
}

/// The REST path of an object's collection (`name` `None`) or of the object itself, from its
/// `apiVersion` and the kind's plural.
pub fn path(
    api_version: &str,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let base = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let mut p = base;
    if let Some(ns) = namespace {
        p.push_str(&format!("/namespaces/{ns}"));
    }
    p.push('/');
    p.push_str(plural);
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

/// The plural resource name of the kinds the install renders (and a few the checks read).
pub fn plural(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Service" => "services",
        "Deployment" => "deployments",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "CustomResourceDefinition" => "customresourcedefinitions",
        "MutatingWebhookConfiguration" => "mutatingwebhookconfigurations",
        "ValidatingWebhookConfiguration" => "validatingwebhookconfigurations",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "PrometheusRule" => "prometheusrules",
        _ => return None,
    })
}

/// The REST path of one rendered object (`None` for a kind this module does not know).
pub fn object_path(object: &Value) -> Option<String> {
    let api_version = object["apiVersion"].as_str()?;
    let plural = plural(object["kind"].as_str()?)?;
    let ns = object["metadata"]["namespace"].as_str();
    let name = object["metadata"]["name"].as_str()?;
    Some(path(api_version, plural, ns, Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            path(
                "apps/v1",
                "deployments",
                Some("trellis-system"),
                Some("trellis-control")
            ),
            "/apis/apps/v1/namespaces/trellis-system/deployments/trellis-control"
        );
        assert_eq!(path("v1", "namespaces", None, None), "/api/v1/namespaces");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        assert_eq!(object_path(&ns).as_deref(), Some("/api/v1/namespaces/x"));
        let odd = json!({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "x"}});
        assert_eq!(object_path(&odd), None);
    }
}
