//! Builders shared by the discovery modules' tests.

use std::collections::BTreeMap;

use trellis_model::{Service, ServiceKey, ServicePort, TargetPort, Workload};

use crate::store::ConfigSnapshot;

/// A workload `name` in `default` with the label `app: <app>`, on 127.0.0.1:15006, port 9080.
pub fn workload(name: &str, app: &str) -> std::sync::Arc<Workload> {
    std::sync::Arc::new(Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: "sa".into(),
        labels: [("app".to_string(), app.to_string())].into(),
        inbound_address: "127.0.0.1:15006".parse().unwrap(),
        ports: vec![9080],
        admin_address: None,
    })
}

/// Services `a` and `b` in `default`, each selecting `app: <name>` on port 9080.
pub fn two_services() -> ConfigSnapshot {
    let mut services = BTreeMap::new();
    for name in ["a", "b"] {
        let key = ServiceKey::new("default", name);
        services.insert(
            key.clone(),
            Service {
                key,
                selector: [("app".to_string(), name.to_string())].into(),
                ports: vec![ServicePort {
                    name: None,
                    port: 9080,
                    target_port: TargetPort::Number(9080),
                    protocol: Default::default(),
                }],
                cluster_ip: None,
            },
        );
    }
    ConfigSnapshot {
        services,
        ..ConfigSnapshot::default()
    }
}
