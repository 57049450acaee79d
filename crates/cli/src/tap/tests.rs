use clap::Parser;

use super::*;
use crate::golden::assert_golden;
use crate::{Cli, Command};

fn rows() -> Vec<TapRow> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tap/rows.ndjson"
    ))
    .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn render_all(wide: bool) -> String {
    rows().iter().map(|r| render_line(r, wide) + "\n").collect()
}

#[test]
fn table_lines_golden() {
    assert_golden("tap", "table.txt", &render_all(false));
}

#[test]
fn wide_lines_golden() {
    assert_golden("tap", "wide.txt", &render_all(true));
}

#[test]
fn parties_and_success() {
    let rows = rows();
    assert_eq!(rows[1].source(), "-");
    assert_eq!(rows[2].destination(), "ratings.default.svc.cluster.local");
    assert!(rows[0].is_success());
    assert!(!rows[2].is_success());
    assert!(!rows[3].is_success(), "a gRPC error fails");
    // An older proxy without response_class: classified here.
    let old: TapRow = serde_json::from_str(r#"{"status":502}"#).unwrap();
    assert!(!old.is_success());
}

#[test]
fn query_carries_target_filters_and_bounds() {
    let cli = Cli::try_parse_from([
        "trellis",
        "tap",
        "deploy/reviews",
        "-n",
        "shop",
        "--path",
        "/reviews/0",
        "--method",
        "GET",
        "--to",
        "ratings",
        "--max-rows",
        "5",
        "--control-plane",
        "127.0.0.1:1",
    ])
    .unwrap();
    let Command::Tap(args) = cli.command else {
        panic!("not tap")
    };
    assert_eq!(
        args.query(),
        "workload=deploy/reviews&namespace=shop&max_rows=5&max_seconds=60\
         &method=GET&path=/reviews/0&to=ratings"
    );
}

#[test]
fn yaml_is_one_document_per_row_with_the_json_fields() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tap/rows.ndjson"
    ))
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let stream: String = lines
        .iter()
        .map(|l| yaml_document(l).unwrap() + "\n")
        .collect();
    assert!(stream.starts_with("---\n"), "{stream}");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), lines.len());
    for (doc, line) in docs.iter().zip(&lines) {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(doc, &json, "same fields and values as -o json");
    }
    assert!(yaml_document("not json").is_err());
}
