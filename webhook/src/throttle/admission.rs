//! Where the throttle meets the validating handler: runs after the snapshot checks on
//! every Backup they allowed (except top-level exemptions), and turns a throttle denial
//! into a 429 [`Decision::Deny`].

use crate::api::AppState;
use crate::decision::{BackupRequest, Decision, Denial, Reason};
use crate::index::SnapshotLookup;
use crate::policy::{Mode, Policy};

use super::{Now, ThrottleOutcome, ThrottleRequest};

/// Applies the throttle to `base`, the snapshot checks' decision.
pub fn throttle_decision(
    state: &AppState,
    policy: &Policy,
    backup: &BackupRequest,
    uid: &str,
    recurring_job: Option<String>,
    dry_run: bool,
    base: Decision,
) -> Decision {
    let Decision::Allow {
        reason,
        mut warnings,
    } = base
    else {
        return base;
    };
    if reason == Reason::Exempt || !policy.throttle.enabled {
        return Decision::Allow { reason, warnings };
    }
    let mut req = ThrottleRequest::from_backup(backup, uid, recurring_job, dry_run);
    let warn_only_override;
    let tp = if policy.mode == Mode::WarnOnly && policy.throttle.mode != Mode::WarnOnly {
        warn_only_override = crate::throttle::policy::ThrottlePolicy {
            mode: Mode::WarnOnly,
            ..policy.throttle.clone()
        };
        &warn_only_override
    } else {
        &policy.throttle
    };
    let outcome = {
        let view = state.index.view();
        if req.volume.is_none()
            && let SnapshotLookup::Indexed(f) = view.snapshot(&req.namespace, &req.snapshot)
        {
            req.volume = f.volume;
        }
        state.throttle.admit(tp, &view, &req, Now::system())
    };
    match outcome {
        ThrottleOutcome::Skipped => Decision::Allow { reason, warnings },
        ThrottleOutcome::Allowed {
            warnings: more,
            warned,
            ..
        } => {
            if let Some(scope) = warned {
                state.metrics.throttle.warned(scope);
            }
            warnings.extend(more);
            let reason = match (reason, warned) {
                (Reason::Checked, Some(_)) => Reason::Throttled,
                (r, _) => r,
            };
            Decision::Allow { reason, warnings }
        }
        ThrottleOutcome::Denied(d) => {
            state.metrics.throttle.throttled(d.scope);
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
