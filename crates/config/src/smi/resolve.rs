//! Resolving a TrafficSplit's `spec.matches` against the HTTPRouteGroups of the config set.
//! Pure: the control plane (and `trellis validate`, through it) passes the groups in force.

use trellis_model::matching::HttpMatch;

use super::route_group::HttpRouteGroup;
use crate::error::{ConfigError, ResourceRef};
use crate::traffic::RouteSet;

/// One entry of `spec.matches`: an HTTPRouteGroup in the split's namespace and, optionally,
/// the names of the matches of it that apply (all of them when empty).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MatchRef {
    /// `spec.matches[i]`, for errors.
    pub field: String,
    pub group: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// A TrafficSplit with `spec.matches`, before its references are resolved. `routes` holds its
/// one HTTP route with no match blocks yet; it has no TCP route, since a split with matches
/// applies only to the HTTP requests they match.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MatchedSplit {
    pub routes: RouteSet,
    pub refs: Vec<MatchRef>,
}

/// The split's route set with its match blocks filled in from `groups`. The error names the
/// split's `file` and `document` and the reference at fault.
pub fn resolve(
    split: &MatchedSplit,
    groups: &[&HttpRouteGroup],
    file: &str,
    document: usize,
) -> Result<RouteSet, Box<ConfigError>> {
    let source = &split.routes.source;
    let fail = |field: String, message: String| {
        Box::new(ConfigError {
            file: file.to_string(),
            resource: ResourceRef {
                document,
                kind: Some(source.kind.clone()),
                namespace: Some(source.namespace.clone()),
                name: Some(source.name.clone()),
            },
            field: Some(field),
            message,
        })
    };
    let mut blocks: Vec<HttpMatch> = Vec::new();
    for r in &split.refs {
        let group = groups
            .iter()
            .find(|g| g.source.namespace == source.namespace && g.source.name == r.group)
            .ok_or_else(|| {
                fail(
                    format!("{}.name", r.field),
                    format!(
                        "HTTPRouteGroup {}/{} is not defined in the config set",
                        source.namespace, r.group
                    ),
                )
            })?;
        if r.names.is_empty() {
            blocks.extend(group.matches.iter().flat_map(|m| m.blocks.iter().cloned()));
            continue;
        }
        for (j, name) in r.names.iter().enumerate() {
            let m = group.find(name).ok_or_else(|| {
                let known: Vec<&str> = group.matches.iter().map(|m| m.name.as_str()).collect();
                fail(
                    format!("{}.matches[{j}]", r.field),
                    format!(
                        "{} has no match named {name:?} (it has: {})",
                        group.source,
                        known.join(", ")
                    ),
                )
            })?;
            blocks.extend(m.blocks.iter().cloned());
        }
    }
    let mut routes = split.routes.clone();
    for route in &mut routes.http {
        route.matches = blocks.clone();
    }
    Ok(routes)
}
