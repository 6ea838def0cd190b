//! The `ParsedReview` extractor: reads a size-limited body and parses an `admission.k8s.io/v1`
//! AdmissionReview. A bad body becomes a structured answer, never a panic or a bare 500:
//! HTTP 200 with an invalid AdmissionResponse when the request uid could be read (the API
//! server then shows our message), else HTTP 400 (or 413) with a JSON error.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::AppState;
use crate::decision::{BackupRequest, Reason};

pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// A parsed AdmissionReview request.
pub struct ParsedReview {
    pub request: AdmissionRequest<DynamicObject>,
}

/// Why a body is not a usable AdmissionReview.
#[derive(Debug)]
pub enum ReviewRejection {
    /// The uid was readable: answer 200 with `allowed: false` and this message.
    Invalid { uid: String, message: String },
    /// No uid: HTTP 400.
    BadRequest { message: String },
    /// HTTP 413.
    TooLarge { limit: usize },
}

impl ReviewRejection {
    fn problem(&self) -> &'static str {
        match self {
            ReviewRejection::Invalid { .. } => "invalid_review",
            ReviewRejection::BadRequest { .. } => "unreadable_body",
            ReviewRejection::TooLarge { .. } => "body_too_large",
        }
    }
}

/// The AdmissionReview answering `uid` as invalid, with `message`.
pub fn invalid_review(uid: &str, message: &str) -> AdmissionReview<DynamicObject> {
    let mut resp = AdmissionResponse::invalid(format!("longhorn-guard: {message}"));
    resp.uid = uid.to_string();
    resp.result.code = 400;
    resp.into_review()
}

fn json_error(status: StatusCode, error: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": error, "message": message })),
    )
        .into_response()
}

impl IntoResponse for ReviewRejection {
    fn into_response(self) -> Response {
        match self {
            ReviewRejection::Invalid { uid, message } => {
                (StatusCode::OK, Json(invalid_review(&uid, &message))).into_response()
            }
            ReviewRejection::BadRequest { message } => {
                json_error(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            ReviewRejection::TooLarge { limit } => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "AdmissionReview body exceeds the limit of {limit} bytes (policy maxBodyBytes)"
                ),
            ),
        }
    }
}

impl FromRequest<AppState> for ParsedReview {
    type Rejection = ReviewRejection;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let result = read_review(req, state.policy().max_body_bytes).await;
        if let Err(rejection) = &result {
            state.metrics.malformed(rejection.problem());
            match rejection {
                ReviewRejection::Invalid { uid, message } => {
                    tracing::warn!(uid = %uid, %message, "invalid AdmissionReview");
                }
                other => tracing::warn!(rejection = ?other, "unusable AdmissionReview body"),
            }
        }
        result
    }
}

async fn read_review(req: Request, limit: usize) -> Result<ParsedReview, ReviewRejection> {
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ReviewRejection::TooLarge { limit });
    }
    let bytes = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if too_large {
                ReviewRejection::TooLarge { limit }
            } else {
                ReviewRejection::BadRequest {
                    message: format!("cannot read the request body: {e}"),
                }
            });
        }
    };
    parse_review(&bytes)
}

/// Parses an AdmissionReview v1 with a request.
pub fn parse_review(bytes: &[u8]) -> Result<ParsedReview, ReviewRejection> {
    if bytes.is_empty() {
        return Err(ReviewRejection::BadRequest {
            message: "empty body: expected an admission.k8s.io/v1 AdmissionReview".into(),
        });
    }
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("body is not a valid admission.k8s.io/v1 AdmissionReview: {e}");
            return Err(match readable_uid(bytes) {
                Some(uid) => ReviewRejection::Invalid { uid, message },
                None => ReviewRejection::BadRequest { message },
            });
        }
    };
    let uid = review
        .request
        .as_ref()
        .map(|r| r.uid.clone())
        .unwrap_or_default();
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != "AdmissionReview" {
        let message = format!(
            "expected kind AdmissionReview, apiVersion {REVIEW_API_VERSION}; got kind {:?}, apiVersion {:?}",
            review.types.kind, review.types.api_version
        );
        return Err(if uid.is_empty() {
            ReviewRejection::BadRequest { message }
        } else {
            ReviewRejection::Invalid { uid, message }
        });
    }
    if uid.is_empty() {
        return Err(ReviewRejection::BadRequest {
            message: "AdmissionReview has no request or an empty request.uid".into(),
        });
    }
    match review.try_into() {
        Ok(request) => Ok(ParsedReview { request }),
        Err(_) => Err(ReviewRejection::BadRequest {
            message: "AdmissionReview has no request".into(),
        }),
    }
}

fn readable_uid(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.pointer("/request/uid")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The operation as a metric label.
pub(super) fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// True for CREATE of `longhorn.io/v1beta2` `backups` (no subresource).
pub(super) fn is_backup_create(req: &AdmissionRequest<DynamicObject>) -> bool {
    req.operation == Operation::Create
        && req.resource.group == longhorn_types::GROUP
        && req.resource.version == longhorn_types::VERSION
        && req.resource.resource == "backups"
        && req.sub_resource.as_deref().unwrap_or_default().is_empty()
}

/// The answer to a request the registration should never send.
pub(super) fn unexpected(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let mut resp = AdmissionResponse::from(req);
    resp.warnings = Some(vec![format!(
        "longhorn-guard only checks CREATE of longhorn.io/v1beta2 backups; allowed {} of {}/{}/{}{} unchecked (check the webhook registration's rules)",
        operation_label(&req.operation),
        req.resource.group,
        req.resource.version,
        req.resource.resource,
        req.sub_resource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default(),
    )]);
    resp
}

/// What every Backup endpoint checks before its own work: a CREATE of `longhorn.io/v1beta2`
/// backups (else allowed with a warning, counted `unexpected`) carrying an object that reads
/// as a Backup (else an invalid answer, counted `malformed`). `Err` is the answer to send as
/// is; `Ok` is the object and the request the decision reads (with the Longhorn release the
/// cluster runs).
pub(super) fn backup_create<'r>(
    state: &AppState,
    req: &'r AdmissionRequest<DynamicObject>,
) -> Result<(&'r DynamicObject, BackupRequest), Box<AdmissionReview<DynamicObject>>> {
    let operation = operation_label(&req.operation);
    if !is_backup_create(req) {
        state
            .metrics
            .review(operation, "warned", Reason::Unexpected);
        tracing::warn!(
            uid = %req.uid, operation, resource = %req.resource.resource,
            group = %req.resource.group, "unexpected review allowed with a warning"
        );
        return Err(Box::new(unexpected(req).into_review()));
    }
    let malformed = |message: &str| {
        state.metrics.malformed("invalid_object");
        state
            .metrics
            .review(operation, "invalid", Reason::Malformed);
        Box::new(invalid_review(&req.uid, message))
    };
    let Some(obj) = req.object.as_ref() else {
        return Err(malformed("CREATE review carries no object"));
    };
    let mut backup = BackupRequest::from_object(
        obj,
        req.namespace.as_deref(),
        req.user_info.username.as_deref().unwrap_or_default(),
        req.user_info.groups.as_deref().unwrap_or_default(),
    )
    .map_err(|problem| {
        malformed(&format!(
            "Backup {:?}: {problem}",
            obj.metadata.name.as_deref().unwrap_or_default()
        ))
    })?;
    backup.longhorn = state.longhorn.release();
    Ok((obj, backup))
}
