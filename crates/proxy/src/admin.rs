//! The admin server: `/live`, `/ready`, `/metrics`, `/config_dump`, `POST /shutdown` and the
//! `/tap` stream ([`crate::tap`]), over HTTP/1.1 on `--admin`.
//!
//! It keeps answering while the proxy drains (so `/ready` can say 503) and stops only when the
//! proxy exits. It reads state; the only thing it changes is starting the drain.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::discovery::Discovery;
use crate::telemetry::Metrics;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub discovery: Discovery,
    /// The validated config and bound listeners, fixed at startup.
    pub config: serde_json::Value,
    /// Set once every listener is bound and accepting.
    pub listening: AtomicBool,
    /// Cancelling it starts the drain.
    pub shutdown: CancellationToken,
    /// The workload certificate: readiness, `/config_dump` and TLS metrics.
    pub identity: Arc<crate::tls::MeshIdentity>,
    /// End-user authentication rules and key sets, for `/config_dump`.
    pub authn: Arc<crate::authn::Authenticator>,
    /// In gateway mode, the Gateway ports bound so far and where (`/config_dump`'s
    /// `gateway_listeners`): with `--gateway-port PORT=IP:0` it is the only place to learn them.
    pub gateway_listeners: crate::gateway::BoundListeners,
}

impl AdminState {
    /// `Ok` when ready (with a warning to show, e.g. a failing certificate renewal), else the
    /// reason.
    pub fn readiness(&self) -> Result<Option<String>, Cow<'static, str>> {
        if self.shutdown.is_cancelled() {
            return Err("draining".into());
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("listeners not bound".into());
        }
        let status = self.discovery.status();
        if status.enabled && status.identity.is_none() {
            return Err("waiting for the control plane to assign an identity".into());
        }
        self.identity.readiness().map_err(Cow::Owned)
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n".into()),
            (&Method::GET | &Method::HEAD, "/ready") => match self.readiness() {
                Ok(None) => text(StatusCode::OK, "ready\n".into()),
                Ok(Some(warning)) => text(StatusCode::OK, format!("ready; warning: {warning}\n")),
                Err(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {reason}\n"),
                ),
            },
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut out = String::with_capacity(8 * 1024);
                self.metrics.render(&mut out);
                self.identity.render(&mut out);
                self.metrics.tap.render(&mut out);
                self.metrics.authz.render(&mut out);
                self.metrics.wasm.render(&mut out);
                self.authn.render(&mut out);
                self.metrics.anomaly.render(&mut out);
                crate::resilience::health::render(&mut out);
                self.discovery.outbound_policy().render(&mut out);
                let out = self.metrics.overrides.apply(out);
                let mut resp = text(StatusCode::OK, out);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            (&Method::GET | &Method::HEAD, "/config_dump") => {
                let dump = serde_json::json!({
                    "proxy": self.config,
                    "identity": self.identity.status(),
                    "inbound_policy": &**self.identity.inbound_policy.load(),
                    "request_authentication": self.authn.dump(),
                    "authorization": self.metrics.authz.current(),
                    "wasm_plugins": self.metrics.wasm.dump(),
                    "gateway_listeners": &*crate::gateway::lock(&self.gateway_listeners),
                    // The mesh-wide defaults the control plane sent (MeshConfig, flags).
                    "mesh_defaults": {
                        "h2_upgrade_policy": self.discovery.mesh_h2_upgrade().as_str(),
                        "outbound_traffic_policy": if self.discovery.outbound_policy().registry_only() {
                            "REGISTRY_ONLY"
                        } else {
                            "ALLOW_ANY"
                        },
                    },
                    "discovery": {
                        "status": self.discovery.status(),
                        "dump": self.discovery.dump(),
                    },
                });
                let body = serde_json::to_string_pretty(&dump)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            (&Method::POST, "/shutdown") => {
                tracing::info!("shutdown requested through the admin server");
                self.shutdown.cancel();
                text(StatusCode::OK, "draining\n".into())
            }
            (_, "/shutdown") => {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
                resp
            }
            (_, "/live" | "/ready" | "/metrics" | "/config_dump" | "/tap") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into())
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Serves the admin endpoints until `stop` is cancelled (at exit, after the drain).
pub async fn run(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        let tap_stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                // `/tap` streams; every other endpoint answers in one piece.
                let resp = if req.uri().path() == "/tap" && req.method() == Method::GET {
                    crate::tap::serve::serve(&state.metrics.tap, req.uri().query(), &tap_stop)
                } else {
                    state.handle(&req).map(http_body_util::BodyExt::boxed)
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}
