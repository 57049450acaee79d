//! `trellis validate --cluster`: the config set is what the cluster holds (as `istioctl
//! analyze` reads it): every object of every kind the control plane reads, plus the
//! Deployments, StatefulSets and DaemonSets whose pod labels say which workloads exist. Each
//! object is one input "file" named `Kind namespace/name`, as the control plane names it in
//! Kubernetes mode, so one broken object never hides the others.

use trellis_control::k8s::kinds::CONFIG_KINDS;
use trellis_control::k8s::objects::Object;

use super::InputFile;
use crate::install::cluster::{self, ClusterError, KubeArgs};

/// Workload kinds read for their pod templates' labels.
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("apps/v1", "DaemonSet", "daemonsets"),
];

/// Every object of the kinds above, in all namespaces; a kind the cluster does not serve (its
/// CRD is not installed) contributes nothing.
pub async fn read(args: &KubeArgs) -> Result<Vec<InputFile>, ClusterError> {
    let client = cluster::connect(args).await?;
    let kinds = CONFIG_KINDS
        .iter()
        .map(|k| (k.api_version(), k.kind, k.plural))
        .chain(WORKLOADS.iter().map(|(v, k, p)| (v.to_string(), *k, *p)));
    let mut out = Vec::new();
    for (api_version, kind, plural) in kinds {
        let path = cluster::path(&api_version, plural, None, None);
        let Some(list) = cluster::get(&client, &path).await? else {
            continue;
        };
        for item in list["items"].as_array().into_iter().flatten() {
            let Some(object) = Object::from_json(item.clone(), &api_version, kind) else {
                continue;
            };
            out.push(input(&object));
        }
    }
    Ok(out)
}

fn input(object: &Object) -> InputFile {
    let mut json = object.json.clone();
    // What the API server and the control plane write is not the user's config.
    if let Some(map) = json.as_object_mut() {
        map.remove("status");
    }
    InputFile {
        name: object.key(),
        bytes: serde_json::to_vec(&json).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn one_input_per_object_named_as_the_control_plane_names_it() {
        let item = serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "shop", "managedFields": [{}]},
            "spec": {"hosts": ["reviews"]},
            "status": {"conditions": []},
        });
        let object = Object::from_json(item, "networking.istio.io/v1", "VirtualService").unwrap();
        let file = input(&object);
        assert_eq!(file.name, "VirtualService shop/reviews");
        let back: Value = serde_json::from_slice(&file.bytes).unwrap();
        assert_eq!(back["kind"], "VirtualService");
        assert!(back.get("status").is_none());
        assert!(back["metadata"].get("managedFields").is_none());
    }
}
