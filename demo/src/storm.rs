//! The storm generator: recurring jobs firing a Backup for every volume at once, as after the
//! incident's power failure. [`plan`] decides deterministically (from a seed) which Backups
//! exist and which snapshots were lost; [`run`] sends the CREATEs with bounded concurrency,
//! paced over a spread and cut off at a deadline, timing each one client-side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::{DynamicObject, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::report::denial_reason;

/// The shape of a storm.
#[derive(Clone, Debug)]
pub struct StormShape {
    pub backups: usize,
    pub volumes: usize,
    /// Share of Backups whose snapshot was lost in the outage (deleted before the storm).
    pub lost_share: f64,
    /// Share of Backups whose snapshot disappears right after the Backup is admitted.
    pub mid_storm_loss_share: f64,
    /// Recurring jobs the volumes are spread over (`spec.labels.RecurringJob`).
    pub recurring_jobs: usize,
    pub seed: u64,
}

/// What happens to a planned Backup's snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotFate {
    Kept,
    /// Lost in the outage: the Snapshot object is deleted before the storm.
    LostBeforeStorm,
    /// Deleted right after the Backup is admitted.
    LostAfterAdmission,
}

/// One Backup of the storm.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBackup {
    pub name: String,
    pub volume: String,
    pub snapshot: String,
    pub recurring_job: String,
    pub fate: SnapshotFate,
}

impl PlannedBackup {
    /// The Backup as longhorn-manager creates it for a recurring job.
    pub fn object(&self, namespace: &str) -> serde_json::Value {
        longhorn_types::shapes::backup(
            namespace,
            &self.name,
            &self.volume,
            &self.snapshot,
            Some(&self.recurring_job),
        )
    }
}

/// The name of volume `i`.
pub fn volume_name(i: usize) -> String {
    format!("pvc-{i:04}")
}

/// Backups round-robin over the volumes (every job fires for every volume, again and
/// again), each with its own snapshot.
pub fn plan(shape: &StormShape) -> Vec<PlannedBackup> {
    let volumes = shape.volumes.max(1);
    let jobs = shape.recurring_jobs.max(1);
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let lost = shape.lost_share.clamp(0.0, 1.0);
    let mid = shape.mid_storm_loss_share.clamp(0.0, 1.0 - lost);
    (0..shape.backups)
        .map(|i| {
            let v = i % volumes;
            let round = i / volumes;
            let job = format!(
                "backup-{}",
                ["daily", "hourly", "weekly", "monthly"][v % jobs % 4]
            );
            let roll: f64 = rng.random();
            let fate = if roll < lost {
                SnapshotFate::LostBeforeStorm
            } else if roll < lost + mid {
                SnapshotFate::LostAfterAdmission
            } else {
                SnapshotFate::Kept
            };
            PlannedBackup {
                name: format!("backup-{:016x}", rng.random::<u64>()),
                volume: volume_name(v),
                snapshot: format!("{job}-{}-r{round}", volume_name(v)),
                recurring_job: job,
                fate,
            }
        })
        .collect()
}

/// How a storm is sent.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// CREATEs in flight at once.
    pub concurrency: usize,
    /// The CREATEs start evenly over this span.
    pub spread: Duration,
    /// No CREATE starts after this (from the storm's start).
    pub deadline: Duration,
    /// Client-side timeout of one CREATE.
    pub request_timeout: Duration,
}

/// The result of one CREATE.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Admitted,
    Denied {
        code: u16,
        reason: String,
    },
    Failed(String),
    /// Not sent: past the deadline, or the storm was stopped.
    NotSent,
}

#[derive(Clone, Debug)]
pub struct Attempt {
    pub index: usize,
    pub outcome: Outcome,
    /// When the CREATE was sent (or found not to be sent).
    pub sent: Instant,
    /// Client-side duration of the CREATE (zero when not sent).
    pub latency: Duration,
    /// When the CREATE was sent, from the storm's start.
    pub sent_at: Duration,
}

/// Live counters, for a progress display.
#[derive(Debug, Default)]
pub struct StormProgress {
    pub sent: AtomicU64,
    pub admitted: AtomicU64,
    pub denied: AtomicU64,
    pub failed: AtomicU64,
}

