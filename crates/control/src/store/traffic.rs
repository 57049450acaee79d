//! Choosing among traffic resources: which routes and which DestinationRule apply to each
//! service, and what to tell the owners of the others. Pure; tested synchronously.
//!
//! Precedence (docs/traffic-config.md):
//! - Across API families routing one service: Gateway API (HTTPRoute, GRPCRoute) > Istio
//!   VirtualService > Linkerd ServiceProfile with SMI TrafficSplit. Resources of a losing
//!   family are `Conflicted` for that service.
//! - Gateway API: every route attached to the service applies; their matches are ordered by
//!   the spec's precedence (exact path, longest prefix, method, headers, query params), ties by
//!   the oldest resource, then namespace/name, then rule order.
//! - VirtualService: one per host, as Istio's sidecars do: the oldest (then first by
//!   namespace/name) wins; the others are `Conflicted`.
//! - ServiceProfile and TrafficSplit: one each per service (oldest, then by name); a profile's
//!   routes forward to the split when both exist, and the split's catch-all route follows
//!   them, as in Linkerd. TrafficSplits with `matches` (HTTPRouteGroups) all apply, each to the
//!   requests it matches, ahead of the profile's routes and the catch-all split.
//! - DestinationRule: one per host, the oldest (then by name) wins.

use std::collections::BTreeMap;

use trellis_config::gateway::precedence_key;
use trellis_config::traffic::{DestinationPolicy, Parent, PolicyLayer, RouteApi, RouteSet};
use trellis_model::ServiceKey;
use trellis_model::route::{BackendRef, HttpRoute, RouteAction, TcpRoute};

/// Where a resource came from: file and document index.
pub type EntryId = (String, usize);

/// A model route that applies to one service, with the port it is limited to.
#[derive(Clone, Debug, PartialEq)]
pub struct Attached<R> {
    /// `None`: every port of the service.
    pub port: Option<u16>,
    pub route: R,
}

/// The routes in force for one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRoutes {
    pub api: RouteApi,
    pub http: Vec<Attached<HttpRoute>>,
    pub tcp: Vec<Attached<TcpRoute>>,
    /// Policy the routing resources set for the service itself (ServiceProfile retryBudget).
    pub policy: PolicyLayer,
}

/// Routes and policies in force, by service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    pub routes: BTreeMap<ServiceKey, ServiceRoutes>,
    pub policies: BTreeMap<ServiceKey, DestinationPolicy>,
    /// Istio ServiceEntries in force, by host, with their DNS answers.
    pub service_entries: crate::compile::service_entry::ServiceEntries,
    /// Endpoints of linked clusters, fetched by `crate::multicluster` (empty without links).
    pub remote: crate::multicluster::RemoteServices,
}

/// What became of a traffic resource, beyond its translation notes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Services where it applies.
    pub won: usize,
    /// Services where another resource took precedence.
    pub lost: usize,
    pub messages: Vec<String>,
}

impl Verdict {
    /// Conflicted: it applies nowhere because others took precedence everywhere.
    pub fn conflicted(&self) -> bool {
        self.lost > 0 && self.won == 0
    }
}

/// Sort key for "oldest wins, then namespace/name": resources without a creation time (local
/// files) sort after dated ones and among themselves by name, then by file and document.
fn age_key<'a>(
    created: &'a Option<String>,
    source: &'a trellis_model::route::ResourceRef,
    id: &'a EntryId,
) -> impl Ord + 'a {
    (
        created.is_none(),
        created.as_deref(),
        &source.namespace,
        &source.name,
        id,
    )
}

