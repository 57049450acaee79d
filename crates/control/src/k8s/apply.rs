//! Server-side apply of rendered manifests (what `kubectl apply --server-side` does), for the
//! tests and `trellis install --apply`-style tooling without kubectl.

use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::discovery::{Scope, oneshot};
use serde_json::Value;

/// The field manager named in managedFields.
pub const FIELD_MANAGER: &str = "trellis-install";

#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {source}")]
pub struct ApplyError {
    pub kind: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

async fn api_for(
    client: &Client,
    object: &Value,
) -> Result<(Api<DynamicObject>, String), ApplyError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let err = |source| ApplyError {
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let (resource, caps): (ApiResource, _) =
        oneshot::pinned_kind(client, &gvk).await.map_err(err)?;
    let api = match (caps.scope, object["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}

/// Applies each object in order (server-side apply, forcing ownership of the fields it sets).
pub async fn apply(client: &Client, objects: &[Value]) -> Result<(), ApplyError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for object in objects {
        let (api, name) = api_for(client, object).await?;
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|source| ApplyError {
                kind: object["kind"].as_str().unwrap_or_default().to_string(),
                name: name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Deletes each object in reverse order; objects already gone are not an error.
pub async fn delete(client: &Client, objects: &[Value]) -> Result<(), ApplyError> {
    for object in objects.iter().rev() {
        let (api, name) = api_for(client, object).await?;
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ApplyError {
                    kind: object["kind"].as_str().unwrap_or_default().to_string(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}
