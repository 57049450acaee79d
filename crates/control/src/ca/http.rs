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
//! The listener is loopback by default: whoever reaches it can mint tokens and rotate.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::plugged::PluggedPems;
use super::{CaState, RotationStep};

pub fn router(ca: Arc<CaState>) -> Router {
    Router::new()
        .route("/api/v1/identity", get(status))
        .route("/api/v1/identity/join-tokens", post(join_token))
        .route("/api/v1/identity/rotate/{step}", post(rotate))
        .with_state(ca)
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
