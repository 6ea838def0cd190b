//! The third run, "slow leak" (issue #19): a gentle storm whose rate stays under the static
//! caps (every snapshot exists, a few Backups a second), while one node's simulated
//! longhorn-manager leaks on every reconcile — a leak the static caps cannot see. Every node
//! has its own simulated manager process ([`crate::manager`]) and its real agent, whose real
//! manager monitor reads that process's `/proc` and whose verdict goes to the node's Lease; a
//! webhook of its own reads the Leases. Run twice: `nodeProtection.mode: off` (the loop open)
//! and `enforce` (the loop closed), and measured from the outside: the leaky manager's
//! connections and RSS (the agent's `/metrics`), what the webhook believes (its
//! `node_verdict` gauge), and every CREATE's outcome and time.

mod figures;

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
use crate::storm::{self, StormConfig, StormProgress, StormShape};
use crate::world::{self, Nodes};
use figures::figures;

pub use figures::{admitted_while_leaking, leaking_spans};

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
    let controller = leaky_controller(ctx, ns, nodes, managers, volume_nodes)?;
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
        let samples = sample_until(
            &controller,
            (leaky_agent, webhook),
            label,
            (origin, duration),
        )
        .await;
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

/// The simulated v1.7.2 controller of a slow-leak run: its Backups leak one connection and
/// 1 MiB into [`LEAKY_NODE`]'s manager per reconcile.
fn leaky_controller(
    ctx: &RunContext<'_>,
    ns: &str,
    nodes: &Nodes,
    managers: &BTreeMap<String, SimulatedManager>,
    volume_nodes: &std::collections::HashMap<String, String>,
) -> anyhow::Result<SimulatedController> {
    let o = ctx.options;
    let commands = managers
        .get(LEAKY_NODE)
        .map(SimulatedManager::commands)
        .ok_or_else(|| anyhow::anyhow!("no manager on {LEAKY_NODE}"))?;
    Ok(SimulatedController::start(
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
    ))
}

/// Samples the leaky node every [`SAMPLE_EVERY`] until `duration` has passed since `origin`
/// (the storm's start), or the leak reaches the demo's cap.
async fn sample_until(
    controller: &SimulatedController,
    (leaky_agent, webhook): (&Served, &Served),
    label: &str,
    (origin, duration): (Instant, Duration),
) -> Vec<ManagerSample> {
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
    samples
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

#[cfg(test)]
mod tests {
    use super::*;

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
