//! Gateway API filters: header modifiers, redirect, URL rewrite, request mirror.

use serde::Deserialize;
use trellis_model::route::{
    HeaderModifier, Mirror, PathRewrite, Percent, Redirect, ResourceRef, Rewrite,
};

use super::{Backend, OtherNamespace, backend_ref, not_yet};
use crate::kube::FieldError;
use crate::traffic::port;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Filter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderFilter>,
    response_header_modifier: Option<HeaderFilter>,
    request_redirect: Option<RedirectFilter>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RewriteFilter>,
    request_mirror: Option<MirrorFilter>,
    extension_ref: Option<serde_yaml::Value>,
    cors: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFilter {
    #[serde(default)]
    set: Vec<NameValue>,
    #[serde(default)]
    add: Vec<NameValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathModifier {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedirectFilter {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<i64>,
    status_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteFilter {
    hostname: Option<String>,
    path: Option<PathModifier>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MirrorFilter {
    backend_ref: Backend,
    percent: Option<i64>,
    fraction: Option<Fraction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fraction {
    numerator: i64,
    denominator: Option<i64>,
}

fn header_filter(h: &HeaderFilter) -> HeaderModifier {
    let pairs = |v: &[NameValue]| {
        v.iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect()
    };
    HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
    }
}

fn path_modifier(field: &str, p: &PathModifier) -> Result<PathRewrite, FieldError> {
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(full), _) => Ok(PathRewrite::Full(full.clone())),
        ("ReplacePrefixMatch", _, Some(prefix)) => Ok(PathRewrite::Prefix(prefix.clone())),
        (kind, _, _) => Err(FieldError::new(
            field,
            format!(
                "type {kind:?} needs its value (ReplaceFullPath: replaceFullPath, ReplacePrefixMatch: replacePrefixMatch)"
            ),
        )),
    }
}

/// Route-level filters, applied to a route under construction.
#[derive(Default)]
pub(super) struct Filters {
    pub request_headers: HeaderModifier,
    pub response_headers: HeaderModifier,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
}

pub(super) fn filters(
    source: &ResourceRef,
    field: &str,
    list: &[Filter],
    grpc: bool,
) -> Result<Filters, FieldError> {
    let mut out = Filters::default();
    for (i, f) in list.iter().enumerate() {
        let ff = format!("{field}[{i}]");
        let missing = |key: &str| {
            FieldError::new(
                format!("{ff}.{key}"),
                format!("is required for type {}", f.kind),
            )
        };
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                out.request_headers = header_filter(
                    f.request_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("requestHeaderModifier"))?,
                );
            }
            "ResponseHeaderModifier" => {
                out.response_headers = header_filter(
                    f.response_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("responseHeaderModifier"))?,
                );
            }
            "RequestRedirect" if !grpc => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let status = match r.status_code {
                    None => 302,
                    Some(c @ (301 | 302)) => c as u16,
                    Some(c) => {
                        return Err(FieldError::new(
                            format!("{ff}.requestRedirect.statusCode"),
                            format!("must be 301 or 302, got {c}"),
                        ));
                    }
                };
                out.redirect = Some(Redirect {
                    scheme: r.scheme.clone(),
                    host: r.hostname.clone(),
                    port: r
                        .port
                        .map(|p| port(&format!("{ff}.requestRedirect.port"), p))
                        .transpose()?,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(&format!("{ff}.requestRedirect.path"), p))
                        .transpose()?,
                    status,
                });
            }
            "URLRewrite" if !grpc => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                out.rewrite = Some(Rewrite {
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(&format!("{ff}.urlRewrite.path"), p))
                        .transpose()?,
                    authority: r.hostname.clone(),
                });
            }
            "RequestMirror" => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                let pct = match (m.percent, &m.fraction) {
                    (Some(p), _) if (0..=100).contains(&p) => p as f64,
                    (Some(p), _) => {
                        return Err(FieldError::new(
                            format!("{ff}.requestMirror.percent"),
                            format!("must be 0-100, got {p}"),
                        ));
                    }
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den <= 0 || fr.numerator < 0 || fr.numerator > den {
                            return Err(FieldError::new(
                                format!("{ff}.requestMirror.fraction"),
                                "must have 0 <= numerator <= denominator, denominator > 0",
                            ));
                        }
                        fr.numerator as f64 * 100.0 / den as f64
                    }
                    (None, None) => 100.0,
                };
                out.mirrors.push(Mirror {
                    backend: backend_ref(
                        source,
                        &format!("{ff}.requestMirror.backendRef"),
                        &m.backend_ref,
                        OtherNamespace::Mirror,
                    )?,
                    percent: Percent(pct),
                });
            }
            other => {
                let _ = (&f.extension_ref, &f.cors);
                return Err(not_yet(format!("{ff}.type"), &format!("filter {other:?}")));
            }
        }
    }
    Ok(out)
}
