//! A connection's memo of the request series it recorded last, so that a request whose labels
//! come from the same places as the previous one's (the same destination, route and endpoint,
//! the same caller) finds its series with a few pointer comparisons instead of hashing its
//! label strings and searching the registry under a lock.
//!
//! The memo compares what the labels are made of, not the labels: the `Arc`s the forwarder
//! hands on in [`Upstream`] by identity, the caller's headers by bytes. It holds clones of
//! them, so none of the compared pointers can be freed and reused while the memo lives. A
//! series is never dropped from the registry, so a memoized one stays the right one. One memo
//! serves one connection of one [`super::exchange::Telemetry`] (the proxy's own workload, the
//! other half of the labels, is fixed there). It must not make or render series.

use std::sync::{Arc, Mutex, TryLockError};

use http::HeaderValue;
use trellis_model::Destination;

use super::Direction;
use super::exchange::Upstream;
use super::requests::Series;
use crate::balance::EndpointState;
use crate::tls::PeerIdentity;

/// What one request's labels are made of, borrowed from its exchange and response.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sources<'a> {
    pub direction: Direction,
    pub upstream: Option<&'a Upstream>,
    pub source_workload: Option<&'a HeaderValue>,
    pub source_namespace: Option<&'a HeaderValue>,
    pub peer_identity: Option<&'a PeerIdentity>,
}

/// [`Sources`], held.
#[derive(Debug)]
struct Held {
    direction: Direction,
    destination: Option<Arc<Destination>>,
    route: Option<Arc<str>>,
    endpoint: Option<Arc<EndpointState>>,
    tls: bool,
    source_workload: Option<HeaderValue>,
    source_namespace: Option<HeaderValue>,
    peer_identity: Option<PeerIdentity>,
}

fn same<T: ?Sized>(held: &Option<Arc<T>>, now: Option<&Arc<T>>) -> bool {
    match (held, now) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn same_bytes(held: &Option<HeaderValue>, now: Option<&HeaderValue>) -> bool {
    held.as_ref().map(HeaderValue::as_bytes) == now.map(HeaderValue::as_bytes)
}

impl Held {
    fn of(s: &Sources<'_>) -> Self {
        let up = s.upstream;
        Self {
            direction: s.direction,
            destination: up.and_then(|u| u.destination.clone()),
            route: up.and_then(|u| u.route.clone()),
            endpoint: up.and_then(|u| u.endpoint.clone()),
            tls: up.is_some_and(|u| u.tls),
            source_workload: s.source_workload.cloned(),
            source_namespace: s.source_namespace.cloned(),
            peer_identity: s.peer_identity.cloned(),
        }
    }

    fn matches(&self, s: &Sources<'_>) -> bool {
        let up = s.upstream;
        self.direction == s.direction
            && same(&self.destination, up.and_then(|u| u.destination.as_ref()))
            && same(&self.route, up.and_then(|u| u.route.as_ref()))
            && same(&self.endpoint, up.and_then(|u| u.endpoint.as_ref()))
            && self.tls == up.is_some_and(|u| u.tls)
            && same_bytes(&self.source_workload, s.source_workload)
            && same_bytes(&self.source_namespace, s.source_namespace)
            // The connection's identity is one `Arc` for all its requests; equal text from
            // elsewhere is the same label too.
            && match (&self.peer_identity, s.peer_identity) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0) || a.0 == b.0,
                _ => false,
            }
    }
}

/// The last series one connection recorded in, with what its labels were made of.
#[derive(Debug, Default)]
pub struct SeriesMemo {
    last: Mutex<Option<(Held, Arc<Series>)>>,
}

impl SeriesMemo {
    /// The series for `sources`: the memoized one when they match, else `lookup`'s answer,
    /// which is memoized. Concurrent requests of one HTTP/2 connection do not wait for each
    /// other: one that finds the memo busy looks up without it.
    pub(super) fn series(
        &self,
        sources: &Sources<'_>,
        lookup: impl FnOnce() -> Arc<Series>,
    ) -> Arc<Series> {
        let mut last = match self.last.try_lock() {
            Ok(guard) => guard,
            // A panic while held cannot tear an `Option` assignment; keep using it.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return lookup(),
        };
        if let Some((held, series)) = &*last
            && held.matches(sources)
        {
            return series.clone();
        }
        let series = lookup();
        *last = Some((Held::of(sources), series.clone()));
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::requests::{Peer, RequestLabels, RequestRegistry};

    fn labels(route: &str) -> RequestLabels<'_> {
        RequestLabels {
            direction: Direction::Inbound,
            source: Peer::default(),
            destination: Peer::default(),
            destination_service: "",
            route,
            tls: false,
        }
    }

    /// Looks `up` up through `memo`, counting the registry lookups it falls back to.
    fn series(
        memo: &SeriesMemo,
        registry: &RequestRegistry,
        lookups: &mut usize,
        sources: &Sources<'_>,
    ) -> Arc<Series> {
        let route = sources
            .upstream
            .and_then(|u| u.route.as_deref())
            .unwrap_or("");
        memo.series(sources, || {
            *lookups += 1;
            registry.series(&labels(route))
        })
    }

    #[test]
    fn a_request_from_the_same_sources_reuses_the_series_and_others_look_up() {
        let registry = RequestRegistry::new();
        let memo = SeriesMemo::default();
        let workload = HeaderValue::from_static("productpage-v1");
        let id = PeerIdentity(Arc::from(
            "spiffe://cluster.local/ns/default/sa/productpage",
        ));
        let other_id = PeerIdentity(Arc::from("spiffe://cluster.local/ns/default/sa/other"));
        let up = |route: &str| Upstream {
            route: Some(Arc::from(route)),
            ..Upstream::default()
        };
        let (r1, r1_again) = (up("r1"), up("r1"));
        let sources = |up, id| Sources {
            direction: Direction::Inbound,
            upstream: Some(up),
            source_workload: Some(&workload),
            source_namespace: None,
            peer_identity: id,
        };
        let mut n = 0;
        let a = series(&memo, &registry, &mut n, &sources(&r1, Some(&id)));
        let b = series(&memo, &registry, &mut n, &sources(&r1, Some(&id)));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(n, 1);
        // Equal text in another `Arc` is another source: looked up, and the same series.
        let c = series(&memo, &registry, &mut n, &sources(&r1_again, Some(&id)));
        assert!(Arc::ptr_eq(&a, &c));
        series(
            &memo,
            &registry,
            &mut n,
            &sources(&r1_again, Some(&other_id)),
        );
        series(&memo, &registry, &mut n, &sources(&r1_again, None));
        assert_eq!(n, 4);
    }

    #[test]
    fn a_different_caller_header_is_a_different_source() {
        let memo = SeriesMemo::default();
        let registry = RequestRegistry::new();
        let (a, b) = (HeaderValue::from_static("a"), HeaderValue::from_static("b"));
        let sources = |w| Sources {
            direction: Direction::Inbound,
            upstream: None,
            source_workload: Some(w),
            source_namespace: None,
            peer_identity: None,
        };
        let mut n = 0;
        for w in [&a, &a, &b, &b, &a] {
            series(&memo, &registry, &mut n, &sources(w));
        }
        assert_eq!(n, 3);
    }
}
