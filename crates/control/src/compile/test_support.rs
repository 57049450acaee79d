//! Fixtures the per-kind compile tests share: resources parsed from YAML, and a workload.

use trellis_config::{Outcome, Resource, parse_documents};
use trellis_model::Workload;

/// The resources of `yaml` that `pick` takes, in order. A document that is not a resource
/// (invalid, or a parse error) is a broken fixture: it panics, naming why.
pub fn resources<T>(yaml: &str, pick: impl Fn(Resource) -> Option<T>) -> Vec<T> {
    parse_documents("test.yaml", yaml.as_bytes())
        .into_iter()
        .filter_map(|d| match d.outcome {
            Outcome::Resource(r) => pick(r),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A workload `<app>-0` of `namespace` labelled `app: <app>`, with service account `<app>`.
pub fn workload(namespace: &str, app: &str) -> Workload {
    Workload {
        name: format!("{app}-0"),
        namespace: namespace.into(),
        service_account: app.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        inbound_address: "127.0.0.1:15006".parse().unwrap(),
        ports: vec![8080],
        admin_address: None,
    }
}
