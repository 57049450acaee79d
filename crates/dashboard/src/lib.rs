//! The web dashboard: static assets embedded in the binary and the routes that serve them.
//!
//! INTERFACE CONTRACT (stub): the control plane merges `router()` into its HTTP server; the page
//! reads the control plane's JSON API (`/api/v1/...`) from the browser.

/// Routes for `/` and the dashboard's assets.
pub fn router() -> axum::Router {
    axum::Router::new()
}
