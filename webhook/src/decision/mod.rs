//! The admission decision for a Backup CREATE: a pure function of the policy, the index
//! view and the request. No I/O here; when the index does not know the snapshot, the
//! decision asks the caller for a live lookup ([`Decision::NeedsLiveSnapshot`]) and is
//! made again with the answer overlaid on the view.
//!
//! # Status codes of denials
//!
//! | reason | code | meaning |
//! |---|---|---|
//! | `snapshot_missing` | 404 | the Snapshot is neither indexed nor known to the API server |
//! | `snapshot_removed` | 410 | the Snapshot has `status.markRemoved` |
//! | `snapshot_lost` | 410 | Longhorn lost the Snapshot inside the volume engine |
//! | `snapshot_other_volume` | 422 | the Snapshot belongs to another volume than the Backup's `backup-volume` label |
//! | `snapshot_not_ready` | 409 | the Snapshot is not `readyToUse` (only when the policy denies it) |
//! | `volume_missing` | 404 | the Backup's volume does not exist (only when the policy denies it) |
//! | `target_unavailable` | 503 | the Backup's BackupTarget is missing or unavailable (only when the policy denies it) |
//! | `empty_snapshot_name` | 403 | empty `spec.snapshotName` from someone other than Longhorn (only with `denyUnlessLonghorn`) |
//! | `deadline_exceeded`, `lookup_failed` | 503 | fail-closed answers when no decision could be made in time |
//! | `throttled` | 429 | the throttle (`crate::throttle`): an in-flight cap, a creation rate or a duplicate |
//! | `verdict_lease_writer` | 403 | `/validate/leases`: a verdict Lease written by another than its node's agent ([`lease_write`]) |
//! | `node_leaking` | 403 | the volume's node's longhorn-manager leaks (its agent's verdict, [`node_protection`]; `degrading`: `node_degrading`, a warning) |
//!
//! # Longhorn releases
//!
//! [`BackupRequest::longhorn`] carries the detected release (`crate::version`); `None` =
//! unknown. The Backup's BackupTarget is `default` on 1.7 (one target); on 1.8+ and when
//! unknown it is the Backup's `backup-target` label, else its volume's
//! `spec.backupTargetName`, else `default`. On 1.10+ Longhorn's own validator also refuses
//! a Backup whose Snapshot is missing (from its informer cache) or of another volume: the
//! guard gives the same verdict there, and every snapshot denial Longhorn would not also
//! make says so and why ([`longhorn_note`]). A Snapshot the guard found only by its live
//! GET (created moments ago) is allowed with a warning that Longhorn 1.10+ may still refuse
//! it from its cache ("snapshot <nil> is invalid", longhorn/longhorn#11451).

mod checks;
mod full_backup;
pub mod lease_write;
pub mod node_protection;
mod request;

use std::fmt;

use longhorn_types::Release;

use crate::index::IndexView;
use crate::policy::{Mode, Policy};

pub use checks::backup_target;
pub use full_backup::full_backup_patch;
pub use node_protection::{Held, decide_with_nodes, node_check};
pub use request::{BackupRequest, backup_display_name, recurring_job_of};

/// Why a review ended as it did. Also the `reason` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Every check passed.
    Checked,
    Exempt,
    EmptySnapshotName,
    SnapshotMissing,
    SnapshotRemoved,
    SnapshotLost,
    SnapshotOtherVolume,
    SnapshotNotReady,
    VolumeMissing,
    TargetUnavailable,
    /// Not a CREATE of longhorn.io/v1beta2 backups: the registration should not send it.
    Unexpected,
    DeadlineExceeded,
    LookupFailed,
    Malformed,
    /// Mutating endpoint: `spec.backupMode` set to `full`.
    FullBackupPatched,
    /// Mutating endpoint: nothing to change.
    Unchanged,
    /// Allowed with a warning: the Snapshot was found only by the live GET, and Longhorn
    /// 1.10+'s validator, which reads its cache, may still refuse the Backup.
    SnapshotNotYetCached,
    /// Denied (or, allowed, warned) by the throttle; the scope is in the message and in
    /// `throttled_reviews_total{scope}`.
    Throttled,
    /// Denied (or, allowed, warned): the volume's node is `leaking` (`nodeProtection`).
    NodeLeaking,
    /// Allowed with a warning: the volume's node is `degrading`.
    NodeDegrading,
    /// `/validate/leases`: a verdict Lease written by someone other than its node's agent.
    VerdictLeaseWriter,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Checked => "checked",
            Reason::Exempt => "exempt",
            Reason::EmptySnapshotName => "empty_snapshot_name",
            Reason::SnapshotMissing => "snapshot_missing",
            Reason::SnapshotRemoved => "snapshot_removed",
            Reason::SnapshotLost => "snapshot_lost",
            Reason::SnapshotOtherVolume => "snapshot_other_volume",
            Reason::SnapshotNotReady => "snapshot_not_ready",
            Reason::VolumeMissing => "volume_missing",
            Reason::TargetUnavailable => "target_unavailable",
            Reason::Unexpected => "unexpected",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::LookupFailed => "lookup_failed",
            Reason::Malformed => "malformed",
            Reason::FullBackupPatched => "full_backup_patched",
            Reason::Unchanged => "unchanged",
            Reason::SnapshotNotYetCached => "snapshot_not_yet_cached",
            Reason::Throttled => "throttled",
            Reason::NodeLeaking => "node_leaking",
            Reason::NodeDegrading => "node_degrading",
            Reason::VerdictLeaseWriter => "verdict_lease_writer",
        }
    }

    /// The HTTP-style status code a denial for this reason carries (see the module docs).
    pub fn status_code(self) -> u16 {
        match self {
            Reason::SnapshotMissing | Reason::VolumeMissing => 404,
            Reason::SnapshotRemoved | Reason::SnapshotLost => 410,
            Reason::SnapshotOtherVolume => 422,
            Reason::SnapshotNotReady => 409,
            Reason::TargetUnavailable | Reason::DeadlineExceeded | Reason::LookupFailed => 503,
            Reason::EmptySnapshotName | Reason::NodeLeaking | Reason::VerdictLeaseWriter => 403,
            Reason::Malformed => 400,
            Reason::Throttled => 429,
            _ => 200,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `warnings` go to the client. `reason` is the first warning's reason, or
    /// what allowed it.
    Allow {
        reason: Reason,
        warnings: Vec<String>,
    },
    Deny(Denial),
    /// The index does not have the snapshot: GET it from the API server, overlay the answer
    /// on the view ([`IndexView::with_live_snapshot`]) and decide again.
    NeedsLiveSnapshot,
}

/// A denial: reason, HTTP-style code and a message that names the Backup, snapshot and
/// volume and says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub code: u16,
    pub message: String,
    pub warnings: Vec<String>,
}

