//! Istio's string match for authorization fields: exact, `prefix*`, `*suffix`, or `*` (any
//! value present). Nothing else: a `*` elsewhere is refused when the policy is read, so the
//! match here never has to guess.

/// Whether `pattern` (as written in a policy) accepts `value`.
///
/// The pattern is not pre-parsed on purpose: a check is one or two byte comparisons, cheaper
/// than storing an enum per value, and the text stays what the user wrote (for logs).
pub fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// As [`matches`], ignoring ASCII case (hosts).
pub fn matches_ignore_case(pattern: &str, value: &str) -> bool {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.len() >= prefix.len()
            && value.is_char_boundary(prefix.len())
            && eq(&value[..prefix.len()], prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        let at = value.len().wrapping_sub(suffix.len());
        return value.len() >= suffix.len()
            && value.is_char_boundary(at)
            && eq(&value[at..], suffix);
    }
    eq(pattern, value)
}

/// Why a pattern is refused: `None` when it is one of the forms [`matches`] knows.
pub fn check(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() {
        return Some("must not be empty");
    }
    let inner = pattern
        .strip_prefix('*')
        .or_else(|| pattern.strip_suffix('*'))
        .unwrap_or(pattern);
    if inner.contains('*') {
        return Some("`*` is only supported alone, as a prefix (`*abc`) or as a suffix (`abc*`)");
    }
    None
}

/// Istio principals are SPIFFE ids without the scheme (`cluster.local/ns/default/sa/app`).
pub fn principal_of_spiffe(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

/// The namespace of a principal `<td>/ns/<ns>/sa/<sa>`, as Istio's `source.namespace`.
pub fn namespace_of_principal(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    let (_td, ns_tag, ns, sa_tag, _sa) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (ns_tag == "ns" && sa_tag == "sa" && parts.next().is_none() && !ns.is_empty()).then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let cases = [
            ("exact", "/a", "/a", true),
            ("exact_differs", "/a", "/ab", false),
            ("prefix", "/a/*", "/a/b", true),
            ("prefix_itself_without_slash", "/a/*", "/a", false),
            ("suffix", "*/x", "/a/x", true),
            ("suffix_other", "*/x", "/a/y", false),
            ("presence", "*", "", true),
            ("prefix_star_empty_rest", "abc*", "abc", true),
        ];
        for (name, p, v, want) in cases {
            assert_eq!(matches(p, v), want, "{name}");
        }
        assert!(matches_ignore_case("*.Example.com", "api.example.COM"));
        assert!(matches_ignore_case("API.*", "api.example.com"));
        assert!(!matches_ignore_case("*é", "e"));
    }

    #[test]
    fn refuses_inner_stars() {
        assert!(check("a*b").is_some());
        assert!(check("**").is_some());
        assert!(check("").is_some());
        assert!(check("*a").is_none());
        assert!(check("a*").is_none());
        assert!(check("*").is_none());
    }

    #[test]
    fn namespace_from_principal() {
        assert_eq!(
            namespace_of_principal("cluster.local/ns/default/sa/bookinfo-reviews"),
            Some("default")
        );
        assert_eq!(namespace_of_principal("cluster.local/sa/x"), None);
        assert_eq!(namespace_of_principal("a/ns/b/sa/c/d"), None);
        assert_eq!(
            principal_of_spiffe("spiffe://cluster.local/ns/a/sa/b"),
            "cluster.local/ns/a/sa/b"
        );
    }
}
