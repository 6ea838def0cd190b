//! The webhook against the real kube-apiserver of the test run: registered with
//! `clientConfig.url` + `caBundle`, scoped to each test's own namespace.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use common::*;
use futures::StreamExt;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use longhorn_guard_testkit::TestCluster;
use longhorn_guard_testkit::admission::{Review, SERVICE_ACCOUNT_GROUPS};
use longhorn_guard_webhook::Policy;
use longhorn_guard_webhook::policy::Mode;
use longhorn_types::{Backup, Snapshot, shapes};
use serde_json::json;

/// These tests exercise the snapshot checks with many Backups of one volume, which the
/// throttle's default caps would refuse (throttling is tested in tests/throttle.rs).
fn unthrottled(policy: Policy) -> Policy {
    Policy {
        throttle: longhorn_guard_webhook::policy::throttle::ThrottlePolicy {
            enabled: false,
            ..Default::default()
        },
        ..policy
    }
}

/// vol-1 (attached), snap-ok of vol-1 (ready), the `default` target (available).
async fn fixtures(cluster: &TestCluster, ns: &str) -> Result<()> {
    fixtures::volume(cluster, ns, "vol-1", "node-1").await?;
    fixtures::volume(cluster, ns, "vol-2", "node-1").await?;
    fixtures::snapshot(cluster, ns, "snap-ok", "vol-1", "node-1").await?;
    fixtures::default_target(cluster, ns).await
}

