//! `POST /validate/backups`: the validating webhook.

use axum::Json;
use axum::extract::State;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use super::AppState;
use super::review::{ParsedReview, backup_create, operation_label};
use crate::decision::{BackupRequest, Decision, Reason, decide_with_nodes};
use crate::index::IndexView;
use crate::index::LiveSnapshot;
use crate::metrics::LookupOutcome;
use crate::policy::{FailMode, Policy};

fn k8s_reason(code: u16) -> &'static str {
    match code {
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "BadRequest",
    }
}

/// Turns a final decision into a response.
pub(super) fn respond(
    req: &AdmissionRequest<DynamicObject>,
    decision: &Decision,
) -> AdmissionResponse {
    let base = AdmissionResponse::from(req);
    match decision {
        Decision::Allow { warnings, .. } => {
            let mut resp = base;
            if !warnings.is_empty() {
                resp.warnings = Some(warnings.clone());
            }
            resp
        }
        Decision::Deny(d) => {
            let mut resp = base.deny(&d.message);
            resp.result.code = d.code;
            resp.result.reason = k8s_reason(d.code).to_string();
            if !d.warnings.is_empty() {
                resp.warnings = Some(d.warnings.clone());
            }
            resp
        }
        // Never returned to here; answered as a failed lookup to stay total.
        Decision::NeedsLiveSnapshot => base,
    }
}

/// What the deadline or a failed lookup yields, per policy.
pub(super) fn fail_decision(state: &AppState, reason: Reason, what: String) -> Decision {
    match state.policy().on_deadline {
        FailMode::Open => Decision::Allow {
            reason,
            warnings: vec![format!(
                "longhorn-guard: {what}; allowed unchecked (policy onDeadline: open) [{}]",
                reason.as_str()
            )],
        },
        FailMode::Closed => Decision::Deny(crate::decision::Denial {
            reason,
            code: reason.status_code(),
            message: format!(
                "longhorn-guard could not check this Backup: {what} [{}]. Retry shortly.",
                reason.as_str()
            ),
            warnings: Vec::new(),
        }),
    }
}

pub(super) async fn validate_backup(
    State(state): State<AppState>,
    review: ParsedReview,
) -> Json<AdmissionReview<DynamicObject>> {
    let _timer = state.metrics.time_review("validate");
    let req = &review.request;
    let operation = operation_label(&req.operation);
    let deadline = state.policy().deadline();
    let (obj, backup) = match backup_create(&state, req) {
        Ok(checked) => checked,
        Err(answer) => return Json(*answer),
    };
    let policy = state.policy();
    let review_deadline = std::time::Instant::now() + deadline;
    let decision = match tokio::time::timeout(deadline, async {
        let cr_decision = decide_with_lookup(&state, &policy, &backup).await;
        crate::engine_truth::verify_review(
            state.engine_truth.get(),
            &policy,
            &state.index,
            &backup,
            cr_decision,
            review_deadline,
        )
        .await
    })
    .await
    {
        Ok(d) => d,
        Err(_) => {
            state.metrics.deadline_exceeded.inc();
            fail_decision(
                &state,
                Reason::DeadlineExceeded,
                format!(
                    "no decision within the {} ms deadline for {} in namespace {:?} (snapshot {:?})",
                    state.policy().deadline_ms,
                    backup.display_name(),
                    backup.namespace,
                    backup.snapshot
                ),
            )
        }
    };
    let decision = crate::throttle::admission::throttle_decision(
        state.throttle_inputs(),
        &policy,
        &backup,
        &req.uid,
        crate::throttle::recurring_job_of(obj),
        req.dry_run,
        decision,
    );
    let reason = decision.reason().unwrap_or(Reason::Checked);
    state.metrics.review(operation, decision.label(), reason);
    if let Decision::Deny(denial) = &decision {
        record_refusal(&state, &backup, denial, req.dry_run);
    }
    tracing::info!(
        uid = %req.uid,
        namespace = %backup.namespace,
        backup = %backup.display_name(),
        snapshot = %backup.snapshot,
        user = %backup.username,
        dry_run = req.dry_run,
        decision = decision.label(),
        reason = reason.as_str(),
        "backup review"
    );
    Json(respond(req, &decision).into_review())
}

/// Hands a refused Backup to the Event writer (never waits; not for dry runs, which must have
/// no side effects; not when the policy turns Events off).
fn record_refusal(
    state: &AppState,
    backup: &BackupRequest,
    denial: &crate::decision::Denial,
    dry_run: bool,
) {
    let Some(sink) = state.events.get() else {
        return;
    };
    if dry_run || !state.policy().events.enabled {
        return;
    }
    sink.record(crate::events::Refusal {
        namespace: backup.namespace.clone(),
        backup: backup.display_name(),
        snapshot: backup.snapshot.clone(),
        volume_label: backup.volume_label().map(str::to_string),
        reason: denial.reason,
        message: denial.message.clone(),
        requester: backup.username.clone(),
    });
}

/// Decides, doing the live GET when the index misses the snapshot. Waits for a permit.
async fn decide_with_lookup(state: &AppState, policy: &Policy, backup: &BackupRequest) -> Decision {
    // The semaphore is never closed; if it were, deciding unbounded beats failing.
    let _permit = state.permits.acquire().await.ok();
    let first = decide_on(state, policy, &state.index.view(), backup);
    if first != Decision::NeedsLiveSnapshot {
        return first;
    }
    let live = match state
        .snapshots
        .get(&backup.namespace, &backup.snapshot)
        .await
    {
        Ok(Some(facts)) => {
            state.metrics.live_get(LookupOutcome::Found);
            LiveSnapshot::Found(facts)
        }
        Ok(None) => {
            state.metrics.live_get(LookupOutcome::NotFound);
            LiveSnapshot::NotFound
        }
        Err(error) => {
            state.metrics.live_get(LookupOutcome::Error);
            tracing::warn!(%error, "live snapshot lookup failed");
            return fail_decision(state, Reason::LookupFailed, error.to_string());
        }
    };
    let view = state
        .index
        .view()
        .with_live_snapshot(&backup.namespace, &backup.snapshot, live);
    match decide_on(state, policy, &view, backup) {
        // Cannot happen with the overlay in place; fail per policy rather than loop.
        Decision::NeedsLiveSnapshot => fail_decision(
            state,
            Reason::LookupFailed,
            format!(
                "Snapshot {:?} still unknown after a live lookup",
                backup.snapshot
            ),
        ),
        d => d,
    }
}

/// The decision on `view` with the nodes' verdicts as they are now (`crate::node_verdicts`),
/// counting a Backup held back by one.
fn decide_on(
    state: &AppState,
    policy: &Policy,
    view: &IndexView<'_>,
    backup: &BackupRequest,
) -> Decision {
    let (decision, held) = decide_with_nodes(policy, view, &state.node_verdicts.view(), backup);
    if let Some(held) = held {
        state.metrics.node_verdicts.held(&held.node, held.action);
    }
    decision
}
