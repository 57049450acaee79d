//! Reading the text exposition back: the sum of one family's samples whose labels match, for
//! tests and tools that check a proxy's `/metrics` without a Prometheus. Pure; a line it cannot
//! read is skipped.

/// Sums the samples of `name` (exactly, not its `_bucket`/`_sum` relatives) whose labels
/// include every `(label, value)` pair.
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.rfind('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            let pairs = parse_labels(labels);
            want.iter()
                .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// `a="x",b="y\"z"` → pairs, with `\"`, `\\` and `\n` unescaped.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                c => value.push(c),
            }
        }
        out.push((key.trim().to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "# TYPE x counter\n\
            x{direction=\"inbound\",status_code=\"200\",route=\"a\\\"b\"} 2\n\
            x{direction=\"inbound\",status_code=\"503\"} 1\n\
            x{direction=\"outbound\",status_code=\"200\"} 7\n\
            x_bucket{direction=\"inbound\",le=\"1\"} 9\n\
            y 4\n";
        assert_eq!(sum(text, "x", &[("direction", "inbound")]), 3.0);
        assert_eq!(sum(text, "x", &[("status_code", "200")]), 9.0);
        assert_eq!(sum(text, "x", &[("route", "a\"b")]), 2.0);
        assert_eq!(sum(text, "y", &[]), 4.0);
        assert_eq!(sum(text, "x", &[("direction", "none")]), 0.0);
    }
}
