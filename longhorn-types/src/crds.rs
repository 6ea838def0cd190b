//! CustomResourceDefinitions for the Longhorn kinds the guard reads, generated from the types
//! in this crate, for clusters without Longhorn: the local control plane of tests and the demo.
//!
//! Schemas are structural: the fields the guard reads are typed, and `spec`/`status` keep
//! every other field (`x-kubernetes-preserve-unknown-fields`) so objects written by any
//! Longhorn release survive a round trip. On a real cluster Longhorn's own CRDs are used.
//!
//! [`for_release`] gives the set of one Longhorn release, typed the way that release's CRDs
//! type them (written from the reference's version tags): 1.7 has no backup-target fields,
//! 1.8 adds `Backup.status.backupTargetName`, `Volume.spec.backupTargetName` and
//! `BackupVolume.spec.{backupTargetName,volumeName}`, 1.10 adds `Backup.spec.backupBlockSize`.
//! These are the fields longhorn-guard's version detection reads. [`all`] is the 1.7 set
//! (the incident release), which the local control plane and the demo install.
//!
//! They are as strict as Longhorn's own where Longhorn's are strict about a field they
//! declare: the enums of [`ENUMS`] (`ublk` joins `Volume.spec.frontend` on 1.10), the
//! required fields of [`REQUIRED`] and `Setting.status.applied`, and no root `spec`
//! required. 1.7 and 1.8 also serve `v1beta1` (not stored; `spec`/`status` kept as given,
//! Setting's `value` required), as Longhorn does for every kind but Snapshot; 1.10 serves
//! `v1beta2` only.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::json;

use crate::release::Release;
use crate::{Backup, BackupTarget, BackupVolume, Engine, InstanceManager, Snapshot, Volume};

/// Every CRD of Longhorn 1.7 (the incident release), Setting last.
pub fn all() -> Vec<CustomResourceDefinition> {
    for_release(Release::V1_7)
}

/// Fields (CRD name, path of properties below the version's `openAPIV3Schema`) that exist
/// from 1.8 on.
pub const SINCE_1_8: &[(&str, &[&str])] = &[
    ("backups.longhorn.io", &["status", "backupTargetName"]),
    ("volumes.longhorn.io", &["spec", "backupTargetName"]),
    ("backupvolumes.longhorn.io", &["spec", "backupTargetName"]),
    ("backupvolumes.longhorn.io", &["spec", "volumeName"]),
];

/// Fields that exist from 1.10 on.
pub const SINCE_1_10: &[(&str, &[&str])] = &[("backups.longhorn.io", &["spec", "backupBlockSize"])];

/// `Backup.spec.backupBlockSize` on 1.10+: an int64 Longhorn encodes as a string.
pub const BACKUP_BLOCK_SIZES: [&str; 3] = ["-1", "2097152", "16777216"];

/// String fields Longhorn's CRDs restrict to an enum (CRD name, path, values), every release.
pub const ENUMS: &[(&str, &[&str], &[&str])] = &[
    (
        "backups.longhorn.io",
        &["spec", "backupMode"],
        &["full", "incremental", ""],
    ),
    (
        "volumes.longhorn.io",
        &["spec", "frontend"],
        &["blockdev", "iscsi", "nvmf", ""],
    ),
    (
        "volumes.longhorn.io",
        &["spec", "dataEngine"],
        &["v1", "v2"],
    ),
    (
        "engines.longhorn.io",
        &["spec", "dataEngine"],
        &["v1", "v2"],
    ),
    (
        "instancemanagers.longhorn.io",
        &["spec", "type"],
        &["aio", "engine", "replica"],
    ),
];

/// `Volume.spec.frontend` from 1.10 on: [`ENUMS`]' values plus `ublk`.
pub const FRONTENDS_SINCE_1_10: [&str; 5] = ["blockdev", "iscsi", "nvmf", "ublk", ""];

/// Fields Longhorn's CRDs require (CRD name, path of the object, field), every release.
pub const REQUIRED: &[(&str, &[&str], &str)] = &[("snapshots.longhorn.io", &["spec"], "volume")];

/// The CRDs that serve `v1beta1` besides `v1beta2` on 1.7 and 1.8 (every one but Snapshot's).
pub const SERVED_AS_V1BETA1_BEFORE_1_10: [&str; 7] = [
    "backups.longhorn.io",
    "volumes.longhorn.io",
    "engines.longhorn.io",
    "instancemanagers.longhorn.io",
    "backuptargets.longhorn.io",
    "backupvolumes.longhorn.io",
    "settings.longhorn.io",
];

