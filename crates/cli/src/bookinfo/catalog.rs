use std::net::SocketAddr;
use std::sync::OnceLock;

/// Bookinfo's namespace, as in Istio's `bookinfo.yaml` applied to `default`.
pub const NAMESPACE: &str = "default";
/// Every Bookinfo service serves port 9080 (`name: http`).
pub const SERVICE_PORT: u16 = 9080;

/// One of Bookinfo's four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Productpage,
    Details,
    Reviews,
    Ratings,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Details,
        Service::Ratings,
        Service::Reviews,
        Service::Productpage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Productpage => "productpage",
            Self::Details => "details",
            Self::Reviews => "reviews",
            Self::Ratings => "ratings",
        }
    }

    /// The ServiceAccount `bookinfo.yaml` gives the service's Deployments.
    pub fn service_account(self) -> &'static str {
        match self {
            Self::Productpage => "bookinfo-productpage",
            Self::Details => "bookinfo-details",
            Self::Reviews => "bookinfo-reviews",
            Self::Ratings => "bookinfo-ratings",
        }
    }

    /// The proxy's `--outbound-port` target for this service: `reviews.default:9080`.
    pub fn target(self) -> String {
        format!("{}.{NAMESPACE}:{SERVICE_PORT}", self.name())
    }

    /// The `host` header an app sends when it calls the service, as Istio's apps do.
    pub fn authority(self) -> String {
        format!("{}:{SERVICE_PORT}", self.name())
    }
}

/// The three versions of `reviews`: v1 shows no ratings, v2 black stars, v3 red stars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReviewsVersion {
    V1,
    V2,
    V3,
}

impl ReviewsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// The colour of the stars this version draws; `None` when it shows no ratings at all.
    pub fn star_color(self) -> Option<&'static str> {
        match self {
            Self::V1 => None,
            Self::V2 => Some("black"),
            Self::V3 => Some("red"),
        }
    }
}

/// One Bookinfo workload (a Deployment in `bookinfo.yaml`): what it serves and how it behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum App {
    Productpage,
    Details,
    Reviews(ReviewsVersion),
    Ratings,
}

/// Every workload the demo runs, one process-less app each.
pub const APPS: [App; 6] = [
    App::Details,
    App::Ratings,
    App::Reviews(ReviewsVersion::V1),
    App::Reviews(ReviewsVersion::V2),
    App::Reviews(ReviewsVersion::V3),
    App::Productpage,
];

impl App {
    pub fn service(self) -> Service {
        match self {
            Self::Productpage => Service::Productpage,
            Self::Details => Service::Details,
            Self::Reviews(_) => Service::Reviews,
            Self::Ratings => Service::Ratings,
        }
    }

    /// The `version` label.
    pub fn version(self) -> &'static str {
        match self {
            Self::Reviews(v) => v.as_str(),
            _ => "v1",
        }
    }

    /// The workload's name, as its Deployment is named: `reviews-v2`.
    pub fn workload_name(self) -> String {
        format!("{}-{}", self.service().name(), self.version())
    }

    /// The services this workload calls, each through an explicit outbound port of its sidecar.
    pub fn upstreams(self) -> &'static [Service] {
        match self {
            Self::Productpage => &[Service::Reviews, Service::Details],
            Self::Reviews(ReviewsVersion::V2 | ReviewsVersion::V3) => &[Service::Ratings],
            Self::Reviews(ReviewsVersion::V1) | Self::Details | Self::Ratings => &[],
        }
    }
}

/// Where an app reaches each upstream service: its sidecar's outbound port for that service.
///
/// Filled once, after the sidecar is ready (its ports are only known then); until an address is
/// set, calls to that service fail as "unavailable", exactly as when the upstream is down.
#[derive(Debug, Default)]
pub struct Upstreams {
    productpage: OnceLock<SocketAddr>,
    details: OnceLock<SocketAddr>,
    reviews: OnceLock<SocketAddr>,
    ratings: OnceLock<SocketAddr>,
}

impl Upstreams {
    fn slot(&self, service: Service) -> &OnceLock<SocketAddr> {
        match service {
            Service::Productpage => &self.productpage,
            Service::Details => &self.details,
            Service::Reviews => &self.reviews,
            Service::Ratings => &self.ratings,
        }
    }

    /// Records where `service` is reached; returns false if it was already set (an address
    /// never changes once an app has used it).
    pub fn set(&self, service: Service, addr: SocketAddr) -> bool {
        self.slot(service).set(addr).is_ok()
    }

    pub fn get(&self, service: Service) -> Option<SocketAddr> {
        self.slot(service).get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_match_bookinfo_yaml() {
        let names: Vec<String> = APPS.iter().map(|a| a.workload_name()).collect();
        assert_eq!(
            names,
            [
                "details-v1",
                "ratings-v1",
                "reviews-v1",
                "reviews-v2",
                "reviews-v3",
                "productpage-v1"
            ]
        );
        assert_eq!(
            App::Reviews(ReviewsVersion::V3).service().service_account(),
            "bookinfo-reviews"
        );
        assert_eq!(Service::Reviews.target(), "reviews.default:9080");
        assert_eq!(Service::Ratings.authority(), "ratings:9080");
    }

    #[test]
    fn only_v2_and_v3_call_ratings() {
        assert!(App::Reviews(ReviewsVersion::V1).upstreams().is_empty());
        assert_eq!(
            App::Reviews(ReviewsVersion::V2).upstreams(),
            &[Service::Ratings]
        );
        assert_eq!(
            App::Reviews(ReviewsVersion::V3).upstreams(),
            &[Service::Ratings]
        );
        assert_eq!(
            App::Productpage.upstreams(),
            &[Service::Reviews, Service::Details]
        );
    }

    #[test]
    fn star_colours_per_version() {
        assert_eq!(ReviewsVersion::V1.star_color(), None);
        assert_eq!(ReviewsVersion::V2.star_color(), Some("black"));
        assert_eq!(ReviewsVersion::V3.star_color(), Some("red"));
    }

    #[test]
    fn upstreams_are_set_once() {
        let up = Upstreams::default();
        assert_eq!(up.get(Service::Ratings), None);
        assert!(up.set(Service::Ratings, "127.0.0.1:1".parse().unwrap()));
        assert!(!up.set(Service::Ratings, "127.0.0.1:2".parse().unwrap()));
        assert_eq!(
            up.get(Service::Ratings),
            Some("127.0.0.1:1".parse().unwrap())
        );
    }
}