/// Resolves precedence among route sets and destination policies.
pub fn resolve(
    routes: &[(EntryId, &RouteSet)],
    policies: &[(EntryId, &DestinationPolicy)],
    known: &dyn Fn(&ServiceKey) -> bool,
) -> (Traffic, BTreeMap<EntryId, Verdict>) {
    let mut verdicts: BTreeMap<EntryId, Verdict> = BTreeMap::new();
    let mut traffic = Traffic::default();

    // Destination policies: one per host.
    let mut by_host: BTreeMap<&ServiceKey, Vec<&(EntryId, &DestinationPolicy)>> = BTreeMap::new();
    for entry in policies {
        by_host.entry(&entry.1.host).or_default().push(entry);
    }
    for (host, mut entries) in by_host {
        entries.sort_by(|a, b| {
            age_key(&a.1.created, &a.1.source, &a.0).cmp(&age_key(&b.1.created, &b.1.source, &b.0))
        });
        let (winner_id, winner) = entries[0];
        verdicts.entry(winner_id.clone()).or_default().won += 1;
        for (id, _) in &entries[1..] {
            let v = verdicts.entry(id.clone()).or_default();
            v.lost += 1;
            v.messages.push(format!(
                "host {host} is already configured by {} (older, or first by namespace/name), which takes precedence",
                winner.source
            ));
        }
        traffic.policies.insert(host.clone(), (*winner).clone());
    }

    // Route sets, grouped by parent service.
    let mut by_service: BTreeMap<&ServiceKey, Vec<(&EntryId, &RouteSet, &Parent)>> =
        BTreeMap::new();
    for (id, set) in routes {
        for parent in &set.parents {
            by_service
                .entry(&parent.service)
                .or_default()
                .push((id, *set, parent));
        }
    }
    for (service, mut entries) in by_service {
        entries.sort_by(|a, b| {
            (a.1.api, age_key(&a.1.created, &a.1.source, a.0))
                .cmp(&(b.1.api, age_key(&b.1.created, &b.1.source, b.0)))
        });
        let family = match entries[0].1.api {
            RouteApi::TrafficSplit => RouteApi::ServiceProfile,
            api => api,
        };
        let same_family = |api: RouteApi| match family {
            RouteApi::ServiceProfile => {
                matches!(api, RouteApi::ServiceProfile | RouteApi::TrafficSplit)
            }
            f => api == f,
        };
        let winner_family = entries[0].1.source.kind.clone();
        let mut chosen: Vec<(&EntryId, &RouteSet, &Parent)> = Vec::new();
        for &(id, set, parent) in &entries {
            let lose = |verdicts: &mut BTreeMap<EntryId, Verdict>, why: String| {
                let v = verdicts.entry(id.clone()).or_default();
                v.lost += 1;
                v.messages.push(why);
            };
            if !same_family(set.api) {
                lose(
                    &mut verdicts,
                    format!(
                        "{service} is routed by {}: {winner_family} takes precedence over {}",
                        entries[0].1.source, set.source.kind
                    ),
                );
                continue;
            }
            // One VirtualService, one ServiceProfile and one TrafficSplit without `matches`
            // per service; TrafficSplits with `matches` each add their matching requests.
            let single = match set.api {
                RouteApi::Istio | RouteApi::ServiceProfile => true,
                RouteApi::TrafficSplit => !is_matched_split(set),
                RouteApi::GatewayApi => false,
            };
            if single
                && let Some((_, first, _)) = chosen
                    .iter()
                    .find(|c| c.1.api == set.api && !is_matched_split(c.1))
            {
                lose(
                    &mut verdicts,
                    format!(
                        "{service} is already routed by {} (older, or first by namespace/name), which takes precedence",
                        first.source
                    ),
                );
                continue;
            }
            verdicts.entry(id.clone()).or_default().won += 1;
            chosen.push((id, set, parent));
        }
        traffic
            .routes
            .insert(service.clone(), merge(family, &chosen));
    }

    // Backends the routes in force name that cannot resolve: reported, never silent.
    for (id, set) in routes {
        let Some(v) = verdicts.get_mut(id) else {
            continue;
        };
        if v.won == 0 {
            continue;
        }
        let mut seen: Vec<&BackendRef> = Vec::new();
        for b in named_backends(set) {
            if seen.contains(&b) {
                continue;
            }
            seen.push(b);
            if !known(&b.service) {
                v.messages.push(format!(
                    "backend {} is not a known Service: requests routed there get 503 (no endpoints)",
                    b.service
                ));
            } else if let Some(subset) = &b.subset {
                let defined = traffic
                    .policies
                    .get(&b.service)
                    .is_some_and(|p| p.subset(subset).is_some());
                if !defined {
                    v.messages.push(format!(
                        "subset {subset:?} of {} is not defined by any DestinationRule: requests routed there get 503 (no endpoints)",
                        b.service
                    ));
                }
            }
        }
    }
    (traffic, verdicts)
}

/// An SMI TrafficSplit with `matches`: its one route applies to matching requests only.
fn is_matched_split(set: &RouteSet) -> bool {
    set.api == RouteApi::TrafficSplit && set.http.iter().any(|r| !r.matches.is_empty())
}

/// Every backend a route set's routes and mirrors name.
pub fn named_backends(set: &RouteSet) -> impl Iterator<Item = &BackendRef> {
    let http = set.http.iter().flat_map(|r| {
        let forward = match &r.action {
            RouteAction::Forward(bs) => &bs[..],
            _ => &[],
        };
        forward
            .iter()
            .map(|b| &b.backend)
            .chain(r.mirrors.iter().map(|m| &m.backend))
    });
    let tcp = set
        .tcp
        .iter()
        .flat_map(|t| t.backends.iter().map(|b| &b.backend));
    http.chain(tcp)
}

fn merge(family: RouteApi, chosen: &[(&EntryId, &RouteSet, &Parent)]) -> ServiceRoutes {
    let mut out = ServiceRoutes {
        api: family,
        http: Vec::new(),
        tcp: Vec::new(),
        policy: PolicyLayer::default(),
    };
    for (_, set, parent) in chosen {
        let attach_http = set.http.iter().map(|r| Attached {
            port: parent.port,
            route: r.clone(),
        });
        out.http.extend(attach_http);
        out.tcp.extend(set.tcp.iter().map(|r| Attached {
            port: parent.port,
            route: r.clone(),
        }));
        if !set.policy.is_empty() {
            out.policy = set.policy.clone();
        }
    }
    match family {
        RouteApi::GatewayApi => {
            // Stable: ties keep the age/name/rule order `chosen` is already in.
            out.http
                .sort_by_key(|a| precedence_key(a.route.matches.first()));
        }
        RouteApi::ServiceProfile => {
            let split = chosen
                .iter()
                .find(|c| c.1.api == RouteApi::TrafficSplit && !is_matched_split(c.1))
                .and_then(|c| c.1.http.first())
                .map(|r| r.action.clone());
            let is_profile = |a: &Attached<HttpRoute>| a.route.source.kind == "ServiceProfile";
            if let Some(split) = split {
                // Profile routes forward to the split; the split's own catch-all stays last.
                for a in out.http.iter_mut().filter(|a| is_profile(a)) {
                    a.route.action = split.clone();
                }
            }
            // SMI: a split with `matches` takes the requests it matches, before anything else
            // (oldest first); then the profile's routes, then the catch-all split. Stable, so
            // each group keeps the age/name order `chosen` is in.
            out.http.sort_by_key(|a| {
                if is_profile(a) {
                    1
                } else if a.route.matches.is_empty() {
                    2
                } else {
                    0
                }
            });
        }
        RouteApi::Istio | RouteApi::TrafficSplit => {}
    }
    out
}
