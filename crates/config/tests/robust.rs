//! The adapters never panic: every fixture, with each line removed and each scalar value
//! replaced by hostile values, parses to some outcome. The control plane feeds the parser
//! whatever a user drops into a config directory.

#![allow(clippy::unwrap_used)]
use std::path::Path;

use trellis_config::parse_documents;

/// Values that have broken parsers before (overflow, NaN, wrong types, huge durations, YAML
/// aliases), one a line; the fuzz crate's config check reads the same file.
const HOSTILE: &str = include_str!("hostile-values.txt");

fn fixtures() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for sub in ["networking", "gateway-api", "traffic", "invalid"] {
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.display().to_string(), text));
        }
    }
    out.sort();
    out
}

#[test]
fn mutated_fixtures_never_panic() {
    let mut parsed = 0usize;
    for (name, text) in fixtures() {
        let lines: Vec<&str> = text.lines().collect();
        for skip in 0..lines.len() {
            let mutated: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            parse_documents(&name, mutated.join("\n").as_bytes());
            parsed += 1;
        }
        for (i, line) in lines.iter().enumerate() {
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            if value.trim().is_empty() {
                continue;
            }
            for hostile in HOSTILE.lines() {
                let mut mutated = lines.clone();
                let replaced = format!("{key}: {hostile}");
                mutated[i] = &replaced;
                parse_documents(&name, mutated.join("\n").as_bytes());
                parsed += 1;
            }
        }
    }
    assert!(parsed > 1000, "only {parsed} mutations");
}
