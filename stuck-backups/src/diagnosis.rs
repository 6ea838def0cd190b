//! Why each Backup is stuck: a pure function of a [`ClusterState`] and the time.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use longhorn_types::{Backup, BackupState, BackupStatus, Engine, Snapshot};
use serde::Serialize;

use crate::ClusterState;

/// One reason a Backup cannot finish. Several may hold at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StuckReason {
    /// No Snapshot object of that name in the namespace.
    SnapshotMissing,
    /// The Snapshot is marked removed.
    SnapshotMarkedRemoved,
    /// Longhorn says the engine lost the snapshot (the Snapshot's `status.error`), or the
    /// engine's snapshot list no longer has a snapshot whose Snapshot object is `readyToUse`
    /// (the object and the engine agree it was taken, and the engine status read after the
    /// object has lost it).
    SnapshotLostInEngine { engine: String },
    /// The engine's snapshot list lacks it, but the Snapshot object is not `readyToUse`: a
    /// snapshot being taken looks like this (the engine status lags). Not definite, the
    /// webhook's engine check treats it the same way.
    SnapshotNotInEngineYet { engine: String },
    /// The Snapshot object is missing or says the snapshot is gone, but the engine still
    /// lists it (not removed): the snapshot exists, Longhorn may sync the object back.
    SnapshotStillInEngine { engine: String },
    /// The Snapshot belongs to another volume than the Backup's.
    SnapshotOfOtherVolume { snapshot_volume: String },
    /// The Backup's volume does not exist.
    VolumeMissing,
    /// The backup target is missing or not available.
    BackupTargetUnavailable { target: String },
    /// Nothing above; Longhorn's own Pending message, if any.
    Waiting { message: String },
}

impl StuckReason {
    /// The snapshot is gone for good: the Backup can never complete.
    pub fn snapshot_gone(&self) -> bool {
        matches!(
            self,
            Self::SnapshotMissing | Self::SnapshotMarkedRemoved | Self::SnapshotLostInEngine { .. }
        )
    }

    /// A short human sentence.
    pub fn describe(&self) -> String {
        match self {
            Self::SnapshotMissing => "snapshot missing".into(),
            Self::SnapshotMarkedRemoved => "snapshot marked removed".into(),
            Self::SnapshotLostInEngine { engine } => format!("snapshot lost in engine {engine}"),
            Self::SnapshotNotInEngineYet { engine } => format!(
                "engine {engine} does not list the snapshot yet and the Snapshot is not readyToUse (may still be being taken)"
            ),
            Self::SnapshotStillInEngine { engine } => {
                format!("engine {engine} still lists the snapshot")
            }
            Self::SnapshotOfOtherVolume { snapshot_volume } => {
                format!("snapshot belongs to volume {snapshot_volume}")
            }
            Self::VolumeMissing => "volume gone".into(),
            Self::BackupTargetUnavailable { target } => {
                format!("backup target {target} unavailable")
            }
            Self::Waiting { message } if message.is_empty() => "waiting (no reason known)".into(),
            Self::Waiting { message } => format!("waiting: {message}"),
        }
    }
}

/// What the volume's active engine says about a snapshot in `Engine.status.snapshots`
/// (synced periodically by Longhorn's engine monitor, so it lags a snapshot just taken).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EngineSays {
    /// No Engine object for the volume (or the volume is unknown).
    #[default]
    NoEngine,
    /// The engine status has no snapshot list (no RW replica, not synced yet): says nothing.
    NoSnapshotList,
    /// Listed, not removed.
    Lists,
    /// Listed, marked removed.
    ListsRemoved,
    /// A non-empty list without it.
    Lacks,
}

impl EngineSays {
    fn of(engine: Option<&Engine>, snapshot: &str) -> Self {
        let Some(engine) = engine else {
            return Self::NoEngine;
        };
        match engine.status.as_ref().and_then(|s| s.snapshots.as_ref()) {
            None => Self::NoSnapshotList,
            Some(list) if list.is_empty() => Self::NoSnapshotList,
            Some(list) => match list.get(snapshot) {
                Some(info) if info.removed => Self::ListsRemoved,
                Some(_) => Self::Lists,
                None => Self::Lacks,
            },
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::NoEngine => "no engine",
            Self::NoSnapshotList => "no snapshot list",
            Self::Lists => "lists it",
            Self::ListsRemoved => "lists it removed",
            Self::Lacks => "does not list it",
        }
    }
}

