//! A small HTTP/1 client on loopback, shared by the Bookinfo apps (calls to their sidecar's
//! outbound ports), the demo's readiness probes and its load generator.
//!
//! Every call has a deadline: a hung peer must never stall an app or the demo's shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request to {addr}{path}: {source}")]
    Build {
        addr: SocketAddr,
        path: String,
        source: http::Error,
    },
    #[error("GET http://{addr}{path}: {source}")]
    Send {
        addr: SocketAddr,
        path: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("GET http://{addr}{path}: reading the body: {source}")]
    Body {
        addr: SocketAddr,
        path: String,
        source: hyper::Error,
    },
    #[error("GET http://{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
}

/// A response read in full: loopback bodies here are small JSON or HTML documents.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            // Idle connections to a proxy that went away are dropped quickly, so a restarted
            // demo component is not hit with a stale connection.
            .pool_idle_timeout(Duration::from_secs(15))
            .build(connector);
        Self { inner }
    }

    /// `GET http://{addr}{path}` with `headers` (a `host` among them replaces the default
    /// `addr`), read in full within `timeout`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let mut builder = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request =
            builder
                .body(Full::new(Bytes::new()))
                .map_err(|source| ClientError::Build {
                    addr,
                    path: path.to_string(),
                    source,
                })?;
        let exchange = async {
            let response =
                self.inner
                    .request(request)
                    .await
                    .map_err(|source| ClientError::Send {
                        addr,
                        path: path.to_string(),
                        source,
                    })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|source| ClientError::Body {
                    addr,
                    path: path.to_string(),
                    source,
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    addr,
                    path: path.to_string(),
                    timeout,
                })
            })
    }
}
