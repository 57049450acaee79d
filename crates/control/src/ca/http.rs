//! The CA's JSON API on the control plane's HTTP listener: join tokens and anchor rotation.
//!
//! - `POST /api/v1/identity/join-tokens` `{"namespace","service_account","ttl_seconds"?}` ->
//!   `{"token"}`
//! - `GET /api/v1/identity` -> `{"anchors","rotation","issuer_generation","issued"}`
//! - `POST /api/v1/identity/rotate/{prepare|activate|retire}` -> the same status, or 409.
//!   `prepare` may bring the new CA as JSON keyed by Istio's `cacerts` file names,
//!   `{"root-cert.pem","ca-cert.pem","ca-key.pem","cert-chain.pem"?}` (PEM text): checked as the
//!   plug-in CA is, 400 naming the file when it is unusable (nothing changes). No body or `{}`:
//!   a generated root and issuer.
//!
//! The two POSTs change who the mesh trusts, so they answer only callers on this machine (this
//! network namespace: loopback, or a connection to the listener's own address from itself):
//! 403 for anyone else, even when the listener is on `0.0.0.0` as on Kubernetes (reach it with
//! `kubectl port-forward`, which arrives on loopback). Served through [`Origin`]; the reads stay
//! open to the dashboard and probes.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::plugged::PluggedPems;
use super::{CaState, RotationStep};

/// Serve the router with `into_make_service_with_connect_info::<Origin>()`: the identity
/// changes are refused (403) without it.
pub fn router(ca: Arc<CaState>) -> Router {
    let changes = Router::new()
        .route("/api/v1/identity/join-tokens", post(join_token))
        .route("/api/v1/identity/rotate/{step}", post(rotate))
        .route_layer(axum::middleware::from_fn(local_callers_only));
    Router::new()
        .route("/api/v1/identity", get(status))
        .merge(changes)
        .with_state(ca)
}

/// Where a connection to the HTTP listener came from, and the address it reached.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Origin {
    /// From this network namespace: a loopback peer, or a peer with the address the connection
    /// reached (a process calling its own pod's IP). Anything else came over the network.
    pub fn is_local(&self) -> bool {
        self.peer.ip().is_loopback() || self.local.is_some_and(|l| l.ip() == self.peer.ip())
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Origin {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self {
            peer: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// 403 unless the caller is on this machine; a router served without [`Origin`] refuses all.
async fn local_callers_only(request: Request, next: Next) -> Response {
    let origin = request
        .extensions()
        .get::<ConnectInfo<Origin>>()
        .map(|c| c.0);
    match origin {
        Some(origin) if origin.is_local() => next.run(request).await,
        _ => {
            let peer = origin.map_or_else(|| "unknown".to_string(), |o| o.peer.ip().to_string());
            tracing::warn!(%peer, path = %request.uri().path(), "identity change refused: not a local caller");
            (
                StatusCode::FORBIDDEN,
                "identity changes (join tokens, anchor rotation) are accepted from this machine only; on Kubernetes, use kubectl port-forward\n",
            )
                .into_response()
        }
    }
}

fn status_json(ca: &CaState) -> serde_json::Value {
    let s = ca.status();
    serde_json::json!({
        "anchors": s.anchors,
        "rotation": s.rotation,
        "issuer_generation": s.issuer_generation,
        "issued": ca.metrics.issued(),
    })
}

async fn status(State(ca): State<Arc<CaState>>) -> Json<serde_json::Value> {
    Json(status_json(&ca))
}

#[derive(Deserialize)]
struct TokenRequest {
    namespace: String,
    service_account: String,
    ttl_seconds: Option<u64>,
}

async fn join_token(State(ca): State<Arc<CaState>>, Json(req): Json<TokenRequest>) -> Response {
    let ttl = req.ttl_seconds.map(Duration::from_secs);
    match ca.join_token(&req.namespace, &req.service_account, ttl) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn rotate(State(ca): State<Arc<CaState>>, Path(step): Path<String>, body: Bytes) -> Response {
    let step = match step.as_str() {
        "prepare" => RotationStep::Prepare,
        "activate" => RotationStep::Activate,
        "retire" => RotationStep::Retire,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown step {other:?} (prepare, activate, retire)"),
            )
                .into_response();
        }
    };
    // An empty body is what callers sent before a CA could be brought: the generated path.
    let pems = if body.iter().all(u8::is_ascii_whitespace) {
        PluggedPems::default()
    } else {
        match serde_json::from_slice::<PluggedPems>(&body) {
            Ok(pems) => pems,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("the request body: {e}")).into_response();
            }
        }
    };
    let result = if pems.is_empty() {
        ca.rotate(step)
    } else if step != RotationStep::Prepare {
        return (
            StatusCode::BAD_REQUEST,
            "only prepare takes a CA (root-cert.pem, ca-cert.pem, ca-key.pem)",
        )
            .into_response();
    } else {
        // Checked before the rotation state is touched: a bad CA changes nothing.
        match pems.authority(ca.trust_domain()) {
            Ok(next) => ca.prepare_with(next),
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    };
    match result {
        Ok(_) => Json(status_json(&ca)).into_response(),
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}
