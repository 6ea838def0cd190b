//! Throttling through the real kube-apiserver: the webhook registered by URL + caBundle for
//! the test's namespace, Backups created through the API (so denials come back as the
//! API server's 429 errors).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use anyhow::{Result, bail};
use common::*;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_guard_webhook::policy::Mode;
use longhorn_guard_webhook::policy::throttle::{RateLimit, ThrottlePolicy};
use longhorn_guard_webhook::{Policy, WebhookConfig};
use longhorn_types::{Backup, Snapshot, shapes};
use serde_json::json;

/// vol-1..vol-3 on node-1 (vol-3 only through its active engine: its Volume says node-9),
/// vol-4, vol-5 on node-2; snapshots snap-<vol>-<n> (n in 0..4), target `default`.
async fn fixtures(cluster: &TestCluster, ns: &str) -> Result<()> {
    for (v, node) in [
        ("vol-1", "node-1"),
        ("vol-2", "node-1"),
        ("vol-3", "node-9"),
        ("vol-4", "node-2"),
        ("vol-5", "node-2"),
    ] {
        fixtures::volume(cluster, ns, v, node).await?;
        for n in 0..4 {
            fixtures::snapshot(cluster, ns, &format!("snap-{v}-{n}"), v, node).await?;
        }
    }
    fixtures::engine(cluster, ns, "vol-3", "node-1").await?;
    fixtures::default_target(cluster, ns).await
}

/// Creates a Backup; `Ok(None)` when created, `Ok(Some((code, message)))` when denied.
async fn try_create(
    client: &Client,
    ns: &str,
    obj: serde_json::Value,
) -> Result<Option<(u16, String)>> {
    let b: Backup = serde_json::from_value(obj)?;
    match Api::<Backup>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &b)
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.message.contains("denied the request") => {
            Ok(Some((e.code, e.message)))
        }
        Err(e) => Err(e.into()),
    }
}

async fn expect_allowed(
    client: &Client,
    ns: &str,
    name: &str,
    vol: &str,
    snap: &str,
) -> Result<()> {
    if let Some((code, m)) =
        try_create(client, ns, shapes::backup(ns, name, vol, snap, None)).await?
    {
        bail!("{name} should be allowed, got {code}: {m}");
    }
    Ok(())
}

async fn expect_throttled(
    client: &Client,
    ns: &str,
    name: &str,
    vol: &str,
    snap: &str,
    scope: &str,
) -> Result<String> {
    match try_create(client, ns, shapes::backup(ns, name, vol, snap, None)).await? {
        None => bail!("{name} should be throttled ({scope}) but was created"),
        Some((code, m)) => {
            assert_eq!(code, 429, "{m}");
            assert!(m.contains(&format!("[throttled: {scope}]")), "{m}");
            Ok(m)
        }
    }
}

fn caps_only(volume: u32, node: u32, cluster: u32) -> Policy {
    Policy {
        throttle: ThrottlePolicy {
            max_in_flight_per_volume: volume,
            max_in_flight_per_node: node,
            max_in_flight_per_cluster: cluster,
            cluster_rate: RateLimit::OFF,
            recurring_job_rate: RateLimit::OFF,
            user_rate: RateLimit::OFF,
            ..ThrottlePolicy::default()
        },
        ..Policy::default()
    }
}

