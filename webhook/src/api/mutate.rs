//! `POST /mutate/backups`: sets `spec.backupMode: full` for the volumes the policy names
//! (off by default; then every Backup passes unchanged).

use axum::Json;
use axum::extract::State;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};

use super::AppState;
use super::review::{ParsedReview, backup_create, operation_label};
use crate::decision::{Reason, full_backup_patch};

pub(super) async fn mutate_backup(
    State(state): State<AppState>,
    review: ParsedReview,
) -> Json<AdmissionReview<DynamicObject>> {
    let _timer = state.metrics.time_review("mutate");
    let req = &review.request;
    let operation = operation_label(&req.operation);
    let (_, backup) = match backup_create(&state, req) {
        Ok(checked) => checked,
        Err(answer) => return Json(*answer),
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
