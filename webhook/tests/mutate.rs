//! `/mutate/backups` through the real kube-apiserver v1.20: registered as a
//! MutatingWebhookConfiguration by `clientConfig.url` + `caBundle`, scoped to the test's
//! namespace. The webhook answers with a JSONPatch (kube-core serializes it as a base64 byte
//! array); these tests show the API server applies it to what it stores.
#![allow(clippy::unwrap_used)]

mod common;

use anyhow::Result;
use common::*;
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_testkit::TestCluster;
use longhorn_guard_webhook::Policy;
use longhorn_guard_webhook::policy::FullBackupRule;
use longhorn_types::{Backup, shapes};
use serde_json::{Value, json};

const LABEL: &str = "backup.example.com/mode";

/// The policy with `fullBackup` for `vol-listed` and Volumes labelled `LABEL=full`.
fn full_backup_policy(enabled: bool) -> Policy {
    Policy {
        full_backup: FullBackupRule {
            enabled,
            volumes: vec!["vol-listed".to_string()],
            volume_label: Some(format!("{LABEL}=full")),
        },
        ..Policy::default()
    }
}

/// Volumes `vol-listed`, `vol-labelled` (carries `LABEL=full`), `vol-other`, a ready Snapshot
/// `snap-<volume>` of each, and the `default` target.
async fn fixtures(cluster: &TestCluster, ns: &str) -> Result<()> {
    for vol in ["vol-listed", "vol-labelled", "vol-other"] {
        let mut obj = shapes::volume(ns, vol, "node-1");
        if vol == "vol-labelled" {
            obj["metadata"]["labels"] = json!({ LABEL: "full" });
        }
        fixtures::volume_object(cluster, ns, obj, "node-1").await?;
        fixtures::snapshot(cluster, ns, &format!("snap-{vol}"), vol, "node-1").await?;
    }
    fixtures::default_target(cluster, ns).await
}

/// Creates `obj` (optionally as a dry run) and returns the
/// `spec.backupMode` of the object the API server answered with.
async fn create(api: &Api<Backup>, name: &str, obj: Value, dry_run: bool) -> Result<String> {
    let b: Backup = serde_json::from_value(obj)?;
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    let created = api.create(&pp, &b).await?;
    assert_eq!(created.metadata.name.as_deref(), Some(name));
    Ok(mode_of(&created))
}

fn mode_of(b: &Backup) -> String {
    serde_json::to_value(b).unwrap()["spec"]["backupMode"]
        .as_str()
        .unwrap_or("<unset>")
        .to_string()
}

/// The stored object's `spec.backupMode` (a fresh GET, not the create's answer).
async fn stored_mode(api: &Api<Backup>, name: &str) -> Result<String> {
    Ok(mode_of(&api.get(name).await?))
}

async fn patched(served: &Served) -> Result<u64> {
    Ok(metric(
        &served.metrics().await?,
        "longhorn_guard_webhook_reviews_total",
        "decision=\"patched\"",
    ))
}

async fn unchanged(served: &Served) -> Result<u64> {
    Ok(metric(
        &served.metrics().await?,
        "longhorn_guard_webhook_reviews_total",
        "reason=\"unchanged\"",
    ))
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn listed_and_labelled_volumes_are_stored_full_others_untouched_dry_run_stores_nothing()
-> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-mutate").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(cluster.client(), &ns, full_backup_policy(true)).await?;
    wait_ready(&served).await?;
    let reg = register_mutating(&cluster, &served, &ns, "vol-listed", "snap-vol-listed").await?;
    let api: Api<Backup> = Api::namespaced(cluster.client(), &ns);
    let patched_before = patched(&served).await?;
    let unchanged_before = unchanged(&served).await?;

    // Listed volume, labelled volume, and a listed volume's Backup without the
    // backup-volume label (its volume is then the Snapshot's): each stored full.
    let listed = shapes::backup(&ns, "b-listed", "vol-listed", "snap-vol-listed", None);
    assert_eq!(create(&api, "b-listed", listed, false).await?, "full");
    assert_eq!(stored_mode(&api, "b-listed").await?, "full");
    let labelled = shapes::backup(&ns, "b-labelled", "vol-labelled", "snap-vol-labelled", None);
    assert_eq!(create(&api, "b-labelled", labelled, false).await?, "full");
    assert_eq!(stored_mode(&api, "b-labelled").await?, "full");
    let mut unlabelled = shapes::backup(&ns, "b-unlabelled", "vol-listed", "snap-vol-listed", None);
    unlabelled["metadata"]["labels"] = json!({});
    assert_eq!(
        create(&api, "b-unlabelled", unlabelled, false).await?,
        "full"
    );
    assert_eq!(stored_mode(&api, "b-unlabelled").await?, "full");

    // Another volume's Backup: stored exactly as sent.
    let other = shapes::backup(&ns, "b-other", "vol-other", "snap-vol-other", None);
    assert_eq!(create(&api, "b-other", other, false).await?, "incremental");
    assert_eq!(stored_mode(&api, "b-other").await?, "incremental");

    // dryRun: the answer shows the patch, nothing is stored.
    let dry = shapes::backup(&ns, "b-dry", "vol-listed", "snap-vol-listed", None);
    assert_eq!(create(&api, "b-dry", dry, true).await?, "full");
    match api.get("b-dry").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404, "{e:?}"),
        other => panic!("a dry run stored b-dry: {other:?}"),
    }

    // The webhook counted exactly what it patched: three stored, one dry run; one unchanged.
    assert_eq!(patched(&served).await? - patched_before, 4);
    assert_eq!(unchanged(&served).await? - unchanged_before, 1);

    reg.remove().await?;
    served.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn with_the_mutating_endpoint_off_nothing_is_patched() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-mutate-off").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(cluster.client(), &ns, full_backup_policy(false)).await?;
    wait_ready(&served).await?;
    let reg = register_mutating(&cluster, &served, &ns, "vol-listed", "snap-vol-listed").await?;
    let api: Api<Backup> = Api::namespaced(cluster.client(), &ns);
    let unchanged_before = unchanged(&served).await?;

    for (name, vol) in [("b-listed", "vol-listed"), ("b-labelled", "vol-labelled")] {
        let obj = shapes::backup(&ns, name, vol, &format!("snap-{vol}"), None);
        assert_eq!(create(&api, name, obj, false).await?, "incremental");
        assert_eq!(stored_mode(&api, name).await?, "incremental");
    }
    // The API server did call the endpoint for both; it answered "unchanged" each time.
    assert_eq!(unchanged(&served).await? - unchanged_before, 2);
    assert_eq!(patched(&served).await?, 0);

    reg.remove().await?;
    served.stop().await?;
    Ok(())
}
