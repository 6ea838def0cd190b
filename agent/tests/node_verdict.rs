//! The node verdict end to end through the local API server: an agent whose manager monitor
//! follows the `longhorn-manager` stand-in (manager-monitor's test binary) judges its node and
//! keeps the node's Lease in a test namespace, writes an Event on each transition and exports
//! the `node_verdict` metrics (checked with promtool).
//!
//! Needs `LHG_TEST_KUBECONFIG` (the run's control plane) and the stand-in built next to this
//! test (`cargo nextest run --workspace` builds it; alone:
//! `cargo build -p longhorn-guard-manager-monitor --bin longhorn-manager`).

#[path = "node_verdict/stand.rs"]
mod stand;
mod support;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use longhorn_guard_agent::node_verdict::PublishError;
use longhorn_guard_testkit::wait_for;
use node_verdict::{Verdict, lease};
use stand::*;
use support::{http_get, promtool_check};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_leaking_manager_turns_its_node_leaking_then_recovers_and_a_stopped_agent_expires()
-> TestResult {
    let mut stand = Stand::start("verdict-leak").await?;
    let healthy = stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    assert_eq!(healthy.node, stand.node);

    let leaking = stand.leak_until_leaking().await?;
    let e = &leaking.evidence;
    assert!(e.connections >= 20, "{e:?}");
    assert!(e.connections_per_minute >= 300.0, "{e:?}");
    assert!(
        e.rss_bytes > 0 && e.threads > 0 && e.fds >= e.connections,
        "{e:?}"
    );
    assert_eq!(
        e.window_seconds, 6,
        "the policy file's thresholds are in force"
    );
    assert!(e.reason.contains("connection floor"), "{e:?}");
    assert!(!e.since.is_empty(), "{e:?}");

    let (_, lease) = stand
        .published()
        .await?
        .ok_or_else(|| anyhow!("Lease gone"))?;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(stand.pod.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    let labels = lease.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(lease::LABEL_KEY).map(String::as_str),
        Some(lease::LABEL_VALUE)
    );

    let event = stand.wait_event("NodeVerdictLeaking").await?;
    let message = event.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("node {}", stand.node))
            && message.contains("-> leaking")
            && message.contains("connections to instance managers"),
        "{message}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Node"));

    let text = stand.agent.metrics().await?;
    promtool_check(&text)?;
    let n = &stand.node;
    assert_eq!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict{{node=\"{n}\",verdict=\"leaking\"}}")
        )?,
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict{{node=\"{n}\",verdict=\"healthy\"}}")
        )?,
        0.0
    );
    let into_leaking = sample(
        &text,
        &format!(
            "longhorn_guard_agent_node_verdict_transitions_total{{node=\"{n}\",from=\"healthy\",to=\"leaking\"}}"
        ),
    )? + sample(
        &text,
        &format!(
            "longhorn_guard_agent_node_verdict_transitions_total{{node=\"{n}\",from=\"degrading\",to=\"leaking\"}}"
        ),
    )?;
    assert_eq!(into_leaking, 1.0);
    assert!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict_connections_per_minute{{node=\"{n}\"}}")
        )? >= 300.0
    );
    assert!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict_rss_bytes_per_minute{{node=\"{n}\"}}")
        )? > 0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"forbidden\"}}"
            )
        )?,
        0.0
    );

    // The leak stops (the stuck Backups were pruned): the floor stops growing, the node is
    // released after the recovery time.
    stand.manager.cmd("calm")?;
    stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(30))
        .await?;
    let event = stand.wait_event("NodeVerdictHealthy").await?;
    assert_eq!(event.type_.as_deref(), Some("Normal"));

    // A stopped agent leaves its Lease to expire: renewTime + leaseDurationSeconds passes and
    // nobody renews it.
    let Stand {
        agent,
        cluster,
        namespace,
        node,
        ..
    } = stand;
    agent.stop().await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &namespace);
    let name = lease::lease_name(&node);
    let stopped = leases.get(&name).await?;
    let renewed_at = stopped
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| micro_seconds(&t.0))
        .ok_or_else(|| anyhow!("no renewTime"))?;
    wait_for(
        Duration::from_secs(15),
        "the stopped agent's Lease to expire",
        || async {
            let now = micro_seconds(&Timestamp::now());
            Ok(now > renewed_at + LEASE_DURATION.as_secs_f64())
        },
    )
    .await?;
    let expired = leases.get(&name).await?;
    let spec = expired.spec.clone().unwrap_or_default();
    let renew = spec
        .renew_time
        .as_ref()
        .map(|t| micro_seconds(&t.0))
        .ok_or_else(|| anyhow!("no renewTime"))?;
    let duration = f64::from(spec.lease_duration_seconds.unwrap_or(0));
    assert_eq!(renew, renewed_at, "nobody renewed it after the stop");
    assert!(
        renew + duration < micro_seconds(&Timestamp::now()),
        "renewTime + leaseDurationSeconds is in the past"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_busy_healthy_manager_keeps_its_node_healthy() -> TestResult {
    let mut stand = Stand::start("verdict-busy").await?;
    stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    // Many short-lived connections: 60 opened, held ~200 ms and closed, five times a second.
    stand
        .manager
        .cmd(&format!("churn {} 60", stand.im.addr()))?;
    // Watch the Lease until it has been renewed with a full window of the busy manager behind
    // it (renewals spanning two windows, and the churn seen in its evidence), healthy every time.
    let renewals = Mutex::new(std::collections::BTreeSet::new());
    let busiest = Mutex::new(0u64);
    let left_healthy = Mutex::new(None);
    wait_for(
        Duration::from_secs(40),
        "a dozen healthy renewals of the busy manager's Lease",
        || async {
            let Some((published, lease)) = stand.published().await? else {
                return Ok(false);
            };
            if published.verdict != Verdict::Healthy {
                // Stop watching at once; asserted below.
                *left_healthy.lock().unwrap_or_else(PoisonError::into_inner) = Some(published);
                return Ok(true);
            }
            let renew = lease
                .spec
                .and_then(|s| s.renew_time)
                .map(|t| t.0.as_microsecond())
                .unwrap_or(0);
            let mut renewals = renewals.lock().unwrap_or_else(PoisonError::into_inner);
            renewals.insert(renew);
            let mut busiest = busiest.lock().unwrap_or_else(PoisonError::into_inner);
            *busiest = (*busiest).max(published.evidence.connections);
            Ok(renewals.len() >= 12 && *busiest >= 30)
        },
    )
    .await?;
    if let Some(published) = left_healthy
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        bail!("the busy manager's node left healthy: {published:?}");
    }
    let text = stand.agent.metrics().await?;
    let n = &stand.node;
    let transitions: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("longhorn_guard_agent_node_verdict_transitions_total{")
                && l.contains(&format!("node=\"{n}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(transitions, 0.0, "{text}");
    assert!(stand.events("NodeVerdictLeaking").await?.is_empty());
    assert!(stand.events("NodeVerdictDegrading").await?.is_empty());
    stand.agent.stop().await?;
    Ok(())
}

/// The manifests' Roles are all the agent needs: as its ServiceAccount it writes its Lease and
/// the Node's Event. The thresholds follow the policy file: a change applies, a bad file is
/// counted and the last good thresholds stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn with_the_manifests_roles_the_agent_publishes_and_follows_the_policy_file() -> TestResult {
    let mut stand =
        Stand::start_as("verdict-rbac", Access::ServiceAccount { granted: true }).await?;
    let first = stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    assert_eq!(first.evidence.window_seconds, 6);

    std::fs::write(
        stand.policy_path(),
        TEST_POLICY.replace("windowSeconds: 6", "windowSeconds: 8"),
    )?;
    wait_for(
        Duration::from_secs(15),
        "the new window in the Lease",
        || async {
            Ok(stand
                .published()
                .await?
                .is_some_and(|(p, _)| p.evidence.window_seconds == 8))
        },
    )
    .await?;

    std::fs::write(
        stand.policy_path(),
        "nodeProtection: {thresholds: {windowSeconds: 0}}\n",
    )?;
    let n = stand.node.clone();
    let policy_errors =
        format!("longhorn_guard_agent_node_verdict_policy_errors_total{{node=\"{n}\"}}");
    wait_for(
        Duration::from_secs(15),
        "the bad policy file counted",
        || async { Ok(sample(&stand.agent.metrics().await?, &policy_errors)? == 1.0) },
    )
    .await?;

    let leaking = stand.leak_until_leaking().await?;
    assert_eq!(
        leaking.evidence.window_seconds, 8,
        "the last good thresholds stayed"
    );
    stand.wait_event("NodeVerdictLeaking").await?;
    let text = stand.agent.metrics().await?;
    for reason in PublishError::LABELS {
        let series = format!(
            "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"{reason}\"}}"
        );
        assert_eq!(sample(&text, &series)?, 0.0, "{series}");
    }
    stand.agent.stop().await?;
    Ok(())
}

/// Without RBAC every write is refused: counted by reason, and the agent keeps judging and
/// serving (its /metrics and gRPC health answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn refused_writes_are_counted_and_the_agent_keeps_serving() -> TestResult {
    let stand =
        Stand::start_as("verdict-norbac", Access::ServiceAccount { granted: false }).await?;
    let n = stand.node.clone();
    let forbidden = format!(
        "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"forbidden\"}}"
    );
    wait_for(
        Duration::from_secs(15),
        "three refused Lease writes counted",
        || async { Ok(sample(&stand.agent.metrics().await?, &forbidden)? >= 3.0) },
    )
    .await?;
    let text = stand.agent.metrics().await?;
    promtool_check(&text)?;
    assert_eq!(
        sample(
            &text,
            &format!("longhorn_guard_agent_node_verdict{{node=\"{n}\",verdict=\"healthy\"}}")
        )?,
        1.0
    );
    assert!(stand.lease().await?.is_none(), "nothing was written");
    let (code, _) = http_get(stand.agent.http_port, "/healthz").await?;
    assert_eq!(code, 200);
    assert!(!stand.agent.task.is_finished(), "the agent still runs");
    stand.agent.stop().await?;
    Ok(())
}

