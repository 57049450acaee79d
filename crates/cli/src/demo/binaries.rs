//! Finding the mesh's binaries: next to the running `trellis` (how releases and `cargo build`
//! lay them out), then in `TRELLIS_BIN_DIR`, then on `PATH`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Overrides where the demo looks for `trellis-proxy` and `trellis-control`.
pub const BIN_DIR_ENV: &str = "TRELLIS_BIN_DIR";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cannot find the `{name}` binary (looked in {}); build it with `cargo build --workspace --bins`, or set {BIN_DIR_ENV} to the directory holding it",
    display_paths(searched)
)]
pub struct MissingBinary {
    pub name: String,
    pub searched: Vec<PathBuf>,
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere: no executable directory, TRELLIS_BIN_DIR or PATH".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds `name` in this process's environment.
pub fn locate(name: &str) -> Result<PathBuf, MissingBinary> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    locate_in(
        name,
        exe_dir.as_deref(),
        std::env::var_os(BIN_DIR_ENV),
        std::env::var_os("PATH"),
    )
}

/// [`locate`] with its inputs spelled out.
pub fn locate_in(
    name: &str,
    exe_dir: Option<&Path>,
    bin_dir: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, MissingBinary> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(exe_dir.map(Path::to_path_buf));
    dirs.extend(bin_dir.filter(|d| !d.is_empty()).map(PathBuf::from));
    if let Some(path) = path {
        dirs.extend(std::env::split_paths(&path).filter(|d| !d.as_os_str().is_empty()));
    }
    let searched: Vec<PathBuf> = dirs.into_iter().map(|d| d.join(name)).collect();
    searched
        .iter()
        .find(|candidate| is_executable(candidate))
        .cloned()
        .ok_or_else(|| MissingBinary {
            name: name.to_string(),
            searched,
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn make_exe(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn exe_dir_wins_then_env_then_path() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let in_b = make_exe(b.path(), "trellis-proxy");
        let in_c = make_exe(c.path(), "trellis-proxy");
        let path = std::env::join_paths([c.path()]).unwrap();
        let found = locate_in(
            "trellis-proxy",
            Some(a.path()),
            Some(b.path().into()),
            Some(path.clone()),
        );
        assert_eq!(found.unwrap(), in_b);
        let found = locate_in("trellis-proxy", Some(a.path()), None, Some(path));
        assert_eq!(found.unwrap(), in_c);
        let in_a = make_exe(a.path(), "trellis-proxy");
        let found = locate_in("trellis-proxy", Some(a.path()), Some(b.path().into()), None);
        assert_eq!(found.unwrap(), in_a);
    }

    #[test]
    fn non_executable_files_do_not_count() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("trellis-control"), "").unwrap();
        let err = locate_in("trellis-control", Some(a.path()), None, None).unwrap_err();
        assert_eq!(err.searched, vec![a.path().join("trellis-control")]);
        let message = err.to_string();
        assert!(
            message.contains("trellis-control") && message.contains("TRELLIS_BIN_DIR"),
            "{message}"
        );
    }
}
