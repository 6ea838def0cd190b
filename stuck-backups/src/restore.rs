//! `prune --restore FILE`: recreate the Backups `prune` deleted, from its restore file.
//!
//! Every Backup in a restore file had its snapshot gone, so a plain `kubectl create -f` of
//! the file is refused by longhorn-guard (`snapshot_missing`, `snapshot_removed`, ...) and,
//! for a missing Snapshot, by Longhorn 1.10+'s own validator. The restore marks each Backup
//! it recreates with [`RESTORED_LABEL`] and [`RESTORED_FROM_ANNOTATION`]; a guard whose
//! policy exempts that label (`exemptions.labels`, see the README) admits them. Each Backup
//! is created on its own: one refusal does not stop the others, and the file is never
//! changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use longhorn_types::Backup;
use serde::Serialize;
use serde_json::Value;

/// The label a restored Backup carries: the policy exemption the restore is entitled to
/// (`exemptions.labels: {longhorn-guard.io/restored-by-prune: "true"}`).
pub const RESTORED_LABEL: &str = "longhorn-guard.io/restored-by-prune";
/// The annotation saying where a restored Backup came from.
pub const RESTORED_FROM_ANNOTATION: &str = "longhorn-guard.io/restored-from";

/// What a restore did, Backup by Backup.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreOutcome {
    pub file: PathBuf,
    pub restored: Vec<String>,
    /// A Backup of that name exists already: left as it is.
    pub already_present: Vec<String>,
    /// Backup name → why it was not recreated (the API server's or a webhook's answer).
    pub refused: Vec<(String, String)>,
}

/// Recreates the Backups of restore file `file` in `namespace` (see the module docs).
pub async fn restore(
    client: kube::Client,
    namespace: &str,
    file: &Path,
) -> anyhow::Result<RestoreOutcome> {
    let items = read_restore_file(file)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, namespace, &ApiResource::erase::<Backup>(&()));
    let mut outcome = RestoreOutcome {
        file: file.to_path_buf(),
        ..Default::default()
    };
    for (i, item) in items.into_iter().enumerate() {
        let name = item["metadata"]["name"]
            .as_str()
            .map_or_else(|| format!("(item {i} without a name)"), str::to_string);
        let object = match restored_object(item, namespace, file) {
            Ok(o) => o,
            Err(why) => {
                outcome.refused.push((name, why));
                continue;
            }
        };
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                tracing::info!(backup = %name, %namespace, file = %file.display(), "restored Backup");
                outcome.restored.push(name);
            }
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {
                outcome.already_present.push(name);
            }
            Err(kube::Error::Api(e)) => {
                let why = format!("{}{}", e.message, hint(&e.message));
                outcome.refused.push((name, why));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "creating Backup {namespace}/{name} from restore file {} (restored so far: {:?})",
                        file.display(),
                        outcome.restored
                    )
                });
            }
        }
    }
    Ok(outcome)
}

/// The item as a Backup to create: checked to be a longhorn.io/v1beta2 Backup of
/// `namespace`, `status` dropped, marked with the restore label and annotation.
fn restored_object(mut item: Value, namespace: &str, file: &Path) -> Result<DynamicObject, String> {
    if item["apiVersion"] != "longhorn.io/v1beta2" || item["kind"] != "Backup" {
        return Err(format!(
            "not a longhorn.io/v1beta2 Backup (apiVersion {}, kind {})",
            item["apiVersion"], item["kind"]
        ));
    }
    let item_ns = item["metadata"]["namespace"].as_str().unwrap_or(namespace);
    if item_ns != namespace {
        return Err(format!(
            "it belongs to namespace {item_ns:?}, not {namespace:?}: run the restore with -n {item_ns}"
        ));
    }
    if let Some(obj) = item.as_object_mut() {
        obj.remove("status");
    }
    let meta = &mut item["metadata"];
    meta["namespace"] = Value::String(namespace.to_string());
    meta["labels"][RESTORED_LABEL] = Value::String("true".into());
    meta["annotations"][RESTORED_FROM_ANNOTATION] = Value::String(format!(
        "deleted by longhorn-guard prune; recreated by `longhorn-guard prune --restore {}`",
        file.display()
    ));
    serde_json::from_value(item).map_err(|e| format!("not a valid object: {e}"))
}

