//! The third run, "slow leak" (issue #19): a gentle storm whose rate stays under the static
//! caps (every snapshot exists, a few Backups a second), while one node's simulated
//! longhorn-manager leaks on every reconcile — a leak the static caps cannot see. Every node
//! has its own simulated manager process ([`crate::manager`]) and its real agent, whose real
//! manager monitor reads that process's `/proc` and whose verdict goes to the node's Lease; a
//! webhook of its own reads the Leases. Run twice: `nodeProtection.mode: off` (the loop open)
//! and `enforce` (the loop closed), and measured from the outside: the leaky manager's
//! connections and RSS (the agent's `/metrics`), what the webhook believes (its
//! `node_verdict` gauge), and every CREATE's outcome and time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::backups_by_state;
use crate::guard::{self, Served, http_get};
use crate::manager::SimulatedManager;
use crate::report::{ManagerSample, SlowLeakRun};
use crate::run::RunContext;
use crate::say;
use crate::simulated_controller::{ControllerConfig, ManagerLeak, SimulatedController};
use crate::storm::{self, Attempt, Outcome, StormConfig, StormProgress, StormShape};
use crate::world::{self, Nodes};

/// The node whose manager leaks.
pub const LEAKY_NODE: &str = "node-1";

/// The verdict thresholds of the slow-leak run, scaled to seconds (the defaults judge over
/// minutes): floors over 2 s, a 10 s window, 3 s to enter, 6 s to recover; `leaking` from 15
/// connections growing 30 a minute, `degrading` from 8 growing 15. RSS is plotted, not judged.
pub const THRESHOLDS: &str = "\
  thresholds:
    windowSeconds: 10
    floorSeconds: 2
    enterAfterSeconds: 3
    recoverAfterSeconds: 6
    degrading: {minConnections: 8, connectionsPerMinute: 15, minRssMib: 1000000, rssMibPerMinute: 1000000}
    leaking: {minConnections: 15, connectionsPerMinute: 30, minRssMib: 1000000, rssMibPerMinute: 1000000}
";

/// How often the agents' monitors sample their managers, and the run samples everything.
const MONITOR_INTERVAL: Duration = Duration::from_millis(500);
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The policy file of a slow-leak run: the demo's webhook policy with `nodeProtection` in
/// `mode` and the run's thresholds (the agents read the same file).
pub fn policy_yaml(base: &longhorn_guard_webhook::Policy, mode: &str) -> anyhow::Result<String> {
    let mut text = serde_yaml::to_string(base)?;
    // The section is written out rather than set on the struct: the agents read the same file.
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let section: serde_yaml::Value =
        serde_yaml::from_str(&format!("mode: {mode}\n{}", dedent(THRESHOLDS)))?;
    if let serde_yaml::Value::Mapping(m) = &mut value {
        m.insert("nodeProtection".into(), section);
    }
    text = serde_yaml::to_string(&value)?;
    Ok(text)
}

