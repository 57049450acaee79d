//! Builders shared by the discovery modules' tests.

use trellis_model::Workload;

/// A workload `name` in `default` with the label `app: <app>`, on 127.0.0.1:15006, port 9080.
pub fn workload(name: &str, app: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: "sa".into(),
        labels: [("app".to_string(), app.to_string())].into(),
        inbound_address: "127.0.0.1:15006".parse().unwrap(),
        ports: vec![9080],
        admin_address: None,
    }
}