/// The objects a finding was made from, as the re-check before a delete compares them: the
/// Backup (uid, resourceVersion), its Snapshot (resourceVersion, `None` = no object) and what
/// the volume's active engine said about the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub backup_uid: String,
    pub backup_resource_version: String,
    pub snapshot_resource_version: Option<String>,
    /// The volume's active Engine, when there is one.
    pub engine: Option<String>,
    pub engine_says: EngineSays,
}

impl Evidence {
    /// Why `fresh` (a later read) no longer supports a decision made on `self`, if it does not.
    pub fn changed(&self, fresh: &Evidence, backup: &str, snapshot: &str) -> Option<String> {
        if fresh.backup_uid != self.backup_uid {
            return Some(format!(
                "Backup {backup} was deleted and created again (uid {} -> {})",
                self.backup_uid, fresh.backup_uid
            ));
        }
        if fresh.backup_resource_version != self.backup_resource_version {
            return Some(format!(
                "Backup {backup} changed since the diagnosis (resourceVersion {} -> {})",
                self.backup_resource_version, fresh.backup_resource_version
            ));
        }
        match (
            &self.snapshot_resource_version,
            &fresh.snapshot_resource_version,
        ) {
            (None, Some(_)) => {
                return Some(format!(
                    "Snapshot {snapshot} exists again (it was missing at the diagnosis)"
                ));
            }
            (Some(_), None) => {
                return Some(format!(
                    "Snapshot {snapshot} was deleted since the diagnosis"
                ));
            }
            (Some(a), Some(b)) if a != b => {
                return Some(format!(
                    "Snapshot {snapshot} changed since the diagnosis (resourceVersion {a} -> {b})"
                ));
            }
            _ => {}
        }
        if fresh.engine != self.engine {
            return Some(format!(
                "the volume's active engine changed since the diagnosis ({} -> {})",
                self.engine.as_deref().unwrap_or("none"),
                fresh.engine.as_deref().unwrap_or("none")
            ));
        }
        if fresh.engine_says != self.engine_says {
            return Some(format!(
                "engine {} changed its answer about snapshot {snapshot} since the diagnosis ({} -> {})",
                fresh.engine.as_deref().unwrap_or("none"),
                self.engine_says.describe(),
                fresh.engine_says.describe()
            ));
        }
        None
    }
}

/// One Backup that is non-terminal, or in Error.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupFinding {
    pub namespace: String,
    pub name: String,
    pub volume: String,
    pub snapshot: String,
    /// `New` for `""`.
    pub state: String,
    pub age_seconds: i64,
    pub recurring_job: Option<String>,
    /// Backup URL; non-empty means data exists in the backup target.
    pub url: String,
    pub reasons: Vec<StuckReason>,
    /// Non-terminal and (stuck for a known reason, or older than the threshold).
    pub needs_attention: bool,
    /// What `prune` may delete: non-terminal or Error, snapshot gone (never on engine-status
    /// evidence alone), no URL, snapshot named, and at least as old as the stuck threshold.
    pub prune_eligible: bool,
    /// Why a Backup whose snapshot looks gone is still not eligible (too young), if so.
    pub prune_hold: Option<String>,
    /// The objects the decision was made from (compared again right before a delete).
    pub evidence: Evidence,
}

/// The doctor's answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub generated_at: String,
    pub total_backups: usize,
    /// Every Backup by state (`New` for `""`).
    pub backups_by_state: BTreeMap<String, usize>,
    /// Non-terminal and Error Backups, oldest first.
    pub findings: Vec<BackupFinding>,
    /// Recurring jobs of the non-terminal Backups: job → count.
    pub recurring_jobs: BTreeMap<String, usize>,
    /// The relevant Longhorn settings found (absent ones are left out).
    pub settings: BTreeMap<String, String>,
    pub needs_attention: usize,
    pub prune_eligible: usize,
    /// Volumes with Backups that cannot finish (`doomed_volumes`).
    pub doomed_volumes: Vec<crate::DoomedVolume>,
}

