//! `trellis upgrade`: what installing this version would change in the cluster. Renders the
//! manifests `trellis install` prints (same `--set` values), reads each object from the
//! cluster, and prints a unified diff per object that differs; applies nothing, and ends with
//! the command that would apply it.
//!
//! The live object is compared on the fields the manifest sets only, as `kubectl apply` merges:
//! what the API server defaults (a Deployment's strategy) or others write (the control plane's
//! webhook `caBundle`, `status`) is not a change an apply would make.

use std::fmt::Write as _;
use std::io::Write;

use serde_json::Value;

use crate::install::InstallArgs;
use crate::install::cluster::{self, ClusterError, KubeArgs};

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub install: InstallArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// What became of one rendered object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Create,
    Update,
    Unchanged,
}

/// One object's verdict and diff (empty when unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDiff {
    pub id: String,
    pub change: Change,
    pub diff: String,
}

/// `Kind namespace/name` or `Kind name`.
fn id(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// `live` cut down to the fields `desired` sets: maps keep the desired keys, lists are cut
/// element by element (a list of another length stays whole: that is a change anyway).
pub fn project(live: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => Value::Object(
            d.keys()
                .filter_map(|k| Some((k.clone(), project(l.get(k)?, &d[k]))))
                .collect(),
        ),
        (Value::Array(l), Value::Array(d)) if l.len() == d.len() => {
            Value::Array(l.iter().zip(d).map(|(l, d)| project(l, d)).collect())
        }
        _ => live.clone(),
    }
}

/// Without empty lists, empty maps and nulls: the API server drops them when it stores an
/// object (`shortNames: []`), so they are no difference.
fn prune_empty(v: &Value) -> Value {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), prune_empty(v)))
                .filter(|(_, v)| !empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(prune_empty).collect()),
        other => other.clone(),
    }
}

/// Compares one rendered object with what the cluster has (`None`: nothing).
pub fn compare(desired: &Value, live: Option<&Value>) -> ObjectDiff {
    let id = id(desired);
    let yaml = |v: &Value| serde_yaml::to_string(&prune_empty(v)).unwrap_or_default();
    let new = yaml(desired);
    match live {
        None => ObjectDiff {
            diff: unified(&id, "", &new),
            id,
            change: Change::Create,
        },
        Some(live) => {
            let old = yaml(&project(live, desired));
            if old == new {
                ObjectDiff {
                    id,
                    change: Change::Unchanged,
                    diff: String::new(),
                }
            } else {
                ObjectDiff {
                    diff: unified(&id, &old, &new),
                    id,
                    change: Change::Update,
                }
            }
        }
    }
}

/// Lines around each change in the diff.
const CONTEXT: usize = 3;

/// A unified diff of two texts, by line (longest common subsequence; manifests are small).
pub fn unified(id: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: common lines of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (tag, line) with ' ', '-', '+'.
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    let from = if old.is_empty() {
        "/dev/null".to_string()
    } else {
        format!("cluster: {id}")
    };
    let mut out = format!("--- {from}\n+++ trellis install: {id}\n");
    // Hunks: runs of changes with CONTEXT lines around them.
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = (changed[k] + CONTEXT + 1).min(ops.len());
        while k + 1 < changed.len() && changed[k + 1] <= end + CONTEXT {
            k += 1;
            end = (changed[k] + CONTEXT + 1).min(ops.len());
        }
        let old_start = ops[..start].iter().filter(|o| o.0 != '+').count();
        let new_start = ops[..start].iter().filter(|o| o.0 != '-').count();
        let old_len = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let new_len = ops[start..end].iter().filter(|o| o.0 != '-').count();
        let _ = writeln!(
            out,
            "@@ -{},{old_len} +{},{new_len} @@",
            old_start + usize::from(old_len > 0),
            new_start + usize::from(new_len > 0)
        );
        for (tag, line) in &ops[start..end] {
            let _ = writeln!(out, "{tag}{line}");
        }
        k += 1;
    }
    out
}

