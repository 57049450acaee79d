//! Bookinfo's answers as pure functions: which route a path names, and the JSON and HTML each
//! service answers. No sockets here; `server` does the calls and feeds the results in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::catalog::ReviewsVersion;

/// Request headers an app copies onto the calls it makes, so that routing by user (Istio's
/// `end-user: jason` rule) and tracing work across hops: W3C trace context and B3 (single and
/// multi), as Istio's Bookinfo forwards them.
pub const FORWARDED_HEADERS: [&str; 10] = [
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// A request path Bookinfo knows. The query string is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    ProductPage,
    Products,
    Product(u32),
    ProductReviews(u32),
    Details(u32),
    Reviews(u32),
    Ratings(u32),
}

impl Route {
    pub fn parse(path: &str) -> Option<Route> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let id = |s: &str| s.parse::<u32>().ok();
        match segments.as_slice() {
            ["health"] => Some(Route::Health),
            ["productpage"] => Some(Route::ProductPage),
            ["api", "v1", "products"] => Some(Route::Products),
            ["api", "v1", "products", n] => id(n).map(Route::Product),
            ["api", "v1", "products", n, "reviews"] => id(n).map(Route::ProductReviews),
            ["details", n] => id(n).map(Route::Details),
            ["reviews", n] => id(n).map(Route::Reviews),
            ["ratings", n] => id(n).map(Route::Ratings),
            _ => None,
        }
    }
}

/// The headers of `incoming` to copy onto an upstream call (see [`FORWARDED_HEADERS`]).
pub fn forwarded_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        for value in incoming.get_all(name) {
            out.append(name, value.clone());
        }
    }
    out
}

/// `GET /details/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    pub id: u32,
    pub author: String,
    pub year: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub pages: u32,
    pub publisher: String,
    pub language: String,
    #[serde(rename = "ISBN-10")]
    pub isbn_10: String,
    #[serde(rename = "ISBN-13")]
    pub isbn_13: String,
}

pub fn details(id: u32) -> Details {
    Details {
        id,
        author: "William Shakespeare".into(),
        year: 1595,
        kind: "paperback".into(),
        pages: 200,
        publisher: "PublisherA".into(),
        language: "English".into(),
        isbn_10: "1234567890".into(),
        isbn_13: "123-1234567890".into(),
    }
}

/// `GET /ratings/{id}`: stars per reviewer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ratings {
    pub id: u32,
    pub ratings: BTreeMap<String, u8>,
}

pub fn ratings(id: u32) -> Ratings {
    let ratings = REVIEWS
        .iter()
        .map(|(reviewer, _, stars)| (reviewer.to_string(), *stars));
    Ratings {
        id,
        ratings: ratings.collect(),
    }
}

/// One review, with its rating when the reviews version shows ratings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub reviewer: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stars: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /reviews/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviews {
    pub id: u32,
    /// The answering workload's version: what a caller shows as `reviews_version`.
    pub version: String,
    /// The answering workload, as Istio's sample reports its pod.
    pub podname: String,
    pub ratings_available: bool,
    pub reviews: Vec<Review>,
}

/// What a reviews workload learned from ratings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RatingsOutcome {
    /// v1 does not ask.
    NotAsked,
    /// The call failed: shown as an error on each review, never as a failed answer.
    Unavailable,
    Answered(Ratings),
}

const REVIEWS: [(&str, &str, u8); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
        5,
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
        4,
    ),
];

pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

pub fn reviews(
    id: u32,
    version: ReviewsVersion,
    podname: &str,
    outcome: &RatingsOutcome,
) -> Reviews {
    let color = version.star_color();
    let rating = |reviewer: &str| -> Option<Rating> {
        let color = color?;
        Some(match outcome {
            RatingsOutcome::Answered(r) => match r.ratings.get(reviewer) {
                Some(stars) => Rating {
                    stars: Some(*stars),
                    color: Some(color.into()),
                    error: None,
                },
                None => Rating {
                    stars: None,
                    color: None,
                    error: Some("no rating".into()),
                },
            },
            RatingsOutcome::NotAsked | RatingsOutcome::Unavailable => Rating {
                stars: None,
                color: None,
                error: Some(RATINGS_UNAVAILABLE.into()),
            },
        })
    };
    let reviews = REVIEWS
        .iter()
        .map(|(reviewer, text, _)| Review {
            reviewer: reviewer.to_string(),
            text: text.to_string(),
            rating: rating(reviewer),
        })
        .collect();
    Reviews {
        id,
        version: version.as_str().into(),
        podname: podname.into(),
        ratings_available: color.is_some() && matches!(outcome, RatingsOutcome::Answered(_)),
        reviews,
    }
}