impl Report {
    pub fn non_terminal(&self) -> impl Iterator<Item = &BackupFinding> {
        self.findings
            .iter()
            .filter(|f| !BackupState::parse(state_str(&f.state)).is_terminal())
    }
}

/// Diagnoses every Backup of `state` at time `now`.
pub fn diagnose(state: &ClusterState, now: Timestamp, stuck_after: Duration) -> Report {
    let mut by_state = BTreeMap::new();
    let mut findings = Vec::new();
    let mut jobs = BTreeMap::new();
    for backup in &state.backups {
        let st = backup.state();
        *by_state.entry(st.label().to_string()).or_insert(0) += 1;
        if st.is_terminal() && st != BackupState::Error {
            continue;
        }
        let finding = diagnose_one(state, backup, now, stuck_after);
        if !st.is_terminal()
            && let Some(job) = &finding.recurring_job
        {
            *jobs.entry(job.clone()).or_insert(0) += 1;
        }
        findings.push(finding);
    }
    findings.sort_by(|a, b| {
        b.age_seconds
            .cmp(&a.age_seconds)
            .then_with(|| a.name.cmp(&b.name))
    });
    Report {
        namespace: state.namespace.clone(),
        generated_at: now.to_string(),
        total_backups: state.backups.len(),
        backups_by_state: by_state,
        needs_attention: findings.iter().filter(|f| f.needs_attention).count(),
        prune_eligible: findings.iter().filter(|f| f.prune_eligible).count(),
        doomed_volumes: crate::doomed_volumes::doomed_volumes(state, &findings),
        findings,
        recurring_jobs: jobs,
        settings: state.settings.clone(),
    }
}

/// Diagnoses one Backup. Public so the re-check before a delete judges a fresh read with
/// exactly the rules of the plan.
pub fn diagnose_one(
    state: &ClusterState,
    backup: &Backup,
    now: Timestamp,
    stuck_after: Duration,
) -> BackupFinding {
    let st = backup.state();
    let status = backup.status.clone().unwrap_or_default();
    let snapshot_name = backup.spec.snapshot_name.clone();
    let snapshot = state.snapshots.get(&snapshot_name);
    let volume = backup
        .volume_label()
        .map(str::to_string)
        .or_else(|| snapshot.and_then(|s| s.volume()).map(str::to_string))
        .unwrap_or_default();
    let engine = if volume.is_empty() {
        None
    } else {
        state.engine_of(&volume)
    };
    let engine_name = engine
        .and_then(|e| e.metadata.name.clone())
        .unwrap_or_default();
    let engine_says = EngineSays::of(engine, &snapshot_name);

    let mut reasons = if snapshot_name.is_empty() {
        Vec::new()
    } else {
        snapshot_reasons(snapshot, &volume, engine_says, &engine_name)
    };
    add_volume_and_target_reasons(state, backup, &volume, &status, &mut reasons);

    // No creationTimestamp reads as age 0: never old enough to prune.
    let age_seconds = backup
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| (now.as_second() - t.0.as_second()).max(0));
    let known_blocker = reasons
        .iter()
        .any(|r| !matches!(r, StuckReason::Waiting { .. }));
    let old = u64::try_from(age_seconds).unwrap_or(0) >= stuck_after.as_secs();
    let snapshot_gone = reasons.iter().any(StuckReason::snapshot_gone);
    let removable = (!st.is_terminal() || st == BackupState::Error)
        && !snapshot_name.is_empty()
        && snapshot_gone
        && status.url.is_empty();
    let evidence = Evidence {
        backup_uid: backup.metadata.uid.clone().unwrap_or_default(),
        backup_resource_version: backup.metadata.resource_version.clone().unwrap_or_default(),
        snapshot_resource_version: snapshot
            .map(|s| s.metadata.resource_version.clone().unwrap_or_default()),
        engine: engine.map(|_| engine_name),
        engine_says,
    };
    BackupFinding {
        namespace: state.namespace.clone(),
        name: backup.metadata.name.clone().unwrap_or_default(),
        volume,
        prune_eligible: removable && old,
        prune_hold: (removable && !old).then(|| {
            format!(
                "younger than the stuck threshold ({}s): a Backup just created may be waiting for its snapshot",
                stuck_after.as_secs()
            )
        }),
        snapshot: snapshot_name,
        state: st.label().to_string(),
        age_seconds,
        recurring_job: backup.recurring_job().map(str::to_string),
        url: status.url,
        needs_attention: !st.is_terminal() && (known_blocker || old),
        reasons,
        evidence,
    }
}

