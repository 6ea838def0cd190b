//! `POST /validate/leases`: only a node's own agent writes its verdict Lease
//! (`crate::decision::lease_write`). Registered for CREATE and UPDATE of
//! `coordination.k8s.io/v1` leases in the guard's namespace, selected by the verdict label.

use axum::Json;
use axum::extract::State;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};

use super::AppState;
use super::review::{ParsedReview, operation_label};
use crate::decision::Reason;
use crate::decision::lease_write::{LeaseWrite, NODE_NAME_EXTRA, check_lease_write};

pub(super) async fn validate_lease(
    State(state): State<AppState>,
    review: ParsedReview,
) -> Json<AdmissionReview<DynamicObject>> {
    let _timer = state.metrics.time_review("leases");
    let req = &review.request;
    let operation = operation_label(&req.operation);
    let meta = |o: &Option<DynamicObject>| o.as_ref().map(|o| o.metadata.clone());
    let (new, old) = (meta(&req.object), meta(&req.old_object));
    let requester_node = req
        .user_info
        .extra
        .as_ref()
        .and_then(|e| e.get(NODE_NAME_EXTRA))
        .and_then(|v| v.first())
        .map(String::as_str);
    let write = LeaseWrite {
        namespace: req.namespace.as_deref().unwrap_or_default(),
        name: &req.name,
        labels: new.as_ref().and_then(|m| m.labels.as_ref()),
        annotations: new.as_ref().and_then(|m| m.annotations.as_ref()),
        old_labels: old.as_ref().and_then(|m| m.labels.as_ref()),
        old_annotations: old.as_ref().and_then(|m| m.annotations.as_ref()),
        username: req.user_info.username.as_deref().unwrap_or_default(),
        requester_node,
    };
    let resp = AdmissionResponse::from(req);
    match check_lease_write(&state.policy(), &write) {
        Ok(()) => {
            state.metrics.review(operation, "allowed", Reason::Checked);
            Json(resp.into_review())
        }
        Err(message) => {
            state
                .metrics
                .review(operation, "denied", Reason::VerdictLeaseWriter);
            tracing::warn!(
                uid = %req.uid,
                lease = %req.name,
                user = %write.username,
                requester_node = ?requester_node,
                "verdict Lease write refused: {message}"
            );
            let mut resp = resp.deny(message);
            resp.result.code = Reason::VerdictLeaseWriter.status_code();
            resp.result.reason = "Forbidden".to_string();
            Json(resp.into_review())
        }
    }
}
