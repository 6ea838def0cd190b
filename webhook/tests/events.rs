//! Events about refused Backups, through the real kube-apiserver: the Event lands on the
//! Backup's Volume (what `kubectl describe volume` shows), a storm of denials becomes a bounded
//! number of Event writes with the count aggregated, and without RBAC for Events admissions
//! still answer while a metric counts the failed writes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_guard_webhook::Policy;
use longhorn_guard_webhook::events::{RefusalLabels, WriteLabels};
use longhorn_guard_webhook::metrics::Metrics;
use longhorn_guard_webhook::policy::EventsPolicy;
use longhorn_types::{Volume, shapes};
use serde_json::json;

/// No throttling (the storm must be refused for its snapshots only), Events as given.
fn policy(events: EventsPolicy) -> Policy {
    Policy {
        throttle: longhorn_guard_webhook::policy::throttle::ThrottlePolicy {
            enabled: false,
            ..Default::default()
        },
        events,
        ..Policy::default()
    }
}

/// Grants `user` Backup create (and read of what the webhook indexes) in `ns`.
async fn grant_user(cluster: &TestCluster, ns: &str, user: &str, create: bool) -> Result<()> {
    let mut verbs = vec!["get", "list", "watch"];
    if create {
        verbs.push("create");
    }
    let resources = [
        "snapshots",
        "volumes",
        "engines",
        "backups",
        "backuptargets",
    ];
    let subjects =
        json!([{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }]);
    fixtures::grant(cluster, ns, user, &resources, &verbs, subjects).await
}

/// The Events about refused Backups in `ns` (those this webhook writes).
async fn refusal_events(cluster: &TestCluster, ns: &str) -> Result<Vec<Event>> {
    let list = Api::<Event>::namespaced(cluster.client(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.reporting_controller.as_deref()
                == Some(longhorn_guard_webhook::events::REPORTING_CONTROLLER)
        })
        .collect())
}

/// What an Event counts: `series.count`, else 1.
fn count(e: &Event) -> u64 {
    e.series.as_ref().map_or(1, |s| s.count as u64)
}

fn refusals(m: &Metrics, outcome: &'static str) -> u64 {
    m.events
        .refusals
        .get_or_create(&RefusalLabels { outcome })
        .get()
}