/// The command that applies what the diff shows.
fn apply_command(args: &UpgradeArgs) -> String {
    let mut install = String::from("trellis install");
    for s in &args.install.set {
        let _ = write!(install, " --set {s}");
    }
    let mut kubectl = String::from("kubectl");
    if let Some(k) = &args.kube.kubeconfig {
        let _ = write!(kubectl, " --kubeconfig {}", k.display());
    }
    if let Some(c) = &args.kube.context {
        let _ = write!(kubectl, " --context {c}");
    }
    format!("{install} | {kubectl} apply -f -")
}

async fn diff_cluster(
    args: &UpgradeArgs,
    objects: &[Value],
) -> Result<Vec<ObjectDiff>, ClusterError> {
    let client = cluster::connect(&args.kube).await?;
    let mut out = Vec::with_capacity(objects.len());
    for object in objects {
        let Some(path) = cluster::object_path(object) else {
            continue;
        };
        let live = cluster::get(&client, &path).await?;
        out.push(compare(object, live.as_ref()));
    }
    Ok(out)
}

/// Runs the command: diff on stdout, summary and the apply command on stderr. Exit 0 (whether
/// or not something would change), 1 when the cluster cannot be read, 64 on bad usage.
pub fn run(args: &UpgradeArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    // The same objects `trellis install` prints, with the same `--set` keys (alerts too).
    let objects = match crate::install::objects(&args.install) {
        Ok(objects) => objects,
        Err(e) => {
            let _ = writeln!(err, "trellis upgrade: {e}");
            return if e.is_usage() {
                crate::EXIT_USAGE
            } else {
                crate::EXIT_FAILURE
            };
        }
    };
    let runtime = match crate::runtime::start("trellis upgrade", err) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let diffs = match runtime.block_on(diff_cluster(args, &objects)) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "trellis upgrade: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    for d in &diffs {
        let _ = out.write_all(d.diff.as_bytes());
    }
    let count = |c: Change| diffs.iter().filter(|d| d.change == c).count();
    let (create, update, same) = (
        count(Change::Create),
        count(Change::Update),
        count(Change::Unchanged),
    );
    let _ = writeln!(
        err,
        "{create} to create, {update} to change, {same} unchanged; nothing was applied."
    );
    if create + update > 0 {
        let _ = writeln!(err, "To apply: {}", apply_command(args));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_ignores_what_the_server_adds() {
        let desired = json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {"ports": [{"containerPort": 80}]}}});
        let live = json!({"kind": "Deployment", "metadata": {"name": "d", "uid": "x"}, "spec": {"replicas": 1, "strategy": {}, "template": {"ports": [{"containerPort": 80, "protocol": "TCP"}]}}, "status": {}});
        assert_eq!(compare(&desired, Some(&live)).change, Change::Unchanged);
        let live2 = json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3, "template": {"ports": [{"containerPort": 80}]}}});
        let d = compare(&desired, Some(&live2));
        assert_eq!(d.change, Change::Update);
        assert!(
            d.diff.contains("-  replicas: 3\n+  replicas: 1\n"),
            "{}",
            d.diff
        );
        assert!(
            d.diff
                .starts_with("--- cluster: Deployment d\n+++ trellis install: Deployment d\n@@"),
            "{}",
            d.diff
        );
        let c = compare(&desired, None);
        assert_eq!(c.change, Change::Create);
        assert!(c.diff.starts_with("--- /dev/null\n"), "{}", c.diff);
        assert!(c.diff.contains("+kind: Deployment\n"));
    }

    #[test]
    fn unified_hunks() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\ni\nJ\n";
        let d = unified("x", old, new);
        assert_eq!(
            d,
            "--- cluster: x\n+++ trellis install: x\n@@ -1,10 +1,10 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n h\n i\n-j\n+J\n"
        );
    }
}
