//! What Longhorn's CRDs of a release accept and refuse, for the strictness tests: every
//! Longhorn-shaped fixture the tests create (plus each enum value and objects without a
//! `spec`) must be stored, and each [`Refused`] object must be refused by the API server,
//! both under longhorn-guard's CRDs (`crd_strictness.rs`, every release) and under
//! Longhorn's own v1.7.2 CRDs (`longhorn_compat.rs`, which shows the refusals are Longhorn's).

use anyhow::{Result, anyhow, bail};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use longhorn_types::{Release, crds, shapes as s};
use serde_json::{Value, json};

use crate::{TestCluster, longhorn_fixture_objects};

/// An object Longhorn's CRDs refuse, and the field the API server names when it does.
pub struct Refused {
    pub what: String,
    pub object: Value,
    /// Written through the status subresource after the create (the refusal may come there).
    pub status: Option<Value>,
    /// The field path the refusal names, e.g. `spec.backupMode`.
    pub field: &'static str,
}

fn named(mut obj: Value, name: &str) -> Value {
    obj["metadata"]["name"] = json!(name);
    obj
}

fn with_spec(mut obj: Value, field: &str, value: Value) -> Value {
    obj["spec"][field] = value;
    obj
}

/// Every object `release`'s Longhorn writes that the tests create (the fixtures, their
/// release variants), each enum value of [`crds::ENUMS`] `release` allows, and objects
/// without a `spec` (Longhorn's CRDs require none). `(object, status)`.
pub fn accepted(release: Release, ns: &str) -> Vec<(Value, Option<Value>)> {
    let mut out = longhorn_fixture_objects(ns);
    out.push((
        s::backup_of(
            release,
            ns,
            "backup-of-release",
            "pvc-1",
            "snap-a",
            "default",
        ),
        Some(s::backup_status_of(
            release, "Pending", "node-1", "pvc-1", "snap-a", "default",
        )),
    ));
    out.push((
        named(
            s::volume_of(release, ns, "pvc-of-release", "node-1", "default"),
            "pvc-of-release",
        ),
        Some(s::volume_status("node-1")),
    ));
    out.push((s::backup_volume_of(release, ns, "pvc-2", "default"), None));
    out.push((
        s::setting(ns, "current-longhorn-version", "v1.7.2"),
        Some(json!({ "applied": true })),
    ));
    for (crd, path, values) in crds::ENUMS {
        let field = path.last().copied().unwrap_or_default();
        let values: &[&str] = if release >= Release::V1_10 && *path == ["spec", "frontend"] {
            &crds::FRONTENDS_SINCE_1_10
        } else {
            values
        };
        for (i, value) in values.iter().enumerate() {
            let name = format!("enum-{}-{i}", field.to_ascii_lowercase());
            let base = match *crd {
                "backups.longhorn.io" => s::backup(ns, &name, "pvc-1", "snap-a", None),
                "volumes.longhorn.io" => s::volume(ns, &name, "node-1"),
                "engines.longhorn.io" => named(s::engine(ns, &name, "node-1"), &name),
                _ => s::instance_manager(ns, &name, "node-1"),
            };
            out.push((with_spec(base, field, json!(value)), None));
        }
    }
    for (kind, name) in [
        ("Backup", "backup-without-spec"),
        ("Volume", "volume-without-spec"),
    ] {
        out.push((
            json!({
                "apiVersion": longhorn_types::API_VERSION,
                "kind": kind,
                "metadata": { "name": name, "namespace": ns },
            }),
            None,
        ));
    }
    out
}

/// Objects Longhorn's CRDs of `release` refuse: values outside each enum, a Snapshot without
/// `spec.volume`, a Setting status without `applied`, a field of the wrong type, and on 1.10
/// a `backupBlockSize` outside its enum.
pub fn refused(release: Release, ns: &str) -> Vec<Refused> {
    let mut out = refused_enum_values(ns);
    out.extend(refused_shapes(ns));
    out.push(refused_by_release(release, ns));
    out
}

fn refuse(what: &str, object: Value, field: &'static str) -> Refused {
    Refused {
        what: what.to_string(),
        object,
        status: None,
        field,
    }
}

/// Values outside an enum every release has.
fn refused_enum_values(ns: &str) -> Vec<Refused> {
    vec![
        refuse(
            "Backup with backupMode \"differential\"",
            with_spec(
                s::backup(ns, "bad-backup-mode", "pvc-1", "snap-a", None),
                "backupMode",
                json!("differential"),
            ),
            "spec.backupMode",
        ),
        refuse(
            "Volume with frontend \"scsi\"",
            with_spec(
                s::volume(ns, "bad-frontend", "node-1"),
                "frontend",
                json!("scsi"),
            ),
            "spec.frontend",
        ),
        refuse(
            "Volume with dataEngine \"v3\"",
            with_spec(
                s::volume(ns, "bad-data-engine", "node-1"),
                "dataEngine",
                json!("v3"),
            ),
            "spec.dataEngine",
        ),
        refuse(
            "Volume with dataEngine \"\"",
            with_spec(
                s::volume(ns, "empty-data-engine", "node-1"),
                "dataEngine",
                json!(""),
            ),
            "spec.dataEngine",
        ),
        refuse(
            "Engine with dataEngine \"v3\"",
            with_spec(
                named(s::engine(ns, "bad-engine", "node-1"), "bad-engine"),
                "dataEngine",
                json!("v3"),
            ),
            "spec.dataEngine",
        ),
        refuse(
            "InstanceManager with type \"proxy\"",
            with_spec(
                s::instance_manager(ns, "bad-im-type", "node-1"),
                "type",
                json!("proxy"),
            ),
            "spec.type",
        ),
    ]
}