fn writes(m: &Metrics, op: &'static str, outcome: &'static str) -> u64 {
    m.events
        .writes
        .get_or_create(&WriteLabels { op, outcome })
        .get()
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_refused_backup_leaves_an_event_on_its_volume_with_the_message_and_requester()
-> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("events-one").await?;
    fixtures::volume(&cluster, &ns, "vol-1", "node-1").await?;
    fixtures::default_target(&cluster, &ns).await?;
    grant_user(&cluster, &ns, "backup-job", true).await?;
    let served = serve(cluster.client(), &ns, policy(EventsPolicy::default())).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;

    let job = cluster.client_as("backup-job", &["system:authenticated"])?;
    let message = create_backup(
        &job,
        &ns,
        shapes::backup(&ns, "nightly-1", "vol-1", "snap-gone", Some("nightly")),
        false,
    )
    .await?
    .context("a Backup of a missing Snapshot is denied")?;
    let uid = Api::<Volume>::namespaced(cluster.client(), &ns)
        .get("vol-1")
        .await?
        .metadata
        .uid;

    wait_for(Duration::from_secs(20), "an Event on vol-1", || {
        let (cluster, ns) = (&cluster, &ns);
        async move { Ok(!refusal_events(cluster, ns).await?.is_empty()) }
    })
    .await?;
    let found = refusal_events(&cluster, &ns).await?;
    assert_eq!(found.len(), 1, "{found:#?}");
    let event = &found[0];
    let regarding = event.regarding.as_ref().context("regarding")?;
    assert_eq!(regarding.kind.as_deref(), Some("Volume"));
    assert_eq!(regarding.name.as_deref(), Some("vol-1"));
    assert_eq!(
        regarding.api_version.as_deref(),
        Some("longhorn.io/v1beta2")
    );
    assert_eq!(regarding.uid, uid, "the Volume's uid, from the index");
    assert_eq!(event.reason.as_deref(), Some("SnapshotMissing"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.as_deref().unwrap_or_default();
    // The guard's message as the client got it (after the API server's prefix), and who asked.
    let guard_message = message
        .split_once("denied the request: ")
        .map_or(message.as_str(), |(_, m)| m);
    assert!(note.contains("backup-job"), "{note}");
    assert!(note.contains("nightly-1"), "{note}");
    assert!(
        note.contains(guard_message),
        "{guard_message:?} not in {note:?}"
    );

    // What an operator runs: `kubectl describe volume` lists it (matched by the Volume's uid).
    let out = cluster
        .command("kubectl")
        .args(["describe", "volumes.longhorn.io", "vol-1", "-n", &ns])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events_section = text.split_once("Events:").map(|(_, e)| e).unwrap_or("");
    assert!(events_section.contains("SnapshotMissing"), "{text}");
    assert!(events_section.contains("backup-job"), "{text}");

    // A dry run has no side effects: no second count. Then a real one: the queue is FIFO, so
    // once it is counted the dry run would have been.
    for (name, dry_run) in [("nightly-dry", true), ("nightly-2", false)] {
        let backup = shapes::backup(&ns, name, "vol-1", "snap-gone", None);
        create_backup(&job, &ns, backup, dry_run)
            .await?
            .context("denied")?;
    }
    let metrics = Arc::clone(&served.handle.state().metrics);
    wait_for(
        Duration::from_secs(20),
        "the second refusal counted",
        || {
            let metrics = &metrics;
            async move { Ok(refusals(metrics, "aggregated") >= 2) }
        },
    )
    .await?;
    assert_eq!(
        refusals(&metrics, "aggregated"),
        2,
        "the dry run is not counted"
    );
    reg.remove().await?;
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_storm_of_denials_becomes_one_event_per_volume_with_the_count_aggregated() -> Result<()> {
    const VOLUMES: usize = 4;
    let denials = longhorn_guard_testkit::test_env()
        .events_storm_denials
        .unwrap_or(4_000);
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("events-storm").await?;
    for v in 0..VOLUMES {
        fixtures::volume(&cluster, &ns, &format!("vol-{v}"), "node-1").await?;
    }
    fixtures::default_target(&cluster, &ns).await?;
    // A window longer than the test: during the storm only creates; the counts are written
    // by the final flush at shutdown.
    let events = EventsPolicy {
        aggregate_window_seconds: 600,
        series_idle_seconds: 1200,
        ..EventsPolicy::default()
    };
    let served = serve(cluster.client(), &ns, policy(events)).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let metrics = Arc::clone(&served.handle.state().metrics);
    let probes = refusals(&metrics, "no_volume");

    let client = cluster.client();
    let started = Instant::now();
    let denied: Vec<Result<bool>> = futures::stream::iter(0..denials)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let backup = shapes::backup(
                    &ns,
                    &format!("storm-{i}"),
                    &format!("vol-{}", i % VOLUMES),
                    &format!("snap-gone-{i}"),
                    Some("hourly"),
                );
                Ok(create_backup(&client, &ns, backup, false).await?.is_some())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let storm = started.elapsed();
    let denied = denied
        .into_iter()
        .collect::<Result<Vec<bool>>>()?
        .into_iter()
        .filter(|d| *d)
        .count() as u64;
    assert_eq!(
        denied, denials as u64,
        "every Backup of a missing Snapshot is denied"
    );

    reg.remove().await?;
    served.stop().await?;
    let found = refusal_events(&cluster, &ns).await?;
    let aggregated = refusals(&metrics, "aggregated");
    let dropped = refusals(&metrics, "queue_full") + refusals(&metrics, "series_full");
    let (creates, patches) = (
        writes(&metrics, "create", "ok"),
        writes(&metrics, "patch", "ok"),
    );
    let failed = writes(&metrics, "create", "error") + writes(&metrics, "patch", "error");
    println!(
        "{denials} denials over {VOLUMES} volumes in {storm:?}: {} Event objects, {creates} creates + \
         {patches} patches ({failed} failed), {aggregated} counted, {dropped} dropped (queue full)",
        found.len()
    );
    assert_eq!(
        refusals(&metrics, "no_volume"),
        probes,
        "every storm Backup's volume is found"
    );
    assert_eq!(
        aggregated + dropped,
        denied,
        "each denial aggregated or counted as dropped"
    );
    assert_eq!(
        found.len(),
        VOLUMES,
        "one Event per volume and reason: {found:#?}"
    );
    assert_eq!(failed, 0);
    // The bound: one create per series, then (window longer than the storm) the final patch.
    assert_eq!(creates, VOLUMES as u64);
    assert!(patches <= VOLUMES as u64, "{patches} patches");
    assert_eq!(
        found.iter().map(count).sum::<u64>(),
        aggregated,
        "the Events' series counts add up to the denials aggregated"
    );
    for e in &found {
        assert_eq!(e.reason.as_deref(), Some("SnapshotMissing"));
        assert!(count(e) > 1, "{e:#?}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn without_rbac_for_events_admissions_answer_and_the_failed_writes_are_counted() -> Result<()>
{
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("events-norbac").await?;
    fixtures::volume(&cluster, &ns, "vol-1", "node-1").await?;
    fixtures::default_target(&cluster, &ns).await?;
    // The webhook's identity may read Longhorn's objects but not write Events.
    let user = format!("lhg-webhook-{ns}");
    grant_user(&cluster, &ns, &user, false).await?;
    let webhook_client = cluster.client_as(&user, &["system:authenticated"])?;
    let served = serve(webhook_client, &ns, policy(EventsPolicy::default())).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let metrics = Arc::clone(&served.handle.state().metrics);

    let client = cluster.client();
    for i in 0..3 {
        let message = create_backup(
            &client,
            &ns,
            shapes::backup(&ns, &format!("b-{i}"), "vol-1", "snap-gone", None),
            false,
        )
        .await?
        .context("still denied, with the guard's message")?;
        assert!(message.contains("snap-gone"), "{message}");
    }
    wait_for(
        Duration::from_secs(20),
        "a failed Event write counted",
        || {
            let metrics = &metrics;
            async move { Ok(writes(metrics, "create", "error") >= 1) }
        },
    )
    .await?;
    let text = served.metrics().await?;
    assert!(
        metric(
            &text,
            "longhorn_guard_webhook_event_writes_total",
            "outcome=\"error\""
        ) >= 1,
        "{text}"
    );
    assert_eq!(writes(&metrics, "create", "ok"), 0);
    assert!(refusal_events(&cluster, &ns).await?.is_empty());
    reg.remove().await?;
    served.stop().await
}