async fn complete(
    cluster: &TestCluster,
    ns: &str,
    name: &str,
    vol: &str,
    snap: &str,
) -> Result<()> {
    cluster
        .set_status::<Backup>(
            ns,
            name,
            shapes::backup_status("Completed", "node-1", vol, snap),
        )
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn each_cap_and_duplicates_deny_with_429_and_free_up_on_completion() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("throttle-caps").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(cluster.client(), &ns, caps_only(1, 2, 3)).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let c = cluster.client_without_retry(None)?;

    expect_allowed(&c, &ns, "b1", "vol-1", "snap-vol-1-0").await?;
    // Same snapshot again: duplicate. Another snapshot of vol-1: the volume cap.
    let m = expect_throttled(&c, &ns, "b1-dup", "vol-1", "snap-vol-1-0", "duplicate").await?;
    assert!(m.contains("already has a Backup in flight: \"b1\""), "{m}");
    let m = expect_throttled(&c, &ns, "b1-more", "vol-1", "snap-vol-1-1", "volume").await?;
    assert!(
        m.contains("volume \"vol-1\" has 1 Backup(s) in flight, the limit is 1"),
        "{m}"
    );
    assert!(m.contains("Oldest in flight: b1 ("), "{m}");
    assert!(m.contains("Retry after about 30s"), "{m}");
    // node-1: vol-2 fills it (2 of 2); vol-3 is on node-1 through its engine.
    expect_allowed(&c, &ns, "b2", "vol-2", "snap-vol-2-0").await?;
    let m = expect_throttled(&c, &ns, "b3", "vol-3", "snap-vol-3-0", "node").await?;
    assert!(
        m.contains("node \"node-1\" has 2 Backup(s) in flight, the limit is 2"),
        "{m}"
    );
    // The cluster: one more on node-2 makes 3 of 3.
    expect_allowed(&c, &ns, "b4", "vol-4", "snap-vol-4-0").await?;
    let m = expect_throttled(&c, &ns, "b5", "vol-5", "snap-vol-5-0", "cluster").await?;
    assert!(
        m.contains("has 3 Backup(s) in flight, the limit is 3"),
        "{m}"
    );
    // Missing snapshots are still the snapshot check's business (404), never counted.
    let (code, _) = try_create(&c, &ns, shapes::backup(&ns, "ghost", "vol-5", "nope", None))
        .await?
        .unwrap();
    assert_eq!(code, 404);
    // Longhorn's synced Backups (empty snapshotName) pass whatever the counts.
    assert!(
        try_create(&c, &ns, shapes::backup(&ns, "synced", "vol-1", "", None))
            .await?
            .is_none()
    );

    // b1 completes: vol-1 and the cluster have room again.
    complete(&cluster, &ns, "b1", "vol-1", "snap-vol-1-0").await?;
    wait_for(Duration::from_secs(10), "vol-1 admits again", || {
        let c = c.clone();
        let ns = ns.clone();
        async move {
            Ok(try_create(
                &c,
                &ns,
                shapes::backup(&ns, "b1-next", "vol-1", "snap-vol-1-1", None),
            )
            .await?
            .is_none())
        }
    })
    .await?;

    // The gauges are computed from the watch-fed index at scrape time: wait until the watch
    // has delivered b1's completion and b1-next before reading them.
    wait_for(
        Duration::from_secs(10),
        "in-flight gauge to catch up",
        || {
            let served = &served;
            async move {
                let text = served.metrics().await?;
                Ok(metric(
                    &text,
                    "longhorn_guard_webhook_inflight_backups",
                    "scope=\"cluster\"",
                ) == 3)
            }
        },
    )
    .await?;
    let text = served.metrics().await?;
    for scope in ["volume", "node", "cluster", "duplicate"] {
        assert!(
            metric(
                &text,
                "longhorn_guard_webhook_throttled_reviews_total",
                &format!("scope=\"{scope}\"")
            ) >= 1,
            "{scope}: {text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_inflight_backups",
            "scope=\"cluster\""
        ),
        3,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_inflight_backups",
            "node=\"node-1\""
        ),
        2,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_backups{",
            "state=\"Completed\""
        ),
        1,
        "{text}"
    );
    assert!(
        text.contains("longhorn_guard_webhook_backups_oldest_non_terminal_age_seconds "),
        "{text}"
    );
    reg.remove().await?;
    served.stop().await
}

