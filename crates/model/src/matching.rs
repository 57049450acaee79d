//! Request matching: the conditions a route's `match` can state, and the pure test of a request
//! against them. Istio's `HTTPMatchRequest`, Gateway API's `HTTPRouteMatch` and Linkerd's
//! `RequestMatch` all translate into [`HttpMatch`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A compiled regular expression that serializes as its source. Matching is against the whole
/// value (Istio and Gateway API use RE2 full-match semantics), so the source is anchored.
#[derive(Clone)]
pub struct Regex {
    source: String,
    compiled: regex::Regex,
}

impl Regex {
    /// Compiles `source` as an anchored (full-match) expression.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let compiled = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Self {
            source: source.to_string(),
            compiled,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Regex {}

impl Serialize for Regex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Self::new(&source).map_err(serde::de::Error::custom)
    }
}

/// How a string value is matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

/// How a request path is matched. Gateway API's `PathPrefix` matches whole segments
/// (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`); Istio's `prefix` is a plain string
/// prefix. Both exist, so both are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Exact(String),
    /// Plain string prefix (Istio `uri.prefix`).
    Prefix(String),
    /// Segment-wise prefix (Gateway API `PathPrefix`).
    SegmentPrefix(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(s) => path == s,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::SegmentPrefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path == p
                    || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            Self::Regex(r) => r.is_match(path),
        }
    }
}

/// A header condition. `value: None` only asks that the header be present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Lowercase header name.
    pub name: String,
    pub value: Option<StringMatch>,
    /// Istio `withoutHeaders`: the condition must NOT hold.
    #[serde(default)]
    pub invert: bool,
}

/// A query parameter condition. `value: None` only asks that the parameter be present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: Option<StringMatch>,
}

/// One match block: every stated condition must hold (AND). A route matches when any of its
/// blocks does (OR), and a route without blocks matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Uppercase method name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
    /// The destination port the request was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Labels the calling workload must carry (Istio `sourceLabels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// What matching needs to know about a request. Built by the proxy from the request head, and
/// by `trellis explain` from the command line, so both decide with the same code.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub headers: &'a http::HeaderMap,
    pub port: u16,
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: &'a str,
}

impl HttpMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(req.path))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(req.method))
            && self
                .authority
                .as_ref()
                .is_none_or(|a| a.matches(req.authority))
            && self.port.is_none_or(|p| p == req.port)
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|ns| ns == req.source_namespace)
            && self
                .source_labels
                .iter()
                .all(|(k, v)| req.source_labels.get(k) == Some(v))
            && self
                .headers
                .iter()
                .all(|h| header_holds(h, req.headers) != h.invert)
            && self.query.iter().all(|q| query_holds(q, req.query))
    }
}

fn header_holds(cond: &HeaderMatch, headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all(cond.name.as_str()).iter();
    match &cond.value {
        None => values.next().is_some(),
        Some(m) => values.any(|v| v.to_str().is_ok_and(|v| m.matches(v))),
    }
}

fn query_holds(cond: &QueryMatch, query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        name == cond.name && cond.value.as_ref().is_none_or(|m| m.matches(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a http::HeaderMap,
        labels: &'a BTreeMap<String, String>,
    ) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            query,
            authority: "reviews:9080",
            headers,
            port: 9080,
            source_labels: labels,
            source_namespace: "default",
        }
    }

    #[test]
    fn regex_is_anchored() {
        let r = Regex::new("/reviews/[0-9]+").unwrap();
        assert!(r.is_match("/reviews/12"));
        assert!(!r.is_match("/reviews/12/x"));
        assert!(!r.is_match("x/reviews/1"));
    }

    #[test]
    fn segment_prefix_respects_boundaries() {
        let m = PathMatch::SegmentPrefix("/foo".into());
        assert!(m.matches("/foo"));
        assert!(m.matches("/foo/bar"));
        assert!(!m.matches("/foobar"));
        assert!(PathMatch::SegmentPrefix("/".into()).matches("/anything"));
        assert!(PathMatch::Prefix("/foo".into()).matches("/foobar"));
    }

    #[test]
    fn header_exact_and_invert() {
        let mut headers = http::HeaderMap::new();
        headers.insert("end-user", "jason".parse().unwrap());
        let labels = BTreeMap::new();
        let jason = HttpMatch {
            headers: vec![HeaderMatch {
                name: "end-user".into(),
                value: Some(StringMatch::Exact("jason".into())),
                invert: false,
            }],
            ..Default::default()
        };
        assert!(jason.matches(&view("/", None, &headers, &labels)));
        let not_jason = HttpMatch {
            headers: vec![HeaderMatch {
                invert: true,
                ..jason.headers[0].clone()
            }],
            ..Default::default()
        };
        assert!(!not_jason.matches(&view("/", None, &headers, &labels)));
        let empty = http::HeaderMap::new();
        assert!(!jason.matches(&view("/", None, &empty, &labels)));
        assert!(not_jason.matches(&view("/", None, &empty, &labels)));
    }

    #[test]
    fn query_and_source_labels() {
        let headers = http::HeaderMap::new();
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "productpage".to_string());
        let m = HttpMatch {
            query: vec![QueryMatch {
                name: "debug".into(),
                value: Some(StringMatch::Exact("1".into())),
            }],
            source_labels: labels.clone(),
            ..Default::default()
        };
        assert!(m.matches(&view("/", Some("a=b&debug=1"), &headers, &labels)));
        assert!(!m.matches(&view("/", Some("debug=2"), &headers, &labels)));
        assert!(!m.matches(&view("/", None, &headers, &labels)));
        assert!(!m.matches(&view("/", Some("debug=1"), &headers, &BTreeMap::new())));
    }

    #[test]
    fn regex_round_trips_through_json() {
        let m = StringMatch::Regex(Regex::new("v[0-9]").unwrap());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"regex":"v[0-9]"}"#);
        assert_eq!(serde_json::from_str::<StringMatch>(&json).unwrap(), m);
        assert!(serde_json::from_str::<StringMatch>(r#"{"regex":"("}"#).is_err());
    }
}
