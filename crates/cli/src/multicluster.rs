//! `trellis multicluster link`: writes the `Link` resource (multicluster.trellis.io/v1alpha1)
//! that makes a local control plane take another cluster's exported services, into one of its
//! `--config-dir` directories (or to stdout). The YAML is checked with the control plane's own
//! parser before it is written, so a bad flag is reported by field and nothing half-valid lands
//! in a watched directory. See docs/multicluster.md.

use std::io::Write;
use std::path::PathBuf;

use trellis_config::Outcome;

/// The namespace Links are written in (the control plane reads them from any).
const DEFAULT_NAMESPACE: &str = "trellis-system";

#[derive(Debug, clap::Args)]
pub struct MulticlusterArgs {
    #[command(subcommand)]
    pub command: MulticlusterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum MulticlusterCommand {
    /// Link this cluster to a remote one: its exported services become reachable here through
    /// its east-west gateway, as failover for local endpoints.
    Link(LinkArgs),
}

#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// The remote cluster's name (a DNS-1123 label): the locality its endpoints carry.
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// The remote control plane's HTTP API (its `--http`), e.g. `http://10.0.1.2:15014`.
    #[arg(long, value_name = "URL")]
    pub control_plane: String,
    /// The remote east-west gateway (its `--east-west`), e.g. `10.0.1.2:15443`.
    #[arg(long, value_name = "IP:PORT")]
    pub gateway: String,
    /// How often the remote's exports are fetched again (default 5s).
    #[arg(long, value_name = "DURATION")]
    pub refresh_interval: Option<String>,
    /// The local control plane's config directory: the Link is written to
    /// `DIR/link-<cluster>.yaml` (atomically). Without it, the YAML goes to stdout.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
}

/// The Link's YAML for these flags.
pub fn link_yaml(args: &LinkArgs) -> String {
    let mut yaml = format!(
        "apiVersion: multicluster.trellis.io/v1alpha1\nkind: Link\nmetadata:\n  name: {cluster}\n  namespace: {DEFAULT_NAMESPACE}\nspec:\n  cluster: {cluster}\n  controlPlane: {cp:?}\n  gateway: {gw:?}\n",
        cluster = args.cluster,
        cp = args.control_plane,
        gw = args.gateway,
    );
    if let Some(refresh) = &args.refresh_interval {
        yaml.push_str(&format!("  refreshInterval: {refresh:?}\n"));
    }
    yaml
}

/// Runs the command: 0 written, 64 on a bad flag (named by its Link field), 1 when the file
/// cannot be written.
pub fn run(args: &MulticlusterArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let MulticlusterCommand::Link(link) = &args.command;
    let yaml = link_yaml(link);
    // `{:?}` quoting above keeps the YAML well formed whatever a flag holds; the parser then
    // checks what the values mean.
    for doc in trellis_config::parse_documents("link.yaml", yaml.as_bytes()) {
        match doc.outcome {
            Outcome::Resource(_) => {}
            Outcome::Invalid(e) => {
                let _ = writeln!(
                    err,
                    "trellis multicluster link: {}",
                    flag_message(e.field.as_deref(), &e.message)
                );
                return crate::EXIT_USAGE;
            }
            Outcome::Ignored { reason } => {
                let _ = writeln!(err, "trellis multicluster link: {reason}");
                return crate::EXIT_FAILURE;
            }
        }
    }
    let Some(dir) = &link.config_dir else {
        let _ = out.write_all(yaml.as_bytes());
        return 0;
    };
    let path = dir.join(format!("link-{}.yaml", link.cluster));
    let tmp = dir.join(format!(".link-{}.yaml.tmp", link.cluster));
    let written = std::fs::write(&tmp, &yaml).and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => {
            let _ = writeln!(
                out,
                "wrote {} (cluster {} via gateway {})",
                path.display(),
                link.cluster,
                link.gateway
            );
            0
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            let _ = writeln!(
                err,
                "trellis multicluster link: cannot write {}: {e}",
                path.display()
            );
            crate::EXIT_FAILURE
        }
    }
}

/// A Link field's error in terms of the flag that set it.
fn flag_message(field: Option<&str>, message: &str) -> String {
    let flag = match field {
        Some("spec.cluster") | Some("metadata.name") => "--cluster",
        Some("spec.controlPlane") => "--control-plane",
        Some("spec.gateway") => "--gateway",
        Some("spec.refreshInterval") => "--refresh-interval",
        Some(other) => other,
        None => return message.to_string(),
    };
    format!("{flag}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cluster: &str, cp: &str, gw: &str) -> MulticlusterArgs {
        MulticlusterArgs {
            command: MulticlusterCommand::Link(LinkArgs {
                cluster: cluster.into(),
                control_plane: cp.into(),
                gateway: gw.into(),
                refresh_interval: Some("1s".into()),
                config_dir: None,
            }),
        }
    }

    #[test]
    fn writes_a_link_the_control_plane_reads() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &args("east", "http://198.18.1.2:15014", "198.18.1.2:15443"),
            &mut out,
            &mut err,
        );
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        let yaml = String::from_utf8(out).unwrap();
        let docs = trellis_config::parse_documents("l.yaml", yaml.as_bytes());
        assert!(
            matches!(docs[0].outcome, Outcome::Resource(_)),
            "{:?}",
            docs[0]
        );
        assert!(yaml.contains("gateway: \"198.18.1.2:15443\""), "{yaml}");
    }

    #[test]
    fn bad_flags_are_named() {
        for (a, want) in [
            (args("East", "http://a:1", "1.2.3.4:1"), "--cluster: "),
            (args("east", "a:1", "1.2.3.4:1"), "--control-plane: "),
            (args("east", "http://a:1", "gw"), "--gateway: "),
        ] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            assert_eq!(run(&a, &mut out, &mut err), crate::EXIT_USAGE);
            let err = String::from_utf8(err).unwrap();
            assert!(err.contains(want), "{err}");
        }
    }
}
