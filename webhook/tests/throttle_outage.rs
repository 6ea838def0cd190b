//! The throttle across a cut between the webhook and the real kube-apiserver (RELIABILITY.md,
//! the one-hour run's finding): while the webhook's Backup watch is stale, its index still holds
//! Backups that finished during the cut, so in-flight counts from it would deny on them. The
//! webhook reaches the API server only through a loopback proxy the test cuts; the Backup that
//! holds the volume's only slot completes during the cut; once the webhook's watch is stale
//! past its bound, a Backup of that volume is admitted with a warning that the caps were not
//! checked, instead of being refused "volume at cap 1"; after the restore the caps count again
//! from the relisted truth.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use anyhow::Result;
use common::cut_proxy::CutProxy;
use common::{review_directly, serve, wait_ready};
use kube::Api;
use kube::api::{Patch, PatchParams};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_guard_webhook::Policy;
use longhorn_types::{Backup, shapes};
use serde_json::{Value, json};

const POLICY: &str = "liveSnapshotLookup: false
indexStalenessMs: 2000
throttle:
  enabled: true
  maxInFlightPerVolume: 1
  clusterRate: {perMinute: 0, burst: 0}
  userRate: {perMinute: 0, burst: 0}
  recurringJobRate: {perMinute: 0, burst: 0}
";

fn warnings(response: &Value) -> String {
    response["warnings"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn stale_counts_do_not_deny_on_a_backup_that_finished_during_a_cut() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("throttle-outage").await?;
    for (obj, status) in [
        (
            shapes::volume(&ns, "vol-1", "node-1"),
            shapes::volume_status("node-1"),
        ),
        (
            shapes::snapshot(&ns, "snap-held", "vol-1"),
            shapes::snapshot_status("node-1", ""),
        ),
        (
            shapes::snapshot(&ns, "snap-next", "vol-1"),
            shapes::snapshot_status("node-1", ""),
        ),
        (
            shapes::backup_target(&ns, "default", "s3://bucket@us-east-1/"),
            shapes::backup_target_status("node-1", true),
        ),
        (
            shapes::backup(&ns, "b-held", "vol-1", "snap-held", None),
            shapes::backup_status("InProgress", "node-1", "vol-1", "snap-held"),
        ),
    ] {
        cluster
            .create_longhorn_object(&ns, obj, Some(status))
            .await?;
    }

    let (proxy, via_proxy) = CutProxy::in_front_of(&cluster).await?;
    let webhook = serve(via_proxy, &ns, Policy::from_yaml(POLICY)?).await?;
    wait_ready(&webhook).await?;
    let next = || shapes::backup(&ns, "b-next", "vol-1", "snap-next", None);

    // Trusted counts: b-held (InProgress) holds vol-1's only slot.
    let denied = review_directly(&webhook, &ns, next()).await;
    assert_eq!(denied["allowed"], json!(false), "{denied}");
    let message = denied["status"]["message"].to_string();
    assert!(message.contains("has 1 Backup(s) in flight"), "{message}");

    // The cut: b-held completes where the webhook cannot see it.
    proxy.cut();
    Api::<Backup>::namespaced(cluster.client(), &ns)
        .patch_status(
            "b-held",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "Completed"}})),
        )
        .await?;
    wait_for(
        Duration::from_secs(30),
        "the webhook's /readyz 503 once its watches are stale",
        || async { Ok(webhook.ops_get("/readyz").await?.0 == 503) },
    )
    .await?;
    let admitted = review_directly(&webhook, &ns, next()).await;
    assert_eq!(
        admitted["allowed"],
        json!(true),
        "false cap denial: {admitted}"
    );
    let w = warnings(&admitted);
    assert!(
        w.contains("in-flight caps and duplicates not checked") && w.contains("Backup watch"),
        "{w}"
    );

    // Restored: the watch relists and the caps count again, from what is true now: b-held
    // is Completed, and the slot is held by b-next, which this webhook admitted during the cut
    // (its reservation; the review above was posted directly, so b-next was never created).
    proxy.restore();
    wait_ready(&webhook).await?;
    let third = shapes::backup(&ns, "b-third", "vol-1", "snap-held", None);
    let after = review_directly(&webhook, &ns, third).await;
    assert_eq!(after["allowed"], json!(false), "{after}");
    let message = after["status"]["message"].to_string();
    assert!(
        message.contains("[throttled: volume]") && message.contains("b-next"),
        "{message}"
    );
    assert!(!message.contains("b-held"), "{message}");
    webhook.stop().await?;
    Ok(())
}
