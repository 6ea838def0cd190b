//! Where the throttle meets the validating handler: runs after the snapshot checks on
//! every Backup they allowed (except top-level exemptions), and turns a throttle denial
//! into a 429 [`Decision::Deny`]. Its inputs are explicit (the throttle, the index, the
//! throttle's metrics): it knows nothing of the HTTP layer.

use std::borrow::Cow;

use crate::decision::{BackupRequest, Decision, Denial, Reason};
use crate::index::{Index, Kind, SnapshotLookup, Trust};
use crate::policy::throttle::ThrottlePolicy;
use crate::policy::{FailMode, Mode, Policy};

use super::{Now, Throttle, ThrottleMetrics, ThrottleOutcome, ThrottleRequest};

/// What the throttle judges with: this replica's throttle state, the index it counts
/// in-flight Backups in, and where its warnings and refusals are counted.
#[derive(Clone, Copy)]
pub struct ThrottleInputs<'a> {
    pub throttle: &'a Throttle,
    pub index: &'a Index,
    pub metrics: &'a ThrottleMetrics,
}

/// Applies the throttle to `base`, the snapshot checks' decision.
pub fn throttle_decision(
    inputs: ThrottleInputs<'_>,
    policy: &Policy,
    backup: &BackupRequest,
    uid: &str,
    recurring_job: Option<String>,
    dry_run: bool,
    base: Decision,
) -> Decision {
    let ThrottleInputs {
        throttle,
        index,
        metrics,
    } = inputs;
    let Decision::Allow { reason, warnings } = base else {
        return base;
    };
    if reason == Reason::Exempt || !policy.throttle.enabled {
        return Decision::Allow { reason, warnings };
    }
    let mut req = ThrottleRequest::from_backup(backup, uid, recurring_job, dry_run);
    req.counts_untrusted = untrusted_counts(index);
    if let Some(why) = &req.counts_untrusted
        && policy.on_deadline == FailMode::Closed
    {
        return uncountable(why, warnings);
    }
    let tp = throttle_policy(policy);
    let outcome = {
        let view = index.view();
        if req.volume.is_none()
            && let SnapshotLookup::Indexed(f) = view.snapshot(&req.namespace, &req.snapshot)
        {
            req.volume = f.volume;
        }
        throttle.admit(&tp, &view, &req, Now::system())
    };
    translate(outcome, reason, warnings, backup, metrics)
}

/// The 503 for a Backup whose in-flight counts cannot be trusted under `onDeadline: closed`.
fn uncountable(why: &str, warnings: Vec<String>) -> Decision {
    Decision::Deny(Denial {
        reason: Reason::LookupFailed,
        code: Reason::LookupFailed.status_code(),
        message: format!(
            "longhorn-guard could not count the Backups in flight: {why} (policy onDeadline: closed) [{}]. Retry shortly.",
            Reason::LookupFailed.as_str()
        ),
        warnings,
    })
}

/// The throttle section the decision runs with: a policy in `warnOnly` makes its throttle
/// warn only too.
fn throttle_policy(policy: &Policy) -> Cow<'_, ThrottlePolicy> {
    if policy.mode == Mode::WarnOnly && policy.throttle.mode != Mode::WarnOnly {
        Cow::Owned(ThrottlePolicy {
            mode: Mode::WarnOnly,
            ..policy.throttle.clone()
        })
    } else {
        Cow::Borrowed(&policy.throttle)
    }
}

/// The throttle's outcome as the handler's decision, counted and logged.
fn translate(
    outcome: ThrottleOutcome,
    reason: Reason,
    mut warnings: Vec<String>,
    backup: &BackupRequest,
    metrics: &ThrottleMetrics,
) -> Decision {
    match outcome {
        ThrottleOutcome::Skipped => Decision::Allow { reason, warnings },
        ThrottleOutcome::Allowed {
            warnings: more,
            warned,
            ..
        } => {
            if let Some(scope) = warned {
                metrics.warned(scope);
            }
            warnings.extend(more);
            let reason = match (reason, warned) {
                (Reason::Checked, Some(_)) => Reason::Throttled,
                (r, _) => r,
            };
            Decision::Allow { reason, warnings }
        }
        ThrottleOutcome::Denied(d) => {
            metrics.throttled(d.scope);
            tracing::info!(
                namespace = %backup.namespace,
                backup = %backup.display_name(),
                snapshot = %backup.snapshot,
                scope = d.scope.as_str(),
                retry_after_seconds = d.retry_after_seconds,
                "backup throttled"
            );
            Decision::Deny(Denial {
                reason: Reason::Throttled,
                code: d.code,
                message: d.message,
                warnings,
            })
        }
    }
}

/// Why the Backups in flight cannot be counted from the index now, if they cannot: the Backup
/// watch is still (re)listing, or has failed for longer than the staleness bound.
fn untrusted_counts(index: &Index) -> Option<String> {
    match index.trust(Kind::Backup) {
        Trust::Trusted { .. } => None,
        Trust::Listing { failing_ms: None } => {
            Some("the webhook is still listing Backups".to_string())
        }
        Trust::Listing {
            failing_ms: Some(failing_ms),
        } => Some(format!(
            "the webhook's Backup watch has failed for {:.1} s and its relist has not completed",
            failing_ms as f64 / 1000.0
        )),
        Trust::Stale { failing_ms } => Some(format!(
            "the webhook's Backup watch has failed for {:.1} s (longer than policy indexStalenessMs)",
            failing_ms as f64 / 1000.0
        )),
    }
}
