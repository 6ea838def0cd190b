//! One run of the storm (A without the guard, B with it): the world, the agents (B), the
//! simulated controller and the watchers, the storm under its bounds, then the figures.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cluster::backups_by_state;
use crate::guard::{self, DemoPki};
use crate::inflight::{self, InFlightTracker};
use crate::probe;
use crate::processes::Children;
use crate::progress::Progress;
use crate::report::Sample;
use crate::report::{AgentFigures, RunReport, percentile};
use crate::simulated_controller::{ControllerConfig, ControllerStats, SimulatedController};
use crate::storm::{
    self, Attempt, Outcome, PlannedBackup, SnapshotFate, StormConfig, StormProgress, StormShape,
};
use crate::world::{self, Nodes};
use crate::{DemoOptions, say};

pub(crate) struct RunContext<'a> {
    pub(crate) options: &'a DemoOptions,
    pub(crate) client: &'a Client,
    /// Without kube's retry of 429/503 (see [`crate::cluster::connect`]).
    pub(crate) storm_client: &'a Client,
    pub(crate) kubeconfig: &'a Path,
    pub(crate) exe: &'a Path,
    pub(crate) children: &'a Children,
    pub(crate) pki: &'a DemoPki,
    pub(crate) logs: &'a Path,
    pub(crate) node_base: Ipv4Addr,
}

impl RunContext<'_> {
    /// What the run's webhook and agents in `namespace` are started with.
    pub(crate) fn guard_setup<'a>(&'a self, namespace: &'a str) -> guard::GuardSetup<'a> {
        guard::GuardSetup {
            children: self.children,
            exe: self.exe,
            kubeconfig: self.kubeconfig,
            pki: self.pki,
            namespace,
            logs: self.logs,
        }
    }
}

/// What a run sets up before its storm.
struct Stage {
    plan: Vec<PlannedBackup>,
    nodes: Nodes,
    volume_nodes: Arc<HashMap<String, String>>,
    /// The guard's agents by node (run B only).
    agents: Option<BTreeMap<String, guard::Served>>,
}

/// What the storm and the observation of it left.
struct Observed {
    attempts: Vec<Attempt>,
    storm_elapsed: Duration,
    run_elapsed: Duration,
    /// Snapshots of admitted Backups taken away during the storm.
    snapshots_lost_mid_storm: u64,
}

pub(crate) async fn run_once(
    ctx: &RunContext<'_>,
    label: &str,
    ns: &str,
    webhook: Option<&guard::Served>,
) -> anyhow::Result<RunReport> {
    let stage = stage(ctx, label, ns, webhook.is_some()).await?;
    let origin = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let watchers = Watchers::start(ctx, ns, &stage, origin, &stop_rx);
    let backups_api: Api<DynamicObject> = Api::namespaced_with(
        ctx.storm_client.clone(),
        ns,
        &ApiResource::erase::<longhorn_types::Backup>(&()),
    );
    let observed = storm_and_observe(
        ctx,
        (label, ns),
        &stage,
        &backups_api,
        (&watchers.tracker, &watchers.controller),
        (stop_tx, stop_rx),
        origin,
    )
    .await;
    let end = watchers.finish(&stage, &backups_api).await?;

    // Stop the rest of the run's pieces.
    if let Some(agents) = &stage.agents {
        for a in agents.values() {
            ctx.children.stop(&a.name, Duration::from_secs(10)).await;
        }
    }
    let engine_proxy_port = stage.nodes.port;
    stage.nodes.shutdown().await;

    let tally = Tally::of(&observed.attempts);
    if let Some(e) = &tally.first_error {
        say(format!(
            "run {label}: {} CREATEs failed; first: {e}",
            tally.errors
        ));
    }
    Ok(RunReport {
        label: label.to_string(),
        namespace: ns.to_string(),
        guard: webhook.is_some(),
        attempted: tally.admitted + tally.denied + tally.errors,
        not_sent: tally.not_sent,
        admitted: tally.admitted,
        denied: tally.denied,
        throttled: tally.throttled(),
        denied_by_reason: tally.denied_by_reason,
        errors: tally.errors,
        peak_in_flight: end.peak,
        stuck_pending_end: end.by_state.get("Pending").copied().unwrap_or(0),
        completed_end: end.by_state.get("Completed").copied().unwrap_or(0),
        backups_by_state: end.by_state,
        in_flight_end: end.in_flight,
        snapshots_lost_mid_storm: observed.snapshots_lost_mid_storm,
        leaked_manager_connections: end.controller.leaked_connections,
        engine_proxy_open_connections: end.engine_proxy_open,
        engine_proxy_port,
        leak_cap_hit: end.controller.leak_cap_hit,
        reconciles: end.controller.reconciles,
        admission_p50_ms: percentile(&tally.latencies_ms, 50.0).unwrap_or(0.0),
        admission_p99_ms: percentile(&tally.latencies_ms, 99.0).unwrap_or(0.0),
        storm_seconds: observed.storm_elapsed.as_secs_f64(),
        run_seconds: observed.run_elapsed.as_secs_f64(),
        agent: end.agent,
        timeline: end.timeline,
    })
}

