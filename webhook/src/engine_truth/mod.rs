//! Engine-truth verification of a Backup's snapshot: after a power failure a Snapshot CR can
//! outlive the snapshot inside the volume's engine, and a Backup of it is doomed (Pending
//! forever, re-reconciled every ~30 s). When the Snapshot CR checks pass, the webhook asks the
//! agent on the node running the volume's active engine (`GetSnapshot` over mutual TLS)
//! whether the engine really has the snapshot, within a strict budget.
//!
//! Only a definite "absent" (with an otherwise non-empty chain) or "removed" from the engine
//! can deny, and only with policy `engineCheck: enforce`. Every other outcome — agent
//! unknown, unreachable, refusing our certificate, too slow, breaker open, too many checks in
//! flight — falls back to the CR decision with a warning "engine check skipped: …" and is
//! counted (`engine_checks_total{outcome}`). A check never runs past the review's deadline.
//!
//! This module must not open a channel per check (one lazily created channel per agent
//! address, evicted on transport errors and when idle), must not wait on an agent whose
//! breaker is open, and must not deny on anything but the engine's own answer.

pub mod breaker;
mod call;
pub mod channels;
pub mod config;
pub mod discovery;
pub mod metrics;
pub mod outcome;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::decision::{BackupRequest, Decision};
use crate::index::{Index, IndexView, SnapshotLookup};
use crate::policy::{EngineCheckMode, Policy};
use breaker::Breakers;
use channels::AgentChannels;

pub use config::{AgentDiscovery, DEFAULT_AGENT_SERVER_NAME, EngineTruthConfig};
pub use discovery::AgentDirectory;
pub use metrics::EngineCheckMetrics;
pub use outcome::{Finding, Outcome, apply, is_eligible};

/// Below this much time left there is no point in calling: the check is a timeout at once.
const MIN_BUDGET: Duration = Duration::from_millis(5);

/// What the index says about the engine to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupEngine {
    pub volume: String,
    pub engine: String,
    pub node: String,
    /// The Snapshot CR's `readyToUse`, when the index has the CR.
    pub cr_ready: Option<bool>,
}

/// The engine of the Backup's volume from the index: the active Engine (several during a
/// migration: the one on the Volume's node, then by name). `Err` says why there is none.
pub fn backup_engine(view: &IndexView<'_>, req: &BackupRequest) -> Result<BackupEngine, String> {
    let facts = match view.snapshot(&req.namespace, &req.snapshot) {
        SnapshotLookup::Indexed(f) | SnapshotLookup::Live(f) => Some(f),
        _ => None,
    };
    let cr_ready = match view.snapshot(&req.namespace, &req.snapshot) {
        SnapshotLookup::Indexed(f) => Some(f.ready_to_use),
        _ => None,
    };
    let volume = req
        .volume_label()
        .map(str::to_string)
        .or_else(|| facts.and_then(|f| f.volume))
        .ok_or_else(|| {
            format!(
                "the volume of Snapshot {:?} is unknown (no backup-volume label, Snapshot not indexed)",
                req.snapshot
            )
        })?;
    let volume_node = view
        .volume(&req.namespace, &volume)
        .and_then(|v| v.node.as_deref());
    let best = view
        .data()
        .engines
        .in_namespace(&req.namespace)
        .filter(|(_, e)| *e.volume == *volume)
        .max_by(|(an, a), (bn, b)| {
            (
                a.active,
                a.node.as_deref() == volume_node && volume_node.is_some(),
            )
                .cmp(&(
                    b.active,
                    b.node.as_deref() == volume_node && volume_node.is_some(),
                ))
                // Lower name wins a tie: `max_by` keeps the last maximum, so compare reversed.
                .then_with(|| bn.cmp(an))
        });
    let Some((engine, entry)) = best else {
        return Err(format!(
            "volume {volume:?} has no Engine in namespace {:?} in the index",
            req.namespace
        ));
    };
    let Some(node) = entry.node.as_deref() else {
        return Err(format!(
            "engine {engine:?} of volume {volume:?} is on no node (spec.nodeID empty: volume detached?)"
        ));
    };
    Ok(BackupEngine {
        volume,
        engine: engine.to_string(),
        node: node.to_string(),
        cr_ready,
    })
}

