//! The YAML the demo writes: Bookinfo's Services (always loaded, in a private directory) and
//! the sample mesh config a user edits when they give no `--config-dir`.

use std::fmt::Write as _;
use std::path::Path;

use crate::bookinfo::{NAMESPACE, SERVICE_PORT, Service};

/// Bookinfo's four Services as in Istio's `bookinfo.yaml`, one YAML stream.
pub fn bookinfo_services() -> String {
    let mut yaml = String::from("# Written by `trellis demo`: the Bookinfo services it runs.\n");
    for service in Service::ALL {
        let name = service.name();
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels:\n    app: {name}\n    service: {name}\nspec:\n  ports:\n  - port: {SERVICE_PORT}\n    name: http\n  selector:\n    app: {name}\n"
        );
    }
    yaml
}

/// The sample mesh config directory: Istio request routing for `reviews` in force (the load
/// generator's `jason` requests go to v2, everyone else over all three versions, so the
/// readiness probe and the contract's requests still succeed), and an inactive example to try
/// (the control plane reads only `*.yaml`, `*.yml` and `*.json`).
pub const SAMPLE_CONFIG: &[(&str, &str)] = &[
    (
        "README.md",
        r#"# Mesh config for `trellis demo`

The control plane watches this directory: add, edit or remove `*.yaml` files while the demo
runs, and watch the dashboard's "Config resources" table and `/api/v1/services`.

- `reviews-routing.yaml` (in force): Istio routing for reviews, as in Istio's request-routing
  task: the user `jason` (`-H 'end-user: jason'`) always gets v2 (black stars), everyone else
  is spread over v1, v2 and v3. Change the weights or the match and watch the answers change;
  remove the file and reviews is plain round robin again.
- `reviews-v1-service.yaml.example`: a Service selecting only reviews v1. Rename it to
  `reviews-v1-service.yaml` and `default/reviews-v1` appears with one endpoint.
"#,
    ),
    (
        "reviews-v1-service.yaml.example",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews-v1\n  namespace: default\nspec:\n  ports:\n  - port: 9080\n    name: http\n  selector:\n    app: reviews\n    version: v1\n",
    ),
    (
        "reviews-routing.yaml",
        r#"# Istio request routing for Bookinfo's reviews: jason sees v2 (black stars), everyone else
# is spread over v1, v2 and v3.
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 34
    - destination:
        host: reviews
        subset: v2
      weight: 33
    - destination:
        host: reviews
        subset: v3
      weight: 33
"#,
    ),
];

/// Writes `files` (name, contents) into `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) -> std::io::Result<()> {
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_services_on_9080() {
        let yaml = bookinfo_services();
        assert_eq!(yaml.matches("kind: Service\n").count(), 4);
        for name in ["details", "ratings", "reviews", "productpage"] {
            assert!(yaml.contains(&format!("  name: {name}\n")), "{name}");
            assert!(
                yaml.contains(&format!("  selector:\n    app: {name}\n")),
                "{name}"
            );
        }
        assert_eq!(yaml.matches("  - port: 9080\n    name: http\n").count(), 4);
        assert_eq!(yaml.matches("namespace: default\n").count(), 4);
    }

    #[test]
    fn writes_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), SAMPLE_CONFIG).unwrap();
        let text = std::fs::read_to_string(dir.path().join("reviews-routing.yaml")).unwrap();
        assert!(text.contains("kind: VirtualService") && text.contains("exact: jason"));
        // The Service example stays inactive until renamed.
        assert!(dir.path().join("reviews-v1-service.yaml.example").is_file());
    }
}