/// A required field missing, a field of the wrong type.
fn refused_shapes(ns: &str) -> Vec<Refused> {
    let mut snapshot_without_volume = s::snapshot(ns, "snap-without-volume", "pvc-1");
    if let Some(spec) = snapshot_without_volume["spec"].as_object_mut() {
        spec.remove("volume");
    }
    vec![
        refuse(
            "Snapshot without spec.volume",
            snapshot_without_volume,
            "spec.volume",
        ),
        refuse(
            "Volume with numberOfReplicas \"three\"",
            with_spec(
                s::volume(ns, "bad-replicas", "node-1"),
                "numberOfReplicas",
                json!("three"),
            ),
            "spec.numberOfReplicas",
        ),
        refuse(
            "Setting without value",
            json!({
                "apiVersion": longhorn_types::API_VERSION,
                "kind": "Setting",
                "metadata": { "name": "setting-without-value", "namespace": ns },
            }),
            "value",
        ),
        Refused {
            what: "Setting status without applied".into(),
            object: s::setting(ns, "setting-status-without-applied", "x"),
            status: Some(json!({})),
            field: "status.applied",
        },
    ]
}

/// What only `release` refuses: before 1.10 the `ublk` frontend, from 1.10 a
/// `backupBlockSize` outside its enum.
fn refused_by_release(release: Release, ns: &str) -> Refused {
    if release < Release::V1_10 {
        refuse(
            "Volume with frontend \"ublk\" (1.10+)",
            with_spec(
                s::volume(ns, "ublk-too-early", "node-1"),
                "frontend",
                json!("ublk"),
            ),
            "spec.frontend",
        )
    } else {
        refuse(
            "Backup with backupBlockSize \"4096\"",
            with_spec(
                s::backup(ns, "bad-block-size", "pvc-1", "snap-a", None),
                "backupBlockSize",
                json!("4096"),
            ),
            "spec.backupBlockSize",
        )
    }
}

/// Creates every [`accepted`] object and checks the API server stored what was sent.
pub async fn expect_accepted(cluster: &TestCluster, release: Release, ns: &str) -> Result<()> {
    for (obj, status) in accepted(release, ns) {
        let what = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
        let stored = cluster
            .create_longhorn_object(ns, obj.clone(), status.clone())
            .await
            .map_err(|e| anyhow!("{release}: refused {what}: {e:#}"))?;
        let stored = serde_json::to_value(&stored)?;
        for part in ["spec", "value"] {
            if let Some(sent) = obj.get(part)
                && &stored[part] != sent
            {
                bail!(
                    "{release}: {what}: {part} changed: sent {sent}, stored {}",
                    stored[part]
                );
            }
        }
        if let Some(status) = status
            && stored["status"] != status
        {
            bail!("{release}: {what}: status changed: {}", stored["status"]);
        }
    }
    Ok(())
}

/// Creates every [`refused`] object and checks each is refused as invalid, naming its field.
pub async fn expect_refused(cluster: &TestCluster, release: Release, ns: &str) -> Result<()> {
    for r in refused(release, ns) {
        match cluster.create_longhorn_object(ns, r.object, r.status).await {
            Ok(_) => bail!("{release}: {} was stored", r.what),
            Err(e) => {
                let msg = format!("{e:#}");
                if !msg.contains("is invalid") || !msg.contains(r.field) {
                    bail!(
                        "{release}: {} refused, but not as invalid {}: {msg}",
                        r.what,
                        r.field
                    );
                }
            }
        }
    }
    Ok(())
}

/// Creates a Backup as `longhorn.io/v1beta1` and reads it back as v1beta2: `Ok(true)` when
/// served, `Ok(false)` when the API server does not serve v1beta1 Backups (404).
pub async fn backup_served_as_v1beta1(cluster: &TestCluster, ns: &str) -> Result<bool> {
    let v1beta1 = ApiResource {
        group: longhorn_types::GROUP.into(),
        version: "v1beta1".into(),
        api_version: format!("{}/v1beta1", longhorn_types::GROUP),
        kind: "Backup".into(),
        plural: "backups".into(),
    };
    let mut obj = s::backup(ns, "backup-v1beta1", "pvc-1", "snap-a", None);
    obj["apiVersion"] = json!(v1beta1.api_version);
    let dynamic: DynamicObject = serde_json::from_value(obj.clone())?;
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client(), ns, &v1beta1);
    match api.create(&PostParams::default(), &dynamic).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(anyhow!("creating Backup backup-v1beta1 as v1beta1: {e}")),
    }
    let stored = cluster
        .dynamic_api::<longhorn_types::Backup>(ns)
        .get("backup-v1beta1")
        .await?;
    let stored = serde_json::to_value(&stored)?;
    if stored["apiVersion"] != json!(longhorn_types::API_VERSION) || stored["spec"] != obj["spec"] {
        bail!("Backup backup-v1beta1 read back as v1beta2 differs: {stored}");
    }
    Ok(true)
}
