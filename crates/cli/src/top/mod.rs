//! `trellis top <workload> [-n NS]`: a full-screen view of a workload's most-called paths, from
//! the same tap stream as `trellis tap`, redrawn every second; `q` (or Esc, Ctrl-C) quits and
//! gives the terminal back as it was.
//!
//! [`Table`] (the counts) and [`Table::render`] (the screen as text) are pure and tested
//! without a terminal; [`ui`] owns the terminal and the stream.

pub mod ui;

use std::collections::HashMap;

use crate::tap::{TapRow, format_ms};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The workload (`productpage-v1`), its app (`reviews`: every version), or `deploy/NAME`.
    pub target: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only requests to this workload or service.
    #[arg(long)]
    pub to: Option<String>,
    /// The control plane's HTTP API.
    #[arg(
        long,
        visible_alias = "control-plane",
        default_value = "http://127.0.0.1:15014",
        value_name = "URL"
    )]
    pub control: String,
}

/// `(source, destination, method, path)`: one line of the view.
type Key = (String, String, String, String);

/// The counts of one line.
#[derive(Clone, Debug, PartialEq)]
pub struct PathStats {
    pub source: String,
    pub destination: String,
    pub method: String,
    pub path: String,
    pub count: u64,
    pub successes: u64,
    pub best_ms: f64,
    pub worst_ms: f64,
    pub last_ms: f64,
}

/// Requests seen since `top` started, by source, destination, method and path.
#[derive(Debug, Default)]
pub struct Table {
    lines: HashMap<Key, PathStats>,
    pub total: u64,
}

impl Table {
    pub fn record(&mut self, row: &TapRow) {
        self.total += 1;
        let key = (
            row.source().to_owned(),
            row.destination().to_owned(),
            row.method.clone(),
            row.path.clone(),
        );
        let ms = row.latency_ms;
        let ok = u64::from(row.is_success());
        self.lines
            .entry(key)
            .and_modify(|s| {
                s.count += 1;
                s.successes += ok;
                s.best_ms = s.best_ms.min(ms);
                s.worst_ms = s.worst_ms.max(ms);
                s.last_ms = ms;
            })
            .or_insert_with_key(|(source, destination, method, path)| PathStats {
                source: source.clone(),
                destination: destination.clone(),
                method: method.clone(),
                path: path.clone(),
                count: 1,
                successes: ok,
                best_ms: ms,
                worst_ms: ms,
                last_ms: ms,
            });
    }

    /// Most called first; ties by path, then source and destination, so the order is stable.
    pub fn sorted(&self) -> Vec<&PathStats> {
        let mut v: Vec<&PathStats> = self.lines.values().collect();
        v.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.path.cmp(&b.path))
                .then_with(|| a.source.cmp(&b.source))
                .then_with(|| a.destination.cmp(&b.destination))
                .then_with(|| a.method.cmp(&b.method))
        });
        v
    }

    /// The screen as `height` lines at most, each cut to `width` characters: a title, the
    /// column headers, the busiest lines, and `status` at the bottom.
    pub fn render(&self, title: &str, status: &str, width: usize, height: usize) -> Vec<String> {
        let headers = [
            "SOURCE",
            "DESTINATION",
            "METHOD",
            "PATH",
            "COUNT",
            "BEST",
            "WORST",
            "LAST",
            "SUCCESS",
        ];
        // Title, blank, header above; status below.
        let room = height.saturating_sub(4);
        let rows: Vec<Vec<String>> = self
            .sorted()
            .into_iter()
            .take(room)
            .map(|s| {
                vec![
                    s.source.clone(),
                    s.destination.clone(),
                    s.method.clone(),
                    s.path.clone(),
                    s.count.to_string(),
                    format_ms(s.best_ms),
                    format_ms(s.worst_ms),
                    format_ms(s.last_ms),
                    format!("{:.2}%", 100.0 * s.successes as f64 / s.count as f64),
                ]
            })
            .collect();
        let table = crate::output::table(&headers, &rows);
        let mut out = vec![title.to_owned(), String::new()];
        out.extend(table.lines().map(str::to_owned));
        while out.len() + 1 < height {
            out.push(String::new());
        }
        out.push(status.to_owned());
        out.truncate(height);
        out.iter()
            .map(|l| l.chars().take(width).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests;