/// Every CRD as Longhorn `release` types it, Setting last.
pub fn for_release(release: Release) -> Vec<CustomResourceDefinition> {
    let mut crds = superset();
    for crd in &mut crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        for (_, path, values) in ENUMS.iter().filter(|(n, _, _)| *n == name) {
            let values: &[&str] = if release >= Release::V1_10 && *path == ["spec", "frontend"] {
                &FRONTENDS_SINCE_1_10
            } else {
                values
            };
            edit_schema(crd, |schema| {
                if let Some(p) = property_mut(schema, path) {
                    p["enum"] = json!(values);
                }
            });
        }
        for (_, path, field) in REQUIRED.iter().filter(|(n, _, _)| *n == name) {
            edit_schema(crd, |schema| {
                if let Some(p) = property_mut(schema, path) {
                    p["required"] = json!([field]);
                }
            });
        }
        // Longhorn's CRDs require no root `spec`: an object without one is stored.
        edit_schema(crd, |schema| {
            if let Some(map) = schema.as_object_mut()
                && let Some(required) = map.get_mut("required").and_then(|r| r.as_array_mut())
            {
                required.retain(|f| f != "spec");
                if required.is_empty() {
                    map.remove("required");
                }
            }
        });
        if release < Release::V1_8 {
            for (_, path) in SINCE_1_8.iter().filter(|(n, _)| *n == name) {
                edit_schema(crd, |schema| remove_property(schema, path));
            }
        }
        if release >= Release::V1_10 {
            for (_, path) in SINCE_1_10.iter().filter(|(n, _)| *n == name) {
                edit_schema(crd, |schema| {
                    add_property(
                        schema,
                        path,
                        json!({ "type": "string", "enum": BACKUP_BLOCK_SIZES }),
                    )
                });
            }
        }
        if release < Release::V1_10 && SERVED_AS_V1BETA1_BEFORE_1_10.contains(&name.as_str()) {
            add_v1beta1(crd);
        }
    }
    crds
}

/// Adds `v1beta1`, served and not stored, before `v1beta2` (the order Longhorn lists them
/// in), with Longhorn's schema for it: `spec` and `status` kept as given; Setting's
/// top-level `value` a required string.
fn add_v1beta1(crd: &mut CustomResourceDefinition) {
    let schema = if crd.spec.names.kind == "Setting" {
        setting_schema()
    } else {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": { "type": "string" },
                "kind": { "type": "string" },
                "metadata": { "type": "object" },
                "spec": { "x-kubernetes-preserve-unknown-fields": true },
                "status": { "x-kubernetes-preserve-unknown-fields": true },
            },
        })
    };
    let version = json!({
        "name": "v1beta1",
        "served": true,
        "storage": false,
        "subresources": { "status": {} },
        "schema": { "openAPIV3Schema": schema },
    });
    // A literal that always matches the type: a failure here is a bug in this file.
    let version = serde_json::from_value(version)
        .unwrap_or_else(|e| unreachable!("v1beta1 version literal: {e}"));
    crd.spec.versions.insert(0, version);
}

/// The types' own schemas: every field any release has that the guard reads.
fn superset() -> Vec<CustomResourceDefinition> {
    vec![
        without_defaults(Backup::crd()),
        without_defaults(Snapshot::crd()),
        without_defaults(Volume::crd()),
        without_defaults(Engine::crd()),
        without_defaults(InstanceManager::crd()),
        without_defaults(BackupTarget::crd()),
        without_defaults(BackupVolume::crd()),
        setting(),
    ]
}

/// Longhorn's CRDs default nothing: the schema generator turns every `#[serde(default)]`
/// into a schema `default`, which would make the API server fill fields Longhorn leaves out.
fn without_defaults(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("default");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Ok(mut v) = serde_json::to_value(&*schema)
        {
            strip(&mut v);
            if let Ok(clean) = serde_json::from_value(v) {
                *schema = clean;
            }
        }
    }
    crd
}

/// Applies `edit` to the `openAPIV3Schema` of every version of `crd`.
fn edit_schema(crd: &mut CustomResourceDefinition, edit: impl Fn(&mut serde_json::Value)) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Ok(mut v) = serde_json::to_value(&*schema)
        {
            edit(&mut v);
            if let Ok(edited) = serde_json::from_value(v) {
                *schema = edited;
            }
        }
    }
}

/// The schema object of the property at `path` (below `properties` at every level).
fn property_mut<'a>(
    schema: &'a mut serde_json::Value,
    path: &[&str],
) -> Option<&'a mut serde_json::Value> {
    path.iter().try_fold(schema, |node, key| {
        node.get_mut("properties")?.get_mut(*key)
    })
}

fn remove_property(schema: &mut serde_json::Value, path: &[&str]) {
    if let Some((last, parent)) = path.split_last()
        && let Some(props) = property_mut(schema, parent)
            .and_then(|p| p.get_mut("properties"))
            .and_then(serde_json::Value::as_object_mut)
    {
        props.remove(*last);
    }
}

fn add_property(schema: &mut serde_json::Value, path: &[&str], property: serde_json::Value) {
    if let Some((last, parent)) = path.split_last()
        && let Some(props) = property_mut(schema, parent)
            .and_then(|p| p.get_mut("properties"))
            .and_then(serde_json::Value::as_object_mut)
    {
        props.insert((*last).to_string(), property);
    }
}