/// `GET /api/v1/products/{id}/reviews` at productpage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductReviews {
    pub id: u32,
    pub reviews_version: String,
    pub ratings_available: bool,
    pub reviews: Vec<Review>,
}

pub fn product_reviews(id: u32, from: Reviews) -> ProductReviews {
    ProductReviews {
        id,
        reviews_version: from.version,
        ratings_available: from.ratings_available,
        reviews: from.reviews,
    }
}

/// The body productpage answers when it cannot serve a part of the page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";

/// `GET /api/v1/products`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: u32,
    pub title: String,
    #[serde(rename = "descriptionHtml")]
    pub description_html: String,
}

pub fn products() -> Vec<Product> {
    vec![Product {
        id: 0,
        title: "The Comedy of Errors".into(),
        description_html: "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies.".into(),
    }]
}

/// `GET /productpage`: a small page from whatever details and reviews answered.
pub fn product_page_html(
    details: Option<&Details>,
    reviews: Option<&Reviews>,
    user: Option<&str>,
) -> String {
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head><body>\n<h1>The Comedy of Errors</h1>\n",
    );
    if let Some(user) = user {
        let _ = writeln!(html, "<p>Signed in as <b>{}</b></p>", escape(user));
    }
    html.push_str("<h2>Book Details</h2>\n");
    match details {
        Some(d) => {
            let _ = writeln!(
                html,
                "<dl><dt>Type</dt><dd>{}</dd><dt>Pages</dt><dd>{}</dd><dt>Publisher</dt><dd>{}</dd><dt>Language</dt><dd>{}</dd><dt>ISBN-10</dt><dd>{}</dd><dt>ISBN-13</dt><dd>{}</dd></dl>",
                escape(&d.kind),
                d.pages,
                escape(&d.publisher),
                escape(&d.language),
                escape(&d.isbn_10),
                escape(&d.isbn_13),
            );
        }
        None => {
            let _ = writeln!(html, "<p>{DETAILS_UNAVAILABLE}</p>");
        }
    }
    html.push_str("<h2>Book Reviews</h2>\n");
    match reviews {
        Some(r) => {
            let _ = writeln!(html, "<p>Served by reviews {}</p>", escape(&r.version));
            for review in &r.reviews {
                let _ = write!(
                    html,
                    "<blockquote><p>{}</p><footer>{}</footer>",
                    escape(&review.text),
                    escape(&review.reviewer)
                );
                if let Some(rating) = &review.rating {
                    match (rating.stars, &rating.color) {
                        (Some(stars), Some(color)) => {
                            let _ = write!(
                                html,
                                "<p style=\"color:{}\" aria-label=\"{stars} of 5 stars\">{}{}</p>",
                                escape(color),
                                "★".repeat(usize::from(stars.min(5))),
                                "☆".repeat(usize::from(5 - stars.min(5)))
                            );
                        }
                        _ => {
                            let error = rating.error.as_deref().unwrap_or(RATINGS_UNAVAILABLE);
                            let _ = write!(html, "<p>{}</p>", escape(error));
                        }
                    }
                }
                html.push_str("</blockquote>\n");
            }
        }
        None => {
            let _ = writeln!(html, "<p>{REVIEWS_UNAVAILABLE}</p>");
        }
    }
    html.push_str("</body></html>\n");
    html
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn parses_routes() {
        assert_eq!(Route::parse("/health"), Some(Route::Health));
        assert_eq!(
            Route::parse("/productpage?u=normal"),
            Some(Route::ProductPage)
        );
        assert_eq!(Route::parse("/api/v1/products"), Some(Route::Products));
        assert_eq!(Route::parse("/api/v1/products/0"), Some(Route::Product(0)));
        assert_eq!(
            Route::parse("/api/v1/products/7/reviews"),
            Some(Route::ProductReviews(7))
        );
        assert_eq!(
            Route::parse("/api/v1/products/7/reviews/"),
            Some(Route::ProductReviews(7))
        );
        assert_eq!(Route::parse("/details/3"), Some(Route::Details(3)));
        assert_eq!(Route::parse("/reviews/0"), Some(Route::Reviews(0)));
        assert_eq!(Route::parse("/ratings/12"), Some(Route::Ratings(12)));
    }

    #[test]
    fn rejects_unknown_routes() {
        for bad in [
            "/",
            "/reviews",
            "/reviews/x",
            "/reviews/-1",
            "/api/v1/products/0/x",
            "/ratings/1/2",
        ] {
            assert_eq!(Route::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwards_only_the_agreed_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("end-user", HeaderValue::from_static("jason"));
        incoming.insert("x-request-id", HeaderValue::from_static("abc"));
        incoming.insert("traceparent", HeaderValue::from_static("00-1-2-01"));
        incoming.insert("cookie", HeaderValue::from_static("secret"));
        let out = forwarded_headers(&incoming);
        assert_eq!(out.len(), 3);
        assert_eq!(out["end-user"], "jason");
        assert!(out.get("cookie").is_none());
    }

    #[test]
    fn v1_shows_no_ratings() {
        let r = reviews(
            0,
            ReviewsVersion::V1,
            "reviews-v1",
            &RatingsOutcome::NotAsked,
        );
        assert_eq!(r.version, "v1");
        assert!(!r.ratings_available);
        assert!(r.reviews.iter().all(|review| review.rating.is_none()));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["version"], "v1");
        assert!(json["reviews"][0].get("rating").is_none());
    }

    #[test]
    fn v2_black_and_v3_red_stars() {
        for (version, color) in [(ReviewsVersion::V2, "black"), (ReviewsVersion::V3, "red")] {
            let r = reviews(0, version, "w", &RatingsOutcome::Answered(ratings(0)));
            assert!(r.ratings_available);
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(
                json["reviews"][0]["rating"],
                serde_json::json!({"stars": 5, "color": color})
            );
            assert_eq!(json["reviews"][1]["rating"]["stars"], 4);
        }
    }

    #[test]
    fn ratings_failure_is_not_an_error() {
        let r = reviews(0, ReviewsVersion::V3, "w", &RatingsOutcome::Unavailable);
        assert!(!r.ratings_available);
        assert_eq!(r.reviews.len(), 2);
        let rating = r.reviews[0].rating.as_ref().unwrap();
        assert_eq!(rating.error.as_deref(), Some(RATINGS_UNAVAILABLE));
    }

    #[test]
    fn product_reviews_shape() {
        let from = reviews(
            3,
            ReviewsVersion::V2,
            "w",
            &RatingsOutcome::Answered(ratings(3)),
        );
        let json = serde_json::to_value(product_reviews(3, from)).unwrap();
        assert_eq!(json["id"], 3);
        assert_eq!(json["reviews_version"], "v2");
        assert_eq!(json["ratings_available"], true);
        assert_eq!(json["reviews"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn details_shape() {
        let json = serde_json::to_value(details(0)).unwrap();
        assert_eq!(json["type"], "paperback");
        assert_eq!(json["ISBN-10"], "1234567890");
        let back: Details = serde_json::from_value(json).unwrap();
        assert_eq!(back, details(0));
    }

    #[test]
    fn page_escapes_and_degrades() {
        let html = product_page_html(None, None, Some("<jason>"));
        assert!(html.contains("&lt;jason&gt;"));
        assert!(html.contains(DETAILS_UNAVAILABLE));
        assert!(html.contains(REVIEWS_UNAVAILABLE));
        let r = reviews(
            0,
            ReviewsVersion::V3,
            "w",
            &RatingsOutcome::Answered(ratings(0)),
        );
        let html = product_page_html(Some(&details(0)), Some(&r), None);
        assert!(html.contains("color:red"));
        assert!(html.contains("★★★★★"));
    }
}
