//! `trellis demo`'s flags, and their validation into a [`DemoConfig`] before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The most requests per second the load generator will send: it is there to light up the
/// dashboard, not to benchmark.
pub const MAX_LOAD_RPS: u32 = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where Bookinfo is served: productpage's sidecar listens here. Port 0 picks a free port
    /// (the status file and the output say which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9080")]
    pub entry: SocketAddr,

    /// The control plane's HTTP address: its JSON API, /metrics and the dashboard.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15014")]
    pub dashboard: SocketAddr,

    /// A directory of mesh config (YAML), watched for changes. Without it, a sample directory
    /// is written to a temporary directory (its path is printed) for you to edit.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Send no traffic: Bookinfo only answers what you send it.
    #[arg(long)]
    pub no_load: bool,

    /// Requests per second the load generator sends to the entry.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub load_rps: u32,

    /// Once everything is ready, write the demo's addresses and pids here as JSON (atomically).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,

    /// Log filter for the demo and every process it starts (`info`, `debug`, `trellis=debug`).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Keep the demo's temporary directory (logs, ready files, generated config) after it
    /// stops, for debugging; its path is printed.
    #[arg(long)]
    pub keep_files: bool,
}

/// Flags that made sense: what [`super::run`] works from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    pub entry: SocketAddr,
    pub dashboard: SocketAddr,
    /// Absolute, and an existing directory.
    pub config_dir: Option<PathBuf>,
    /// Requests per second, or `None` with `--no-load`.
    pub load_rps: Option<u32>,
    pub status_file: Option<PathBuf>,
    pub log_level: String,
    pub keep_files: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("--load-rps {0}: expected 1 to {MAX_LOAD_RPS} (or --no-load)")]
    LoadRps(u32),
    #[error("--config-dir {path}: {reason}")]
    ConfigDir { path: PathBuf, reason: String },
    #[error("--status-file {path}: {reason}")]
    StatusFile { path: PathBuf, reason: String },
    #[error("--log-level {value:?}: {reason}")]
    LogLevel { value: String, reason: String },
}

impl DemoArgs {
    /// Checks every flag before any socket is bound or process started.
    pub fn validate(&self) -> Result<DemoConfig, UsageError> {
        let load_rps = match (self.no_load, self.load_rps) {
            (true, _) => None,
            (false, n) if (1..=MAX_LOAD_RPS).contains(&n) => Some(n),
            (false, n) => return Err(UsageError::LoadRps(n)),
        };
        let config_dir = match &self.config_dir {
            None => None,
            Some(path) => {
                let err = |reason: String| UsageError::ConfigDir {
                    path: path.clone(),
                    reason,
                };
                let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
                if !meta.is_dir() {
                    return Err(err("not a directory".into()));
                }
                // The control plane runs with another working directory in mind: hand it an
                // absolute path.
                Some(std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?)
            }
        };
        if let Some(path) = &self.status_file {
            let err = |reason: &str| UsageError::StatusFile {
                path: path.clone(),
                reason: reason.into(),
            };
            if path.file_name().is_none() {
                return Err(err("not a file name"));
            }
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) {
                return Err(err("its directory does not exist"));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            UsageError::LogLevel {
                value: self.log_level.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(DemoConfig {
            entry: self.entry,
            dashboard: self.dashboard,
            config_dir,
            load_rps,
            status_file: self.status_file.clone(),
            log_level: self.log_level.clone(),
            keep_files: self.keep_files,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        let cli = Cli::try_parse_from(["trellis", "demo"].iter().chain(args))?;
        let Command::Demo(args) = cli.command else {
            unreachable!("parsed as demo")
        };
        Ok(args)
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = parse(&[]).unwrap().validate().unwrap();
        assert_eq!(config.entry, "127.0.0.1:9080".parse().unwrap());
        assert_eq!(config.dashboard, "127.0.0.1:15014".parse().unwrap());
        assert_eq!(config.load_rps, Some(10));
        assert_eq!(config.config_dir, None);
        assert_eq!(config.log_level, "info");
    }

    #[test]
    fn port_zero_and_no_load() {
        let args = parse(&[
            "--entry",
            "127.0.0.1:0",
            "--dashboard",
            "127.0.0.1:0",
            "--no-load",
        ]);
        let config = args.unwrap().validate().unwrap();
        assert_eq!(config.entry.port(), 0);
        assert_eq!(config.load_rps, None);
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        assert!(parse(&["--entry", "localhost"]).is_err());
        assert!(parse(&["--dashboard", "127.0.0.1:99999"]).is_err());
        assert!(parse(&["--load-rps", "-3"]).is_err());
    }

    #[test]
    fn load_rps_is_bounded() {
        let err = parse(&["--load-rps", "0"]).unwrap().validate().unwrap_err();
        assert_eq!(err, UsageError::LoadRps(0));
        assert!(parse(&["--load-rps", "5000"]).unwrap().validate().is_err());
        // --no-load makes the rate irrelevant.
        assert!(
            parse(&["--load-rps", "0", "--no-load"])
                .unwrap()
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn config_dir_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&["--config-dir", dir.path().to_str().unwrap()])
            .unwrap()
            .validate();
        assert!(config.unwrap().config_dir.unwrap().is_absolute());
        let file = dir.path().join("f.yaml");
        std::fs::write(&file, "").unwrap();
        let err = parse(&["--config-dir", file.to_str().unwrap()])
            .unwrap()
            .validate();
        assert!(matches!(err, Err(UsageError::ConfigDir { .. })));
        let missing = dir.path().join("missing");
        let err = parse(&["--config-dir", missing.to_str().unwrap()])
            .unwrap()
            .validate();
        assert!(matches!(err, Err(UsageError::ConfigDir { .. })));
    }

    #[test]
    fn status_file_directory_must_exist() {
        let err = parse(&["--status-file", "/nonexistent-dir/status.json"])
            .unwrap()
            .validate();
        assert!(matches!(err, Err(UsageError::StatusFile { .. })));
        assert!(
            parse(&["--status-file", "status.json"])
                .unwrap()
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn bad_log_level_is_a_usage_error() {
        let err = parse(&["--log-level", "info,=x=y"]).unwrap().validate();
        assert!(matches!(err, Err(UsageError::LogLevel { .. })), "{err:?}");
    }
}