/// Whether the `openAPIV3Schema` of `crd`'s version `version` declares the property at
/// `path` (what version detection reads on a cluster).
pub fn declares(crd: &CustomResourceDefinition, version: &str, path: &[&str]) -> bool {
    crd.spec
        .versions
        .iter()
        .filter(|v| v.name == version)
        .filter_map(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
        .filter_map(|s| serde_json::to_value(s).ok())
        .any(|mut s| property_mut(&mut s, path).is_some())
}

/// All CRDs as one multi-document YAML stream (what `manifests/local/` carries).
pub fn yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `longhorn-guard crds` from longhorn-types: Longhorn 1.7 CRDs (v1beta2\n\
         # stored, v1beta1 served) for a local control plane without Longhorn. Do not edit; on a\n\
         # real cluster use Longhorn's.\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// A Setting's schema without `status` (v1beta1's): no spec, a required top-level string
/// `value`.
fn setting_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["value"],
        "properties": {
            "apiVersion": { "type": "string" },
            "kind": { "type": "string" },
            "metadata": { "type": "object" },
            "value": { "type": "string" },
        },
    })
}

/// `settings.longhorn.io`: no spec, a top-level string `value`, `status.applied` required.
fn setting() -> CustomResourceDefinition {
    let mut schema = setting_schema();
    schema["properties"]["status"] = json!({
        "type": "object", "nullable": true,
        "properties": { "applied": { "type": "boolean" } },
        "required": ["applied"],
        "x-kubernetes-preserve-unknown-fields": true,
    });
    let v = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "settings.longhorn.io" },
        "spec": {
            "group": "longhorn.io",
            "names": { "kind": "Setting", "listKind": "SettingList", "plural": "settings",
                       "singular": "setting", "shortNames": ["lhs"] },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta2", "served": true, "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": schema },
            }],
        },
    });
    // A literal that always matches the type: a failure here is a bug in this file.
    serde_json::from_value(v).unwrap_or_else(|e| unreachable!("settings CRD literal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(crds: &'a [CustomResourceDefinition], name: &str) -> &'a CustomResourceDefinition {
        crds.iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn each_release_declares_exactly_its_own_fields() {
        for release in Release::ALL {
            let crds = for_release(release);
            assert_eq!(crds.len(), 8, "{release}");
            for (name, path) in SINCE_1_8 {
                assert_eq!(
                    declares(find(&crds, name), "v1beta2", path),
                    release >= Release::V1_8,
                    "{release}: {name} {path:?}"
                );
            }
            for (name, path) in SINCE_1_10 {
                assert_eq!(
                    declares(find(&crds, name), "v1beta2", path),
                    release >= Release::V1_10,
                    "{release}: {name} {path:?}"
                );
            }
            // Fields every release has stay.
            let backups = find(&crds, "backups.longhorn.io");
            assert!(declares(backups, "v1beta2", &["spec", "snapshotName"]));
            assert!(declares(backups, "v1beta2", &["status", "state"]));
            assert!(!declares(backups, "v1", &["spec", "snapshotName"]));
        }
        assert_eq!(all(), for_release(Release::V1_7));
    }

    fn schema(crd: &CustomResourceDefinition, version: &str) -> serde_json::Value {
        let v = crd.spec.versions.iter().find(|v| v.name == version);
        serde_json::to_value(v.and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref()))
            .unwrap_or_default()
    }

    #[test]
    fn each_release_is_as_strict_as_longhorn_and_serves_its_versions() {
        for release in Release::ALL {
            let crds = for_release(release);
            for (name, path, values) in ENUMS {
                let mut s = schema(find(&crds, name), "v1beta2");
                let got = property_mut(&mut s, path).map(|p| p["enum"].clone());
                let want: Vec<&str> = if release >= Release::V1_10 && *path == ["spec", "frontend"]
                {
                    FRONTENDS_SINCE_1_10.to_vec()
                } else {
                    values.to_vec()
                };
                assert_eq!(got, Some(json!(want)), "{release}: {name} {path:?}");
            }
            let mut snap = schema(find(&crds, "snapshots.longhorn.io"), "v1beta2");
            assert_eq!(
                property_mut(&mut snap, &["spec"]).map(|p| p["required"].clone()),
                Some(json!(["volume"]))
            );
            let mut setting = schema(find(&crds, "settings.longhorn.io"), "v1beta2");
            assert_eq!(setting["required"], json!(["value"]));
            assert_eq!(
                property_mut(&mut setting, &["status"]).map(|p| p["required"].clone()),
                Some(json!(["applied"]))
            );
            for crd in &crds {
                let name = crd.metadata.name.as_deref().unwrap_or_default();
                if name != "settings.longhorn.io" {
                    assert!(
                        schema(crd, "v1beta2").get("required").is_none(),
                        "{release}: {name} requires a root field"
                    );
                }
                let versions: Vec<(&str, bool, bool)> = crd
                    .spec
                    .versions
                    .iter()
                    .map(|v| (v.name.as_str(), v.served, v.storage))
                    .collect();
                let want =
                    if release < Release::V1_10 && SERVED_AS_V1BETA1_BEFORE_1_10.contains(&name) {
                        vec![("v1beta1", true, false), ("v1beta2", true, true)]
                    } else {
                        vec![("v1beta2", true, true)]
                    };
                assert_eq!(versions, want, "{release}: {name}");
            }
        }
    }
}
