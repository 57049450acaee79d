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

/// The sample mesh config: Istio routing for `reviews` that keeps every version in play, and
/// sends the user `jason` to v2, as in Istio's request-routing task. Edit it while the demo
/// runs: the control plane watches the directory.
pub const SAMPLE_CONFIG: &[(&str, &str)] = &[(
    "reviews-routing.yaml",
    r#"# Sample mesh config written by `trellis demo`. Edit, add or remove files here while the
# demo runs: the control plane reloads this directory and the dashboard shows each resource's
# status. Try adding a Service, e.g. one selecting only reviews v1:
#
#   apiVersion: v1
#   kind: Service
#   metadata: {name: reviews-v1, namespace: default}
#   spec: {ports: [{port: 9080, name: http}], selector: {app: reviews, version: v1}}
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
)];

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
        assert!(text.contains("kind: VirtualService"));
    }
}
