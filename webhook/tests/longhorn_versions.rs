//! Longhorn 1.7, 1.8 and 1.10 through a real kube-apiserver: the webhook refuses to start
//! while Longhorn's CRDs are missing (naming them), detects each release from the CRDs it
//! finds (and from the Setting longhorn-manager writes), follows an upgrade while running,
//! and judges the same scenarios, with objects shaped as each release writes them, by that
//! release's rules.
//!
//! CRDs are cluster-scoped and this test installs three releases' versions of them, which
//! would change what every other test sees on the run's shared control plane: so it starts
//! a control plane of its own (`ControlPlane`, ~5 s, stopped at the end and on drop).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_testkit::{ControlPlane, TestCluster, control_plane, wait_for};
use longhorn_guard_webhook::{Policy, WebhookConfig};
use longhorn_types::{Release, crds, shapes};
use serde_json::Value;

mod longhorn_data {
    use super::*;

    /// Detection reads Longhorn's real v1.7.2 Backup CRD (test data outside the project) as 1.7:
    /// from its chart label `app.kubernetes.io/version`, and from its schema alone without the
    /// label. Ignored by a plain test run (shown skipped); `scripts/test.sh` runs it, and there a
    /// missing file fails it.
    #[test]
    #[ignore = "needs Longhorn's CRDs (../shared/longhorn or LHG_TEST_LONGHORN_CRDS): bash scripts/test.sh"]
    fn longhorn_v1_7_2_crds_are_detected_as_1_7() {
        use longhorn_guard_webhook::version::{
            BACKUP_CRD, Evidence, Source, detect, release_from_schema,
        };
        let theirs = longhorn_guard_testkit::require_longhorn_crds();
        let mut backup = theirs
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(BACKUP_CRD))
            .expect("Longhorn's Backup CRD");
        let evidence = |crd: &CustomResourceDefinition| Evidence {
            backup_crd: Some(crd.clone()),
            ..Evidence::default()
        };
        let info = detect(&evidence(&backup));
        assert_eq!(info.source, Source::CrdLabel, "{info:?}");
        assert_eq!(info.version_label(), "v1.7.2");
        assert_eq!(info.release, Some(Release::V1_7));
        assert_eq!(release_from_schema(&backup), Release::V1_7);
        backup.metadata.labels = None;
        let info = detect(&evidence(&backup));
        assert_eq!(
            (info.source, info.release),
            (Source::CrdSchema, Some(Release::V1_7))
        );
    }
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn each_release_is_detected_and_judged_by_its_rules() {
    let state = std::env::temp_dir().join(format!(
        "lhg-versions-cp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut cp = ControlPlane::start(&control_plane::scripts_dir(), &state)
        .await
        .expect("own control plane (control-plane/up.sh)");
    let result = run(&cp).await;
    cp.stop().await;
    let _ = std::fs::remove_dir_all(&state);
    result.unwrap();
}

async fn run(cp: &ControlPlane) -> anyhow::Result<()> {
    let cluster = TestCluster::connect_kubeconfig(&cp.kubeconfig()).await?;
    let client = cluster.client();

    // No Longhorn CRDs: the webhook refuses to start and names all five.
    let err = start(&cluster).await.err().expect("refused without CRDs");
    let msg = format!("{err:#}");
    for crd in [
        "backups.longhorn.io",
        "snapshots.longhorn.io",
        "volumes.longhorn.io",
        "engines.longhorn.io",
        "backuptargets.longhorn.io",
    ] {
        assert!(msg.contains(crd), "{crd} not named: {msg}");
    }

    // All but Engines: only that one is named.
    let v17 = crds::for_release(Release::V1_7);
    let (engines, rest): (Vec<_>, Vec<_>) = v17
        .into_iter()
        .partition(|c| c.metadata.name.as_deref() == Some("engines.longhorn.io"));
    cluster.ensure_crds(rest).await?;
    let err = start(&cluster)
        .await
        .err()
        .expect("refused without Engines");
    let msg = format!("{err:#}");
    assert!(msg.contains("missing: engines.longhorn.io ("), "{msg}");
    assert!(!msg.contains("backups.longhorn.io"), "{msg}");
    cluster.ensure_crds(engines).await?;

    // Longhorn 1.7's CRDs: starts, detects 1.7 from the schema.
    let served = start(&cluster).await?;
    wait_info(
        &served,
        r#"version="1.7",release="1.7",source="crd-schema""#,
    )
    .await?;
    scenarios(&cluster, &served, Release::V1_7).await?;

    // Upgrade to 1.8 while running: re-detected, then 1.8 objects judged by 1.8's rules.
    upgrade_crds(&client, crds::for_release(Release::V1_8)).await?;
    wait_info(
        &served,
        r#"version="1.8-1.9",release="1.8",source="crd-schema""#,
    )
    .await?;
    scenarios(&cluster, &served, Release::V1_8).await?;

    upgrade_crds(&client, crds::for_release(Release::V1_10)).await?;
    wait_info(
        &served,
        r#"version="1.10+",release="1.10",source="crd-schema""#,
    )
    .await?;
    let ns = scenarios(&cluster, &served, Release::V1_10).await?;

    // longhorn-manager writes its version into a Setting: that wins over the schema.
    cluster
        .create_longhorn_object(
            &ns,
            shapes::setting(&ns, "current-longhorn-version", "v1.10.1"),
            None,
        )
        .await?;
    wait_info(
        &served,
        r#"version="v1.10.1",release="1.10",source="setting""#,
    )
    .await?;
    let metrics = served.metrics().await?;
    assert_eq!(
        common::metric(
            &metrics,
            "longhorn_guard_webhook_longhorn_version_changes_total",
            ""
        ),
        3,
        "{metrics}"
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("longhorn_guard_webhook_longhorn_info{"))
            .count(),
        1,
        "one info series at a time"
    );
    // Every kind's list was timed (a real list over the network takes more than 0 s).
    for kind in ["snapshot", "volume", "engine", "backup", "backuptarget"] {
        let series = format!("longhorn_guard_webhook_list_duration_seconds{{kind=\"{kind}\"}} ");
        let seconds: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"));
        assert!(seconds > 0.0, "{series}{seconds}");
    }
    served.stop().await
}

/// The webhook over TLS on 127.0.0.1, watching every namespace of this control plane, the
/// version re-detected every 200 ms, throttling on with only the per-volume cap (rates off,
/// so the scenarios' own pace never trips them), target checks denying.
async fn start(cluster: &TestCluster) -> anyhow::Result<common::Served> {
    let mut policy = Policy {
        target_unavailable: longhorn_guard_webhook::policy::CheckAction::Deny,
        ..Policy::default()
    };
    let off = longhorn_guard_webhook::policy::throttle::RateLimit::OFF;
    policy.throttle.cluster_rate = off;
    policy.throttle.user_rate = off;
    policy.throttle.recurring_job_rate = off;
    policy.throttle.max_in_flight_per_node = 0;
    policy.throttle.max_in_flight_per_cluster = 0;
    let cert = common::TestCert::new()?;
    let config = WebhookConfig {
        longhorn_version_poll_interval: Duration::from_millis(200),
        ..cert.config(Some(policy), None)
    };
    let handle = longhorn_guard_webhook::start(config, cluster.client()).await?;
    Ok(common::Served { handle, cert })
}

async fn wait_info(served: &common::Served, labels: &str) -> anyhow::Result<()> {
    let want = format!("longhorn_guard_webhook_longhorn_info{{{labels}}} 1");
    wait_for(Duration::from_secs(20), &want, || async {
        Ok(served.metrics().await?.lines().any(|l| l == want))
    })
    .await
}

/// Replaces each CRD (an upgrade applies the new release's CRDs over the old ones).
async fn upgrade_crds(
    client: &kube::Client,
    crds: Vec<CustomResourceDefinition>,
) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for mut crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let current = api.get(&name).await?;
        crd.metadata.resource_version = current.metadata.resource_version;
        api.replace(&name, &PostParams::default(), &crd).await?;
    }
    Ok(())
}

