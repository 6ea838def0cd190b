//! Health, readiness (gated on every watch's initial list) and metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::AppState;
use crate::index::Kind;

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let waiting: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !state.index.synced(**k))
        .map(|k| k.as_str())
        .collect();
    let body = if !state.0.serving.load(std::sync::atomic::Ordering::Acquire) {
        "not ready: the admission listener is not serving\n".to_string()
    } else {
        format!(
            "not ready: initial list not indexed yet for {}\n",
            waiting.join(", ")
        )
    };
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.refresh_throttle_metrics();
    let body = state.metrics.encode(&state.index);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
