//! `longhorn-guard demo --long-run-minutes N`: the demo's topology (webhook, an agent per node,
//! the simulated v1.7.2 controller, fake engines) for N minutes on one namespace, with a storm
//! wave every few minutes, a fault injected into the engines during each wave, and one short
//! API server outage for the guard on the way. Every `--sample-seconds` it samples the guard's
//! processes ([`sampler`]); at the end it judges each series flat or not over the run's second
//! half ([`trend`]), requires 0 leaked leases and channels (the agents' `leaked_*` gauges) and
//! checks every denial against the simulated cluster's truth ([`truth`]).
//!
//! Retention keeps the cluster's size steady as a long-lived one's is: when wave k starts,
//! the Backups and Snapshots of wave k-2 are deleted (Longhorn's recurring-job retain count).
//! The outage comes in the gap after the second wave, early in the warm-up half.

mod observe;
pub mod outage;
mod plan;
pub mod report;
pub mod sampler;
pub mod trend;
pub mod truth;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::guard::{self, DemoPki, Served};
use crate::world::{self, Nodes};
use crate::{Cluster, DemoOptions, Started, say, shutdown_signal};
use observe::Run;
use outage::ApiRelay;
use report::LongRunReport;

pub use observe::Observed;
pub(crate) use observe::denial_of;
pub use plan::{LongRunOptions, Timetable, long_run_policy, wave_fault, wave_plan};

/// Runs the long run; on every exit path stops every process it started and removes its
/// webhook registration. The report is written to `options.out_dir` whatever its verdict.
pub async fn run(options: DemoOptions, long: LongRunOptions) -> anyhow::Result<LongRunReport> {
    options.validate()?;
    let timetable = long.timetable(options.storm_spread)?;
    let mut started = Started::new()?;
    let result = tokio::select! {
        r = body(&options, &long, timetable, &mut started) => r,
        s = shutdown_signal() => Err(anyhow::anyhow!("interrupted by {s}; cleaning up")),
    };
    started.clean_up(result.is_err()).await;
    result
}

/// The guard of the long run, started against the relayed API server.
struct Guard {
    webhook: Served,
    agents: BTreeMap<String, Served>,
    pki: DemoPki,
}

async fn body(
    options: &DemoOptions,
    long: &LongRunOptions,
    timetable: Timetable,
    started: &mut Started,
) -> anyhow::Result<LongRunReport> {
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let exe = crate::guard_exe(options)?;
    let cluster = Cluster::open(options, &started.work, &mut started.control_plane).await?;
    let (client, ns) = (&cluster.client, cluster.ns_b.as_str());

    // The guard reaches the API server through the relay the outage cuts.
    let (api_server, _) = outage::relayed_kubeconfig(&cluster.kubeconfig, None)?;
    let relay = ApiRelay::start(api_server).await?;
    let (_, relayed) = outage::relayed_kubeconfig(&cluster.kubeconfig, Some(relay.addr.port()))?;
    let guard_kubeconfig = started.work.join("kubeconfig-through-relay");
    std::fs::write(&guard_kubeconfig, relayed)?;

    let pki = DemoPki::create(&started.work.join("pki"))?;
    let policy_path = started.work.join("policy.yaml");
    let policy = long_run_policy();
    std::fs::write(&policy_path, serde_yaml::to_string(&policy)?)?;
    say("long run: starting the webhook (child process) ...");
    let setup = guard::GuardSetup {
        children: &started.children,
        exe: &exe,
        kubeconfig: &guard_kubeconfig,
        pki: &pki,
        namespace: ns,
        logs: &logs,
    };
    let webhook = guard::start_webhook(&setup, "webhook", &policy_path, &[]).await?;
    let nodes = Nodes::start(options.nodes, cluster.node_base).await?;
    let volume_nodes = world::volume_nodes(&nodes, options.volumes);
    let first = wave_plan(options, long.wave_backups, 0);
    world::populate(client, ns, &nodes, options.volumes, &first, 48, &logs).await?;
    say(format!("long run: starting {} agents ...", options.nodes));
    let agents = guard::start_agents(&setup, &nodes, &|_| Vec::new()).await?;
    let name = guard::register_webhook(client, &webhook, &pki.ca.cert_pem, ns).await?;
    started.registered(client, name);
    let guard = Guard {
        webhook,
        agents,
        pki,
    };
    say(format!(
        "long run: {:?}, {} waves of {} Backups every {:?}, API outage of {:?} at {:?}, a sample every {:?}",
        timetable.total,
        timetable.waves,
        long.wave_backups,
        timetable.wave_every,
        timetable.outage,
        timetable.outage_at,
        long.sample_every
    ));
    let run = Run {
        options,
        long,
        timetable,
        client,
        storm_client: &cluster.storm_client,
        ns,
        nodes: &nodes,
        volume_nodes: &volume_nodes,
        guard: &guard,
        relay: &relay,
        probe_targets: Arc::default(),
        waves_done: watch::Sender::new(0),
    };
    let observed = run.observe(first).await;
    nodes.shutdown().await;
    let observed = observed?;
    let report = report::judge(options, long, timetable, &policy, &volume_nodes, observed);
    report::write(&report, &options.out_dir)?;
    Ok(report)
}
