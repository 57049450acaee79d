//! The web dashboard: a static page, its script and its stylesheet, embedded in the binary
//! with `include_str!` and served by [`router`].
//!
//! The control plane merges [`router`] into its HTTP server; the page itself reads the control
//! plane's JSON API from the browser every 2 s: the service graph (`/api/v1/graph`), proxies
//! and their config state (`/api/v1/proxies`), routes and time series, the config
//! (`/api/v1/config`), services and workloads, and streams `/api/v1/tap` for the live tap (see
//! docs/dashboard.md). This crate owns no data and must not need Node or a network at build
//! time: the assets are hand-written files under `assets/`. Its routes (`/` and `/assets/*`)
//! must not overlap the control plane's (`/api`, `/metrics`, `/live`, `/ready`), since axum
//! refuses overlapping routes when merging.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page at `/`.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// `/assets/dashboard.js`.
pub const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
/// `/assets/dashboard.css`.
pub const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// Where the page finds its script and stylesheet.
pub const JS_PATH: &str = "/assets/dashboard.js";
pub const CSS_PATH: &str = "/assets/dashboard.css";

/// Only this origin may be fetched or run: the page needs nothing else, so injected markup
/// (should any get past the script's textContent-only rendering) can load nothing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Routes for `/` and the dashboard's assets.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            JS_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary, not over its life, but a browser holding an old copy
    // across an upgrade would show a page that no longer matches the API: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> (StatusCode, String, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets() {
        let (status, content_type, page) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/html"));
        assert!(page.contains(JS_PATH) && page.contains(CSS_PATH));

        let (status, content_type, js) = get(JS_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/javascript"));
        for api in [
            "/api/v1/graph",
            "/api/v1/proxies",
            "/api/v1/routes",
            "/api/v1/tap",
            "/api/v1/services",
            "/api/v1/workloads",
            "/api/v1/config",
        ] {
            assert!(js.contains(api), "the script reads {api}");
        }

        let (status, content_type, css) = get(CSS_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/css"));
        assert!(css.contains("prefers-color-scheme: dark"));
    }

    #[test]
    fn page_is_accessible_markup() {
        // Semantic tables, each with a caption and column headers; a live region announcing
        // refreshes; a labelled graph; and a section (with a body the script fills) for each
        // part of the page.
        let tables = INDEX_HTML.matches("<table>").count();
        assert_eq!(tables, 7);
        assert_eq!(INDEX_HTML.matches("<caption>").count(), tables);
        assert_eq!(
            INDEX_HTML.matches("<th ").count(),
            INDEX_HTML.matches("<th scope=\"col\">").count()
        );
        assert!(INDEX_HTML.contains("<html lang=\"en\">"));
        assert!(INDEX_HTML.contains("aria-live=\"polite\""));
        assert!(INDEX_HTML.contains("id=\"graph-svg\" role=\"group\" aria-label="));
        for id in [
            "edges-body",
            "proxies-body",
            "routes-body",
            "tap-body",
            "config-body",
            "services-body",
            "workloads-body",
        ] {
            assert!(INDEX_HTML.contains(id), "{id}");
            assert!(DASHBOARD_JS.contains(&id[..id.len() - 5]), "{id}");
        }
        // Graph nodes are reachable by keyboard and say what they are.
        for needle in [
            "tabindex: \"0\"",
            "\"aria-label\": label",
            "ev.key === \"Enter\"",
        ] {
            assert!(DASHBOARD_JS.contains(needle), "{needle}");
        }
    }

    #[test]
    fn script_never_writes_html() {
        assert!(!DASHBOARD_JS.contains(".innerHTML"));
        assert!(!DASHBOARD_JS.contains("document.write"));
    }

    #[tokio::test]
    async fn merges_with_the_control_planes_routes() {
        // axum panics on overlapping routes when merging: the host's paths must stay free.
        let host = Router::new()
            .route("/api/v1/services", axum::routing::get(|| async { "[]" }))
            .route("/metrics", axum::routing::get(|| async { "" }))
            .route("/live", axum::routing::get(|| async { "live" }))
            .route("/ready", axum::routing::get(|| async { "ready" }));
        let merged = host.merge(router());
        let request = Request::get("/").body(Body::empty()).unwrap();
        assert_eq!(
            merged.clone().oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
        let request = Request::get("/ready").body(Body::empty()).unwrap();
        assert_eq!(
            merged.oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_left_to_the_host() {
        let (status, _, _) = get("/assets/missing.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
