//! `POST /mutate/backups`: sets `spec.backupMode: full` for the volumes the policy names
//! (off by default; then every Backup passes unchanged).

use axum::Json;
use axum::extract::State;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};

use super::AppState;
use super::review::{Review, invalid_review};
use super::validate::{is_backup_create, operation_label, unexpected};
use crate::decision::{BackupRequest, Reason, full_backup_patch};

pub(super) async fn mutate_backup(
    State(state): State<AppState>,
    review: Review,
) -> Json<AdmissionReview<DynamicObject>> {
    let _timer = state.metrics.time_review("mutate");
    let req = &review.request;
    let operation = operation_label(&req.operation);
    if !is_backup_create(req) {
        state
            .metrics
            .review(operation, "warned", Reason::Unexpected);
        return Json(unexpected(req).into_review());
    }
    let Some(obj) = req.object.as_ref() else {
        state.metrics.malformed("invalid_object");
        state
            .metrics
            .review(operation, "invalid", Reason::Malformed);
        return Json(invalid_review(&req.uid, "CREATE review carries no object"));
    };
    let backup = match BackupRequest::from_object(
        obj,
        req.namespace.as_deref(),
        req.user_info.username.as_deref().unwrap_or_default(),
        req.user_info.groups.as_deref().unwrap_or_default(),
    ) {
        Ok(b) => b,
        Err(problem) => {
            state.metrics.malformed("invalid_object");
            state
                .metrics
                .review(operation, "invalid", Reason::Malformed);
            return Json(invalid_review(&req.uid, &problem));
        }
    };
    let patch = full_backup_patch(&state.policy(), &state.index.view(), &backup);
    let resp = AdmissionResponse::from(req);
    let Some((volume, patch)) = patch else {
        state
            .metrics
            .review(operation, "allowed", Reason::Unchanged);
        return Json(resp.into_review());
    };
    match resp.with_patch(patch) {
        Ok(resp) => {
            state
                .metrics
                .review(operation, "patched", Reason::FullBackupPatched);
            tracing::info!(
                uid = %req.uid, namespace = %backup.namespace, backup = %backup.display_name(),
                volume = %volume, dry_run = req.dry_run, "backupMode set to full"
            );
            Json(resp.into_review())
        }
        Err(error) => {
            // Serializing a two-field patch cannot fail in practice; allow unchanged.
            tracing::error!(uid = %req.uid, %error, "cannot serialize the full-backup patch");
            state
                .metrics
                .review(operation, "allowed", Reason::Unchanged);
            Json(AdmissionResponse::from(req).into_review())
        }
    }
}