fn dedent(s: &str) -> String {
    s.lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One slow-leak run in `ns` against `webhook` (already registered for `ns`, reading the
/// verdict Leases in `ns`, its policy in `mode`), the agents reading `policy`.
pub(crate) async fn run_slow_leak(
    ctx: &RunContext<'_>,
    (label, ns, mode): (&str, &str, &str),
    webhook: &Served,
    policy: &Path,
) -> anyhow::Result<SlowLeakRun> {
    let o = ctx.options;
    let duration = o.slow_leak;
    let backups = ((o.slow_leak_rate * duration.as_secs_f64()).ceil() as usize).max(1);
    let plan = storm::plan(&StormShape {
        backups,
        volumes: o.volumes,
        lost_share: 0.0,
        mid_storm_loss_share: 0.0,
        recurring_jobs: 2,
        seed: o.seed,
    });
    let nodes = Nodes::start(o.nodes, ctx.node_base).await?;
    say(format!(
        "run {label}: {} volumes with ready snapshots in namespace {ns}; {backups} Backups at {} a second; {LEAKY_NODE}'s longhorn-manager leaks on every reconcile ...",
        o.volumes, o.slow_leak_rate
    ));
    world::populate(ctx.client, ns, &nodes, o.volumes, &plan, 48, ctx.logs).await?;
    let volume_nodes = world::volume_nodes(&nodes, o.volumes);

    let mut managers = BTreeMap::new();
    for node in nodes.nodes.iter().map(|n| n.name.clone()) {
        let log = ctx.logs.join(format!("manager-{ns}-{node}.log"));
        let m = SimulatedManager::start(ctx.exe, &node, &format!("{ns}-{node}"), &log).await?;
        managers.insert(node, m);
    }
    let flags = |node: &str| -> Vec<String> {
        managers
            .get(node)
            .map(|m| guard::verdict_flags(&m.process_match, MONITOR_INTERVAL, ns, policy))
            .unwrap_or_default()
    };
    say(format!(
        "run {label}: starting {} agents judging their node's manager ...",
        nodes.nodes.len()
    ));
    let agents = guard::start_agents(&ctx.guard_setup(ns), &nodes, &flags).await?;
    let result = observe(
        ctx,
        (label, ns, mode),
        (&nodes, &managers, &agents),
        webhook,
        (&plan, &volume_nodes),
        duration,
    )
    .await;
    for a in agents.values() {
        ctx.children.stop(&a.name, Duration::from_secs(10)).await;
    }
    for m in managers.into_values() {
        m.stop().await;
    }
    nodes.shutdown().await;
    result
}

/// The storm, the leak and the sampling, then the figures.
async fn observe(
    ctx: &RunContext<'_>,
    (label, ns, mode): (&str, &str, &str),
    (nodes, managers, agents): (
        &Nodes,
        &BTreeMap<String, SimulatedManager>,
        &BTreeMap<String, Served>,
    ),
    webhook: &Served,
    (plan, volume_nodes): (
        &[storm::PlannedBackup],
        &std::collections::HashMap<String, String>,
    ),
    duration: Duration,
) -> anyhow::Result<SlowLeakRun> {
    let o = ctx.options;
    let leaky_agent = agents
        .get(LEAKY_NODE)
        .ok_or_else(|| anyhow::anyhow!("no agent on {LEAKY_NODE}"))?;
    let commands = managers
        .get(LEAKY_NODE)
        .map(SimulatedManager::commands)
        .ok_or_else(|| anyhow::anyhow!("no manager on {LEAKY_NODE}"))?;
    let controller = SimulatedController::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: ns.to_string(),
            proxies: nodes.proxies(),
            volume_nodes: volume_nodes.clone(),
            resync: o.resync,
            slots_per_node: o.slots_per_node,
            backup_duration: o.backup_duration,
            max_leaked: o.leak_cap,
            manager_leak: Some(ManagerLeak {
                node: LEAKY_NODE.to_string(),
                commands,
                connections_per_reconcile: 1,
                mib_per_reconcile: 1,
            }),
        },
    );
    let backups_api: Api<DynamicObject> = Api::namespaced_with(
        ctx.storm_client.clone(),
        ns,
        &ApiResource::erase::<longhorn_types::Backup>(&()),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    say(format!(
        "run {label}: storm of {} Backups over {duration:?}, nodeProtection.mode {mode} ...",
        plan.len()
    ));
    let storm_config = StormConfig {
        concurrency: o.concurrency,
        spread: duration.mul_f64(0.9),
        deadline: duration,
        request_timeout: Duration::from_secs(15),
    };
    let origin = Instant::now();
    let storm = storm::run(
        backups_api.clone(),
        ns,
        plan,
        &storm_config,
        Arc::new(StormProgress::default()),
        None,
        stop_rx,
    );
    let sampler = async {
        let mut samples = Vec::new();
        while origin.elapsed() < duration {
            let stats = controller.stats();
            let t = origin.elapsed().as_secs_f64();
            match sample(leaky_agent, webhook).await {
                Ok(mut s) => {
                    s.t = t;
                    s.leaked_by_controller = stats.manager_leaked;
                    samples.push(s);
                }
                Err(e) => tracing::warn!(error = %e, "slow-leak sample failed"),
            }
            if controller.leak_cap_hit() {
                say(format!(
                    "run {label}: the leak reached the demo's cap; cutting the run short"
                ));
                break;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let _ = stop_tx.send(true);
        samples
    };
    let (attempts, samples) = tokio::join!(storm, sampler);
    let stats = controller.stats();
    controller.stop().await;
    let by_state = backups_by_state(&backups_api).await?;
    let node_of = |i: usize| {
        volume_nodes
            .get(&storm::volume_name(i % o.volumes.max(1)))
            .cloned()
            .unwrap_or_default()
    };
    Ok(figures(
        (label, ns, mode),
        &attempts,
        samples,
        &node_of,
        by_state,
        stats.leak_cap_hit,
    ))
}

/// One sample: the leaky manager as its agent's monitor sees it, the agent's verdict, and
/// whether the webhook believes the node is leaking.
async fn sample(agent: &Served, webhook: &Served) -> anyhow::Result<ManagerSample> {
    let (_, agent_text) = http_get(agent.metrics, "/metrics").await?;
    let (_, webhook_text) = http_get(webhook.metrics, "/metrics").await?;
    let node = format!("node=\"{LEAKY_NODE}\"");
    let sum = |text: &str, name: &str, filter: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| l.contains(&node) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let verdict = ["healthy", "degrading", "leaking"]
        .into_iter()
        .find(|v| {
            sum(
                &agent_text,
                "longhorn_guard_agent_node_verdict",
                &format!("verdict=\"{v}\""),
            ) >= 1.0
        })
        .unwrap_or("none");
    Ok(ManagerSample {
        t: 0.0,
        connections: sum(
            &agent_text,
            "longhorn_guard_manager_im_connections",
            "state=\"established\"",
        ) as u64,
        rss_mib: sum(
            &agent_text,
            "longhorn_guard_manager_resident_memory_bytes",
            "",
        ) / (1024.0 * 1024.0),
        agent_verdict: verdict.to_string(),
        webhook_leaking: sum(
            &webhook_text,
            "longhorn_guard_webhook_node_verdict",
            "verdict=\"leaking\"",
        ) >= 1.0,
        leaked_by_controller: 0,
    })
}

/// The spans during which the webhook was seen to believe the node leaking: from the first
/// sample that showed it to the last one of the same stretch.
pub fn leaking_spans(samples: &[ManagerSample]) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64)> = Vec::new();
    let mut open: Option<(f64, f64)> = None;
    for s in samples {
        match (&mut open, s.webhook_leaking) {
            (Some(span), true) => span.1 = s.t,
            (None, true) => open = Some((s.t, s.t)),
            (Some(_), false) => spans.extend(open.take()),
            (None, false) => {}
        }
    }
    spans.extend(open);
    spans
}

/// Backups of `node_of == LEAKY_NODE` admitted while the webhook was seen believing it leaking:
/// sent after a sample showed it leaking and answered before a later sample of the same
/// stretch (so the webhook held that verdict during the whole review).
pub fn admitted_while_leaking(
    attempts: &[Attempt],
    spans: &[(f64, f64)],
    node_of: &dyn Fn(usize) -> String,
) -> u64 {
    attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Admitted && node_of(a.index) == LEAKY_NODE)
        .filter(|a| {
            let sent = a.sent_at.as_secs_f64();
            let answered = sent + a.latency.as_secs_f64();
            spans
                .iter()
                .any(|&(from, to)| sent >= from && answered <= to)
        })
        .count() as u64
}

