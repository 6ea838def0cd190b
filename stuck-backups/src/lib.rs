//! Operator tools for a cluster already in the v1.7.2 incident's state: Backups that sit
//! non-terminal (or in Error) because their snapshot is gone.
//!
//! - [`doctor`]: read-only. Lists non-terminal Backups by age and volume with the reason each
//!   is stuck, the recurring jobs creating them and the relevant Longhorn settings.
//! - [`prune`]: deletes only Backup *objects* that are non-terminal or Error, whose snapshot is
//!   missing, and that have no backup URL (nothing stored in the backup target). Dry run by
//!   default; before deleting it writes every object to a YAML file that restores them
//!   ([`restore`]). A Backup younger than the stuck threshold is never eligible, and the
//!   engine's snapshot list alone never makes one eligible.
//! - [`check_guard_policy`]: part of `doctor`: the guard's own policy must not exempt
//!   Longhorn's service account (that switches the guard off for the storm).
//!
//! This crate must never touch backup data in a backup target, never delete a Backup that has
//! a URL or an empty snapshot name (Longhorn syncing existing backups), and never write
//! anything in `doctor`. Diagnosis is a pure function of a [`ClusterState`] snapshot.

pub mod cli;
pub mod cluster_state;
pub mod diagnosis;
pub mod doomed_volumes;
pub mod guard_policy;
pub mod prune;
pub mod render;
pub mod restore;

pub use cluster_state::ClusterState;
pub use diagnosis::{BackupFinding, EngineSays, Evidence, Report, StuckReason, diagnose};
pub use doomed_volumes::DoomedVolume;
pub use guard_policy::{GuardPolicyCheck, GuardPolicyOptions, check_guard_policy};
pub use prune::{PruneOptions, PruneOutcome, delete_planned, plan, plan_prune, prune, recheck};
pub use restore::{RESTORED_FROM_ANNOTATION, RESTORED_LABEL, RestoreOutcome, restore};

use std::time::Duration;

/// Options of `longhorn-guard doctor`.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// Longhorn's namespace.
    pub namespace: String,
    /// A non-terminal Backup older than this needs attention even without a known reason;
    /// `prune` never deletes a Backup younger than this.
    pub stuck_after: Duration,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            namespace: longhorn_types::DEFAULT_NAMESPACE.to_string(),
            stuck_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Reads the cluster (list only) and diagnoses every Backup of the namespace.
pub async fn doctor(client: kube::Client, options: &DoctorOptions) -> anyhow::Result<Report> {
    let state = ClusterState::fetch(client, &options.namespace).await?;
    Ok(diagnose(
        &state,
        k8s_openapi::jiff::Timestamp::now(),
        options.stuck_after,
    ))
}
