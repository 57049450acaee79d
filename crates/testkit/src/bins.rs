//! Finding the workspace's built binaries from a test.

use std::path::{Path, PathBuf};

/// The environment variable that, when set, names the directory holding the binaries.
pub const BIN_DIR_ENV: &str = "TRELLIS_BIN_DIR";

/// The path of the built binary `name` (`trellis-proxy`, `trellis-control`, ...).
///
/// Looks in `$TRELLIS_BIN_DIR` if set, else in the target directory the running test executable
/// lives in (`target/<profile>/deps/<test>` → `target/<profile>/<name>`), so a test runs the
/// binaries of its own profile. Panics, saying how to build them, when none is found: a test
/// without its binaries cannot prove anything.
pub fn bin(name: &str) -> PathBuf {
    match try_bin(name) {
        Ok(path) => path,
        Err(looked) => panic!(
            "binary `{name}` not found (looked in: {looked}); build the binaries first with \
             `cargo build --workspace --bins` (or set {BIN_DIR_ENV})"
        ),
    }
}

/// Like [`bin`], but returns the places looked in when the binary is missing.
pub fn try_bin(name: &str) -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let candidate = Path::new(&dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    } else if let Ok(exe) = std::env::current_exe() {
        // Bounded: a path has few ancestors, and only the first three can be a target profile dir.
        for dir in exe.ancestors().skip(1).take(3) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            looked.push(candidate.display().to_string());
        }
    }
    Err(looked.join(", "))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
