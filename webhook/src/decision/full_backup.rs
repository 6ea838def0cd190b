//! The mutating rule (`/mutate/backups`): force `spec.backupMode: full` on chosen volumes.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};

use super::BackupRequest;
use crate::index::{IndexView, SnapshotLookup};
use crate::policy::Policy;

/// The mutating rule: the JSON patch setting `spec.backupMode: full` when the Backup's
/// volume is listed in the policy or carries the policy's volume label; `None` when
/// nothing is to change (disabled, already full, other volume).
pub fn full_backup_patch(
    policy: &Policy,
    view: &IndexView<'_>,
    req: &BackupRequest,
) -> Option<(String, Patch)> {
    let rule = &policy.full_backup;
    if !rule.enabled || req.backup_mode.as_deref() == Some("full") {
        return None;
    }
    let volume = match req.volume_label() {
        Some(v) => v.to_string(),
        None => match view.snapshot(&req.namespace, &req.snapshot) {
            SnapshotLookup::Indexed(f) | SnapshotLookup::Live(f) => f.volume?,
            _ => return None,
        },
    };
    let listed = rule.volumes.contains(&volume);
    let labelled = view
        .volume(&req.namespace, &volume)
        .is_some_and(|v| v.full_backup_label);
    if !(listed || labelled) {
        return None;
    }
    let op = if req.has_spec {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec", "backupMode"]),
            value: serde_json::Value::String("full".into()),
        })
    } else {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec"]),
            value: serde_json::json!({ "backupMode": "full" }),
        })
    };
    Some((volume, Patch(vec![op])))
}
