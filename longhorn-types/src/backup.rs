//! Longhorn's Backup.

use std::collections::BTreeMap;
use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{label, labels};

/// `Backup.spec`: a request to back up one snapshot of a volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "lhb"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupSpec {
    /// Snapshot CR name (== engine snapshot name). Empty for Backups Longhorn syncs from the target.
    #[serde(default)]
    pub snapshot_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `full`, `incremental` or `""` (Longhorn's mutator turns `""` into `incremental`).
    #[serde(default)]
    pub backup_mode: String,
    #[serde(default)]
    pub sync_requested_at: Option<String>,
}

/// `Backup.status`, as Longhorn's backup controller writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupStatus {
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    /// See [`BackupState`]; `""` is a new Backup.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub progress: i64,
    #[serde(default)]
    pub replica_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub snapshot_name: String,
    #[serde(default)]
    pub snapshot_created_at: String,
    #[serde(default)]
    pub backup_created_at: String,
    #[serde(default)]
    pub size: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Key `info` carries the reason a Backup is Pending.
    #[serde(default)]
    pub messages: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub last_synced_at: Option<String>,
    #[serde(default)]
    pub volume_name: String,
    #[serde(default)]
    pub volume_size: String,
    #[serde(default)]
    pub volume_created: String,
    #[serde(default)]
    pub volume_backing_image_name: String,
    #[serde(default)]
    pub compression_method: String,
    /// Longhorn spells this one without "ed" after "Upload".
    #[serde(default)]
    pub newly_upload_data_size: String,
    #[serde(default)]
    pub re_uploaded_data_size: String,
    /// 1.8+ only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_target_name: String,
}

/// `Backup.status.state`. Terminal states free the Backup's slot; the rest are "in flight".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackupState {
    /// `""`: just created, not yet seen by the backup controller.
    New,
    Pending,
    InProgress,
    Completed,
    Error,
    Unknown,
    /// 1.8+ only; considered final by Longhorn.
    Deleting,
    /// A state string this version of the guard does not know. Counted as in flight: a
    /// guard that under-counts would let a storm through.
    Other(String),
}

impl BackupState {
    pub fn parse(s: &str) -> Self {
        match s {
            "" => Self::New,
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Completed" => Self::Completed,
            "Error" => Self::Error,
            "Unknown" => Self::Unknown,
            "Deleting" => Self::Deleting,
            other => Self::Other(other.to_string()),
        }
    }

    /// The string Longhorn writes.
    pub fn as_str(&self) -> &str {
        match self {
            Self::New => "",
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::Error => "Error",
            Self::Unknown => "Unknown",
            Self::Deleting => "Deleting",
            Self::Other(s) => s,
        }
    }

    /// Completed, Error, Unknown and (1.8+) Deleting are final.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Error | Self::Unknown | Self::Deleting
        )
    }

    /// A name fit for logs and metric labels (`New` for `""`).
    pub fn label(&self) -> &str {
        match self {
            Self::New => "New",
            Self::Other(_) => "Other",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for BackupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Backup {
    /// The state, `New` when there is no status yet.
    pub fn state(&self) -> BackupState {
        BackupState::parse(self.status.as_ref().map_or("", |s| s.state.as_str()))
    }

    /// The `backup-volume` label, if set.
    pub fn volume_label(&self) -> Option<&str> {
        label(&self.metadata, labels::BACKUP_VOLUME)
    }

    /// The `backup-target` label (1.8+), if set.
    pub fn backup_target_label(&self) -> Option<&str> {
        label(&self.metadata, labels::BACKUP_TARGET)
    }

    /// The BackupTarget this Backup goes to on 1.8+: the `backup-target` label, else
    /// `status.backupTargetName`. `None` on 1.7 objects (their target is `default`).
    pub fn backup_target(&self) -> Option<&str> {
        self.backup_target_label().or_else(|| {
            self.status
                .as_ref()
                .map(|s| s.backup_target_name.as_str())
                .filter(|s| !s.is_empty())
        })
    }

    /// The RecurringJob that asked for this Backup, from `spec.labels`.
    pub fn recurring_job(&self) -> Option<&str> {
        self.spec
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::RECURRING_JOB))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_states_match_longhorn() {
        let cases = [
            ("", BackupState::New, false),
            ("Pending", BackupState::Pending, false),
            ("InProgress", BackupState::InProgress, false),
            ("Completed", BackupState::Completed, true),
            ("Error", BackupState::Error, true),
            ("Unknown", BackupState::Unknown, true),
            ("Deleting", BackupState::Deleting, true),
            ("Weird", BackupState::Other("Weird".into()), false),
        ];
        for (s, state, terminal) in cases {
            assert_eq!(BackupState::parse(s), state, "{s:?}");
            assert_eq!(state.is_terminal(), terminal, "{s:?}");
            assert_eq!(state.as_str(), s);
        }
    }
}
