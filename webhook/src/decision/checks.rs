//! The snapshot checks of [`decide`](super::decide) in the order they run: exemptions, the
//! empty snapshot name, the snapshot lookup (asking for a live GET when the index does not
//! know it), the checks that always deny (lost, removed, of another volume), then the
//! configurable ones (not ready, volume missing, target unavailable), which deny, warn or
//! are ignored as the policy says.

use longhorn_types::{DEFAULT_BACKUP_TARGET, Release};

use super::{BackupRequest, Decision, Denial, Reason, Subject, is_exempt, is_longhorn};
use crate::index::{IndexView, SnapshotFacts, SnapshotLookup};
use crate::policy::{CheckAction, EmptySnapshotRule, Policy};

/// The BackupTarget a Backup goes to, and why: `default` on 1.7 (Longhorn 1.7 has one
/// target and ignores any `backup-target` label); else the Backup's `backup-target` label
/// (which Longhorn 1.8+'s mutator fills from the volume before validators run), else the
/// volume's `spec.backupTargetName`, else `default`.
pub fn backup_target(
    view: &IndexView<'_>,
    req: &BackupRequest,
    volume: Option<&str>,
) -> (String, &'static str) {
    if req.longhorn.is_some_and(|r| !r.has_backup_targets()) {
        return (
            DEFAULT_BACKUP_TARGET.to_string(),
            "Longhorn 1.7 has one backup target",
        );
    }
    if let Some(label) = req.target_label() {
        return (label.to_string(), "the Backup's backup-target label");
    }
    if let Some(t) = volume
        .and_then(|v| view.volume(&req.namespace, v))
        .and_then(|v| v.backup_target.as_deref())
    {
        return (t.to_string(), "the volume's spec.backupTargetName");
    }
    (DEFAULT_BACKUP_TARGET.to_string(), "the default target")
}

/// The decision before the policy's mode (`warn-only`) is applied.
pub(super) fn decide_enforced(
    policy: &Policy,
    view: &IndexView<'_>,
    req: &BackupRequest,
) -> Decision {
    if is_exempt(policy, req) {
        return Decision::Allow {
            reason: Reason::Exempt,
            warnings: Vec::new(),
        };
    }
    let mut subject = Subject {
        req,
        volume: req.volume_label().map(str::to_string),
    };
    if req.snapshot.is_empty() {
        return empty_snapshot_name(policy, &subject);
    }
    let (facts, found_live) = match look_up_snapshot(policy, view, &subject) {
        Ok(found) => found,
        Err(decision) => return decision,
    };
    if subject.volume.is_none() {
        subject.volume = facts.volume.clone();
    }
    if let Some(denial) = always_denied(&subject, &facts) {
        return Decision::Deny(denial);
    }
    let mut checks = ConfigurableChecks::default();
    if found_live && req.longhorn.is_some_and(Release::validates_snapshots) {
        checks.warn(
            &subject,
            Reason::SnapshotNotYetCached,
            &format!(
                "Snapshot {:?} exists (the API server has it) but was created moments ago; Longhorn 1.10+'s own validator reads its cache and may still refuse this Backup with \"snapshot <nil> is invalid\" (longhorn/longhorn#11451): if it does, retry in a few seconds",
                req.snapshot
            ),
        );
    }
    checks.run(policy, view, &subject, &facts)
}

/// A Backup without `spec.snapshotName` (Longhorn syncing from the backup target): allowed,
/// or refused to anyone but Longhorn with `denyUnlessLonghorn`.
fn empty_snapshot_name(policy: &Policy, subject: &Subject<'_>) -> Decision {
    let req = subject.req;
    if policy.empty_snapshot_name == EmptySnapshotRule::DenyUnlessLonghorn
        && !is_longhorn(policy, req)
    {
        return Decision::Deny(subject.deny(
            Reason::EmptySnapshotName,
            &format!(
                "spec.snapshotName is empty and the requester {:?} is not Longhorn's service account {:?}",
                req.username, policy.longhorn_service_account
            ),
            "Set spec.snapshotName to an existing Snapshot of the volume; only Longhorn itself creates Backups without one.",
        ));
    }
    Decision::Allow {
        reason: Reason::EmptySnapshotName,
        warnings: Vec::new(),
    }
}

/// The Snapshot's facts and whether only the live GET found them; `Err` is the decision when
/// there are none: a need for the live GET, or a denial.
fn look_up_snapshot(
    policy: &Policy,
    view: &IndexView<'_>,
    subject: &Subject<'_>,
) -> Result<(SnapshotFacts, bool), Decision> {
    let req = subject.req;
    match view.snapshot(&req.namespace, &req.snapshot) {
        SnapshotLookup::Indexed(f) => Ok((f, false)),
        SnapshotLookup::Live(f) => Ok((f, true)),
        SnapshotLookup::NotIndexed if policy.live_snapshot_lookup => {
            Err(Decision::NeedsLiveSnapshot)
        }
        SnapshotLookup::NotIndexed => Err(Decision::Deny(subject.deny(
            Reason::SnapshotMissing,
            &format!(
                "Snapshot {:?} is not in the webhook's index (live lookup is disabled by policy)",
                req.snapshot
            ),
            "Create the Snapshot first and retry; a Backup of a missing snapshot stays Pending forever.",
        ))),
        SnapshotLookup::ConfirmedMissing => Err(Decision::Deny(subject.deny(
            Reason::SnapshotMissing,
            &format!(
                "Snapshot {:?} does not exist (the API server answered 404 NotFound)",
                req.snapshot
            ),
            "Create the Snapshot first (or back up an existing one) and retry; check recurring jobs that refer to deleted snapshots. A Backup of a missing snapshot stays Pending forever.",
        ))),
    }
}

