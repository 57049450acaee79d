//! `trellis validate` (alias `analyze`): reads config files and directories as one config set,
//! as the control plane would load them, and reports each problem with its file, resource,
//! field, a fix, a severity and a stable code.
//!
//! [`checks::analyze`] is pure (bytes in, findings out); this module reads the files, renders
//! and maps the outcome to the exit code. It never talks to a running mesh; with `--cluster` it
//! reads the mesh's config objects from the Kubernetes API server ([`cluster`]).

pub mod checks;
pub mod cluster;
mod raw;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use checks::{InputFile, analyze};

use crate::output::{self, OutputFormat};

/// Exit code when a finding reaches the failure threshold.
pub const EXIT_FINDINGS: u8 = 79;
/// `EX_DATAERR`-adjacent `EX_NOINPUT` (65 in the brief): an input could not be read.
pub const EXIT_UNREADABLE: u8 = 65;

/// Bounds a directory walk; far above any real config set.
const MAX_FILES: usize = 10_000;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Config files and directories (`*.yaml`, `*.yml`, `*.json`, recursively), read together
    /// as one config set.
    #[arg(required_unless_present = "cluster", value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Also read the mesh config (and workloads) in the cluster, as the control plane would:
    /// with no FILE, check what is there; with files, check them as if applied to it.
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub kube: crate::install::cluster::KubeArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// The lowest severity that makes the command fail (exit 79).
    #[arg(long, value_enum, default_value_t = Severity::Error)]
    pub failure_threshold: Severity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// The stable codes (docs/cli.md lists them). Never renumber: scripts match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    /// A document failed parsing or field validation.
    Field,
    /// A kind the mesh does not read.
    Ignored,
    /// Part of a resource is not applied (the translator's note).
    Note,
    UnknownHost,
    UnknownSubset,
    SubsetSelectsNothing,
    ZeroWeights,
    /// The control plane would report the resource Conflicted (or a duplicate Service Invalid).
    Conflict,
    PolicySelectsNothing,
    ServiceSelectsNothing,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Field => "TRL1001",
            Self::Ignored => "TRL1002",
            Self::Note => "TRL1003",
            Self::UnknownHost => "TRL2001",
            Self::UnknownSubset => "TRL2002",
            Self::SubsetSelectsNothing => "TRL2003",
            Self::ZeroWeights => "TRL2004",
            Self::Conflict => "TRL2005",
            Self::PolicySelectsNothing => "TRL2006",
            Self::ServiceSelectsNothing => "TRL2007",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::Ignored | Self::Note => Severity::Info,
            Self::SubsetSelectsNothing
            | Self::PolicySelectsNothing
            | Self::ServiceSelectsNothing => Severity::Warning,
            Self::Field
            | Self::UnknownHost
            | Self::UnknownSubset
            | Self::ZeroWeights
            | Self::Conflict => Severity::Error,
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            Self::Field => {
                "fix the field; until then the control plane keeps the file's last good version in force"
            }
            Self::Ignored => "nothing to do unless this resource was meant for the mesh",
            Self::Note => "the rest of the resource is applied; see docs/traffic-config.md",
            Self::UnknownHost => {
                "add the Service to the config set, or correct the host name (name, name.namespace or the FQDN)"
            }
            Self::UnknownSubset => {
                "define the subset in the host's DestinationRule (spec.subsets), or correct its name"
            }
            Self::SubsetSelectsNothing => {
                "correct the subset's labels, or run a workload carrying them"
            }
            Self::ZeroWeights => "give at least one backend a non-zero weight",
            Self::Conflict => {
                "merge the resources into one, or remove the one that does not take precedence"
            }
            Self::PolicySelectsNothing => "correct spec.selector, or remove the policy",
            Self::ServiceSelectsNothing => "correct spec.selector, or run a workload it selects",
        }
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    pub file: String,
    /// 1-based document number in the file.
    pub document: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field: Option<String>,
    pub message: String,
    pub hint: String,
}

