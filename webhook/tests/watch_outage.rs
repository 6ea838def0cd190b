//! The webhook's index and readiness across a cut between the webhook and the real
//! kube-apiserver, and a watch that expires for real (RELIABILITY.md findings 1 and 5).
//!
//! Two in-process webhooks reach the API server only through a loopback TCP proxy this test
//! can cut (existing connections dropped, new ones closed at once) and restore; the API server
//! still calls both for admission directly. During one cut of ~80 s:
//!
//! - webhook A (staleness bound 3 s): `/readyz` stays 200 at first, turns 503 naming the stale
//!   kinds once the watches have failed for longer than the bound, and is 200 again after the
//!   forced relist that follows the restore;
//! - webhook B (bound 10 min, the control): stays ready during the cut; its BackupTarget watch
//!   is made to expire for real — the test updates BackupTargets until its own watch from the
//!   cut's resourceVersion gets 410 Gone from the API server's watch cache — so on restore B's
//!   watcher gets 410 and relists (`watch_restarts_total` moves with `index_stale_total` 0).
//!
//! v1.20's watch cache (`k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`) starts at 100
//! events per resource but doubles whenever it is full of events younger than 75 s
//! (`eventFreshDuration`), up to 102,400: writing more than 100 objects during a short cut does
//! not expire anything. Only events older than 75 s are evicted, hence the cut's length. etcd
//! compaction does not help either: cached watches never reach etcd.
//!
//! Afterwards both judge from the resynced index (live lookups off): a Snapshot created during
//! the cut is allowed, one deleted during it is denied, a BackupTarget deleted during it (the
//! kind B relisted) is reported missing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cut_proxy::CutProxy;
use common::{Served, create_backup, metric, register, review_directly, serve, wait_ready};
use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_guard_webhook::Policy;
use longhorn_types::{BackupTarget, Snapshot, shapes};
use serde_json::json;

/// Volume, Snapshots `snap-ok` and `snap-doomed`, BackupTarget `default` (the one Backups go
/// to on Longhorn 1.7, which the webhook detects from these CRDs).
async fn seed(cluster: &TestCluster, ns: &str) -> Result<()> {
    let objects = [
        (
            shapes::volume(ns, "vol-1", "node-1"),
            shapes::volume_status("node-1"),
        ),
        (
            shapes::snapshot(ns, "snap-ok", "vol-1"),
            shapes::snapshot_status("node-1", ""),
        ),
        (
            shapes::snapshot(ns, "snap-doomed", "vol-1"),
            shapes::snapshot_status("node-1", ""),
        ),
        (
            shapes::backup_target(ns, "default", "s3://bucket@us-east-1/"),
            shapes::backup_target_status("node-1", true),
        ),
    ];
    for (obj, status) in objects {
        cluster
            .create_longhorn_object(ns, obj, Some(status))
            .await?;
    }
    Ok(())
}

/// Judged by the webhook through the API server (dry run): `None` = allowed, else the denial.
async fn judge(client: &Client, ns: &str, snapshot: &str) -> Option<String> {
    let name = format!("b-{:08x}", rand::random::<u32>());
    let backup = shapes::backup(ns, &name, "vol-1", snapshot, None);
    create_backup(client, ns, backup, true).await.unwrap()
}

fn policy(staleness_ms: u64) -> Policy {
    Policy::from_yaml(&format!(
        "liveSnapshotLookup: false\nindexStalenessMs: {staleness_ms}\n\
         throttle:\n  enabled: false\n"
    ))
    .unwrap()
}

async fn readyz(served: &Served) -> (u16, String) {
    served.ops_get("/readyz").await.unwrap()
}

