//! Goldens of CLI output from a running demo, and the masks that make that output the same from
//! one run to the next (free ports, live counts, times, column widths that follow them).

// Each test binary that includes `support` uses only some of these (or none).
#![allow(dead_code)]

/// Compares `actual` with `tests/fixtures/<command>/golden/<name>`; `UPDATE_GOLDEN=1` rewrites
/// it.
pub fn golden(command: &str, name: &str, actual: &str) {
    let path = std::path::Path::new("tests/fixtures")
        .join(command)
        .join("golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden {}: {e}", path.display()));
    assert_eq!(actual, expected, "{name} (UPDATE_GOLDEN=1 to accept)");
}

/// Replaces the value after the first `key` in `line`, up to the first of `ends` (or the end of
/// the line), with `mask`; a line without `key` comes back as it is.
pub fn mask_value(line: &str, key: &str, ends: &[char], mask: &str) -> String {
    let Some(start) = line.find(key) else {
        return line.to_string();
    };
    let value = start + key.len();
    let end = line[value..].find(ends).map_or(line.len(), |i| value + i);
    format!("{}{mask}{}", &line[..value], &line[end..])
}

/// A table line's cells joined by the three spaces that separate kubectl's columns: column
/// widths follow masked values (a port's digits, a rate's), so a golden holds the cells and
/// their order, not the widths.
pub fn columns(line: &str) -> String {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("   ")
}

/// Masks the port of every `IPv4:PORT` (the demo binds free ports) as `PORT`.
pub fn mask_ports(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        out.push(c);
        i += 1;
        if c != ':' || !chars.get(i).is_some_and(char::is_ascii_digit) {
            continue;
        }
        // The run of digits and dots before the colon must be an IPv4 address.
        let before: String = out
            .chars()
            .rev()
            .skip(1)
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        if before.matches('.').count() != 3 {
            continue;
        }
        out.push_str("PORT");
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
    }
    out
}
