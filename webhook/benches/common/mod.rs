//! Shared by the webhook benches: the floor server (a minimal axum + rustls server that
//! parses the AdmissionReview and echoes its uid with `allowed: true`) and how both it and
//! the webhook are served.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, State};
use axum::routing::post;
use axum::{Json, Router};
use http::Version;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

/// What the floor saw: reviews by HTTP version and the distinct client connections.
#[derive(Debug, Default)]
pub struct FloorStats {
    pub http2: u64,
    pub http1: u64,
    pub peers: BTreeSet<SocketAddr>,
}

pub type SharedFloorStats = Arc<Mutex<FloorStats>>;

async fn floor(
    State(stats): State<SharedFloorStats>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    version: Version,
    review: Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    {
        let mut s = stats.lock().unwrap();
        if version == Version::HTTP_2 {
            s.http2 += 1;
        } else {
            s.http1 += 1;
        }
        s.peers.insert(peer);
    }
    match review.0.try_into() {
        Ok(req) => {
            let req: AdmissionRequest<DynamicObject> = req;
            Json(AdmissionResponse::from(&req).into_review())
        }
        Err(_) => Json(AdmissionResponse::invalid("no request").into_review()),
    }
}

/// The floor's router on `/validate/backups`, and what it counts.
pub fn floor_router() -> (Router, SharedFloorStats) {
    let stats = SharedFloorStats::default();
    let app = Router::new()
        .route("/validate/backups", post(floor))
        .with_state(stats.clone());
    (app, stats)
}

/// Serves `app` over TLS with `config` on 127.0.0.1 (a free port), with the peer address
/// available to handlers.
pub async fn serve(
    app: Router,
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, axum_server::Handle<SocketAddr>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(config),
    )
    .unwrap()
    .handle(handle.clone());
    tokio::spawn(async move {
        server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
    });
    (addr, handle)
}

/// The value after `name` on the command line (`--name value`), parsed.
pub fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].parse().ok())
}