/// Grants `user` what the webhook needs in `ns` (and, with `create_backups`, Backup create).
async fn grant(
    cluster: &TestCluster,
    ns: &str,
    user: &str,
    name: &str,
    create_backups: bool,
) -> Result<()> {
    let mut verbs = vec!["get", "list", "watch"];
    if create_backups {
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
    fixtures::grant(cluster, ns, name, &resources, &verbs, subjects).await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn denies_what_longhorn_would_leave_pending_and_admits_the_rest() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-rules").await?;
    fixtures(&cluster, &ns).await?;
    let mut removed = shapes::snapshot_status("node-1", "");
    removed["markRemoved"] = json!(true);
    removed["readyToUse"] = json!(false);
    cluster
        .create_with_status::<Snapshot>(
            &ns,
            shapes::snapshot(&ns, "snap-removed", "vol-1"),
            removed,
        )
        .await?;
    cluster
        .create_with_status::<Snapshot>(
            &ns,
            shapes::snapshot(&ns, "snap-v2", "vol-2"),
            shapes::snapshot_status("node-1", ""),
        )
        .await?;

    let served = serve(cluster.client(), &ns, unthrottled(Policy::default())).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let client = cluster.client();

    // Missing snapshot: the client sees our message with the names and what to do.
    let msg = create_backup(
        &client,
        &ns,
        shapes::backup(&ns, "backup-missing", "vol-1", "snap-gone", None),
        false,
    )
    .await?
    .expect("a missing snapshot is denied");
    for part in [
        "backup-missing",
        "snap-gone",
        "vol-1",
        "does not exist",
        "Create the Snapshot",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    // Existing snapshot: created.
    assert_eq!(
        create_backup(
            &client,
            &ns,
            shapes::backup(&ns, "backup-ok", "vol-1", "snap-ok", Some("daily")),
            false
        )
        .await?,
        None
    );
    // Empty snapshotName: allowed (Longhorn syncs such Backups from the target).
    assert_eq!(
        create_backup(
            &client,
            &ns,
            shapes::backup(&ns, "backup-synced", "vol-1", "", None),
            false
        )
        .await?,
        None
    );
    // markRemoved: denied.
    let msg = create_backup(
        &client,
        &ns,
        shapes::backup(&ns, "backup-rm", "vol-1", "snap-removed", None),
        false,
    )
    .await?
    .expect("removed snapshot denied");
    assert!(msg.contains("marked removed"), "{msg}");
    // Snapshot of another volume: denied.
    let msg = create_backup(
        &client,
        &ns,
        shapes::backup(&ns, "backup-x", "vol-1", "snap-v2", None),
        false,
    )
    .await?
    .expect("other volume denied");
    assert!(msg.contains("belongs to volume \"vol-2\""), "{msg}");
    // dryRun: judged the same, nothing created.
    let msg = create_backup(
        &client,
        &ns,
        shapes::backup(&ns, "backup-dry", "vol-1", "snap-gone", None),
        true,
    )
    .await?;
    assert!(msg.is_some(), "dry-run of a missing snapshot is denied too");
    assert_eq!(
        create_backup(
            &client,
            &ns,
            shapes::backup(&ns, "backup-dry-ok", "vol-1", "snap-ok", None),
            true
        )
        .await?,
        None
    );
    let api: Api<Backup> = Api::namespaced(client.clone(), &ns);
    assert!(
        api.get_opt("backup-dry-ok").await?.is_none(),
        "dry run created nothing"
    );
    assert!(api.get_opt("backup-ok").await?.is_some());

    let text = served.metrics().await?;
    assert!(
        metric(
            &text,
            "longhorn_guard_webhook_reviews_total",
            "decision=\"denied\""
        ) >= 4,
        "{text}"
    );
    reg.remove().await?;
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn warn_only_admits_with_warnings_and_exempt_labels_pass() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-warn").await?;
    fixtures(&cluster, &ns).await?;
    // Enforcing server first, to prove the exemption label works where denials happen.
    let mut policy = Policy::default();
    policy
        .exemptions
        .labels
        .insert("longhorn-guard.io/exempt".into(), "true".into());
    let served = serve(cluster.client(), &ns, policy).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let mut exempt = shapes::backup(&ns, "backup-exempt", "vol-1", "snap-gone", None);
    exempt["metadata"]["labels"]["longhorn-guard.io/exempt"] = json!("true");
    assert_eq!(
        create_backup(&cluster.client(), &ns, exempt, false).await?,
        None
    );
    reg.remove().await?;
    served.stop().await?;

    // Warn-only: the same missing snapshot is admitted, counted as warned.
    let ns = cluster.namespace("webhook-warn-only").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(
        cluster.client(),
        &ns,
        Policy {
            mode: Mode::WarnOnly,
            ..Policy::default()
        },
    )
    .await?;
    wait_ready(&served).await?;
    // register() probes for a denial, which warn-only never gives: register by hand.
    let before = metric(
        &served.metrics().await?,
        "longhorn_guard_webhook_reviews_total",
        "decision=\"warned\"",
    );
    let reg = register_no_probe(&cluster, &served, &ns).await?;
    let client = cluster.client();
    longhorn_guard_testkit::wait_for(Duration::from_secs(20), "a warned review", || {
        let client = client.clone();
        let ns = ns.clone();
        let served = &served;
        async move {
            let name = format!("backup-w-{:08x}", rand::random::<u32>());
            assert_eq!(
                create_backup(
                    &client,
                    &ns,
                    shapes::backup(&ns, &name, "vol-1", "snap-gone", None),
                    false
                )
                .await?,
                None,
                "warn-only never denies"
            );
            let text = served.metrics().await?;
            Ok(metric(
                &text,
                "longhorn_guard_webhook_reviews_total",
                "decision=\"warned\"",
            ) > before)
        }
    })
    .await?;
    reg.remove().await?;
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn only_create_reaches_the_webhook() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-create-only").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(cluster.client(), &ns, Policy::default()).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let client = cluster.client();
    assert_eq!(
        create_backup(
            &client,
            &ns,
            shapes::backup(&ns, "backup-ok", "vol-1", "snap-ok", None),
            false
        )
        .await?,
        None
    );
    let reviews = |t: &str| metric(t, "longhorn_guard_webhook_reviews_total", "");
    let before = reviews(&served.metrics().await?);
    assert!(before >= 2, "probe + create were reviewed");

    cluster
        .set_status::<Backup>(
            &ns,
            "backup-ok",
            shapes::backup_status("InProgress", "node-1", "vol-1", "snap-ok"),
        )
        .await?;
    let api: Api<Backup> = Api::namespaced(client.clone(), &ns);
    api.patch(
        "backup-ok",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"extra": "label"}}})),
    )
    .await?;
    api.delete("backup-ok", &DeleteParams::default()).await?;
    // The API server calls the webhook within each request: had it sent any of the three
    // reviews, the counter would have moved before the calls above returned.
    let after = reviews(&served.metrics().await?);
    assert_eq!(
        after, before,
        "status update, label patch and delete must not be reviewed"
    );

    // Were the registration to send one (a wrong rule), the webhook itself must let it
    // through: the status update of a Backup whose snapshot is gone (Longhorn moving a stuck
    // Backup to Error) is allowed, with a warning naming the registration, and counted.
    let old = shapes::backup(&ns, "backup-stuck", "vol-1", "snap-gone", None);
    let mut new = old.clone();
    new["status"] = shapes::backup_status("Error", "node-1", "vol-1", "snap-gone");
    let mut update = Review::new(
        &ns,
        "uid-status-update",
        &format!("system:serviceaccount:{ns}:longhorn-service-account"),
        new,
    )
    .operation("UPDATE")
    .groups(SERVICE_ACCOUNT_GROUPS)
    .into_value();
    update["request"]["subResource"] = json!("status");
    update["request"]["requestSubResource"] = json!("status");
    update["request"]["oldObject"] = old;
    let (status, body) =
        tls_post(&served, "/validate/backups", serde_json::to_vec(&update)?).await?;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-status-update", "{answer}");
    assert_eq!(response["allowed"], true, "{answer}");
    assert!(
        response["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("only checks CREATE")
                && w.contains("UPDATE of longhorn.io/v1beta2/backups/status")),
        "{answer}"
    );
    let text = served.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_reviews_total",
            "operation=\"UPDATE\",decision=\"warned\",reason=\"unexpected\""
        ),
        1,
        "{text}"
    );
    assert_eq!(reviews(&text), after + 1, "{text}");
    reg.remove().await?;
    served.stop().await
}