/// The incident's leftover: a Backup admitted while its snapshot existed, the snapshot
/// deleted afterwards, the Backup Pending forever (v1.7.2). It holds its volume's slot only
/// until it is `stuckAfterSeconds` old; then the volume's next Backup of an existing snapshot
/// is admitted, and that one holds the slot again. Backups of the gone snapshot stay refused
/// (404), and the stuck one is counted apart in the metrics.
#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_backup_whose_snapshot_is_gone_holds_its_volume_only_until_stuck_after() -> Result<()> {
    const STUCK_AFTER: i64 = 3;
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("throttle-doomed").await?;
    fixtures(&cluster, &ns).await?;
    let mut policy = caps_only(1, 10, 50);
    policy.throttle.stuck_after_seconds = STUCK_AFTER as u64;
    let served = serve(cluster.client(), &ns, policy).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let c = cluster.client_without_retry(None)?;

    expect_allowed(&c, &ns, "b1", "vol-1", "snap-vol-1-0").await?;
    cluster
        .set_status::<Backup>(
            &ns,
            "b1",
            shapes::backup_status("Pending", "node-1", "vol-1", "snap-vol-1-0"),
        )
        .await?;
    Api::<Snapshot>::namespaced(cluster.client(), &ns)
        .delete("snap-vol-1-0", &DeleteParams::default())
        .await?;
    // A Backup of the gone snapshot is the snapshot check's to refuse (404): the slot b1
    // frees can never go to one.
    wait_for(
        Duration::from_secs(10),
        "the webhook to refuse Backups of the deleted snap-vol-1-0 with 404",
        || {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                let o = shapes::backup(&ns, "b1-again", "vol-1", "snap-vol-1-0", None);
                Ok(matches!(try_create(&c, &ns, o).await?, Some((404, _))))
            }
        },
    )
    .await?;
    // Until b1 is STUCK_AFTER old, vol-1 is full; then b2 (an existing snapshot) is admitted.
    wait_for(
        Duration::from_secs(30),
        "vol-1 to admit b2 once b1 is stuckAfterSeconds old",
        || {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                let o = shapes::backup(&ns, "b2", "vol-1", "snap-vol-1-1", None);
                match try_create(&c, &ns, o).await? {
                    None => Ok(true),
                    Some((429, m)) if m.contains("[throttled: volume]") && m.contains("b1 (") => {
                        Ok(false)
                    }
                    Some((code, m)) => bail!("b2: unexpected {code}: {m}"),
                }
            }
        },
    )
    .await?;
    let backups = Api::<Backup>::namespaced(cluster.client(), &ns);
    let created = |b: &Backup| {
        b.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    };
    let (b1, b2) = (backups.get("b1").await?, backups.get("b2").await?);
    assert!(
        created(&b2) - created(&b1) >= STUCK_AFTER,
        "b2 admitted while b1 was younger than {STUCK_AFTER}s"
    );
    // The freed slot went to b2 alone.
    let m = expect_throttled(&c, &ns, "b3", "vol-1", "snap-vol-1-2", "volume").await?;
    assert!(m.contains("Oldest in flight: b2 ("), "{m}");
    // b1 is counted apart, by volume.
    let series = format!("longhorn_namespace=\"{ns}\",volume=\"vol-1\"");
    wait_for(
        Duration::from_secs(10),
        "doomed_backups of vol-1 to show b1",
        || {
            let (served, series) = (&served, &series);
            async move {
                let text = served.metrics().await?;
                Ok(
                    metric(&text, "longhorn_guard_webhook_doomed_backups{", series) == 1
                        && metric(
                            &text,
                            "longhorn_guard_webhook_doomed_volume_last_backup_age_seconds{",
                            series,
                        ) >= STUCK_AFTER as u64,
                )
            }
        },
    )
    .await?;
    reg.remove().await?;
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn generate_name_backups_hold_their_slot_before_and_after_the_watch() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("throttle-genname").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(cluster.client(), &ns, caps_only(1, 0, 0)).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let c = cluster.client_without_retry(None)?;
    let generated = |snap: &str| {
        let mut o = shapes::backup(&ns, "", "vol-1", snap, None);
        o["metadata"].as_object_mut().unwrap().remove("name");
        o["metadata"]["generateName"] = json!("backup-");
        o
    };
    assert!(
        try_create(&c, &ns, generated("snap-vol-1-0"))
            .await?
            .is_none()
    );
    // Immediately (reservation) and later (index): the slot is held.
    let (code, m) = try_create(&c, &ns, generated("snap-vol-1-1"))
        .await?
        .unwrap();
    assert_eq!(code, 429, "{m}");
    // Once the watch has delivered the generated Backup, the index holds the slot.
    let index = served.handle.state().index.clone();
    wait_for(
        Duration::from_secs(30),
        "the generated Backup in the index",
        || async {
            Ok(index
                .view()
                .data()
                .backups
                .generated_from(&ns, "backup-", "snap-vol-1-0")
                .count()
                == 1)
        },
    )
    .await?;
    let (code, m) = try_create(&c, &ns, generated("snap-vol-1-2"))
        .await?
        .unwrap();
    assert_eq!(code, 429, "{m}");
    assert!(m.contains("Oldest in flight: backup-"), "{m}");
    assert_eq!(
        served.handle.state().throttle.reservations(),
        0,
        "matched once the watch delivered it"
    );
    reg.remove().await?;
    served.stop().await
}