fn figures(
    (label, ns, mode): (&str, &str, &str),
    attempts: &[Attempt],
    samples: Vec<ManagerSample>,
    node_of: &dyn Fn(usize) -> String,
    by_state: BTreeMap<String, u64>,
    leak_cap_hit: bool,
) -> SlowLeakRun {
    let spans = leaking_spans(&samples);
    let leak_started_s = samples
        .iter()
        .find(|s| s.leaked_by_controller > 0)
        .map(|s| s.t);
    let protected_at_s = spans.first().map(|s| s.0);
    let on_node = |pred: &dyn Fn(&Outcome) -> bool| {
        attempts
            .iter()
            .filter(|a| node_of(a.index) == LEAKY_NODE && pred(&a.outcome))
            .count() as u64
    };
    let mut denied_by_reason = BTreeMap::new();
    for a in attempts {
        if let Outcome::Denied { reason, .. } = &a.outcome {
            *denied_by_reason.entry(reason.clone()).or_insert(0) += 1;
        }
    }
    let sent = attempts
        .iter()
        .filter(|a| a.outcome != Outcome::NotSent)
        .count() as u64;
    let admitted = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Admitted)
        .count() as u64;
    SlowLeakRun {
        label: label.to_string(),
        namespace: ns.to_string(),
        mode: mode.to_string(),
        leaky_node: LEAKY_NODE.to_string(),
        sent,
        admitted,
        denied_by_reason,
        errors: attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Failed(_)))
            .count() as u64,
        leaky_node_admitted: on_node(&|o| *o == Outcome::Admitted),
        leaky_node_denied: on_node(&|o| matches!(o, Outcome::Denied { .. })),
        leaky_node_admitted_while_leaking: admitted_while_leaking(attempts, &spans, node_of),
        leak_started_s,
        protected_at_s,
        time_to_protection_s: match (leak_started_s, protected_at_s) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        leaking_spans: spans,
        peak_connections: samples.iter().map(|s| s.connections).max().unwrap_or(0),
        peak_rss_mib: samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        leaked_by_controller: samples.last().map_or(0, |s| s.leaked_by_controller),
        leak_cap_hit,
        backups_by_state: by_state,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, leaking: bool) -> ManagerSample {
        ManagerSample {
            t,
            webhook_leaking: leaking,
            ..ManagerSample::default()
        }
    }

    fn attempt(index: usize, outcome: Outcome, sent: f64, latency: f64) -> Attempt {
        Attempt {
            index,
            outcome,
            sent: std::time::Instant::now(),
            latency: Duration::from_secs_f64(latency),
            sent_at: Duration::from_secs_f64(sent),
        }
    }

    #[test]
    fn admitted_while_leaking_counts_only_reviews_inside_a_seen_leaking_stretch() {
        let samples = [
            s(0.0, false),
            s(1.0, true),
            s(2.0, true),
            s(3.0, false),
            s(4.0, true),
        ];
        let spans = leaking_spans(&samples);
        assert_eq!(spans, vec![(1.0, 2.0), (4.0, 4.0)]);
        // Even indexes are on the leaky node.
        let node_of = |i: usize| {
            if i.is_multiple_of(2) {
                LEAKY_NODE.to_string()
            } else {
                "node-2".to_string()
            }
        };
        let attempts = [
            attempt(0, Outcome::Admitted, 1.2, 0.1), // inside: counted
            attempt(1, Outcome::Admitted, 1.2, 0.1), // other node
            attempt(2, Outcome::Admitted, 0.9, 0.2), // sent before the webhook was seen leaking
            attempt(4, Outcome::Admitted, 1.9, 0.2), // answered after the last sample of the stretch
            attempt(
                6,
                Outcome::Denied {
                    code: 403,
                    reason: "node_leaking".into(),
                },
                1.5,
                0.1,
            ),
            attempt(8, Outcome::Admitted, 2.5, 0.1), // between stretches
        ];
        assert_eq!(admitted_while_leaking(&attempts, &spans, &node_of), 1);
    }

    #[test]
    fn the_policy_carries_the_mode_and_the_thresholds_for_webhook_and_agents() {
        let base = longhorn_guard_webhook::Policy::default();
        let text = policy_yaml(&base, "enforce").expect("renders");
        let thresholds =
            node_verdict::Thresholds::from_policy_yaml(&text).expect("the agents read it");
        assert_eq!(thresholds.window_seconds, 10);
        assert_eq!(thresholds.leaking.min_connections, 15);
        let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(value["nodeProtection"]["mode"].as_str(), Some("enforce"));
        assert!(
            policy_yaml(&base, "off")
                .expect("renders")
                .contains("mode: off")
        );
    }
}
