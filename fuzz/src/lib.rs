//! The checks behind the fuzz targets, as plain functions over bytes, so that the same check
//! runs under libFuzzer (`fuzz_targets/`, nightly) and as a stable `cargo test` over seeded
//! random inputs (each module's tests). One module per parser of untrusted input:
//!
//! - [`authz`]: authorization's path and principal matching against a regex oracle;
//! - [`detect`]: protocol detection over any bytes in any split into reads;
//! - [`http1_head`]: the proxy's HTTP/1 server (hyper with the proxy's head timer) and the head
//!   rewrites the proxy applies on top of it; and, on the same inputs, [`h1_response`]: the
//!   direct HTTP/1.1 client's response head and chunked body codec, and [`h1_request`]: the
//!   direct HTTP/1.1 server's request head codec;
//! - [`config`]: every config adapter, YAML in, model out;
//! - [`route`]: route selection against an independent first-match oracle;
//! - [`csr`]: the CA's CSR path: no panic, and never a leaf for another identity;
//! - [`jwt`]: JWT and JWKS parsing in the authn path: no panic, and no forged token accepted.
//!
//! A check panics (an assertion) only when the code under test is wrong; inputs the code
//! rightly refuses are not failures.

pub mod authz;
pub mod config;
pub mod csr;
pub mod detect;
pub mod h1_request;
pub mod h1_response;
pub mod http1_head;
pub mod input;
pub mod jwt;
pub mod route;

pub use authz::check_matching;
pub use config::check_config;
pub use csr::check_csr;
pub use detect::check_detect;
pub use h1_response::check_h1_response;
pub use http1_head::check_http1_head;
pub use jwt::check_jwt;
pub use route::check_route_matching;

/// One current-thread runtime per thread, reused across inputs: building one per input would
/// dominate the time of a fuzz run.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    thread_local! {
        static RUNTIME: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => panic!("cannot build a tokio runtime: {e}"),
            },
        ));
    }
    RUNTIME.with(|rt| *rt)
}