async fn grant_backup_create(cluster: &TestCluster, ns: &str) -> Result<()> {
    let subjects = json!([
        { "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice" },
        { "kind": "ServiceAccount", "name": "longhorn-service-account", "namespace": ns },
    ]);
    fixtures::grant(
        cluster,
        ns,
        "backup-creator",
        &["backups"],
        &["create", "get"],
        subjects,
    )
    .await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn rates_exemptions_recurring_jobs_and_warn_only() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("throttle-rates").await?;
    fixtures(&cluster, &ns).await?;
    grant_backup_create(&cluster, &ns).await?;
    let mut policy = caps_only(0, 0, 0);
    policy.throttle.cluster_rate = RateLimit::new(0.5, 5);
    policy.throttle.user_rate = RateLimit::new(0.5, 2);
    policy.throttle.recurring_job_rate = RateLimit::new(0.5, 1);
    policy
        .throttle
        .exemptions
        .labels
        .insert("longhorn-guard.io/urgent".into(), "*".into());
    let served = serve(cluster.client(), &ns, policy).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let admin = cluster.client_without_retry(None)?;
    let alice = cluster.client_without_retry(Some(("alice", &["system:authenticated"])))?;
    let sa = format!("system:serviceaccount:{ns}:longhorn-service-account");
    let longhorn = cluster.client_without_retry(Some((
        &sa,
        &["system:serviceaccounts", "system:authenticated"],
    )))?;

    // Per user: alice's bucket (burst 2) is empty after two Backups.
    expect_allowed(&alice, &ns, "a1", "vol-1", "snap-vol-1-0").await?;
    expect_allowed(&alice, &ns, "a2", "vol-1", "snap-vol-1-1").await?;
    let m = expect_throttled(&alice, &ns, "a3", "vol-1", "snap-vol-1-2", "rate_user").await?;
    assert!(
        m.contains("user \"alice\"") && m.contains("Retry after 120s."),
        "{m}"
    );
    // Recurring job (as longhorn-manager): its bucket (burst 1) empties, and rates only warn
    // recurring jobs by default.
    let job = |name: &str, snap: &str| shapes::backup(&ns, name, "vol-2", snap, Some("daily"));
    assert!(
        try_create(&longhorn, &ns, job("j1", "snap-vol-2-0"))
            .await?
            .is_none()
    );
    assert!(
        try_create(&longhorn, &ns, job("j2", "snap-vol-2-1"))
            .await?
            .is_none(),
        "warned, not denied"
    );
    // Cluster bucket (burst 5): a1, a2, j1, j2, c1; c2 is one too many.
    expect_allowed(&admin, &ns, "c1", "vol-3", "snap-vol-3-0").await?;
    let m = expect_throttled(&admin, &ns, "c2", "vol-3", "snap-vol-3-1", "rate_cluster").await?;
    assert!(
        m.contains("(throttle.clusterRate); 0 of 5 tokens left"),
        "{m}"
    );
    // An exempt label passes.
    let mut urgent = shapes::backup(&ns, "urgent", "vol-4", "snap-vol-4-0", None);
    urgent["metadata"]["labels"]["longhorn-guard.io/urgent"] = json!("yes");
    assert!(try_create(&admin, &ns, urgent).await?.is_none());

    let text = served.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_throttled_reviews_total",
            "scope=\"rate_user\""
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_throttled_reviews_total",
            "scope=\"rate_cluster\""
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_throttle_warned_reviews_total",
            "scope=\"rate_recurring_job\""
        ),
        1,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "longhorn_guard_webhook_rate_tokens",
            "bucket=\"cluster\""
        ) < 1,
        "{text}"
    );
    reg.remove().await?;
    served.stop().await?;

    // Warn-only (top-level mode): the same over-limit request is allowed.
    let ns2 = cluster.namespace("throttle-warnonly").await?;
    fixtures(&cluster, &ns2).await?;
    let mut p = caps_only(1, 0, 0);
    p.mode = Mode::WarnOnly;
    let served = serve(cluster.client(), &ns2, p).await?;
    wait_ready(&served).await?;
    // Warn-only allows the usual probe, so wait for the webhook to see a dry run instead.
    let reg = register_no_probe(&cluster, &served, &ns2).await?;
    wait_for(
        Duration::from_secs(20),
        "the API server to call the webhook",
        || {
            let admin = admin.clone();
            let ns2 = ns2.clone();
            let served = &served;
            async move {
                let b: Backup =
                    serde_json::from_value(shapes::backup(&ns2, "probe", "vol-1", "gone", None))?;
                let pp = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                Api::<Backup>::namespaced(admin, &ns2)
                    .create(&pp, &b)
                    .await?;
                Ok(metric(
                    &served.metrics().await?,
                    "longhorn_guard_webhook_reviews_total",
                    "",
                ) > 0)
            }
        },
    )
    .await?;
    expect_allowed(&admin, &ns2, "w1", "vol-1", "snap-vol-1-0").await?;
    expect_allowed(&admin, &ns2, "w2", "vol-1", "snap-vol-1-1").await?;
    let text = served.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_throttle_warned_reviews_total",
            "scope=\"volume\""
        ),
        1,
        "{text}"
    );
    reg.remove().await?;
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn policy_file_is_hot_reloaded_and_a_bad_one_keeps_the_last_good() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("throttle-reload").await?;
    fixtures(&cluster, &ns).await?;
    let cert = TestCert::new()?;
    let policy_path = cert.dir.join("policy.yaml");
    let yaml = |per_volume: &str| {
        // From generation 2 on, a throttle exemption of Longhorn's own account (reported).
        let exemption = if per_volume == "1" {
            ""
        } else {
            "  exemptions: {serviceAccounts: ['*:longhorn-service-account']}\n"
        };
        format!(
            "throttle:\n  maxInFlightPerVolume: {per_volume}\n  clusterRate: {{perMinute: 0}}\n  userRate: {{perMinute: 0}}\n{exemption}"
        )
    };
    let exempting_longhorn = |text: &str| {
        metric(
            text,
            "longhorn_guard_webhook_policy_longhorn_exemptions",
            "section=\"throttle.exemptions\"",
        )
    };
    std::fs::write(&policy_path, yaml("1"))?;
    let config = WebhookConfig {
        policy_path: Some(policy_path.clone()),
        policy_poll_interval: Duration::from_millis(100),
        ..cert.config(None, Some(&ns))
    };
    let handle = longhorn_guard_webhook::start(config, cluster.client()).await?;
    let served = Served { handle, cert };
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let c = cluster.client_without_retry(None)?;
    let gauge = |text: &str, name: &str| metric(text, name, "");

    expect_allowed(&c, &ns, "r1", "vol-1", "snap-vol-1-0").await?;
    expect_throttled(&c, &ns, "r2", "vol-1", "snap-vol-1-1", "volume").await?;
    let text = served.metrics().await?;
    assert_eq!(gauge(&text, "longhorn_guard_webhook_policy_generation"), 1);
    assert!(
        text.contains(
            "longhorn_guard_webhook_policy_longhorn_exemptions{section=\"throttle.exemptions\"} 0"
        ),
        "{text}"
    );

    std::fs::write(&policy_path, yaml("2"))?;
    wait_for(Duration::from_secs(10), "policy generation 2", || async {
        Ok(gauge(
            &served.metrics().await?,
            "longhorn_guard_webhook_policy_generation",
        ) == 2)
    })
    .await?;
    // The reloaded policy exempts Longhorn's account from the throttle: reported.
    let text = served.metrics().await?;
    assert_eq!(exempting_longhorn(&text), 1, "{text}");
    expect_allowed(&c, &ns, "r2", "vol-1", "snap-vol-1-1").await?;

    // A typo: rejected, counted once, generation 2 (two per volume) stays in force.
    std::fs::write(&policy_path, yaml("two"))?;
    wait_for(Duration::from_secs(10), "a reload error", || async {
        Ok(gauge(
            &served.metrics().await?,
            "longhorn_guard_webhook_policy_reload_errors_total",
        ) == 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = served.metrics().await?;
    assert_eq!(
        gauge(&text, "longhorn_guard_webhook_policy_reload_errors_total"),
        1,
        "{text}"
    );
    assert_eq!(
        gauge(&text, "longhorn_guard_webhook_policy_generation"),
        2,
        "{text}"
    );
    let m = expect_throttled(&c, &ns, "r3", "vol-1", "snap-vol-1-2", "volume").await?;
    assert!(m.contains("the limit is 2"), "{m}");
    reg.remove().await?;
    served.stop().await
}
