//! Health, readiness (every kind of the index listed and its watch not failing past the
//! staleness bound) and metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::AppState;
use crate::index::{Kind, Trust};

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    if !state.0.serving.load(std::sync::atomic::Ordering::Acquire) {
        let body = "not ready: the admission listener is not serving\n";
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let mut listing = Vec::new();
    let mut stale = Vec::new();
    for kind in Kind::ALL {
        match state.index.trust(kind) {
            Trust::Listing { .. } => listing.push(kind.as_str()),
            Trust::Stale { failing_ms } => stale.push(format!(
                "{} (watch failing for {:.1} s)",
                kind.as_str(),
                failing_ms as f64 / 1000.0
            )),
            Trust::Trusted { .. } => {}
        }
    }
    match state.node_verdicts.trust(state.index.staleness()) {
        Trust::Listing { .. } => listing.push("node-verdict leases"),
        Trust::Stale { failing_ms } => stale.push(format!(
            "node-verdict leases (watch failing for {:.1} s)",
            failing_ms as f64 / 1000.0
        )),
        Trust::Trusted { .. } => {}
    }
    let mut parts = Vec::new();
    if !listing.is_empty() {
        parts.push(format!("list not indexed yet for {}", listing.join(", ")));
    }
    if !stale.is_empty() {
        parts.push(format!(
            "index stale for {} (staleness bound {} ms, policy indexStalenessMs)",
            stale.join(", "),
            state.index.staleness().as_millis()
        ));
    }
    let body = format!("not ready: {}\n", parts.join("; "));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.refresh_throttle_metrics();
    state.metrics.node_verdicts.refresh(&state.node_verdicts);
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
