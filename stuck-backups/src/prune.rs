//! `prune`: delete Backup objects that can never complete and hold nothing in the target.
//!
//! Safety: dry run unless `yes`; only [`BackupFinding::prune_eligible`] Backups (older than
//! the stuck threshold, snapshot gone on the Snapshot object's word, never on the engine
//! status' alone); every object written to a restore file (fsynced) before the first delete;
//! right before each delete the Backup, its Snapshot and its volume's Engines are read again
//! ([`recheck`]) and the Backup is left alone, with the reason, when any of them changed or the
//! same rules no longer find it eligible; the delete is conditional on the uid and
//! resourceVersion the decision saw; deletes rate-limited. Backup data in the target is never
//! touched: an eligible Backup has no URL. The two phases are [`plan`] and [`delete_planned`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Preconditions};
use kube::{Api, Resource};
use longhorn_types::{Backup, Engine, Snapshot, labels};
use serde_json::{Value, json};

use crate::diagnosis::diagnose_one;
use crate::{BackupFinding, ClusterState, DoctorOptions, Report, StuckReason, doctor};

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

/// Runs doctor, then (with `yes`) deletes the eligible Backups: [`plan`], then
/// [`delete_planned`].
pub async fn prune(client: kube::Client, options: &PruneOptions) -> anyhow::Result<PruneOutcome> {
    let planned = plan(client.clone(), options).await?;
    delete_planned(client, options, planned).await
}

/// The first phase of [`prune`]: checks the options and diagnoses; returns the eligible
/// Backups with the evidence each decision was made from.
pub async fn plan(
    client: kube::Client,
    options: &PruneOptions,
) -> anyhow::Result<Vec<BackupFinding>> {
    if !(options.deletes_per_second > 0.0 && options.deletes_per_second.is_finite()) {
        bail!(
            "--rate must be a positive number of deletes per second, got {}",
            options.deletes_per_second
        );
    }
    let report = doctor(client, &options.doctor).await?;
    Ok(plan_prune(&report))
}

/// The second phase of [`prune`]: without `yes` only reports `planned`; with it writes the
/// restore file, then for each planned Backup re-reads every object its decision used
/// (Backup, Snapshot, the volume's Engines) and deletes it only when none of them changed and
/// it is still eligible (conditional on uid and resourceVersion).
pub async fn delete_planned(
    client: kube::Client,
    options: &PruneOptions,
    planned: Vec<BackupFinding>,
) -> anyhow::Result<PruneOutcome> {
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
    write_restore_file(&options.restore_file, ns, items)?;
    outcome.restore_file = Some(options.restore_file.clone());

    // 2. Rate-limited, re-checked, conditional deletes.
    let pause = Duration::from_secs_f64(1.0 / options.deletes_per_second);
    for f in &outcome.planned {
        let fresh = read_again(&client, ns, f).await?;
        let now = k8s_openapi::jiff::Timestamp::now();
        if let Err(why) = recheck(f, &fresh, now, options.doctor.stuck_after) {
            tracing::info!(backup = %f.name, namespace = %ns, snapshot = %f.snapshot, volume = %f.volume, reason = %why, "left stuck Backup alone after the re-check");
            outcome.skipped.push((f.name.clone(), why));
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(f.evidence.backup_uid.clone()),
                resource_version: Some(f.evidence.backup_resource_version.clone()),
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
        tokio::time::sleep(pause).await;
    }
    Ok(outcome)
}

/// A fresh read of the objects `finding`'s decision used: the Backup, its Snapshot and the
/// Engines of its volume (by Longhorn's `longhornvolume` label).
async fn read_again(
    client: &kube::Client,
    ns: &str,
    finding: &BackupFinding,
) -> anyhow::Result<ClusterState> {
    let backup = Api::<Backup>::namespaced(client.clone(), ns)
        .get_opt(&finding.name)
        .await
        .with_context(|| format!("reading Backup {ns}/{} again", finding.name))?;
    let snapshot = Api::<Snapshot>::namespaced(client.clone(), ns)
        .get_opt(&finding.snapshot)
        .await
        .with_context(|| {
            format!(
                "reading Snapshot {ns}/{} of Backup {} again",
                finding.snapshot, finding.name
            )
        })?;
    let engines = if finding.volume.is_empty() {
        Vec::new()
    } else {
        let selector = format!("{}={}", labels::LONGHORN_VOLUME, finding.volume);
        Api::<Engine>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| {
                format!(
                    "listing the Engines of volume {} (Backup {}) again",
                    finding.volume, finding.name
                )
            })?
            .items
    };
    Ok(ClusterState {
        namespace: ns.to_string(),
        backups: backup.into_iter().collect(),
        snapshots: snapshot
            .into_iter()
            .map(|s| (finding.snapshot.clone(), s))
            .collect(),
        engines,
        ..Default::default()
    })
}

/// The re-check right before deleting `planned`: `fresh` is a new read of the objects the
/// decision used (see [`read_again`]). `Err(reason)` when the Backup must be left alone: it is
/// gone, any of the objects changed (resourceVersion of the Backup and Snapshot, the active
/// engine and what it says about the snapshot), or the same rules no longer find it eligible.
pub fn recheck(
    planned: &BackupFinding,
    fresh: &ClusterState,
    now: k8s_openapi::jiff::Timestamp,
    stuck_after: Duration,
) -> Result<(), String> {
    let Some(backup) = fresh
        .backups
        .iter()
        .find(|b| b.metadata.name.as_deref() == Some(planned.name.as_str()))
    else {
        return Err(format!("Backup {} is already gone", planned.name));
    };
    if backup.spec.snapshot_name != planned.snapshot {
        return Err(format!(
            "Backup {} now names snapshot {:?} (was {:?})",
            planned.name, backup.spec.snapshot_name, planned.snapshot
        ));
    }
    let again = diagnose_one(fresh, backup, now, stuck_after);
    if let Some(why) = planned
        .evidence
        .changed(&again.evidence, &planned.name, &planned.snapshot)
    {
        return Err(why);
    }
    if !again.prune_eligible {
        let why = again
            .reasons
            .iter()
            .map(StuckReason::describe)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "Backup {} is no longer eligible (state {}, {why})",
            planned.name, again.state
        ));
    }
    Ok(())
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

fn write_restore_file(path: &PathBuf, namespace: &str, items: Vec<Value>) -> anyhow::Result<()> {
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
            "# Backups deleted by `longhorn-guard prune`. Restore with: longhorn-guard prune -n {namespace} --restore {}\n\
             # (their snapshots were gone: with the guard installed, `kubectl create -f` of this file is refused;\n\
             # the restore marks them {} and needs that label exempted in the guard's policy, see the README)\n",
            path.display(),
            crate::restore::RESTORED_LABEL,
        )
        .as_bytes(),
    )?;
    f.write_all(yaml.as_bytes())?;
    f.sync_all()
        .with_context(|| format!("syncing restore file {}", path.display()))?;
    Ok(())
}

/// The resource name prune deletes, for messages.
pub fn resource_name() -> String {
    format!("{}.{}", Backup::plural(&()), Backup::group(&()))
}