/// Someone else changes the Lease between two renewals: the agent's next replace carries a
/// stale resourceVersion, gets 409, reads the Lease again and writes on top of the change,
/// keeping what it does not own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_concurrent_change_makes_the_agent_reread_and_keeps_the_change() -> TestResult {
    use kube::api::{Patch, PatchParams};

    let stand = Stand::start("verdict-conflict").await?;
    stand
        .wait_verdict(Verdict::Healthy, Duration::from_secs(20))
        .await?;
    let name = lease::lease_name(&stand.node);
    let patched = stand
        .leases()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"example.com/owner": "ops"}}
            })),
        )
        .await?;
    let patched_version = patched.metadata.resource_version.clone();
    let patched_renew = patched.spec.and_then(|s| s.renew_time);
    wait_for(
        Duration::from_secs(10),
        "a renewal after the foreign change",
        || async {
            let lease = stand.leases().get(&name).await?;
            Ok(lease.metadata.resource_version != patched_version
                && lease.spec.and_then(|s| s.renew_time) != patched_renew)
        },
    )
    .await?;
    let (published, lease) = stand
        .published()
        .await?
        .ok_or_else(|| anyhow!("Lease gone"))?;
    assert_eq!(published.verdict, Verdict::Healthy);
    let annotations = lease.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("example.com/owner").map(String::as_str),
        Some("ops"),
        "{annotations:?}"
    );
    let n = &stand.node;
    let text = stand.agent.metrics().await?;
    assert_eq!(
        sample(
            &text,
            &format!(
                "longhorn_guard_agent_node_verdict_publish_errors_total{{node=\"{n}\",reason=\"conflict\"}}"
            )
        )?,
        0.0,
        "the conflict was resolved by reading again, not given up"
    );
    stand.agent.stop().await?;
    Ok(())
}
