//! The node-verdict check (issue #19) through the local API server: verdict Leases written
//! exactly as the agent writes them (holder, renewTime, leaseDurationSeconds, the contract's
//! labels and annotations) in the webhook's verdict namespace, Backups created through the API
//! server with the webhook registered. Every step waits for the fact (the webhook's
//! `node_verdict` gauge showing the Lease's verdict), never for time.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_testkit::{TEST_NAMESPACE_LABEL, TestCluster, wait_for};
use longhorn_guard_webhook::WebhookConfig;
use longhorn_types::shapes;
use node_verdict::lease::{labels, lease_name};
use node_verdict::{Evidence, Published, Verdict};
use serde_json::json;

/// vol-a on node-a, vol-b on node-b, a ready snapshot of each, the `default` target.
async fn two_nodes(cluster: &TestCluster, ns: &str) -> Result<()> {
    for (vol, node) in [("vol-a", "node-a"), ("vol-b", "node-b")] {
        fixtures::volume(cluster, ns, vol, node).await?;
        fixtures::snapshot(cluster, ns, &format!("snap-{vol}"), vol, node).await?;
    }
    fixtures::default_target(cluster, ns).await
}

/// The evidence the tests publish.
fn evidence() -> Evidence {
    Evidence {
        connections: 3120,
        connections_per_minute: 412.0,
        rss_bytes: 2 * 1024 * 1024 * 1024 + 100 * 1024 * 1024,
        rss_bytes_per_minute: 35.0 * 1024.0 * 1024.0,
        window_seconds: 300,
        since: "2026-12-06T04:00:00Z".into(),
        reason: "connections +412/min over 5m above 500".into(),
        ..Evidence::default()
    }
}

