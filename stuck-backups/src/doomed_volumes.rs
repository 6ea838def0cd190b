//! Volumes with Backups that cannot finish: New or Pending while their snapshot is gone
//! (missing, marked removed, lost in the engine). The webhook's throttle lets such a Backup
//! hold its volume's slot only until it is `stuckAfterSeconds` old (webhook/THROTTLING.md),
//! so the volume's backups go on; but longhorn-manager reconciles each one every ~30 s (and
//! v1.7.2 leaks a connection each time) until it is pruned. `doctor` lists these volumes with
//! their last completed Backup, so an operator sees which volumes they touch.

use std::collections::{BTreeMap, BTreeSet};

use longhorn_types::BackupState;
use serde::Serialize;

use crate::{BackupFinding, ClusterState};

/// One volume and its Backups that cannot finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DoomedVolume {
    pub volume: String,
    /// The Backups, oldest first.
    pub backups: Vec<String>,
    pub oldest_age_seconds: i64,
    /// `Volume.status.lastBackupAt` (the last completed Backup); empty when there is none.
    pub last_backup_at: String,
    /// Recurring jobs that created them.
    pub recurring_jobs: BTreeSet<String>,
}

/// Whether a finding is a Backup that cannot finish (the webhook's `is_doomed`).
pub fn is_doomed(f: &BackupFinding) -> bool {
    let state = BackupState::parse(if f.state == "New" { "" } else { &f.state });
    !state.is_terminal()
        && state != BackupState::InProgress
        && f.reasons.iter().any(|r| r.snapshot_gone())
}

/// The volumes of `findings` (oldest first, as the report sorts them) with Backups that
/// cannot finish, by volume name.
pub fn doomed_volumes(state: &ClusterState, findings: &[BackupFinding]) -> Vec<DoomedVolume> {
    let mut by_volume: BTreeMap<&str, DoomedVolume> = BTreeMap::new();
    for f in findings.iter().filter(|f| is_doomed(f)) {
        let v = by_volume
            .entry(f.volume.as_str())
            .or_insert_with(|| DoomedVolume {
                volume: f.volume.clone(),
                backups: Vec::new(),
                oldest_age_seconds: 0,
                last_backup_at: state
                    .volumes
                    .get(&f.volume)
                    .and_then(|v| v.status.as_ref())
                    .map(|s| s.last_backup_at.clone())
                    .unwrap_or_default(),
                recurring_jobs: BTreeSet::new(),
            });
        v.backups.push(f.name.clone());
        v.oldest_age_seconds = v.oldest_age_seconds.max(f.age_seconds);
        v.recurring_jobs.extend(f.recurring_job.clone());
    }
    by_volume.into_values().collect()
}