/// What watches a run while the storm goes: the in-flight tracker, the simulated v1.7.2
/// controller, and (run B) the probe calling the engines through the agents.
struct Watchers {
    tracker: InFlightTracker,
    controller: SimulatedController,
    probe: Option<tokio::task::JoinHandle<()>>,
    probe_counts: Arc<probe::ProbeCounts>,
}

/// The figures read at the end of a run.
struct RunEnd {
    controller: ControllerStats,
    engine_proxy_open: u64,
    agent: Option<AgentFigures>,
    by_state: BTreeMap<String, u64>,
    peak: u64,
    /// Backups not in a terminal state at the end.
    in_flight: u64,
    timeline: Vec<Sample>,
}

impl Watchers {
    fn start(
        ctx: &RunContext<'_>,
        ns: &str,
        stage: &Stage,
        origin: Instant,
        stop: &watch::Receiver<bool>,
    ) -> Self {
        let o = ctx.options;
        let tracker =
            InFlightTracker::start(ctx.client.clone(), ns, origin, Duration::from_millis(250));
        let controller = SimulatedController::start(
            ctx.client.clone(),
            ControllerConfig {
                namespace: ns.to_string(),
                proxies: stage.nodes.proxies(),
                volume_nodes: (*stage.volume_nodes).clone(),
                resync: o.resync,
                slots_per_node: o.slots_per_node,
                backup_duration: o.backup_duration,
                max_leaked: o.leak_cap,
                manager_leak: None,
            },
        );
        let probe_counts = Arc::new(probe::ProbeCounts::default());
        let probe = stage.agents.as_ref().map(|agents| {
            let probe = probe::EngineProbe {
                agents: agents.iter().map(|(n, s)| (n.clone(), s.listen)).collect(),
                ca_pem: ctx.pki.ca.cert_pem.clone(),
                namespace: ns.to_string(),
                volume_nodes: stage.volume_nodes.clone(),
                targets: tracker.non_terminal_fn(),
                every: o.resync,
                counts: probe_counts.clone(),
            };
            tokio::spawn(probe.run(stop.clone()))
        });
        Self {
            tracker,
            controller,
            probe,
            probe_counts,
        }
    }

    /// Reads the figures (before anything is stopped), stops the controller (it finishes its
    /// writes), reads the final states, and stops the tracker.
    async fn finish(
        self,
        stage: &Stage,
        backups_api: &Api<DynamicObject>,
    ) -> anyhow::Result<RunEnd> {
        let controller = self.controller.stats();
        let engine_proxy_open = stage.nodes.open_connections();
        let agent = match &stage.agents {
            Some(a) => Some(probe::agent_figures(a, &self.probe_counts).await?),
            None => None,
        };
        if let Some(p) = self.probe {
            let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
        }
        self.controller.stop().await;
        let by_state = backups_by_state(backups_api).await?;
        let in_flight = by_state
            .iter()
            .filter(|(s, _)| !inflight::is_terminal(if s.as_str() == "New" { "" } else { s }))
            .map(|(_, n)| *n)
            .sum();
        let end = RunEnd {
            controller,
            engine_proxy_open,
            agent,
            peak: self.tracker.peak(),
            in_flight,
            by_state,
            timeline: self.tracker.timeline(),
        };
        self.tracker.stop().await;
        Ok(end)
    }
}

/// The storm's plan, the simulated nodes with their volumes, engines and snapshots in `ns`,
/// and (run B) the guard's agents.
async fn stage(
    ctx: &RunContext<'_>,
    label: &str,
    ns: &str,
    guarded: bool,
) -> anyhow::Result<Stage> {
    let o = ctx.options;
    let plan = storm::plan(&StormShape {
        backups: o.backups,
        volumes: o.volumes,
        lost_share: o.lost_share,
        mid_storm_loss_share: o.mid_storm_loss_share,
        recurring_jobs: 2,
        seed: o.seed,
    });
    let nodes = Nodes::start(o.nodes, ctx.node_base).await?;
    say(format!(
        "run {label}: creating {} volumes, their engines and {} snapshots in namespace {ns} ({} lost in the outage) ...",
        o.volumes,
        plan.len(),
        plan.iter()
            .filter(|b| b.fate == SnapshotFate::LostBeforeStorm)
            .count()
    ));
    if nodes.port != world::PREFERRED_PROXY_PORT {
        say(format!(
            "run {label}: port {} is taken on a node address; the fake instance managers serve their engine proxy on port {} (the agents are told)",
            world::PREFERRED_PROXY_PORT,
            nodes.port
        ));
    }
    world::populate(ctx.client, ns, &nodes, o.volumes, &plan, 48, ctx.logs).await?;
    let volume_nodes = Arc::new(world::volume_nodes(&nodes, o.volumes));

    let agents = if guarded {
        say(format!(
            "run {label}: starting {} agents (child processes) ...",
            nodes.nodes.len()
        ));
        Some(
            guard::start_agents(
                &ctx.guard_setup(ns),
                &nodes,
                // No longhorn-manager in this run: nothing to judge (the slow-leak run has one).
                &|_| vec!["--no-node-verdict".into()],
            )
            .await?,
        )
    } else {
        None
    };
    Ok(Stage {
        plan,
        nodes,
        volume_nodes,
        agents,
    })
}

