//! The node-verdict check (issue #19, policy `nodeProtection`): a Backup whose volume is on a
//! node whose longhorn-manager the node's agent judged `leaking` is refused (403), one on a
//! `degrading` node is admitted with a warning. Pure: the verdicts are an explicit input
//! ([`VerdictView`], judged at its own `now`); an expired verdict (its agent stopped renewing
//! the Lease) protects nothing, and a verdict that clears releases the node at the next review.
//!
//! It runs after the snapshot checks ([`super::decide`]) on what they admit: a Backup refused
//! for its snapshot stays refused for that reason, and an exempt request stays exempt.

use std::borrow::Cow;

use node_verdict::Verdict;

use super::{BackupRequest, Decision, Reason, Subject, decide};
use crate::index::{IndexView, SnapshotLookup};
use crate::node_verdicts::{NodeRecord, VerdictView};
use crate::policy::{ManualBackups, Mode, Policy, ProtectionMode};

/// Where to read what a refusal means and what to do.
pub const RUNBOOK: &str = "docs/runbook.md#longhornguardnodeleaking";

/// A Backup held back by a node's verdict, for `backups_held_by_node_verdict_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub node: String,
    /// `denied` or `warned`.
    pub action: &'static str,
}

/// [`decide`], then [`node_check`] on its answer.
pub fn decide_with_nodes(
    policy: &Policy,
    view: &IndexView<'_>,
    verdicts: &VerdictView<'_>,
    req: &BackupRequest,
) -> (Decision, Option<Held>) {
    node_check(policy, view, verdicts, req, decide(policy, view, req))
}

/// The volume a Backup is of: its `backup-volume` label, else its Snapshot's volume.
fn backup_volume<'r>(view: &IndexView<'_>, req: &'r BackupRequest) -> Option<Cow<'r, str>> {
    if let Some(v) = req.volume_label() {
        return Some(Cow::Borrowed(v));
    }
    match view.snapshot(&req.namespace, &req.snapshot) {
        SnapshotLookup::Indexed(f) | SnapshotLookup::Live(f) => f.volume.map(Cow::Owned),
        SnapshotLookup::ConfirmedMissing | SnapshotLookup::NotIndexed => None,
    }
}

/// Applies the verdict of the Backup's node to `decision` (only to an admission that is not an
/// exemption; denials and live-lookup requests pass through). While every node is healthy this
/// costs one comparison.
pub fn node_check(
    policy: &Policy,
    view: &IndexView<'_>,
    verdicts: &VerdictView<'_>,
    req: &BackupRequest,
    decision: Decision,
) -> (Decision, Option<Held>) {
    let np = &policy.node_protection;
    let Decision::Allow { reason, warnings } = decision else {
        return (decision, None);
    };
    let unchanged = |warnings| (Decision::Allow { reason, warnings }, None);
    // An exempt request (top-level exemptions) was allowed as `Exempt` by `decide`.
    if np.mode == ProtectionMode::Off || reason == Reason::Exempt || !verdicts.any_unhealthy() {
        return unchanged(warnings);
    }
    let Some(volume) = backup_volume(view, req) else {
        return unchanged(warnings);
    };
    let Some(node) = view.volume_node(&req.namespace, &volume) else {
        return unchanged(warnings);
    };
    let Some(record) = verdicts.holding(node) else {
        return unchanged(warnings);
    };
    if np.exemptions.cover(&req.labels, &req.username, &req.groups) {
        return unchanged(warnings);
    }
    let allowed = Allowed { reason, warnings };
    hold(policy, req, volume.into_owned(), node, record, allowed)
}

/// What the checks before this one admitted with.
struct Allowed {
    reason: Reason,
    warnings: Vec<String>,
}

/// The answer for a Backup of `volume` on `node`, whose verdict `record` holds Backups back.
fn hold(
    policy: &Policy,
    req: &BackupRequest,
    volume: String,
    node: &str,
    record: &NodeRecord,
    allowed: Allowed,
) -> (Decision, Option<Held>) {
    let np = &policy.node_protection;
    let Allowed { reason, warnings } = allowed;
    let subject = Subject {
        req,
        volume: Some(volume),
    };
    let held = |action| {
        Some(Held {
            node: node.to_string(),
            action,
        })
    };
    let warn = |mut warnings: Vec<String>, why: Reason, what: &str| {
        warnings.push(subject.warning(why, what));
        let reason = if warnings.len() == 1 { why } else { reason };
        (Decision::Allow { reason, warnings }, held("warned"))
    };
    match record.verdict {
        Verdict::Healthy => (Decision::Allow { reason, warnings }, None),
        Verdict::Degrading => warn(
            warnings,
            Reason::NodeDegrading,
            &format!(
                "node {node:?} is degrading: {}; Backups of its volumes will be refused if it turns leaking (see {RUNBOOK})",
                evidence(record)
            ),
        ),
        Verdict::Leaking => {
            let what = format!("node {node:?} is leaking: {}", evidence(record));
            let todo = format!(
                "Backups of volumes on this node are held back until its agent reports it healthy again (the next review after that is admitted): find and fix what makes longhorn-manager leak (stuck Backups, a Longhorn bug), or restart it on that node; see {RUNBOOK}."
            );
            if req.recurring_job.is_none() && np.manual_backups == ManualBackups::AllowWithWarning {
                return warn(
                    warnings,
                    Reason::NodeLeaking,
                    &format!(
                        "{what}; admitted because it is a manual Backup (policy nodeProtection.manualBackups: allow-with-warning)"
                    ),
                );
            }
            let mut denial = subject.deny(Reason::NodeLeaking, &what, &todo);
            if np.mode == ProtectionMode::Warn || policy.mode == Mode::WarnOnly {
                let section = if np.mode == ProtectionMode::Warn {
                    "nodeProtection.mode: warn"
                } else {
                    "mode: warn-only"
                };
                let mut all = vec![format!("{section}, would deny: {}", denial.message)];
                all.extend(warnings);
                return (
                    Decision::Allow {
                        reason: Reason::NodeLeaking,
                        warnings: all,
                    },
                    held("warned"),
                );
            }
            denial.warnings = warnings;
            (Decision::Deny(denial), held("denied"))
        }
    }
}

/// The verdict's figures, since when, and why, for people.
fn evidence(record: &NodeRecord) -> String {
    let e = &record.evidence;
    let mut text = format!("its longhorn-manager holds {}", e.summary());
    if !e.since.is_empty() {
        text.push_str(&format!(", {} since {}", record.verdict, e.since));
    }
    if !e.reason.is_empty() {
        text.push_str(&format!(" ({})", e.reason));
    }
    text.push_str(&format!(
        " [verdict Lease {:?} by {:?}]",
        record.lease, record.holder
    ));
    text
}
