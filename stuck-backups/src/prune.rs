//! `prune`: delete Backup objects that can never complete and hold nothing in the target.
//!
//! Safety: dry run unless `yes`; only [`BackupFinding::prune_eligible`] Backups; eligibility
//! re-checked against a fresh read right before each delete, and the delete is conditional
//! on the object's uid and resourceVersion; every object written to a restore file (fsynced)
//! before the first delete; deletes rate-limited. Backup data in the target is never touched:
//! an eligible Backup has no URL.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Preconditions};
use kube::{Api, Resource};
use longhorn_types::{Backup, BackupState, Snapshot};
use serde_json::{Value, json};

use crate::{BackupFinding, DoctorOptions, Report, doctor};

/// Options of `longhorn-guard prune`.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub doctor: DoctorOptions,
    /// Act. Without it nothing is written and nothing is deleted.
    pub yes: bool,
    /// Where the restore file goes (written before anything is deleted).
    pub restore_file: PathBuf,
    /// Delete rate limit.
    pub deletes_per_second: f64,
}

/// What `prune` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneOutcome {
    pub dry_run: bool,
    /// The eligible Backups found.
    pub planned: Vec<BackupFinding>,
    pub deleted: Vec<String>,
    /// Backup name → why it was left alone after the fresh re-check.
    pub skipped: Vec<(String, String)>,
    pub restore_file: Option<PathBuf>,
}

/// The Backups `prune` would delete, oldest first.
pub fn plan_prune(report: &Report) -> Vec<BackupFinding> {
    report
        .findings
        .iter()
        .filter(|f| f.prune_eligible)
        .cloned()
        .collect()
}

/// Runs doctor, then (with `yes`) deletes the eligible Backups.
pub async fn prune(client: kube::Client, options: &PruneOptions) -> anyhow::Result<PruneOutcome> {
    if !(options.deletes_per_second > 0.0 && options.deletes_per_second.is_finite()) {
        bail!(
            "--rate must be a positive number of deletes per second, got {}",
            options.deletes_per_second
        );
    }
    let report = doctor(client.clone(), &options.doctor).await?;
    let planned = plan_prune(&report);
    let mut outcome = PruneOutcome {
        dry_run: !options.yes,
        planned,
        ..Default::default()
    };
    if !options.yes || outcome.planned.is_empty() {
        return Ok(outcome);
    }
    let ns = &options.doctor.namespace;
    let raw_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Backup>(&()));
    let backups: Api<Backup> = Api::namespaced(client.clone(), ns);
    let snapshots: Api<Snapshot> = Api::namespaced(client, ns);

    // 1. The restore file, complete, before any delete.
    let mut items = Vec::new();
    for f in &outcome.planned {
        if let Some(obj) = raw_api
            .get_opt(&f.name)
            .await
            .with_context(|| format!("reading Backup {ns}/{}", f.name))?
        {
            items.push(restorable(obj)?);
        }
    }
    write_restore_file(&options.restore_file, items)?;
    outcome.restore_file = Some(options.restore_file.clone());

    // 2. Rate-limited, re-checked, conditional deletes.
    let pause = Duration::from_secs_f64(1.0 / options.deletes_per_second);
    for f in &outcome.planned {
        match still_eligible(&backups, &snapshots, f).await? {
            Err(why) => {
                outcome.skipped.push((f.name.clone(), why));
                continue;
            }
            Ok(b) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: b.metadata.uid.clone(),
                        resource_version: b.metadata.resource_version.clone(),
                    }),
                    ..Default::default()
                };
                match backups.delete(&f.name, &params).await {
                    Ok(_) => {
                        tracing::info!(backup = %f.name, namespace = %ns, snapshot = %f.snapshot, volume = %f.volume, "deleted stuck Backup");
                        outcome.deleted.push(f.name.clone());
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                        outcome.skipped.push((
                            f.name.clone(),
                            format!("changed or gone before delete: {}", e.message),
                        ));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("deleting Backup {ns}/{}", f.name));
                    }
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
    Ok(outcome)
}

/// Re-reads the Backup and its Snapshot: still non-terminal or Error, still no URL, snapshot
/// still gone. `Err(reason)` when it must be left alone.
async fn still_eligible(
    backups: &Api<Backup>,
    snapshots: &Api<Snapshot>,
    f: &BackupFinding,
) -> anyhow::Result<Result<Backup, String>> {
    let Some(b) = backups.get_opt(&f.name).await? else {
        return Ok(Err("already gone".into()));
    };
    let st = b.state();
    if st.is_terminal() && st != BackupState::Error {
        return Ok(Err(format!("now {st}")));
    }
    if b.status.as_ref().is_some_and(|s| !s.url.is_empty()) {
        return Ok(Err("now has a backup URL".into()));
    }
    if b.spec.snapshot_name != f.snapshot || f.snapshot.is_empty() {
        return Ok(Err("snapshot name changed".into()));
    }
    if let Some(s) = snapshots.get_opt(&f.snapshot).await?
        && !s.mark_removed()
        && !s.lost_in_engine()
        && f.reasons
            .iter()
            .all(|r| matches!(r, crate::StuckReason::SnapshotMissing))
    {
        return Ok(Err(format!("snapshot {} exists again", f.snapshot)));
    }
    Ok(Ok(b))
}

/// The object as `kubectl create -f` can recreate it: server-set metadata removed. `status`
/// is kept for the record (the API server ignores it on create).
fn restorable(obj: DynamicObject) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(obj)?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(k);
        }
    }
    Ok(v)
}

fn write_restore_file(path: &PathBuf, items: Vec<Value>) -> anyhow::Result<()> {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
    let yaml = serde_yaml::to_string(&list)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "creating restore file {} (it must not exist yet)",
                path.display()
            )
        })?;
    f.write_all(
        format!(
            "# Backups deleted by `longhorn-guard prune`. Restore with: kubectl create -f {}\n",
            path.display()
        )
        .as_bytes(),
    )?;
    f.write_all(yaml.as_bytes())?;
    f.sync_all()
        .with_context(|| format!("syncing restore file {}", path.display()))?;
    Ok(())
}

/// Backups a restore file holds, for a caller that wants to recreate them (tests, tooling).
pub fn read_restore_file(path: &PathBuf) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading restore file {}", path.display()))?;
    let list: Value = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing restore file {}", path.display()))?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// The resource name prune deletes, for messages.
pub fn resource_name() -> String {
    format!("{}.{}", Backup::plural(&()), Backup::group(&()))
}