/// The volume and the backup target the Backup needs; a Backup with no reason at all is
/// `Waiting` (with Longhorn's own message).
fn add_volume_and_target_reasons(
    state: &ClusterState,
    backup: &Backup,
    volume: &str,
    status: &BackupStatus,
    reasons: &mut Vec<StuckReason>,
) {
    if !volume.is_empty() && !state.volumes.contains_key(volume) {
        reasons.push(StuckReason::VolumeMissing);
    }
    // 1.8+: the Backup's own target (label, else status.backupTargetName); 1.7: `default`.
    let target = backup
        .backup_target()
        .unwrap_or(longhorn_types::DEFAULT_BACKUP_TARGET)
        .to_string();
    if !state.targets.get(&target).is_some_and(|t| t.available()) {
        reasons.push(StuckReason::BackupTargetUnavailable { target });
    }
    if reasons.is_empty() {
        let message = status
            .messages
            .as_ref()
            .and_then(|m| m.get("info"))
            .cloned()
            .unwrap_or_else(|| status.error.clone());
        reasons.push(StuckReason::Waiting { message });
    }
}

/// What the Snapshot object and the engine of the Backup's volume say about the Backup's
/// snapshot (`snapshot`: the object, `None` when it is gone).
fn snapshot_reasons(
    snapshot: Option<&Snapshot>,
    volume: &str,
    engine_says: EngineSays,
    engine_name: &str,
) -> Vec<StuckReason> {
    let mut reasons = Vec::new();
    match snapshot {
        None => reasons.push(StuckReason::SnapshotMissing),
        Some(s) => {
            if s.mark_removed() {
                reasons.push(StuckReason::SnapshotMarkedRemoved);
            }
            // Engine-status evidence counts only when the Snapshot object agrees: Longhorn
            // itself says it lost it, or the object says it was taken (readyToUse) and the
            // engine status, listed after the Snapshots (`ClusterState::fetch`), no longer
            // has it. Absent while not ready is a snapshot still being taken.
            // The engine asked is the Backup's volume's: it says nothing about a Snapshot of
            // another volume.
            let engine_lacks = engine_says == EngineSays::Lacks
                && s.volume()
                    .is_none_or(|sv| volume.is_empty() || sv == volume);
            if s.lost_in_engine() || (engine_lacks && s.ready_to_use()) {
                reasons.push(StuckReason::SnapshotLostInEngine {
                    engine: engine_name.to_string(),
                });
            } else if engine_lacks {
                reasons.push(StuckReason::SnapshotNotInEngineYet {
                    engine: engine_name.to_string(),
                });
            }
            if let Some(sv) = s.volume()
                && !volume.is_empty()
                && sv != volume
            {
                reasons.push(StuckReason::SnapshotOfOtherVolume {
                    snapshot_volume: sv.to_string(),
                });
            }
        }
    }
    // The engine still has it: whatever the object says, the snapshot is not gone.
    if engine_says == EngineSays::Lists && reasons.iter().any(StuckReason::snapshot_gone) {
        reasons.retain(|r| !r.snapshot_gone());
        reasons.push(StuckReason::SnapshotStillInEngine {
            engine: engine_name.to_string(),
        });
    }
    reasons
}

/// `BackupState::label` back to the string Longhorn writes.
fn state_str(label: &str) -> &str {
    if label == "New" { "" } else { label }
}

#[cfg(test)]
mod tests;
