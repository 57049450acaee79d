//! Authorization's string matching (`paths`, `principals`, `hosts`: exact, `prefix*`,
//! `*suffix`, `*`) must agree with an independent regex oracle, never panic on any UTF-8
//! (case-insensitive host matching slices strings), and give the same answer through the whole
//! `evaluate` as through the matcher alone.

use regex::Regex;
use trellis_model::authz::{
    Action, DefaultPolicy, HttpAttributes, Operation, Policy, Request, Rule, Source, WorkloadAuthz,
    evaluate, pattern,
};

/// The oracle: the pattern forms as an anchored regex.
fn oracle(p: &str, v: &str, ignore_case: bool) -> bool {
    let flags = if ignore_case { "(?is)" } else { "(?s)" };
    let re = if p == "*" {
        ".*".to_string()
    } else if let Some(prefix) = p.strip_suffix('*') {
        format!("{}.*", regex::escape(prefix))
    } else if let Some(suffix) = p.strip_prefix('*') {
        format!(".*{}", regex::escape(suffix))
    } else {
        regex::escape(p)
    };
    let Ok(re) = Regex::new(&format!("{flags}^(?:{re})$")) else {
        return false;
    };
    re.is_match(v)
}

/// Splits fuzz bytes into a pattern and a value (at the first 0 byte).
fn split(data: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(data).ok()?;
    let (p, v) = text.split_once('\0').unwrap_or((text, ""));
    Some((p, v))
}

pub fn check_matching(data: &[u8]) {
    let Some((p, v)) = split(data) else {
        return;
    };
    // Namespace extraction must never panic, whatever the principal.
    let _ = pattern::namespace_of_principal(v);
    let _ = pattern::principal_of_spiffe(v);
    // Only patterns the config reader accepts reach a proxy.
    if pattern::check(p).is_some() {
        return;
    }
    let exact = pattern::matches(p, v);
    assert_eq!(exact, oracle(p, v, false), "matches({p:?}, {v:?})");
    let folded = pattern::matches_ignore_case(p, v);
    // ASCII-only case folding: agree with the oracle whenever nothing but ASCII could fold.
    if p.is_ascii() && v.is_ascii() {
        assert_eq!(
            folded,
            oracle(p, v, true),
            "matches_ignore_case({p:?}, {v:?})"
        );
    }
    if exact {
        assert!(
            folded,
            "an exact match must also match ignoring case: {p:?} {v:?}"
        );
    }

    // The same through the whole decision: an ALLOW on `paths` and one on `principals`.
    let headers = http::HeaderMap::new();
    let allow = |rule: Rule| WorkloadAuthz {
        default: DefaultPolicy::AllUnauthenticated,
        cluster_networks: Vec::new(),
        policies: vec![Policy {
            name: "fuzz/p".into(),
            action: Action::Allow,
            rules: vec![rule],
            dry_run: false,
        }],
    };
    let by_path = allow(Rule {
        to: vec![Operation {
            paths: vec![p.to_string()],
            ..Operation::default()
        }],
        ..Rule::default()
    });
    let by_principal = allow(Rule {
        from: vec![Source {
            principals: vec![p.to_string()],
            ..Source::default()
        }],
        ..Rule::default()
    });
    let request = Request {
        peer_principal: Some(v),
        source_namespace: pattern::namespace_of_principal(v),
        destination_port: 80,
        http: Some(HttpAttributes {
            host: "h",
            method: "GET",
            path: v,
            headers: &headers,
            auth: None,
        }),
        ..Request::default()
    };
    assert_eq!(
        evaluate(&by_path, &request).allowed,
        exact,
        "paths {p:?} {v:?}"
    );
    assert_eq!(
        evaluate(&by_principal, &request).allowed,
        exact,
        "principals {p:?} {v:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::check_matching;
    use crate::input::Rng;

    /// Pieces that make the interesting cases likely: stars, slashes, principals, case, and
    /// multi-byte characters where a byte slice could split one.
    const PIECES: &[&str] = &[
        "*",
        "/",
        "a",
        "A",
        "b",
        "ns",
        "sa",
        "cluster.local",
        "/ns/",
        "/sa/",
        "é",
        "É",
        "ß",
        "日本",
        ".",
        ":",
        "\0",
        "",
        "ratings",
        "*/",
        "/*",
        "K",
        "k",
        "\u{212a}",
    ];

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0x7e11_15a7_2026_0005);
        // Bounded: 20,000 inputs (each compiles an oracle regex) take a few seconds in debug.
        for _ in 0..20_000 {
            let mut input = String::new();
            for _ in 0..rng.below(8) {
                input.push_str(PIECES[rng.below(PIECES.len())]);
            }
            check_matching(input.as_bytes());
        }
    }

    #[test]
    fn known_cases() {
        for case in [
            "*\0",
            "/a/*\0/a/b",
            "*/sa/x\0c/ns/n/sa/x",
            "é*\0É",
            "*é\0e",
            "*\u{212a}\0k",
        ] {
            check_matching(case.as_bytes());
        }
    }
}