impl Decision {
    /// `allowed`, `warned` (allowed with warnings) or `denied`; the metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { warnings, .. } if warnings.is_empty() => "allowed",
            Decision::Allow { .. } => "warned",
            Decision::Deny(_) => "denied",
            Decision::NeedsLiveSnapshot => "pending",
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Allow { reason, .. } => Some(*reason),
            Decision::Deny(d) => Some(d.reason),
            Decision::NeedsLiveSnapshot => None,
        }
    }
}

/// Whether the requester or the Backup is exempt from the checks.
pub fn is_exempt(policy: &Policy, req: &BackupRequest) -> bool {
    policy
        .exemptions
        .cover(&req.labels, &req.username, &req.groups)
}

/// True when Longhorn's own service account (in the Backup's namespace) is asking.
pub fn is_longhorn(policy: &Policy, req: &BackupRequest) -> bool {
    req.username
        == format!(
            "system:serviceaccount:{}:{}",
            req.namespace, policy.longhorn_service_account
        )
}

/// Decides a Backup CREATE. See the module docs for the status codes.
pub fn decide(policy: &Policy, view: &IndexView<'_>, req: &BackupRequest) -> Decision {
    let decision = checks::decide_enforced(policy, view, req);
    match (policy.mode, decision) {
        (Mode::WarnOnly, Decision::Deny(d)) => {
            let mut warnings = vec![format!("warn-only mode, would deny: {}", d.message)];
            warnings.extend(d.warnings);
            Decision::Allow {
                reason: d.reason,
                warnings,
            }
        }
        (_, other) => other,
    }
}

struct Subject<'r> {
    req: &'r BackupRequest,
    volume: Option<String>,
}

impl Subject<'_> {
    fn describe(&self) -> String {
        format!(
            "{} in namespace {:?} (snapshot {:?}, volume {})",
            self.req.display_name(),
            self.req.namespace,
            self.req.snapshot,
            match &self.volume {
                Some(v) => format!("{v:?}"),
                None => "unknown".to_string(),
            }
        )
    }

    fn deny(&self, reason: Reason, what: &str, todo: &str) -> Denial {
        let note = longhorn_note(self.req.longhorn, reason)
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        Denial {
            reason,
            code: reason.status_code(),
            message: format!(
                "longhorn-guard denied {}: {what} [{}]. {todo}{note}",
                self.describe(),
                reason.as_str()
            ),
            warnings: Vec::new(),
        }
    }

    fn warning(&self, reason: Reason, what: &str) -> String {
        format!(
            "longhorn-guard: {}: {what} [{}]",
            self.describe(),
            reason.as_str()
        )
    }
}

/// What a denial means next to Longhorn's own validator, on releases that have one that
/// checks snapshots (1.10+): whether Longhorn refuses the Backup too, or, when it would
/// admit it, why the guard does not. `None` on other releases and for other reasons.
pub fn longhorn_note(release: Option<Release>, reason: Reason) -> Option<&'static str> {
    if !release.is_some_and(Release::validates_snapshots) {
        return None;
    }
    Some(match reason {
        Reason::SnapshotMissing => {
            "Longhorn 1.10+ refuses this Backup too (its validator answers \"snapshot <nil> is invalid\")."
        }
        Reason::SnapshotOtherVolume => {
            "Longhorn 1.10+ refuses this Backup too (its validator: \"snapshot volume name ... and label volume name ... does not match\")."
        }
        Reason::SnapshotRemoved | Reason::SnapshotLost => {
            "Longhorn 1.10+ alone would admit it (its validator only checks that the Snapshot object exists); longhorn-guard refuses it because such a Backup never completes: it waits in Pending, then Error, keeping the volume attached meanwhile."
        }
        Reason::SnapshotNotReady => {
            "Longhorn 1.10+ alone would admit it and wait for the snapshot; longhorn-guard refuses it because its policy says snapshotNotReady: deny."
        }
        Reason::EmptySnapshotName => {
            "Longhorn 1.10+ alone would admit it (an empty snapshotName is allowed); longhorn-guard refuses it because its policy says emptySnapshotName: deny-unless-longhorn."
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