/// True when a watch of BackupTargets in `ns` from `rv` gets 410 Gone.
async fn expired(api: &Api<BackupTarget>, rv: &str) -> Result<bool> {
    match api.watch(&WatchParams::default().timeout(1), rv).await {
        Err(kube::Error::Api(e)) if e.code == 410 => Ok(true),
        Err(e) => Err(e.into()),
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            Ok(matches!(
                stream.next().await,
                Some(Ok(WatchEvent::Error(e))) if e.code == 410
            ))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn readiness_follows_the_index_through_a_cut_and_an_expired_watch_relists() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let client = cluster.client();
    let (ns_a, ns_b) = (
        cluster.namespace("outage-a").await?,
        cluster.namespace("outage-b").await?,
    );
    seed(&cluster, &ns_a).await?;
    seed(&cluster, &ns_b).await?;
    cluster
        .create_longhorn_object(
            &ns_b,
            shapes::backup_target(&ns_b, "bt-churn", "s3://churn@us-east-1/"),
            None,
        )
        .await?;

    let (proxy, via_proxy) = CutProxy::in_front_of(&cluster).await?;

    let a = serve(via_proxy.clone(), &ns_a, policy(3_000)).await?;
    let b = serve(via_proxy, &ns_b, policy(600_000)).await?;
    wait_ready(&a).await?;
    wait_ready(&b).await?;
    let reg_a = register(&cluster, &a, &ns_a).await?;
    let reg_b = register(&cluster, &b, &ns_b).await?;
    for ns in [&ns_a, &ns_b] {
        assert_eq!(judge(&client, ns, "snap-ok").await, None);
        assert_eq!(judge(&client, ns, "snap-doomed").await, None);
        let denied = judge(&client, ns, "snap-new").await.unwrap();
        assert!(denied.contains("snapshot_missing"), "{denied}");
    }
    let metrics_a0 = a.metrics().await?;
    assert_eq!(
        metric(&metrics_a0, "longhorn_guard_webhook_index_trusted", ""),
        5
    );

    // --- the cut -------------------------------------------------------------------------
    let bt_api: Api<BackupTarget> = Api::namespaced(client.clone(), &ns_b);
    proxy.cut();
    let t_cut = Instant::now();
    // Within the bound A is still ready: one failed watch does not flap readiness.
    assert_eq!(readyz(&a).await.0, 200, "A unready before its bound");
    let rv_cut = bt_api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .context("list without resourceVersion")?;
    // Changes the webhooks cannot see while cut.
    for ns in [&ns_a, &ns_b] {
        cluster
            .create_longhorn_object(
                ns,
                shapes::snapshot(ns, "snap-new", "vol-1"),
                Some(shapes::snapshot_status("node-1", "")),
            )
            .await?;
        Api::<Snapshot>::namespaced(client.clone(), ns)
            .delete("snap-doomed", &DeleteParams::default())
            .await?;
        Api::<BackupTarget>::namespaced(client.clone(), ns)
            .delete("default", &DeleteParams::default())
            .await?;
    }

    wait_for(
        Duration::from_secs(30),
        "A's /readyz 503 while cut",
        || async { Ok(readyz(&a).await.0 == 503) },
    )
    .await?;
    let t_unready = t_cut.elapsed();
    let (_, body) = readyz(&a).await;
    assert!(
        body.contains("index stale for") || body.contains("list not indexed yet"),
        "{body}"
    );
    assert!(
        t_unready >= Duration::from_secs(3),
        "A turned unready after {t_unready:?}, before its 3 s bound"
    );
    let (code_b, body_b) = readyz(&b).await;
    assert_eq!(
        code_b, 200,
        "B (bound 10 min) unready during the cut: {body_b}"
    );
    let metrics_a1 = a.metrics().await?;
    assert!(metric(&metrics_a1, "longhorn_guard_webhook_watch_errors_total", "") > 0);
    assert!(metric(&metrics_a1, "longhorn_guard_webhook_index_stale_total", "") >= 1);
    assert!(metric(&metrics_a1, "longhorn_guard_webhook_index_trusted", "") < 5);

    // --- expire B's BackupTarget watch for real --------------------------------------------
    // Nothing older than 75 s can be evicted from the watch cache (see the module docs).
    tokio::time::sleep(Duration::from_secs(76).saturating_sub(t_cut.elapsed())).await;
    assert_eq!(readyz(&b).await.0, 200, "B unready during the cut");
    let (mut writes, t_churn) = (0u64, Instant::now());
    loop {
        if expired(&bt_api, &rv_cut).await? {
            break;
        }
        if writes >= 6_000 || t_churn.elapsed() > Duration::from_secs(120) {
            bail!(
                "the watch cache still serves resourceVersion {rv_cut} after {writes} BackupTarget \
                 updates over {:?}",
                t_churn.elapsed()
            );
        }
        let batch = (0..25).map(|i| {
            let api = bt_api.clone();
            let patch = json!({"metadata": {"labels": {"churn": format!("{}", writes + i)}}});
            async move {
                api.patch("bt-churn", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        });
        for r in futures::future::join_all(batch).await {
            r?;
        }
        writes += 25;
    }
    let cut_for = t_cut.elapsed();
    println!(
        "watch from resourceVersion {rv_cut} expired after {writes} BackupTarget updates \
         ({:?} of churn, {cut_for:?} after the cut)",
        t_churn.elapsed()
    );

    // --- restore ---------------------------------------------------------------------------
    proxy.restore();
    let t_restore = Instant::now();
    wait_for(
        Duration::from_secs(90),
        "A's /readyz 200 after the restore",
        || async { Ok(readyz(&a).await.0 == 200) },
    )
    .await?;
    let a_ready_after = t_restore.elapsed();
    wait_for(
        Duration::from_secs(90),
        "B's BackupTarget watch to relist after 410",
        || async {
            let m = b.metrics().await?;
            Ok(metric(
                &m,
                "longhorn_guard_webhook_watch_restarts_total",
                "kind=\"backuptarget\"",
            ) >= 1
                && readyz(&b).await.0 == 200)
        },
    )
    .await?;
    let b_relisted_after = t_restore.elapsed();
    // B stayed trusted (its bound is 10 min), so nothing waits for its other watches: each
    // resumes from its last resourceVersion when its own retry comes (up to 8 s apart). Resync
    // for B is its Snapshot watch delivering the cut's changes, i.e. an event since the restore.
    wait_for(
        Duration::from_secs(60),
        "B's Snapshot watch to deliver the cut's changes",
        || async {
            let m = b.metrics().await?;
            let age = m
                .lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "longhorn_guard_webhook_last_sync_age_seconds{kind=\"snapshot\"} ",
                    )
                })
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0);
            Ok((0.0..t_restore.elapsed().as_secs_f64()).contains(&age))
        },
    )
    .await?;
    let b_snapshots_after = t_restore.elapsed();

    let (m_a, m_b) = (a.metrics().await?, b.metrics().await?);
    let figures = |m: &str| {
        format!(
            "watch_errors_total {}, watch_restarts_total {}, index_stale_total {}, index_trusted {}",
            metric(m, "longhorn_guard_webhook_watch_errors_total", ""),
            metric(m, "longhorn_guard_webhook_watch_restarts_total", ""),
            metric(m, "longhorn_guard_webhook_index_stale_total", ""),
            metric(m, "longhorn_guard_webhook_index_trusted", ""),
        )
    };
    println!(
        "A (bound 3 s): 503 after {t_unready:?} of cut, 200 {a_ready_after:?} after the restore; {}",
        figures(&m_a)
    );
    println!(
        "B (bound 10 min): 200 throughout the cut, relisted {b_relisted_after:?} after the restore, \
         its Snapshot watch resumed {b_snapshots_after:?} after; {}; proxy refused {} connections \
         while cut",
        figures(&m_b),
        proxy.refused.load(Ordering::Relaxed)
    );
    // A relisted because its watches went stale; B only because the API server said 410.
    assert!(metric(&m_a, "longhorn_guard_webhook_watch_restarts_total", "") >= 1);
    assert!(metric(&m_a, "longhorn_guard_webhook_index_stale_total", "") >= 1);
    assert_eq!(
        metric(&m_b, "longhorn_guard_webhook_index_stale_total", ""),
        0
    );
    assert!(
        metric(
            &m_b,
            "longhorn_guard_webhook_watch_errors_total",
            "kind=\"backuptarget\""
        ) >= 1
    );
    for m in [&m_a, &m_b] {
        assert_eq!(metric(m, "longhorn_guard_webhook_index_trusted", ""), 5);
    }

    // --- decisions after resync --------------------------------------------------------------
    let t_judge = Instant::now();
    for ns in [&ns_a, &ns_b] {
        assert_eq!(
            judge(&client, ns, "snap-new").await,
            None,
            "{ns}: false denial of a Snapshot created during the cut"
        );
        assert_eq!(judge(&client, ns, "snap-ok").await, None, "{ns}");
        let denied = judge(&client, ns, "snap-doomed").await.unwrap();
        assert!(denied.contains("snapshot_missing"), "{ns}: {denied}");
        let denied = judge(&client, ns, "snap-never").await.unwrap();
        assert!(denied.contains("snapshot_missing"), "{ns}: {denied}");
    }
    // The BackupTarget deleted during the cut (B: the kind it relisted after 410) is missing
    // from the decision's warnings (`targetUnavailable: warn`, the default).
    for (served, ns) in [(&a, &ns_a), (&b, &ns_b)] {
        let obj = shapes::backup(ns, "b-target", "vol-1", "snap-ok", None);
        let response = review_directly(served, ns, obj).await;
        assert_eq!(response["allowed"], json!(true), "{ns}: {response}");
        let warnings = response["warnings"].to_string();
        assert!(
            warnings.contains(r#"BackupTarget \"default\" does not exist"#),
            "{ns}: {warnings}"
        );
    }

    println!("decisions after resync judged in {:?}", t_judge.elapsed());
    let t_stop = Instant::now();
    reg_a.remove().await?;
    reg_b.remove().await?;
    a.stop().await?;
    b.stop().await?;
    println!("stopped in {:?}", t_stop.elapsed());
    Ok(())
}
