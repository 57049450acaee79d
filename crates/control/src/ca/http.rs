//! The CA's JSON API on the control plane's HTTP listener: join tokens and anchor rotation.
//!
//! - `POST /api/v1/identity/join-tokens` `{"namespace","service_account","ttl_seconds"?}` ->
//!   `{"token"}`
//! - `GET /api/v1/identity` -> `{"anchors","rotation","issuer_generation","issued"}`
//! - `POST /api/v1/identity/rotate/{prepare|activate|retire}` -> the same status, or 409.
//!
//! The listener is loopback by default: whoever reaches it can mint tokens and rotate.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

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

async fn rotate(State(ca): State<Arc<CaState>>, Path(step): Path<String>) -> Response {
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
    match ca.rotate(step) {
        Ok(_) => Json(status_json(&ca)).into_response(),
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}