impl Finding {
    fn resource(&self) -> String {
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => match &self.namespace {
                Some(ns) => format!("{kind} {ns}/{name}"),
                None => format!("{kind} {name}"),
            },
            (Some(kind), None) => format!("{kind} (document {})", self.document),
            (None, _) => format!("document {}", self.document),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    findings: &'a [Finding],
    summary: Summary,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    errors: usize,
    warnings: usize,
    infos: usize,
    files: usize,
}

/// Why the inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no *.yaml, *.yml or *.json files")]
    Empty { path: PathBuf },
    #[error("more than {MAX_FILES} files")]
    TooMany,
}

/// Reads files and (recursively) directories' config files, each once, in a stable order.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>, ReadError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ReadError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = files.len();
            collect_dir(path, &mut files)?;
            if files.len() == before {
                return Err(ReadError::Empty { path: path.clone() });
            }
        } else {
            files.push(path.clone());
        }
    }
    let mut out: Vec<InputFile> = Vec::with_capacity(files.len());
    for path in files {
        let name = path.display().to_string();
        if out.iter().any(|f| f.name == name) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|source| ReadError::Io { path, source })?;
        out.push(InputFile { name, bytes });
    }
    Ok(out)
}

fn collect_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let io = |source| ReadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        if files.len() >= MAX_FILES {
            return Err(ReadError::TooMany);
        }
        // Hidden entries are editors' and tools' (the control plane skips them too).
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_dir(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Renders the findings in `format`.
pub fn render(
    findings: &[Finding],
    files: usize,
    format: OutputFormat,
) -> Result<String, output::StructuredError> {
    if format.is_structured() {
        return output::structured(
            format,
            &Report {
                findings,
                summary: summarize(findings, files),
            },
        );
    }
    let wide = format == OutputFormat::Wide;
    let mut headers = vec!["SEVERITY", "CODE", "FILE", "RESOURCE", "FIELD", "MESSAGE"];
    if wide {
        headers.push("HINT");
    }
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            let mut row = vec![
                f.severity.as_str().to_string(),
                f.code.as_str().to_string(),
                f.file.clone(),
                f.resource(),
                f.field.clone().unwrap_or_else(|| "-".into()),
                f.message.clone(),
            ];
            if wide {
                row.push(f.hint.clone());
            }
            row
        })
        .collect();
    Ok(output::table(&headers, &rows))
}

fn summarize(findings: &[Finding], files: usize) -> Summary {
    let mut s = Summary {
        files,
        ..Summary::default()
    };
    for f in findings {
        match f.severity {
            Severity::Error => s.errors += 1,
            Severity::Warning => s.warnings += 1,
            Severity::Info => s.infos += 1,
        }
    }
    s
}

fn read_cluster(args: &crate::install::cluster::KubeArgs) -> Result<Vec<InputFile>, String> {
    let runtime = crate::runtime::build()?;
    runtime
        .block_on(cluster::read(args))
        .map_err(|e| e.to_string())
}

/// Runs the command; returns the exit code. Findings go to `out`, the summary to `err`.
pub fn run(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut inputs = match read_inputs(&args.paths) {
        Ok(inputs) => inputs,
        Err(e) => {
            let _ = writeln!(err, "trellis validate: {e}");
            return EXIT_UNREADABLE;
        }
    };
    if args.cluster {
        match read_cluster(&args.kube) {
            // The cluster's objects first: files given alongside come after, as if applied.
            Ok(mut objects) => {
                objects.append(&mut inputs);
                inputs = objects;
            }
            Err(e) => {
                let _ = writeln!(err, "trellis validate: cannot read the cluster: {e}");
                return EXIT_UNREADABLE;
            }
        }
    }
    let findings = analyze(&inputs);
    match render(&findings, inputs.len(), args.output) {
        Ok(text) => {
            if !findings.is_empty() || args.output.is_structured() {
                let _ = out.write_all(text.as_bytes());
            }
        }
        Err(e) => {
            let _ = writeln!(err, "trellis validate: {e}");
            return crate::EXIT_FAILURE;
        }
    }
    let s = summarize(&findings, inputs.len());
    let _ = writeln!(
        err,
        "{} file(s): {} error(s), {} warning(s), {} info",
        s.files, s.errors, s.warnings, s.infos
    );
    if findings
        .iter()
        .any(|f| f.severity >= args.failure_threshold)
    {
        EXIT_FINDINGS
    } else {
        0
    }
}