/// Sends `plan` as Backup CREATEs into `api`'s namespace. The index of every admitted
/// Backup goes to `admitted` (when given). Stops starting CREATEs when `stop` turns true.
pub async fn run(
    api: Api<DynamicObject>,
    namespace: &str,
    plan: &[PlannedBackup],
    config: &StormConfig,
    progress: Arc<StormProgress>,
    admitted: Option<mpsc::UnboundedSender<usize>>,
    stop: watch::Receiver<bool>,
) -> Vec<Attempt> {
    let start = tokio::time::Instant::now();
    let n = plan.len().max(1) as f64;
    let attempts = futures::stream::iter(plan.iter().enumerate())
        .map(|(index, planned)| {
            let api = api.clone();
            let progress = progress.clone();
            let admitted = admitted.clone();
            let stop = stop.clone();
            let at = start + config.spread.mul_f64(index as f64 / n);
            async move {
                tokio::time::sleep_until(at).await;
                if *stop.borrow() || start.elapsed() > config.deadline {
                    return Attempt {
                        index,
                        outcome: Outcome::NotSent,
                        sent: Instant::now(),
                        latency: Duration::ZERO,
                        sent_at: start.elapsed(),
                    };
                }
                let sent = Instant::now();
                let sent_at = start.elapsed();
                let (outcome, latency) =
                    create(&api, namespace, planned, config.request_timeout).await;
                progress.sent.fetch_add(1, Ordering::Relaxed);
                match &outcome {
                    Outcome::Admitted => {
                        progress.admitted.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &admitted {
                            let _ = tx.send(index);
                        }
                    }
                    Outcome::Denied { .. } => {
                        progress.denied.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Failed(_) | Outcome::NotSent => {
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Attempt {
                    index,
                    outcome,
                    sent,
                    latency,
                    sent_at,
                }
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut attempts = attempts;
    attempts.sort_by_key(|a| a.index);
    attempts
}

async fn create(
    api: &Api<DynamicObject>,
    namespace: &str,
    planned: &PlannedBackup,
    timeout: Duration,
) -> (Outcome, Duration) {
    let obj: DynamicObject = match serde_json::from_value(planned.object(namespace)) {
        Ok(o) => o,
        Err(e) => {
            return (
                Outcome::Failed(format!("building {}: {e}", planned.name)),
                Duration::ZERO,
            );
        }
    };
    let began = Instant::now();
    let result = tokio::time::timeout(timeout, api.create(&PostParams::default(), &obj)).await;
    let latency = began.elapsed();
    let outcome = match result {
        Ok(Ok(_)) => Outcome::Admitted,
        Ok(Err(kube::Error::Api(e))) if e.message.contains("admission webhook") => {
            Outcome::Denied {
                code: e.code,
                reason: denial_reason(e.code, &e.message),
            }
        }
        Ok(Err(e)) => Outcome::Failed(format!("creating Backup {}: {e}", planned.name)),
        Err(_) => Outcome::Failed(format!(
            "creating Backup {}: no answer within {timeout:?}",
            planned.name
        )),
    };
    (outcome, latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> StormShape {
        StormShape {
            backups: 4422,
            volumes: 300,
            lost_share: 0.3,
            mid_storm_loss_share: 0.03,
            recurring_jobs: 2,
            seed: 7,
        }
    }

    #[test]
    fn plan_is_deterministic_and_round_robin() {
        let a = plan(&shape());
        let b = plan(&shape());
        assert_eq!(a, b);
        assert_eq!(a.len(), 4422);
        assert_eq!(a[0].volume, "pvc-0000");
        assert_eq!(a[299].volume, "pvc-0299");
        assert_eq!(a[300].volume, "pvc-0000");
        assert_ne!(a[0].snapshot, a[300].snapshot);
        let names: std::collections::HashSet<_> = a.iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), a.len(), "Backup names are unique");
        let snaps: std::collections::HashSet<_> = a.iter().map(|p| &p.snapshot).collect();
        assert_eq!(snaps.len(), a.len(), "one snapshot per Backup");
        assert!(a.iter().all(|p| p.name.len() == "backup-".len() + 16));
    }

    #[test]
    fn plan_loses_about_the_requested_share() {
        let p = plan(&shape());
        let lost = p
            .iter()
            .filter(|b| b.fate == SnapshotFate::LostBeforeStorm)
            .count() as f64;
        let mid = p
            .iter()
            .filter(|b| b.fate == SnapshotFate::LostAfterAdmission)
            .count() as f64;
        assert!((lost / 4422.0 - 0.3).abs() < 0.03, "lost {lost}");
        assert!((mid / 4422.0 - 0.03).abs() < 0.015, "mid {mid}");
    }

    #[test]
    fn backup_object_carries_the_recurring_job_label() {
        let p = &plan(&shape())[0];
        let o = p.object("ns");
        assert_eq!(
            o["spec"]["labels"]["RecurringJob"],
            p.recurring_job.as_str()
        );
        assert_eq!(o["metadata"]["labels"]["backup-volume"], p.volume.as_str());
        assert_eq!(o["spec"]["snapshotName"], p.snapshot.as_str());
    }
}