/// The storm, the mid-storm snapshot loss and the progress display, together, bounded by the
/// run's duration and the leak cap (which stops the storm through `stop`).
async fn storm_and_observe(
    ctx: &RunContext<'_>,
    (label, ns): (&str, &str),
    stage: &Stage,
    backups_api: &Api<DynamicObject>,
    (tracker, controller): (&InFlightTracker, &SimulatedController),
    (stop_tx, stop_rx): (watch::Sender<bool>, watch::Receiver<bool>),
    origin: Instant,
) -> Observed {
    let o = ctx.options;
    let plan = &stage.plan;
    // Mid-storm loss: the snapshot of an admitted Backup disappears right away.
    let (admitted_tx, admitted_rx) = mpsc::unbounded_channel::<usize>();
    let loser =
        world::lose_after_admission(ctx.client, ns, &stage.nodes, o.volumes, plan, admitted_rx);

    say(format!(
        "run {label}: storm of {} Backups (concurrency {}, spread over {:?}, run bounded to {:?}) ...",
        plan.len(),
        o.concurrency,
        o.storm_spread.min(o.duration),
        o.duration
    ));
    let progress = Arc::new(StormProgress::default());
    let display = Progress::start(label, plan.len() as u64);
    let storm_config = StormConfig {
        concurrency: o.concurrency,
        spread: o.storm_spread.min(o.duration),
        deadline: o.duration,
        request_timeout: Duration::from_secs(15),
    };
    let storm_started = Instant::now();
    let storm = async {
        let attempts = storm::run(
            backups_api.clone(),
            ns,
            plan,
            &storm_config,
            progress.clone(),
            Some(admitted_tx),
            stop_rx.clone(),
        )
        .await;
        (attempts, storm_started.elapsed())
    };
    // Everything of the run, bounded by its duration and the leak cap.
    let observe = async {
        let deadline = origin + o.duration;
        loop {
            display.update(&progress, tracker, controller);
            if controller.leak_cap_hit() {
                say(format!(
                    "run {label}: the leak reached the demo's cap of {} connections; cutting the run short",
                    o.leak_cap
                ));
                let _ = stop_tx.send(true);
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ((attempts, storm_elapsed), (), lost_mid) = tokio::join!(storm, observe, loser);
    let _ = stop_tx.send(true);
    display.finish(&progress, tracker, controller);
    Observed {
        attempts,
        storm_elapsed,
        run_elapsed: origin.elapsed(),
        snapshots_lost_mid_storm: lost_mid,
    }
}

/// The storm's CREATEs counted by outcome.
#[derive(Default)]
struct Tally {
    admitted: u64,
    denied: u64,
    errors: u64,
    not_sent: u64,
    denied_by_reason: BTreeMap<String, u64>,
    /// Admission latency of every CREATE sent, in milliseconds.
    latencies_ms: Vec<f64>,
    first_error: Option<String>,
}

impl Tally {
    fn of(attempts: &[Attempt]) -> Self {
        let mut tally = Tally::default();
        for a in attempts {
            match &a.outcome {
                Outcome::Admitted => tally.admitted += 1,
                Outcome::Denied { reason, .. } => {
                    tally.denied += 1;
                    *tally.denied_by_reason.entry(reason.clone()).or_insert(0) += 1;
                }
                Outcome::Failed(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| e.clone());
                }
                Outcome::NotSent => tally.not_sent += 1,
            }
            if a.outcome != Outcome::NotSent {
                tally.latencies_ms.push(a.latency.as_secs_f64() * 1000.0);
            }
        }
        tally
    }

    /// Denials by the throttle (`throttled*` reasons).
    fn throttled(&self) -> u64 {
        self.denied_by_reason
            .iter()
            .filter(|(k, _)| k.starts_with("throttled"))
            .map(|(_, n)| *n)
            .sum()
    }
}
