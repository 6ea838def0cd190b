//! [`ThrottleRequest`]: what the throttle needs from a Backup CREATE, and whether its
//! exemptions cover it.

use std::collections::BTreeMap;

use crate::decision::BackupRequest;
use crate::policy::Exemptions;

/// What the throttle needs from a Backup CREATE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThrottleRequest {
    /// The AdmissionReview uid (reservation key for `generateName` requests).
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub generate_name: String,
    pub snapshot: String,
    /// The volume: `backup-volume` label, else the Snapshot's volume.
    pub volume: Option<String>,
    /// `spec.labels.RecurringJob`.
    pub recurring_job: Option<String>,
    pub username: String,
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Dry runs are checked but take no token and no slot.
    pub dry_run: bool,
}

impl ThrottleRequest {
    pub fn from_backup(
        b: &BackupRequest,
        uid: &str,
        recurring_job: Option<String>,
        dry_run: bool,
    ) -> Self {
        Self {
            uid: uid.to_string(),
            namespace: b.namespace.clone(),
            name: b.name.clone(),
            generate_name: b.generate_name.clone(),
            snapshot: b.snapshot.clone(),
            volume: b.volume_label().map(str::to_string),
            recurring_job,
            username: b.username.clone(),
            groups: b.groups.clone(),
            labels: b.labels.clone(),
            dry_run,
        }
    }

    pub(super) fn display_name(&self) -> String {
        crate::decision::backup_display_name(&self.name, &self.generate_name)
    }
}

/// `spec.labels.RecurringJob` of a Backup object (parsed with the request,
/// [`crate::decision::BackupRequest::recurring_job`]).
pub use crate::decision::recurring_job_of;

/// Whether the throttle exemptions match (label `"*"` = any value; service accounts as
/// `namespace:name`, `*:name`).
pub fn is_exempt(ex: &Exemptions, req: &ThrottleRequest) -> bool {
    ex.cover(&req.labels, &req.username, &req.groups)
}
