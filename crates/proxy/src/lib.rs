//! The Trellis data plane: the sidecar proxy's listeners, protocol detection, HTTP/1.1, HTTP/2
//! and opaque TCP forwarding, the admin server and metrics.
//!
//! Decisions (which protocol, which hop, which endpoint, which headers) are pure functions in
//! [`detect`], [`route`], [`balance`], [`split`], [`filters`], [`resilience`] and [`http`]
//! (route matching itself is `trellis_model`'s, shared with `trellis explain`); [`traffic`]
//! holds the per-destination plan built once per update; the rest adapts sockets to them. It must not
//! depend on kube or the control plane's crates; the control plane is reached only through
//! [`discovery`].
//!
//! Embedding: build a [`ProxyConfig`] (from [`args::RunArgs::validate`] or
//! [`ProxyConfig::local`]), then [`Proxy::start`] it and [`Proxy::wait`], or call [`run`], which
//! also drains on SIGTERM/SIGINT.

pub mod accesslog;
pub mod admin;
pub mod anomaly;
pub mod args;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod cli;
pub mod client;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod filters;
pub mod forward;
pub mod gateway;
pub mod http;
pub mod inbound;
pub mod init;
pub mod limits;
pub mod listen;
pub mod metric_overrides;
pub mod outbound;
pub mod proxy;
pub mod resident;
pub mod resilience;
pub mod route;
pub mod serve;
pub mod shutdown;
pub mod split;
pub mod tap;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod traffic;
pub mod transport;
pub mod wait_ready;
pub mod wasm;

pub use args::{Cli, Command, ConfigError, RunArgs};
pub use config::{LogFormat, OutboundPort, ProxyConfig};
pub use proxy::{BoundAddrs, Proxy, ProxyError};

/// Runs a proxy until SIGTERM, SIGINT or `POST /shutdown`, then drains and returns.
pub async fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    let proxy = Proxy::start(config).await?;
    tokio::spawn(shutdown::on_signals(proxy.shutdown_token()));
    proxy.wait().await;
    Ok(())
}