/// A dedicated account can be exempted; Longhorn's own stays checked (its recurring jobs
/// are the storm), and a policy exempting it is reported by the metric.
#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn exemption_by_service_account_through_impersonation() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-sa").await?;
    fixtures(&cluster, &ns).await?;
    let bot = format!("system:serviceaccount:{ns}:restore-bot");
    let longhorn_sa = format!("system:serviceaccount:{ns}:longhorn-service-account");
    grant(&cluster, &ns, &bot, "restore-bot", true).await?;
    grant(&cluster, &ns, &longhorn_sa, "longhorn-sa", true).await?;
    grant(&cluster, &ns, "mallory", "mallory", true).await?;
    let mut policy = Policy::default();
    policy.exemptions.service_accounts = vec![format!("{ns}:restore-bot")];
    let served = serve(cluster.client(), &ns, policy).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let exempting_longhorn = |text: &str| {
        metric(
            text,
            "longhorn_guard_webhook_policy_longhorn_exemptions",
            "section=\"exemptions\"",
        )
    };
    let text = served.metrics().await?;
    assert!(
        text.contains(
            "longhorn_guard_webhook_policy_longhorn_exemptions{section=\"exemptions\"} 0"
        ),
        "{text}"
    );

    let sa_groups = ["system:serviceaccounts", "system:authenticated"];
    let restore = cluster.client_as(&bot, &sa_groups)?;
    assert_eq!(
        create_backup(
            &restore,
            &ns,
            shapes::backup(&ns, "backup-restore", "vol-1", "snap-gone", None),
            false
        )
        .await?,
        None,
        "the exempt service account"
    );
    let longhorn = cluster.client_as(&longhorn_sa, &sa_groups)?;
    let denied = create_backup(
        &longhorn,
        &ns,
        shapes::backup(&ns, "backup-longhorn", "vol-1", "snap-gone", None),
        false,
    )
    .await?;
    assert!(
        denied.as_deref().is_some_and(|m| m.contains("snap-gone")),
        "Longhorn's own service account is checked: {denied:?}"
    );
    let other = cluster.client_as("mallory", &["system:authenticated"])?;
    assert!(
        create_backup(
            &other,
            &ns,
            shapes::backup(&ns, "backup-user", "vol-1", "snap-gone", None),
            false
        )
        .await?
        .is_some(),
        "another user is not"
    );
    reg.remove().await?;
    served.stop().await?;

    // The example this README once showed: exempting Longhorn's account is reported.
    let mut policy = Policy::default();
    policy.exemptions.service_accounts = vec!["*:longhorn-service-account".into()];
    let served = serve(cluster.client(), &ns, policy).await?;
    let text = served.metrics().await?;
    assert_eq!(exempting_longhorn(&text), 1, "{text}");
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn readyz_is_503_until_every_initial_list_is_indexed() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-ready").await?;
    fixtures(&cluster, &ns).await?;
    // The webhook runs as a user that may not list yet: its watches cannot sync.
    let user = format!("lhg-webhook-{ns}");
    let client = cluster.client_as(&user, &["system:authenticated"])?;
    let served = serve(client, &ns, Policy::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = served.ops_get("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("snapshot"), "{body}");
    assert_eq!(served.ops_get("/healthz").await?.0, 200);
    let text = served.metrics().await?;
    assert!(
        metric(&text, "longhorn_guard_webhook_watch_errors_total", "") > 0,
        "{text}"
    );

    // Allowed to list and watch: the watches retry, list, and readiness flips.
    grant(&cluster, &ns, &user, "webhook", false).await?;
    wait_ready(&served).await?;
    let text = served.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_index_objects",
            "kind=\"volume\""
        ),
        2,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_index_objects",
            "kind=\"snapshot\""
        ),
        1,
        "{text}"
    );
    served.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn malformed_and_oversized_bodies_over_tls_get_clear_errors() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-tls").await?;
    let served = serve(cluster.client(), &ns, Policy::default()).await?;

    // ALPN: h2 is offered and chosen; HTTP/1.1 alone works too.
    let (_, proto) = tls_connect(&served, &[b"h2", b"http/1.1"]).await?;
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));

    let (status, body) =
        tls_post(&served, "/validate/backups", b"{\"apiVersion\": 3".to_vec()).await?;
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not a valid admission.k8s.io/v1 AdmissionReview"),
        "{body}"
    );

    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, body) = tls_post(&served, "/validate/backups", big).await?;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("1048576 bytes"), "{body}");

    // uid readable: HTTP 200 with an invalid response carrying the uid.
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "abc-123", "operation": "CREATE"}
    });
    let (status, text) =
        tls_post(&served, "/validate/backups", body.to_string().into_bytes()).await?;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(v["response"]["uid"], "abc-123");
    assert_eq!(v["response"]["allowed"], false);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field"),
        "{text}"
    );
    served.stop().await
}

