//! The demo's private temporary directory: Bookinfo's Services (always loaded), the sample
//! config when the user gives none, and `run/` for ready files and child logs. Removed when
//! dropped, unless kept for debugging.

use std::io;
use std::path::{Path, PathBuf};

use super::{DemoError, sample};

/// The demo's private directories, removed when dropped.
#[derive(Debug)]
pub struct Dirs {
    /// `None` once kept.
    root: Option<tempfile::TempDir>,
    /// Bookinfo's Services, always loaded.
    pub services: PathBuf,
    /// The user's `--config-dir`, or the sample written under `root`.
    pub config: PathBuf,
    /// Ready files and child logs.
    pub run: PathBuf,
}

impl Dirs {
    /// Stops the directory from being removed; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        let root = self.root.take();
        root.map(tempfile::TempDir::keep).unwrap_or_default()
    }

    pub fn create(user_config: Option<&Path>) -> Result<Self, DemoError> {
        let tmp = std::env::temp_dir();
        let root = tempfile::Builder::new()
            .prefix("trellis-demo-")
            .tempdir()
            .map_err(|source| DemoError::Prepare {
                what: "a private directory",
                path: tmp,
                source,
            })?;
        let prepare = |what: &'static str, path: &Path, result: io::Result<()>| {
            result.map_err(|source| DemoError::Prepare {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let services = root.path().join("bookinfo");
        prepare(
            "Bookinfo's Services",
            &services,
            std::fs::create_dir(&services),
        )?;
        let file = services.join("bookinfo-services.yaml");
        prepare(
            "Bookinfo's Services",
            &file,
            std::fs::write(&file, sample::bookinfo_services()),
        )?;
        let gateway = services.join("bookinfo-gateway.yaml");
        prepare(
            "Bookinfo's ingress gateway config",
            &gateway,
            std::fs::write(&gateway, super::gateway::config_yaml()),
        )?;
        let run = root.path().join("run");
        prepare("the run directory", &run, std::fs::create_dir(&run))?;
        let config = match user_config {
            Some(dir) => dir.to_path_buf(),
            None => {
                let dir = root.path().join("config");
                prepare("the sample config", &dir, std::fs::create_dir(&dir))?;
                prepare(
                    "the sample config",
                    &dir,
                    sample::write_files(&dir, sample::SAMPLE_CONFIG),
                )?;
                dir
            }
        };
        Ok(Self {
            root: Some(root),
            services,
            config,
            run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_hold_the_services_and_sample() {
        let dirs = Dirs::create(None).unwrap();
        assert!(dirs.services.join("bookinfo-services.yaml").is_file());
        assert!(dirs.config.join("README.md").is_file());
        let root = dirs.root.as_ref().unwrap().path().to_path_buf();
        drop(dirs);
        assert!(!root.exists(), "temporary directories are removed");

        let user = tempfile::tempdir().unwrap();
        let dirs = Dirs::create(Some(user.path())).unwrap();
        assert_eq!(dirs.config, user.path());
        assert_eq!(
            std::fs::read_dir(user.path()).unwrap().count(),
            0,
            "the user's dir is not written"
        );
    }
}
