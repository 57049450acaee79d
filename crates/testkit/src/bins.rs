//! Finding the workspace's built binaries from a test.

use std::path::{Path, PathBuf};

/// The environment variable that, when set, names the directory holding the binaries.
pub const BIN_DIR_ENV: &str = "TRELLIS_BIN_DIR";

/// The path of the built binary `name` (`trellis-proxy`, `trellis-control`, ...).
///
/// Looks in `$TRELLIS_BIN_DIR` if set, else in the target directory the running test executable
/// lives in (`target/<profile>/deps/<test>` → `target/<profile>/<name>`), so a test runs the
/// binaries of its own profile, else (cargo's build-dir set apart from its target dir, where the
/// test executable is not under `target/`) in the same profile's directory of the target dir:
/// `$CARGO_TARGET_DIR`, or the workspace's `target/`. Panics, saying how to build them, when none
/// is found: a test without its binaries cannot prove anything.
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
        let beside = exe.ancestors().skip(1).take(3).map(|dir| dir.join(name));
        let in_target_dir = profile_of(&exe).map(|profile| target_dir().join(profile).join(name));
        for candidate in beside.chain(in_target_dir) {
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            looked.push(candidate.display().to_string());
        }
    }
    Err(looked.join(", "))
}

/// The repository root (this crate is `crates/testkit`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where cargo puts final binaries: `$CARGO_TARGET_DIR`, else the workspace's `target/`. Cargo
/// reads a relative `CARGO_TARGET_DIR` from the directory it ran in, which a test cannot know
/// (it runs in its package's directory); the workspace root, where cargo usually runs, is taken.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The profile directory's name of a test executable: `<dir>/<profile>/deps/<test>` → `<profile>`.
fn profile_of(exe: &Path) -> Option<&std::ffi::OsStr> {
    let deps = exe.parent()?;
    (deps.file_name()? == "deps").then_some(())?;
    deps.parent()?.file_name()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_the_directory_above_deps() {
        let exe = Path::new("/cache/build/release/deps/mesh_traffic-0123abcd");
        assert_eq!(profile_of(exe), Some(std::ffi::OsStr::new("release")));
    }

    #[test]
    fn an_executable_outside_a_deps_directory_has_no_profile() {
        assert_eq!(profile_of(Path::new("/usr/local/bin/some-test")), None);
        assert_eq!(profile_of(Path::new("deps")), None);
    }
}