/// Creates a Snapshot and at once its Backup, `n` times with `concurrency` in flight; returns
/// the denials.
async fn race(
    cluster: &TestCluster,
    ns: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<String>> {
    let denials = Arc::new(std::sync::Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    futures::stream::iter(0..n)
        .for_each_concurrent(concurrency, |i| {
            let denials = denials.clone();
            let errors = errors.clone();
            let ns = ns.to_string();
            async move {
                let snap = format!("{prefix}-snap-{i}");
                let result = async {
                    // As the UI does: the Snapshot, then at once its Backup.
                    cluster
                        .create::<Snapshot>(&ns, shapes::snapshot(&ns, &snap, "vol-1"))
                        .await?;
                    create_backup(
                        &cluster.client(),
                        &ns,
                        shapes::backup(&ns, &format!("{prefix}-backup-{i}"), "vol-1", &snap, None),
                        false,
                    )
                    .await
                }
                .await;
                match result {
                    Ok(Some(msg)) => denials.lock().unwrap().push(msg),
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("race {prefix} #{i}: {e:#}");
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
        .await;
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "API errors during the race"
    );
    Ok(Arc::try_unwrap(denials)
        .map_err(|_| anyhow::anyhow!("still shared"))?
        .into_inner()
        .unwrap())
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn snapshot_then_backup_race_has_no_false_denials() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("webhook-race").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(cluster.client(), &ns, unthrottled(Policy::default())).await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;

    let denials = race(&cluster, &ns, "on", 1000, 16).await?;
    let text = served.metrics().await?;
    let fallbacks = metric(&text, "longhorn_guard_webhook_live_get_fallbacks_total", "");
    let found = metric(
        &text,
        "longhorn_guard_webhook_live_get_fallbacks_total",
        "outcome=\"Found\"",
    );
    println!(
        "race with live lookup: 1000 snapshot+backup pairs, {} denials, {fallbacks} live GETs ({found} found the snapshot the index lacked)",
        denials.len()
    );
    assert!(
        denials.is_empty(),
        "false denials: {:?}",
        &denials[..denials.len().min(3)]
    );
    assert!(
        found > 0,
        "the watch never lagged: the fallback caught nothing ({text})"
    );
    reg.remove().await?;
    served.stop().await?;

    // The same race without the fallback: how many Backups Longhorn 1.10's way would refuse.
    let ns = cluster.namespace("webhook-race-nofallback").await?;
    fixtures(&cluster, &ns).await?;
    let served = serve(
        cluster.client(),
        &ns,
        unthrottled(Policy {
            live_snapshot_lookup: false,
            ..Policy::default()
        }),
    )
    .await?;
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    let denials = race(&cluster, &ns, "off", 1000, 16).await?;
    println!(
        "race without live lookup: 1000 snapshot+backup pairs, {} false denials (every snapshot existed)",
        denials.len()
    );
    for d in &denials {
        assert!(
            d.contains("live lookup is disabled"),
            "unexpected denial: {d}"
        );
    }
    reg.remove().await?;
    served.stop().await
}
