//! Golden-file assertions for the commands' unit tests: one place that knows where goldens live
//! and how `UPDATE_GOLDEN=1` rewrites them.

/// Compares `actual` with `tests/fixtures/<command>/golden/<name>`; `UPDATE_GOLDEN=1` rewrites
/// the file instead.
pub(crate) fn assert_golden(command: &str, name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(command)
        .join("golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden {}: {e}", path.display()));
    assert_eq!(actual, expected, "{name} (UPDATE_GOLDEN=1 to accept)");
}
