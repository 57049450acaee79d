//! The config directories the bench generates: Services, the VirtualService it rewrites, and
//! ServiceEntries standing for a large mesh.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// The service port every bench Service exposes.
pub const PORT: u32 = 9080;

pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// `count` Services `svc-i`, each selecting `app: svc-i`.
pub fn services_yaml(count: usize) -> String {
    let mut out = String::with_capacity(count * 200);
    for i in 0..count {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\n\
             spec:\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: {PORT}, targetPort: {PORT}}}]\n"
        );
    }
    out
}

/// The VirtualService of `svc-0` for change `n`: a header route whose value names the change,
/// so a simulated proxy can tell which change an Update carries.
pub fn virtual_service_yaml(n: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: svc-0, namespace: default}}\nspec:\n  hosts: [svc-0]\n  http:\n\
         \x20 - match: [{{headers: {{x-bench: {{exact: change-{n}}}}}}}]\n\
         \x20   route: [{{destination: {{host: svc-0}}}}]\n\
         \x20   timeout: {}s\n\
         \x20 - route: [{{destination: {{host: svc-0}}}}]\n",
        n + 1
    )
}

/// Writes `text` to `dir/name` atomically (temp file + rename), as a config tool would, so
/// the control plane never reads half a file.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming to {name}"))
}

/// ServiceEntries for the proxy-memory run: `hot` entries at 198.18.0.i:80 whose one endpoint
/// is `echo` (the services the proxy talks to), then `bulk` entries with `per_bulk` static
/// endpoints each that only the control plane knows. Written as several files to stay under
/// the control plane's per-file size limit.
pub fn write_entries(
    dir: &Path,
    hot: usize,
    echo_port: u16,
    bulk: usize,
    per_bulk: usize,
) -> Result<()> {
    let mut hot_yaml = String::new();
    for i in 0..hot {
        let _ = write!(
            hot_yaml,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: hot-{i}, namespace: default}}\n\
             spec:\n  hosts: [hot-{i}.bench.test]\n  addresses: [198.18.0.{}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
             \x20 ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {echo_port}}}]\n\
             \x20 endpoints: [{{address: 127.0.0.1}}]\n",
            i + 1
        );
    }
    write_atomic(dir, "hot.yaml", &hot_yaml)?;
    const PER_FILE: usize = 1000;
    for (file, start) in (0..bulk).step_by(PER_FILE).enumerate() {
        let mut yaml = String::new();
        for i in start..(start + PER_FILE).min(bulk) {
            let _ = write!(
                yaml,
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: bulk-{i}, namespace: default}}\n\
                 spec:\n  hosts: [bulk-{i}.bench.test]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
                 \x20 ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n"
            );
            for e in 0..per_bulk {
                let n = i * per_bulk + e;
                let _ = writeln!(
                    yaml,
                    "  - {{address: 10.{}.{}.{}}}",
                    (n >> 16) & 0xff,
                    (n >> 8) & 0xff,
                    n & 0xff
                );
            }
        }
        write_atomic(dir, &format!("bulk-{file:03}.yaml"), &yaml)?;
    }
    Ok(())
}
