//! [`BackupRequest`]: what the decision needs from a Backup CREATE, parsed once from the
//! review's object.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use longhorn_types::{Release, labels};

/// What the decision needs from a Backup CREATE request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupRequest {
    pub namespace: String,
    /// `metadata.name`; empty when the client uses `generateName`.
    pub name: String,
    pub generate_name: String,
    /// `spec.snapshotName`.
    pub snapshot: String,
    /// `spec.backupMode`, if set.
    pub backup_mode: Option<String>,
    pub has_spec: bool,
    /// `metadata.labels` of the Backup.
    pub labels: BTreeMap<String, String>,
    pub username: String,
    pub groups: Vec<String>,
    /// The cluster's Longhorn release (`crate::version`), `None` when unknown. Not read from
    /// the object: the caller sets it.
    pub longhorn: Option<Release>,
    /// `spec.labels.RecurringJob`: the recurring job that created it; `None` = a manual Backup.
    pub recurring_job: Option<String>,
}

impl BackupRequest {
    /// Reads a Backup object leniently: unknown fields are ignored, missing ones are empty;
    /// only fields of the wrong JSON type are errors.
    pub fn from_object(
        obj: &DynamicObject,
        request_namespace: Option<&str>,
        username: &str,
        groups: &[String],
    ) -> Result<Self, String> {
        let spec = obj.data.get("spec");
        let field = |key: &str| -> Result<Option<String>, String> {
            match spec.and_then(|s| s.get(key)) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!(
                    "spec.{key} must be a string, got {}",
                    json_type(other)
                )),
            }
        };
        if let Some(s) = spec
            && !(s.is_object() || s.is_null())
        {
            return Err(format!("spec must be an object, got {}", json_type(s)));
        }
        let namespace = request_namespace
            .filter(|n| !n.is_empty())
            .or(obj.metadata.namespace.as_deref())
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            namespace,
            name: obj.metadata.name.clone().unwrap_or_default(),
            generate_name: obj.metadata.generate_name.clone().unwrap_or_default(),
            snapshot: field("snapshotName")?.unwrap_or_default(),
            backup_mode: field("backupMode")?,
            has_spec: spec.is_some_and(|s| s.is_object()),
            labels: obj
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            username: username.to_string(),
            groups: groups.to_vec(),
            longhorn: None,
            recurring_job: recurring_job_of(obj),
        })
    }

    /// `backup-volume` label, if set and non-empty.
    pub fn volume_label(&self) -> Option<&str> {
        self.label(labels::BACKUP_VOLUME)
    }

    /// `backup-target` label (1.8+), if set and non-empty.
    pub fn target_label(&self) -> Option<&str> {
        self.label(labels::BACKUP_TARGET)
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `Backup "name"` or `Backup with generateName "prefix"`, for messages.
    pub fn display_name(&self) -> String {
        backup_display_name(&self.name, &self.generate_name)
    }
}

/// `spec.labels.RecurringJob` of a Backup object, if set and a non-empty string.
pub fn recurring_job_of(obj: &DynamicObject) -> Option<String> {
    obj.data
        .get("spec")?
        .get("labels")?
        .get(labels::RECURRING_JOB)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `Backup "name"`, `Backup with generateName "prefix"` or `Backup (no name)`.
pub fn backup_display_name(name: &str, generate_name: &str) -> String {
    if !name.is_empty() {
        format!("Backup {name:?}")
    } else if !generate_name.is_empty() {
        format!("Backup with generateName {generate_name:?}")
    } else {
        "Backup (no name)".to_string()
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
