//! Output conventions shared by the reporting commands (`validate`, `explain`): the `-o` format
//! and kubectl-style tables. Pure string building; the commands decide where it is written
//! (data on stdout, messages on stderr).

use std::fmt::Write as _;

/// `-o table|wide|json|yaml`, as kubectl spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    /// The table with extra columns.
    Wide,
    Json,
    Yaml,
}

impl OutputFormat {
    /// Whether the output is a machine-readable document rather than a table.
    pub fn is_structured(self) -> bool {
        matches!(self, Self::Json | Self::Yaml)
    }
}

/// Serialises `value` as pretty JSON or YAML, ending with a newline.
pub fn structured<T: serde::Serialize>(
    format: OutputFormat,
    value: &T,
) -> Result<String, StructuredError> {
    let mut text = match format {
        OutputFormat::Yaml => serde_yaml::to_string(value)?,
        _ => serde_json::to_string_pretty(value)?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A value that could not be serialised (a bug: every output type is plain data).
#[derive(Debug, thiserror::Error)]
pub enum StructuredError {
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// A kubectl-style table: upper-case headers, columns left-aligned and separated by three
/// spaces, no trailing spaces. Rows shorter than the header are padded with empty cells.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i + 1 == widths.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["error".to_string(), "TRL2001".to_string(), "x".to_string()],
            vec!["info".to_string(), "TRL1002".to_string()],
        ];
        assert_eq!(
            table(&["SEVERITY", "CODE", "MESSAGE"], &rows),
            "SEVERITY   CODE      MESSAGE\nerror      TRL2001   x\ninfo       TRL1002\n"
        );
    }
}