/// The budget of one check: the policy's, cut so that the review's deadline is kept with a
/// margin for answering (a tenth of what is left, at most 25 ms).
pub fn check_budget(policy_budget: Duration, now: Instant, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(now);
    let margin = (left / 10).min(Duration::from_millis(25));
    policy_budget.min(left.saturating_sub(margin))
}

/// Records a check's outcome and duration when dropped, so a check cut short by the review's
/// own deadline is still counted (as a timeout).
struct CheckTimer<'a> {
    metrics: &'a EngineCheckMetrics,
    start: Instant,
    outcome: Option<Outcome>,
}

impl Drop for CheckTimer<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::Timeout);
        self.metrics
            .observe(outcome, self.start.elapsed().as_secs_f64());
    }
}

/// Lets the next call probe when a half-open probe ends without a verdict.
/// The engine check: agents, channels, breakers and the concurrency bound.
pub struct EngineTruth {
    directory: AgentDirectory,
    channels: AgentChannels,
    breakers: Breakers,
    permits: Semaphore,
    metrics: EngineCheckMetrics,
}

impl std::fmt::Debug for EngineTruth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineTruth")
            .field("directory", &self.directory.describe())
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl EngineTruth {
    /// Checks the configuration and that the TLS files load; connects to nothing yet.
    pub fn new(config: &EngineTruthConfig, metrics: EngineCheckMetrics) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|m| anyhow::anyhow!("engine check configuration: {m}"))?;
        let channels = AgentChannels::new(config, metrics.clone());
        channels
            .tls_config()
            .map_err(|m| anyhow::anyhow!("engine check mTLS: {m}"))?;
        Ok(Self {
            directory: AgentDirectory::new(&config.discovery),
            channels,
            breakers: Breakers::new(config.breaker_failures, config.breaker_cool_down),
            permits: Semaphore::new(config.max_concurrent_checks),
            metrics,
        })
    }

    pub fn directory(&self) -> &AgentDirectory {
        &self.directory
    }

    /// Agent channels held now.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Agents whose breaker is open now.
    pub fn open_breakers(&self) -> usize {
        self.breakers.open_count(Instant::now())
    }

    /// Verifies `decision` (the Snapshot CR decision) against the engine when the policy asks
    /// for it and the decision is one a check can change; returns the final decision.
    pub async fn verify(
        &self,
        policy: &Policy,
        index: &Index,
        req: &BackupRequest,
        decision: Decision,
        deadline: Instant,
    ) -> Decision {
        if policy.engine_check == EngineCheckMode::Off || !is_eligible(&decision) {
            return decision;
        }
        let target = backup_engine(&index.view(), req);
        let budget = Duration::from_millis(policy.engine_check_budget_ms);
        let finding = self.check(req, target, budget, deadline).await;
        apply(policy.engine_check, policy.mode, req, decision, &finding)
    }

    /// Asks the engine about `req`'s snapshot through the agent of `target`'s node.
    pub async fn check(
        &self,
        req: &BackupRequest,
        target: Result<BackupEngine, String>,
        policy_budget: Duration,
        deadline: Instant,
    ) -> Finding {
        let mut timer = CheckTimer {
            metrics: &self.metrics,
            start: Instant::now(),
            outcome: None,
        };
        let finding = self.check_inner(req, target, policy_budget, deadline).await;
        timer.outcome = Some(finding.outcome);
        if !finding.outcome.is_definite() {
            tracing::info!(
                namespace = %req.namespace,
                backup = %req.display_name(),
                snapshot = %req.snapshot,
                volume = %finding.volume,
                engine = ?finding.engine,
                node = ?finding.node,
                outcome = finding.outcome.as_str(),
                detail = %finding.detail,
                "engine check skipped"
            );
        }
        finding
    }
}

/// The engine check of one review, when engine checks are configured (`state.engine_truth`).
pub async fn verify_review(
    engine_truth: Option<&Arc<EngineTruth>>,
    policy: &Policy,
    index: &Index,
    req: &BackupRequest,
    decision: Decision,
    deadline: Instant,
) -> Decision {
    match engine_truth {
        Some(truth) => truth.verify(policy, index, req, decision, deadline).await,
        None => decision,
    }
}

#[cfg(test)]
mod tests;