/// What to do about a refusal, when the answer says who refused.
fn hint(message: &str) -> &'static str {
    if message.contains("longhorn-guard denied") {
        " (the guard refuses a Backup whose snapshot is gone: to restore it, exempt the restore in the guard's policy with exemptions.labels: {longhorn-guard.io/restored-by-prune: \"true\"}, see the README, then run the restore again)"
    } else if message.contains("validator.longhorn.io") || message.contains("mutator.longhorn.io") {
        " (Longhorn's own admission refuses it: Longhorn 1.10+ admits no Backup whose Snapshot object is missing; it can be restored only once such a Snapshot exists)"
    } else {
        ""
    }
}

/// Fails when nothing in `file` could be read as a list of items (not a restore file).
pub(crate) fn items_of(list: Value, file: &Path) -> anyhow::Result<Vec<Value>> {
    match list.get("items") {
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(Value::Null) => Ok(Vec::new()),
        _ => bail!(
            "{} is not a restore file written by longhorn-guard prune (no items list)",
            file.display()
        ),
    }
}

/// The Backups a restore file holds (as `prune` writes it); an error when the file is not one.
pub fn read_restore_file(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading restore file {}", path.display()))?;
    let list: Value = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing restore file {}", path.display()))?;
    items_of(list, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file() -> PathBuf {
        PathBuf::from("/tmp/restore.yaml")
    }

    #[test]
    fn a_restored_backup_is_marked_and_loses_its_status() {
        let mut item = longhorn_types::shapes::backup("ns", "b", "vol-1", "snap", None);
        item["status"] = json!({ "state": "Pending" });
        let obj = restored_object(item.clone(), "ns", &file()).unwrap();
        let v = serde_json::to_value(&obj).unwrap();
        assert!(v.get("status").is_none(), "{v}");
        assert_eq!(v["spec"], item["spec"]);
        assert_eq!(v["metadata"]["labels"][RESTORED_LABEL], "true");
        assert_eq!(v["metadata"]["labels"]["backup-volume"], "vol-1");
        assert!(
            v["metadata"]["annotations"][RESTORED_FROM_ANNOTATION]
                .as_str()
                .is_some_and(|a| a.contains("--restore /tmp/restore.yaml")),
            "{v}"
        );
    }

    #[test]
    fn items_that_are_not_backups_of_the_namespace_are_refused_with_the_reason() {
        let other_kind =
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c" } });
        let why = restored_object(other_kind, "ns", &file()).unwrap_err();
        assert!(why.contains("not a longhorn.io/v1beta2 Backup"), "{why}");
        let other_ns = longhorn_types::shapes::backup("elsewhere", "b", "vol-1", "snap", None);
        let why = restored_object(other_ns, "ns", &file()).unwrap_err();
        assert!(why.contains("run the restore with -n elsewhere"), "{why}");
    }

    #[test]
    fn a_file_that_is_not_a_restore_file_is_an_error_naming_it() {
        let err = items_of(json!({ "kind": "Backup" }), &file()).unwrap_err();
        assert!(
            err.to_string()
                .contains("/tmp/restore.yaml is not a restore file"),
            "{err}"
        );
        assert!(
            items_of(json!({ "items": null }), &file())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        assert!(hint("admission webhook \"backups.longhorn-guard.io\" denied the request: longhorn-guard denied Backup").contains("exemptions.labels"));
        assert!(hint("admission webhook \"validator.longhorn.io\" denied the request: snapshot <nil> is invalid").contains("Longhorn 1.10+"));
        assert_eq!(hint("etcdserver: request timed out"), "");
    }
}