/// The same scenarios for every release, in a fresh namespace, with objects shaped as
/// `release` writes them. Backups are created with dryRun, so one case never changes the
/// next one's world. Returns the namespace.
async fn scenarios(
    cluster: &TestCluster,
    served: &common::Served,
    release: Release,
) -> anyhow::Result<String> {
    let ns = cluster
        .namespace(&format!("lh-{}", release.as_str()))
        .await?;
    let node = "node-1";
    let mut objects: Vec<(Value, Option<Value>)> = vec![
        (
            shapes::backup_target(&ns, "default", "s3://bk@us-east-1/"),
            Some(shapes::backup_target_status(node, true)),
        ),
        (
            shapes::backup_target(&ns, "offsite", "nfs://offsite:/backups"),
            Some(shapes::backup_target_status(node, false)),
        ),
    ];
    // vol-a backs up to the unavailable "offsite"; the others to "default".
    for (vol, target) in [
        ("vol-a", "offsite"),
        ("vol-b", "default"),
        ("vol-c", "default"),
        ("vol-d", "default"),
    ] {
        objects.push((
            shapes::volume_of(release, &ns, vol, node, target),
            Some(shapes::volume_status(node)),
        ));
        objects.push((shapes::backup_volume_of(release, &ns, vol, target), None));
    }
    let mut removed = shapes::snapshot_status(node, "");
    removed["markRemoved"] = Value::Bool(true);
    removed["readyToUse"] = Value::Bool(false);
    for (snap, vol, status) in [
        ("snap-a", "vol-a", shapes::snapshot_status(node, "")),
        ("snap-b", "vol-b", shapes::snapshot_status(node, "")),
        ("snap-rm", "vol-c", removed),
        ("snap-d", "vol-d", shapes::snapshot_status(node, "")),
    ] {
        objects.push((shapes::snapshot(&ns, snap, vol), Some(status)));
    }
    // vol-b has a Backup in flight; vol-d one that is finished: Completed on 1.7, Deleting
    // (terminal, 1.8+ only) on later releases.
    let finished = if release.has_backup_targets() {
        "Deleting"
    } else {
        "Completed"
    };
    for (name, vol, snap, state) in [
        ("bk-pending", "vol-b", "snap-b", "Pending"),
        ("bk-finished", "vol-d", "snap-d", finished),
    ] {
        objects.push((
            shapes::backup_of(release, &ns, name, vol, snap, "default"),
            Some(shapes::backup_status_of(
                release, state, node, vol, snap, "default",
            )),
        ));
    }
    for (obj, status) in objects {
        let what = format!("{release}: {} {}", obj["kind"], obj["metadata"]["name"]);
        let stored = cluster
            .create_longhorn_object(&ns, obj.clone(), status)
            .await?;
        let stored = serde_json::to_value(&stored)?;
        // The release's CRDs keep the release's fields.
        assert_eq!(stored["spec"], obj["spec"], "{what}: spec changed");
    }
    let state = served.handle.state();
    wait_for(
        Duration::from_secs(20),
        "the webhook indexed the scenario",
        || {
            let ns = ns.clone();
            async move {
                let view = state.index.view();
                Ok(view.backup(&ns, "bk-finished").is_some()
                    && view.backup(&ns, "bk-pending").is_some()
                    && view.volume(&ns, "vol-a").is_some()
                    && view.target(&ns, "offsite").is_some()
                    && ["snap-a", "snap-b", "snap-rm", "snap-d"].iter().all(|s| {
                        matches!(
                            view.snapshot(&ns, s),
                            longhorn_guard_webhook::index::SnapshotLookup::Indexed(_)
                        )
                    }))
            }
        },
    )
    .await?;
    let registration = common::register(cluster, served, &ns).await?;

    let v110 = release == Release::V1_10;
    // (case, backup, volume, snapshot, Some(texts of the denial) or None = admitted, absent texts)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<Vec<&'a str>>,
        Vec<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "a volume whose backups go to an unavailable target",
            "b-target",
            "vol-a",
            "snap-a",
            // 1.7 has one target, `default`, which is available.
            (release != Release::V1_7).then(|| {
                vec![
                    "BackupTarget \"offsite\" is not available",
                    "[target_unavailable]",
                ]
            }),
            vec![],
        ),
        (
            "a snapshot that does not exist",
            "b-missing",
            "vol-b",
            "snap-nope",
            Some(if v110 {
                vec![
                    "[snapshot_missing]",
                    "Longhorn 1.10+ refuses this Backup too",
                ]
            } else {
                vec!["[snapshot_missing]"]
            }),
            if v110 { vec![] } else { vec!["1.10"] },
        ),
        (
            "a snapshot marked removed",
            "b-removed",
            "vol-c",
            "snap-rm",
            Some(if v110 {
                vec!["[snapshot_removed]", "Longhorn 1.10+ alone would admit it"]
            } else {
                vec!["[snapshot_removed]"]
            }),
            if v110 { vec![] } else { vec!["1.10"] },
        ),
        (
            "the volume's other Backup is finished (Completed / Deleting): not in flight",
            "b-after-finished",
            "vol-d",
            "snap-d",
            None,
            vec![],
        ),
        (
            "the volume's other Backup is Pending: in flight, the per-volume cap of 1 holds",
            "b-after-pending",
            "vol-b",
            "snap-b",
            Some(vec!["longhorn-guard throttled"]),
            vec![],
        ),
    ];
    // Throttle denials are 429s: a retrying client would wait minutes on them.
    let client = cluster.client_without_retry(None)?;
    for (case, name, vol, snap, denial, absent) in cases {
        // 1.8+: the `backup-target` label Longhorn's mutator fills from the volume.
        let target = if vol == "vol-a" { "offsite" } else { "default" };
        let obj = shapes::backup_of(release, &ns, name, vol, snap, target);
        let got = common::create_backup(&client, &ns, obj, true).await?;
        match (&denial, &got) {
            (None, None) => {}
            (Some(texts), Some(msg)) => {
                for t in texts {
                    assert!(msg.contains(t), "{release}: {case}: {t:?} not in {msg}");
                }
                for t in &absent {
                    assert!(!msg.contains(t), "{release}: {case}: {t:?} in {msg}");
                }
            }
            _ => panic!("{release}: {case}: expected denial {denial:?}, got {got:?}"),
        }
    }
    registration.remove().await?;
    Ok(ns)
}