/// Writes `node`'s verdict Lease in `ns` as the agent does, renewed at `renewed` for
/// `duration_s` seconds (create, or replace the current one).
async fn publish(
    cluster: &TestCluster,
    ns: &str,
    node: &str,
    verdict: Verdict,
    renewed: Timestamp,
) -> Result<()> {
    let annotations = Published {
        node: node.into(),
        verdict,
        evidence: evidence(),
    }
    .annotations();
    let name = lease_name(node);
    let api: Api<Lease> = Api::namespaced(cluster.client(), ns);
    let mut lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": ns, "labels": labels(), "annotations": annotations},
        "spec": {
            "holderIdentity": format!("longhorn-guard-agent-{node}"),
            "leaseDurationSeconds": 30,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    }))?;
    match api.get_opt(&name).await? {
        None => {
            api.create(&PostParams::default(), &lease).await?;
        }
        Some(current) => {
            lease.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Waits until the webhook's `node_verdict` gauge says `node` is `label`.
async fn wait_verdict(served: &Served, node: &str, label: &str) -> Result<()> {
    let series =
        format!("longhorn_guard_webhook_node_verdict{{node=\"{node}\",verdict=\"{label}\"}} 1");
    wait_for(
        Duration::from_secs(20),
        &format!("the webhook to see node {node} {label}"),
        || async { Ok(served.metrics().await?.lines().any(|l| l == series)) },
    )
    .await
}

/// A test's namespace (`prefix-…`, with [`two_nodes`]) and the webhook serving it with the
/// policy file `policy_yaml` (hot-reloaded), reading verdict Leases there, registered.
struct Setup {
    cluster: TestCluster,
    ns: String,
    served: Served,
    reg: Registration,
    policy_path: std::path::PathBuf,
}

async fn setup(prefix: &str, policy_yaml: &str) -> Result<Setup> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace(prefix).await?;
    two_nodes(&cluster, &ns).await?;
    let cert = TestCert::new()?;
    let policy_path = cert.dir.join("policy.yaml");
    std::fs::write(&policy_path, policy_yaml)?;
    let config = WebhookConfig {
        policy_path: Some(policy_path.clone()),
        policy_poll_interval: Duration::from_millis(100),
        node_verdict_namespace: Some(ns.clone()),
        ..cert.config(None, Some(&ns))
    };
    let handle = longhorn_guard_webhook::start(config, cluster.client()).await?;
    let served = Served { handle, cert };
    wait_ready(&served).await?;
    let reg = register(&cluster, &served, &ns).await?;
    Ok(Setup {
        cluster,
        ns,
        served,
        reg,
        policy_path,
    })
}

impl Setup {
    async fn stop(self) -> Result<()> {
        self.reg.remove().await?;
        self.served.stop().await
    }
}

/// No throttling (these tests create several Backups per volume).
const UNTHROTTLED: &str = "throttle:\n  enabled: false\n";

/// A recurring job's Backup (dry run: nothing stored): `None` when admitted, else the denial.
async fn backup(cluster: &TestCluster, ns: &str, name: &str, vol: &str) -> Result<Option<String>> {
    let obj = shapes::backup(ns, name, vol, &format!("snap-{vol}"), Some("daily"));
    create_backup(&cluster.client(), ns, obj, true).await
}

fn count(text: &str, name: &str, filter: &str) -> u64 {
    metric(text, name, filter)
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_leaking_node_is_held_back_and_released_when_its_verdict_clears() -> Result<()> {
    let t = setup("node-verdict", UNTHROTTLED).await?;
    let (cluster, ns, served) = (&t.cluster, t.ns.as_str(), &t.served);
    // Before any verdict: both nodes' Backups are admitted.
    assert_eq!(backup(cluster, ns, "b0", "vol-a").await?, None);

    publish(cluster, ns, "node-a", Verdict::Leaking, Timestamp::now()).await?;
    publish(cluster, ns, "node-b", Verdict::Healthy, Timestamp::now()).await?;
    wait_verdict(served, "node-a", "leaking").await?;
    let refusal = backup(cluster, ns, "b1", "vol-a")
        .await?
        .expect("a Backup of a volume on the leaking node is refused");
    for part in [
        "node \"node-a\" is leaking",
        &evidence().summary(),
        "leaking since 2026-12-06T04:00:00Z",
        "connections +412/min over 5m above 500",
        "docs/runbook.md#longhornguardnodeleaking",
        "[node_leaking]",
    ] {
        assert!(refusal.contains(part), "{part:?} not in {refusal}");
    }
    assert_eq!(
        backup(cluster, ns, "b2", "vol-b").await?,
        None,
        "node-b is healthy"
    );
    let text = served.metrics().await?;
    let held = "longhorn_guard_webhook_backups_held_by_node_verdict_total";
    assert_eq!(
        count(&text, held, "node=\"node-a\",action=\"denied\""),
        1,
        "{text}"
    );
    assert_eq!(count(&text, held, "node=\"node-b\""), 0, "{text}");

    // Degrading: admitted, with a warning (counted as held, warned).
    publish(cluster, ns, "node-a", Verdict::Degrading, Timestamp::now()).await?;
    wait_verdict(served, "node-a", "degrading").await?;
    assert_eq!(backup(cluster, ns, "b3", "vol-a").await?, None);
    let text = served.metrics().await?;
    assert_eq!(
        count(&text, held, "node=\"node-a\",action=\"warned\""),
        1,
        "{text}"
    );

    // Healthy again: released at the next review.
    publish(cluster, ns, "node-a", Verdict::Healthy, Timestamp::now()).await?;
    wait_verdict(served, "node-a", "healthy").await?;
    assert_eq!(backup(cluster, ns, "b4", "vol-a").await?, None);
    let text = served.metrics().await?;
    let changes = "longhorn_guard_webhook_node_verdict_changes_total";
    for (from, to) in [("leaking", "degrading"), ("degrading", "healthy")] {
        let filter = format!("node=\"node-a\",from=\"{from}\",to=\"{to}\"");
        assert_eq!(count(&text, changes, &filter), 1, "{filter}: {text}");
    }
    assert_eq!(count(&text, held, "node=\"node-a\""), 2, "{text}");

    t.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn an_expired_verdict_stops_protecting_and_the_gauge_says_so() -> Result<()> {
    let t = setup("node-verdict-expired", UNTHROTTLED).await?;
    let (cluster, ns, served) = (&t.cluster, t.ns.as_str(), &t.served);
    // The agent of node-a died two minutes ago, its last verdict leaking (30 s lease).
    let two_minutes_ago = Timestamp::now() - SignedDuration::from_secs(120);
    publish(cluster, ns, "node-a", Verdict::Leaking, two_minutes_ago).await?;
    wait_verdict(served, "node-a", "expired").await?;
    let text = served.metrics().await?;
    assert_eq!(
        count(&text, "longhorn_guard_webhook_node_verdicts_expired", ""),
        1,
        "{text}"
    );
    assert_eq!(
        backup(cluster, ns, "b1", "vol-a").await?,
        None,
        "expired: not protected"
    );

    // Renewed by a restarted agent: protects again, and no longer counts as expired.
    publish(cluster, ns, "node-a", Verdict::Leaking, Timestamp::now()).await?;
    wait_verdict(served, "node-a", "leaking").await?;
    assert!(backup(cluster, ns, "b2", "vol-a").await?.is_some());
    let text = served.metrics().await?;
    assert_eq!(
        count(&text, "longhorn_guard_webhook_node_verdicts_expired", ""),
        0,
        "{text}"
    );

    t.stop().await
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn warn_and_off_modes_and_manual_backups_allowed_with_a_warning() -> Result<()> {
    let policy = |section: &str| format!("{UNTHROTTLED}nodeProtection:\n{section}");
    let t = setup(
        "node-verdict-modes",
        &policy("  manualBackups: allow-with-warning\n"),
    )
    .await?;
    let (cluster, ns, served, policy_path) = (&t.cluster, t.ns.as_str(), &t.served, &t.policy_path);
    publish(cluster, ns, "node-a", Verdict::Leaking, Timestamp::now()).await?;
    wait_verdict(served, "node-a", "leaking").await?;
    let reviews = "longhorn_guard_webhook_reviews_total";
    let warned = "decision=\"warned\",reason=\"node_leaking\"";

    // A manual Backup (no RecurringJob label): admitted with a warning; a recurring one refused.
    let manual = shapes::backup(ns, "manual", "vol-a", "snap-vol-a", None);
    assert_eq!(
        create_backup(&cluster.client(), ns, manual, true).await?,
        None
    );
    assert_eq!(count(&served.metrics().await?, reviews, warned), 1);
    assert!(backup(cluster, ns, "r1", "vol-a").await?.is_some());

    // warn: the recurring job's Backup is admitted, warned.
    let generation = |n: u64| {
        let served = &served;
        async move {
            wait_for(
                Duration::from_secs(10),
                &format!("policy generation {n}"),
                || async {
                    Ok(count(
                        &served.metrics().await?,
                        "longhorn_guard_webhook_policy_generation",
                        "",
                    ) == n)
                },
            )
            .await
        }
    };
    std::fs::write(policy_path, policy("  mode: warn\n"))?;
    generation(2).await?;
    assert_eq!(backup(cluster, ns, "r2", "vol-a").await?, None);
    assert_eq!(count(&served.metrics().await?, reviews, warned), 2);

    // off: admitted without a word.
    std::fs::write(policy_path, policy("  mode: off\n"))?;
    generation(3).await?;
    assert_eq!(backup(cluster, ns, "r3", "vol-a").await?, None);
    let text = served.metrics().await?;
    assert_eq!(count(&text, reviews, warned), 2, "{text}");
    assert_eq!(
        count(
            &text,
            "longhorn_guard_webhook_backups_held_by_node_verdict_total",
            "node=\"node-a\""
        ),
        3,
        "{text}"
    );

    t.stop().await
}

/// A client acting as the agent's service account of `ns` on `node`, as a Kubernetes 1.30+ API
/// server sees a pod-bound token: the userInfo extra `authentication.kubernetes.io/node-name`
/// (impersonated; `system:masters` only so RBAC does not stand in the way of the webhook).
async fn agent_on(cluster: &TestCluster, ns: &str, node: &str) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig_path())?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:longhorn-guard-agent"));
    config.auth_info.impersonate_groups =
        Some(vec!["system:masters".into(), "system:authenticated".into()]);
    config.headers.push((
        http::HeaderName::from_static("impersonate-extra-authentication.kubernetes.io%2fnode-name"),
        http::HeaderValue::from_str(node)?,
    ));
    Ok(kube::Client::try_from(config)?)
}

/// Sets node `node`'s verdict Lease to `verdict` as `client`: `Ok(None)` when written,
/// `Ok(Some(message))` when refused.
async fn write_verdict(
    client: &kube::Client,
    ns: &str,
    node: &str,
    verdict: Verdict,
) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let name = lease_name(node);
    let mut lease = api.get(&name).await?;
    lease.metadata.annotations.get_or_insert_default().insert(
        node_verdict::lease::ANNOTATION_VERDICT.into(),
        verdict.as_str().into(),
    );
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("longhorn-guard") => {
            Ok(Some(e.message))
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn only_a_nodes_own_agent_writes_its_verdict_lease() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("node-verdict-writers").await?;
    publish(&cluster, &ns, "node-a", Verdict::Healthy, Timestamp::now()).await?;
    let cert = TestCert::new()?;
    let config = WebhookConfig {
        node_verdict_namespace: Some(ns.clone()),
        ..cert.config(None, Some(&ns))
    };
    let handle = longhorn_guard_webhook::start(config, cluster.client()).await?;
    let served = Served { handle, cert };
    let entry = json!({
        "name": "verdict-leases.longhorn-guard.io",
        "clientConfig": {
            "url": served.url("/validate/leases"),
            "caBundle": b64(served.cert.pem.as_bytes()),
        },
        "rules": [{
            "apiGroups": ["coordination.k8s.io"],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["leases"],
            "scope": "Namespaced",
        }],
        "namespaceSelector": { "matchLabels": { TEST_NAMESPACE_LABEL: ns } },
        "objectSelector": { "matchLabels": { node_verdict::lease::LABEL_KEY: node_verdict::lease::LABEL_VALUE } },
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
    });
    let reg = register_entry(&cluster, &ns, entry).await?;
    let (agent_a, agent_b) = (
        agent_on(&cluster, &ns, "node-a").await?,
        agent_on(&cluster, &ns, "node-b").await?,
    );

    // node-b's agent writing node-a's verdict: refused, once the API server calls the webhook.
    let refusal = std::sync::Mutex::new(None);
    wait_for(
        Duration::from_secs(20),
        "node-b's write of node-a's verdict refused",
        || async {
            let answer = write_verdict(&agent_b, &ns, "node-a", Verdict::Leaking).await?;
            let refused = answer.is_some();
            *refusal.lock().unwrap() = answer;
            Ok(refused)
        },
    )
    .await?;
    let refusal = refusal.into_inner().unwrap().unwrap();
    assert!(
        refusal.contains("the agent on node \"node-b\" may not write node \"node-a\"'s"),
        "{refusal}"
    );
    // node-a's own agent: admitted.
    assert_eq!(
        write_verdict(&agent_a, &ns, "node-a", Verdict::Degrading).await?,
        None
    );
    // Anyone else (here the test's admin, no node identity): refused.
    let admin = write_verdict(&cluster.client(), &ns, "node-a", Verdict::Healthy).await?;
    assert!(admin.is_some_and(|m| m.contains("only the agent")));
    // A Lease for another node, created by node-a's agent: refused.
    let forged = Published {
        node: "node-c".into(),
        verdict: Verdict::Leaking,
        evidence: evidence(),
    };
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": lease_name("node-c"), "labels": labels(), "annotations": forged.annotations()},
        "spec": {"holderIdentity": "agent-a", "leaseDurationSeconds": 30},
    }))?;
    let created = Api::<Lease>::namespaced(agent_a.clone(), &ns)
        .create(&PostParams::default(), &lease)
        .await;
    assert!(
        matches!(&created, Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("node \"node-c\"")),
        "{created:?}"
    );
    let text = served.metrics().await?;
    assert!(
        metric(
            &text,
            "longhorn_guard_webhook_reviews_total",
            "reason=\"verdict_lease_writer\""
        ) >= 3,
        "{text}"
    );

    reg.remove().await?;
    served.stop().await
}
