//! The HTTP layer: thin translation between AdmissionReviews and [`crate::decision`].
//! `router` serves the admission endpoints (over TLS), `ops_router` health, readiness and
//! metrics (plain HTTP, separate port).

mod mutate;
mod ops;
mod review;
mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::index::Index;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::snapshot_source::SnapshotSource;

pub use review::{Review, ReviewRejection};

/// What every handler shares.
pub struct Shared {
    pub policy: Arc<Policy>,
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    pub snapshots: Arc<dyn SnapshotSource>,
    /// Bounds reviews processed at once.
    pub permits: Semaphore,
    /// Set once the admission listener is bound; cleared at shutdown.
    pub serving: AtomicBool,
}

/// Cheap-to-clone handle on [`Shared`].
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl AppState {
    pub fn new(
        policy: Arc<Policy>,
        index: Arc<Index>,
        metrics: Arc<Metrics>,
        snapshots: Arc<dyn SnapshotSource>,
    ) -> Self {
        let permits = Semaphore::new(policy.max_concurrent_reviews);
        Self(Arc::new(Shared {
            policy,
            index,
            metrics,
            snapshots,
            permits,
            serving: AtomicBool::new(false),
        }))
    }

    pub fn set_serving(&self, serving: bool) {
        self.0.serving.store(serving, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.serving.load(Ordering::Acquire) && self.0.index.all_synced()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// `/validate/backups` and `/mutate/backups`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate/backups", post(validate::validate_backup))
        .route("/mutate/backups", post(mutate::mutate_backup))
        .with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

#[cfg(test)]
mod tests;
