//! The HTTP layer: thin translation between AdmissionReviews and [`crate::decision`].
//! `router` serves the admission endpoints (over TLS), `ops_router` health, readiness and
//! metrics (plain HTTP, separate port).

mod leases;
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
use crate::policy::PolicyCell;
use crate::snapshot_source::SnapshotSource;
use crate::throttle::Throttle;

pub use review::{ParsedReview, ReviewRejection};

/// What every handler shares.
pub struct Shared {
    /// The policy in force (hot-reloaded); read it with [`AppState::policy`]. Limits fixed at
    /// start (`maxConcurrentReviews`) come from the policy loaded at start.
    pub policy: Arc<PolicyCell>,
    /// Throttling state of this replica: token buckets and reservations.
    pub throttle: Throttle,
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    pub snapshots: Arc<dyn SnapshotSource>,
    /// Bounds reviews processed at once.
    pub permits: Semaphore,
    /// Set once the admission listener is bound; cleared at shutdown.
    pub serving: AtomicBool,
    /// Engine-truth checks through the agents; unset when not configured.
    pub engine_truth: std::sync::OnceLock<Arc<crate::engine_truth::EngineTruth>>,
    /// The detected Longhorn release (`crate::version`); unknown until set.
    pub longhorn: Arc<crate::version::LonghornCell>,
    /// Where refused Backups go to become Events (`crate::events`); unset without a client.
    pub events: std::sync::OnceLock<crate::events::EventSink>,
    /// The nodes' leak verdicts (`crate::node_verdicts`), fed by their own watch.
    pub node_verdicts: Arc<crate::node_verdicts::NodeVerdicts>,
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
            policy: Arc::new(PolicyCell::new(policy)),
            throttle: Throttle::new(),
            index,
            metrics,
            snapshots,
            permits,
            serving: AtomicBool::new(false),
            engine_truth: std::sync::OnceLock::new(),
            longhorn: Arc::default(),
            events: std::sync::OnceLock::new(),
            node_verdicts: Arc::default(),
        }))
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.0.policy.get()
    }

    /// What the throttle judges with (`crate::throttle::admission`).
    pub fn throttle_inputs(&self) -> crate::throttle::admission::ThrottleInputs<'_> {
        crate::throttle::admission::ThrottleInputs {
            throttle: &self.throttle,
            index: &self.index,
            metrics: &self.metrics.throttle,
        }
    }

    /// Refreshes the scrape-time throttle and Backup figures of the metrics.
    pub fn refresh_throttle_metrics(&self) {
        let policy = self.policy();
        let now = crate::throttle::Now::system();
        let view = self.index.view();
        let namespaces: Vec<Arc<str>> = view.data().backups.namespaces().cloned().collect();
        let figures =
            crate::throttle::inflight::figures(&view, namespaces.iter().map(|n| &**n), now.unix);
        drop(view);
        // The cluster bucket is per namespace (one Longhorn install): one series each, for the
        // namespaces with Backups and those whose bucket is in use.
        let mut bucket_namespaces: std::collections::BTreeSet<Arc<str>> =
            namespaces.into_iter().collect();
        bucket_namespaces.extend(self.throttle.cluster_bucket_namespaces());
        let tokens: Vec<(Arc<str>, f64)> = bucket_namespaces
            .into_iter()
            .map(|ns| {
                let t = self.throttle.cluster_tokens(&policy.throttle, &ns, now.at);
                (ns, t)
            })
            .collect();
        self.metrics
            .throttle
            .refresh(&figures, &tokens, self.throttle.reservations());
        self.metrics
            .throttle
            .policy_generation
            .set(i64::try_from(self.0.policy.generation()).unwrap_or(i64::MAX));
    }

    pub fn set_serving(&self, serving: bool) {
        self.0.serving.store(serving, Ordering::Release);
    }

    /// Ready = the admission listener serves and every kind of the index, and the verdict
    /// Leases, can be trusted: listed, and the watch not failing for longer than the staleness
    /// bound (`crate::index::Trust`).
    pub fn is_ready(&self) -> bool {
        self.0.serving.load(Ordering::Acquire)
            && self.0.index.all_trusted()
            && self
                .0
                .node_verdicts
                .trust(self.0.index.staleness())
                .is_trusted()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// `/validate/backups`, `/mutate/backups` and `/validate/leases`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate/backups", post(validate::validate_backup))
        .route("/mutate/backups", post(mutate::mutate_backup))
        .route("/validate/leases", post(leases::validate_lease))
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