/// The checks no policy turns off: the Snapshot is lost in the engine, marked removed, or of
/// another volume than the Backup's `backup-volume` label.
fn always_denied(subject: &Subject<'_>, facts: &SnapshotFacts) -> Option<Denial> {
    let req = subject.req;
    if facts.lost_in_engine {
        return Some(subject.deny(
            Reason::SnapshotLost,
            &format!(
                "Longhorn lost track of Snapshot {:?} inside the volume engine",
                req.snapshot
            ),
            "Take a new snapshot of the volume and back that one up; delete the stale Snapshot.",
        ));
    }
    if facts.mark_removed {
        return Some(subject.deny(
            Reason::SnapshotRemoved,
            &format!("Snapshot {:?} is marked removed", req.snapshot),
            "Back up a current snapshot of the volume instead.",
        ));
    }
    if let (Some(label), Some(of_snapshot)) = (req.volume_label(), facts.volume.as_deref())
        && label != of_snapshot
    {
        return Some(subject.deny(
            Reason::SnapshotOtherVolume,
            &format!(
                "Snapshot {:?} belongs to volume {of_snapshot:?}, but the Backup's backup-volume label says {label:?}",
                req.snapshot
            ),
            "Fix the backup-volume label or spec.snapshotName so they name the same volume.",
        ));
    }
    None
}

/// The checks the policy sets to deny, warn or ignore, and the warnings gathered so far (the
/// first warning's reason becomes the allowed review's reason).
#[derive(Default)]
struct ConfigurableChecks {
    warnings: Vec<String>,
    first_warning: Option<Reason>,
}

impl ConfigurableChecks {
    fn warn(&mut self, subject: &Subject<'_>, reason: Reason, what: &str) {
        self.warnings.push(subject.warning(reason, what));
        self.first_warning.get_or_insert(reason);
    }

    /// A failed check, as `action` says: `Some` denial, or a warning, or nothing.
    fn fail(
        &mut self,
        action: CheckAction,
        subject: &Subject<'_>,
        reason: Reason,
        what: &str,
        todo: &str,
    ) -> Option<Denial> {
        match action {
            CheckAction::Ignore => None,
            CheckAction::Warn => {
                self.warn(subject, reason, what);
                None
            }
            CheckAction::Deny => Some(subject.deny(reason, what, todo)),
        }
    }

    /// Snapshot not ready, volume missing, target unavailable, in that order.
    fn run(
        mut self,
        policy: &Policy,
        view: &IndexView<'_>,
        subject: &Subject<'_>,
        facts: &SnapshotFacts,
    ) -> Decision {
        let req = subject.req;
        if !facts.ready_to_use
            && let Some(d) = self.fail(
                policy.snapshot_not_ready,
                subject,
                Reason::SnapshotNotReady,
                &format!("Snapshot {:?} is not readyToUse yet", req.snapshot),
                "Wait until the Snapshot is ready and retry.",
            )
        {
            return Decision::Deny(d);
        }
        if let Some(volume) = subject.volume.as_deref()
            && view.volume(&req.namespace, volume).is_none()
            && let Some(d) = self.fail(
                policy.volume_missing,
                subject,
                Reason::VolumeMissing,
                &format!(
                    "volume {volume:?} does not exist in namespace {:?}",
                    req.namespace
                ),
                "Back up a snapshot of an existing volume.",
            )
        {
            return Decision::Deny(d);
        }
        if let Some(what) = target_problem(view, req, subject.volume.as_deref())
            && let Some(mut d) = self.fail(
                policy.target_unavailable,
                subject,
                Reason::TargetUnavailable,
                &what,
                "Fix the backup target (URL, credentials, reachability) until Longhorn reports it available, then retry.",
            )
        {
            d.warnings = self.warnings;
            return Decision::Deny(d);
        }
        Decision::Allow {
            reason: self.first_warning.unwrap_or(Reason::Checked),
            warnings: self.warnings,
        }
    }
}

/// What is wrong with the Backup's BackupTarget, if anything: missing or not available.
fn target_problem(
    view: &IndexView<'_>,
    req: &BackupRequest,
    volume: Option<&str>,
) -> Option<String> {
    let (target, why) = backup_target(view, req, volume);
    match view.target(&req.namespace, &target) {
        None => Some(format!(
            "BackupTarget {target:?} does not exist in namespace {:?} (the target of this Backup: {why})",
            req.namespace
        )),
        Some(t) if !t.available => Some(format!(
            "BackupTarget {target:?} is not available (status.available is false; the target of this Backup: {why})"
        )),
        Some(_) => None,
    }
}
