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

pub mod outage;
pub mod report;
pub mod sampler;
pub mod trend;
pub mod truth;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fake_engine::{Fault, Method};
use futures::StreamExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::guard::{self, DemoPki, Served};
use crate::inflight::InFlightTracker;
use crate::probe::{EngineProbe, ProbeCounts};
use crate::simulated_controller::{ControllerConfig, SimulatedController};
use crate::storm::{self, Attempt, Outcome, PlannedBackup, StormConfig, StormShape};
use crate::world::{self, Nodes};
use crate::{Cluster, DemoOptions, Started, say, shutdown_signal};
use outage::ApiRelay;
use report::{LongRunReport, OutageFigures, WaveFigures};
use sampler::Row;

/// What only the long run is told (the rest comes from [`DemoOptions`]).
#[derive(Clone, Debug)]
pub struct LongRunOptions {
    pub total: Duration,
    /// Between two storm waves (default: 5 minutes, or a quarter of the run if shorter).
    pub wave_every: Option<Duration>,
    /// Backups per wave.
    pub wave_backups: usize,
    /// How long the guard loses the API server (default: 20 s, 10 s for runs under 10 minutes).
    pub outage: Option<Duration>,
    pub sample_every: Duration,
}

impl Default for LongRunOptions {
    fn default() -> Self {
        Self {
            total: Duration::from_secs(3600),
            wave_every: None,
            wave_backups: 600,
            outage: None,
            sample_every: Duration::from_secs(10),
        }
    }
}

/// The long run's timetable, derived from its options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timetable {
    pub total: Duration,
    pub wave_every: Duration,
    pub waves: u32,
    /// Each wave's CREATEs start evenly over this span.
    pub spread: Duration,
    /// The outage starts this long after the run and lasts `outage`.
    pub outage_at: Duration,
    pub outage: Duration,
}

impl LongRunOptions {
    pub fn timetable(&self, storm_spread: Duration) -> anyhow::Result<Timetable> {
        let total = self.total;
        if total < Duration::from_secs(60) {
            bail!("--long-run-minutes must be at least 1");
        }
        if self.wave_backups == 0 || self.sample_every.is_zero() {
            bail!("--wave-backups and --sample-seconds must be > 0");
        }
        let wave_every = self
            .wave_every
            .unwrap_or_else(|| Duration::from_secs(300).min(total / 4));
        if wave_every.is_zero() {
            bail!("--wave-seconds must be > 0");
        }
        let spread = storm_spread.min(wave_every / 3);
        let outage = self.outage.unwrap_or(if total < Duration::from_secs(600) {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(20)
        });
        // Waves start while their storm still fits in the run.
        let waves = ((total.saturating_sub(spread)).as_secs_f64() / wave_every.as_secs_f64())
            .floor() as u32
            + 1;
        // The outage: in the quiet gap after the second wave (early in the warm-up half), so
        // that the judged half shows whether the guard came back to its level.
        let outage_at = wave_every + spread + Duration::from_secs(2);
        if spread + Duration::from_secs(2) + outage >= wave_every {
            bail!(
                "the outage ({outage:?}) does not fit between two waves ({wave_every:?} apart, storms of {spread:?}); lengthen --wave-seconds or shorten --outage-seconds"
            );
        }
        if outage_at + outage >= total / 2 && total >= Duration::from_secs(120) {
            bail!(
                "the outage ({outage:?} at {outage_at:?}) must end in the run's first half ({:?}); lengthen the run or shorten --wave-seconds",
                total / 2
            );
        }
        Ok(Timetable {
            total,
            wave_every,
            waves,
            spread,
            outage_at,
            outage,
        })
    }
}

/// The fault the engines suffer during wave `k` (on every RPC but health checks).
pub fn wave_fault(k: u32) -> (&'static str, Fault) {
    let injected = || "injected by the long run".to_string();
    match k % 5 {
        0 => (
            "20 % UNAVAILABLE",
            Fault::Probabilistic {
                probability: 0.2,
                fault: Box::new(Fault::Error {
                    code: tonic::Code::Unavailable,
                    message: injected(),
                }),
            },
        ),
        1 => (
            "10 % connection reset",
            Fault::Probabilistic {
                probability: 0.1,
                fault: Box::new(Fault::Reset),
            },
        ),
        2 => (
            "delay 1-150 ms",
            Fault::RandomDelay {
                min: Duration::from_millis(1),
                max: Duration::from_millis(150),
            },
        ),
        3 => (
            "5 % black hole",
            Fault::Probabilistic {
                probability: 0.05,
                fault: Box::new(Fault::BlackHole),
            },
        ),
        _ => ("none", Fault::None),
    }
}

/// The policy of the long run: the demo's, with the rate limits off (so that every throttle
/// denial is an in-flight cap the truth check can recount).
pub fn long_run_policy() -> longhorn_guard_webhook::Policy {
    use longhorn_guard_webhook::policy::throttle::RateLimit;
    let mut policy = crate::demo_policy();
    policy.throttle.cluster_rate = RateLimit::OFF;
    policy.throttle.recurring_job_rate = RateLimit::OFF;
    policy.throttle.user_rate = RateLimit::OFF;
    policy
}

/// Wave `k`'s Backups: the demo's storm plan, the same every wave (the same recurring jobs
/// firing for the same volumes, the same snapshots lost: a steady cluster), with Backup and
/// snapshot names made unique to the wave.
pub fn wave_plan(options: &DemoOptions, backups: usize, k: u32) -> Vec<PlannedBackup> {
    let mut plan = storm::plan(&StormShape {
        backups,
        volumes: options.volumes,
        lost_share: options.lost_share,
        mid_storm_loss_share: options.mid_storm_loss_share,
        recurring_jobs: 2,
        seed: options.seed,
    });
    for b in &mut plan {
        b.name = format!("{}-w{k}", b.name);
        b.snapshot = format!("{}-w{k}", b.snapshot);
    }
    plan
}

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

struct Run<'a> {
    options: &'a DemoOptions,
    long: &'a LongRunOptions,
    timetable: Timetable,
    client: &'a Client,
    storm_client: &'a Client,
    ns: &'a str,
    nodes: &'a Nodes,
    volume_nodes: &'a HashMap<String, String>,
    guard: &'a Guard,
    relay: &'a ApiRelay,
    /// `(volume, snapshot)` the engine probe asks the agents about, set at each wave.
    probe_targets: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// Waves whose CREATEs are all sent.
    waves_done: watch::Sender<u32>,
}

/// What the run leaves to judge.
pub struct Observed {
    pub rows: Vec<Row>,
    pub sample_errors: Vec<String>,
    /// Every wave's plan and attempts (in order).
    pub waves: Vec<(WaveFigures, Vec<PlannedBackup>, Vec<Attempt>)>,
    pub spans: Vec<crate::inflight::InFlightSpan>,
    pub outage: OutageFigures,
    pub engine_checks: u64,
    pub engine_check_errors: u64,
    pub controller_leaked_connections: u64,
}

impl Run<'_> {
    async fn observe(&self, first: Vec<PlannedBackup>) -> anyhow::Result<Observed> {
        let origin = Instant::now();
        let tracker =
            InFlightTracker::start(self.client.clone(), self.ns, origin, Duration::from_secs(1));
        let controller = SimulatedController::start(
            self.client.clone(),
            ControllerConfig {
                namespace: self.ns.to_string(),
                proxies: self.nodes.proxies(),
                volume_nodes: self.volume_nodes.clone(),
                resync: self.options.resync,
                slots_per_node: self.options.slots_per_node,
                backup_duration: self.options.backup_duration,
                max_leaked: self.options.leak_cap,
                manager_leak: None,
            },
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let probe_counts = Arc::new(ProbeCounts::default());
        let targets = self.probe_targets.clone();
        let probe = tokio::spawn(
            EngineProbe {
                agents: self
                    .guard
                    .agents
                    .iter()
                    .map(|(n, s)| (n.clone(), s.listen))
                    .collect(),
                ca_pem: self.guard.pki.ca.cert_pem.clone(),
                namespace: self.ns.to_string(),
                volume_nodes: Arc::new(self.volume_nodes.clone()),
                // Every Backup of the current and the previous wave, found or not: the
                // agents work through the faults all the time, not only while Backups wait.
                targets: Arc::new(move || {
                    targets
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                }),
                every: self.options.resync,
                counts: probe_counts.clone(),
            }
            .run(stop_rx.clone()),
        );
        let waves = async {
            let r = self.waves(origin, first, &stop_rx).await;
            tokio::time::sleep_until(origin + self.timetable.total).await;
            let _ = stop_tx.send(true);
            r
        };
        let (waves, (rows, sample_errors), outage) = tokio::join!(
            waves,
            self.sample(origin, stop_rx.clone()),
            self.outage(origin, stop_rx.clone())
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), probe).await;
        let leaked = controller.stats().leaked_connections;
        controller.stop().await;
        let spans = tracker.spans();
        tracker.stop().await;
        Ok(Observed {
            rows,
            sample_errors,
            waves: waves?,
            spans,
            outage,
            engine_checks: probe_counts
                .calls
                .load(std::sync::atomic::Ordering::Relaxed),
            engine_check_errors: probe_counts
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
            controller_leaked_connections: leaked,
        })
    }

    /// Samples until `stop`, then once more.
    async fn sample(
        &self,
        origin: Instant,
        mut stop: watch::Receiver<bool>,
    ) -> (Vec<Row>, Vec<String>) {
        let agents: Vec<&Served> = self.guard.agents.values().collect();
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        let mut tick = tokio::time::interval(self.long.sample_every);
        loop {
            let last = tokio::select! {
                _ = stop.wait_for(|s| *s) => true,
                _ = tick.tick() => false,
            };
            let t = origin.elapsed().as_secs_f64();
            match sampler::sample(t, &self.guard.webhook, &agents).await {
                Ok(row) => rows.push(row),
                Err(e) => errors.push(format!("{t:.0} s: {e:#}")),
            }
            if last {
                return (rows, errors);
            }
        }
    }

    /// Cuts the guard off the API server for the outage.
    async fn outage(&self, origin: Instant, mut stop: watch::Receiver<bool>) -> OutageFigures {
        let t = &self.timetable;
        tokio::time::sleep_until(origin + t.outage_at).await;
        // In the quiet gap: after the second wave's CREATEs, however late preparing it made them.
        let mut done = self.waves_done.subscribe();
        tokio::select! {
            _ = done.wait_for(|done| *done >= 2) => {}
            _ = stop.wait_for(|s| *s) => return OutageFigures::default(),
        }
        let at_seconds = origin.elapsed().as_secs_f64();
        say(format!(
            "long run: API server outage for the guard ({:?}) at {at_seconds:.0} s",
            t.outage
        ));
        self.relay.cut();
        tokio::time::sleep(t.outage).await;
        self.relay.restore();
        say("long run: API server back");
        OutageFigures {
            at_seconds,
            seconds: t.outage.as_secs_f64(),
            connections_refused: self.relay.refused(),
        }
    }

    /// The storm waves, each with its fault, and the retention between them.
    async fn waves(
        &self,
        origin: Instant,
        first: Vec<PlannedBackup>,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<(WaveFigures, Vec<PlannedBackup>, Vec<Attempt>)>> {
        let t = self.timetable;
        let backups_api: Api<DynamicObject> = Api::namespaced_with(
            self.storm_client.clone(),
            self.ns,
            &ApiResource::erase::<longhorn_types::Backup>(&()),
        );
        let mut waves: Vec<(WaveFigures, Vec<PlannedBackup>, Vec<Attempt>)> = Vec::new();
        let mut next = Some(first);
        for k in 0..t.waves {
            tokio::time::sleep_until(origin + t.wave_every * k).await;
            if *stop.borrow() {
                break;
            }
            let plan = match next.take() {
                Some(p) => p,
                None => {
                    let p = wave_plan(self.options, self.long.wave_backups, k);
                    world::populate(
                        self.client,
                        self.ns,
                        self.nodes,
                        self.options.volumes,
                        &p,
                        48,
                        &self.options.out_dir.join("logs"),
                    )
                    .await
                    .with_context(|| format!("preparing wave {k}"))?;
                    p
                }
            };
            if let Some(old) = k.checked_sub(2).and_then(|i| waves.get(i as usize)) {
                self.retire(&old.1).await;
            }
            let previous = waves.last().map_or(&[][..], |w| &w.1[..]);
            *self
                .probe_targets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = plan
                .iter()
                .chain(previous)
                .map(|b| (b.volume.clone(), b.snapshot.clone()))
                .collect();
            let (fault_name, fault) = wave_fault(k);
            for n in &self.nodes.nodes {
                n.engine.set_fault(Method::Any, fault.clone());
            }
            let started_at = origin.elapsed().as_secs_f64();
            say(format!(
                "long run: wave {k} at {started_at:.0} s: {} Backups, engines: {fault_name}",
                plan.len()
            ));
            let attempts = self.storm(&backups_api, &plan, stop).await;
            for n in &self.nodes.nodes {
                n.engine.clear_faults();
            }
            self.waves_done.send_replace(k + 1);
            let figures = WaveFigures::of(k, started_at, fault_name, &attempts);
            waves.push((figures, plan, attempts));
        }
        Ok(waves)
    }

    /// One wave's CREATEs, with the snapshots planned to disappear after admission taken away.
    async fn storm(
        &self,
        backups_api: &Api<DynamicObject>,
        plan: &[PlannedBackup],
        stop: &watch::Receiver<bool>,
    ) -> Vec<Attempt> {
        let (admitted_tx, admitted_rx) = mpsc::unbounded_channel::<usize>();
        let loser = world::lose_after_admission(
            self.client,
            self.ns,
            self.nodes,
            self.options.volumes,
            plan,
            admitted_rx,
        );
        let config = StormConfig {
            concurrency: self.options.concurrency,
            spread: self.timetable.spread,
            deadline: self.timetable.wave_every,
            request_timeout: Duration::from_secs(15),
        };
        let storm = storm::run(
            backups_api.clone(),
            self.ns,
            plan,
            &config,
            Arc::new(storm::StormProgress::default()),
            Some(admitted_tx),
            stop.clone(),
        );
        let (attempts, _) = tokio::join!(storm, loser);
        attempts
    }

    /// Retention: deletes the Backups of an old wave and their Snapshots.
    async fn retire(&self, plan: &[PlannedBackup]) {
        let backups: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            self.ns,
            &ApiResource::erase::<longhorn_types::Backup>(&()),
        );
        let snapshots: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            self.ns,
            &ApiResource::erase::<longhorn_types::Snapshot>(&()),
        );
        let deletes = plan.iter().flat_map(|b| {
            [
                (backups.clone(), b.name.clone()),
                (snapshots.clone(), b.snapshot.clone()),
            ]
        });
        let failed = futures::stream::iter(deletes)
            .map(|(api, name)| async move {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => 0u64,
                    Err(kube::Error::Api(e)) if e.code == 404 => 0,
                    Err(e) => {
                        tracing::warn!(error = %e, name, "retention: delete failed");
                        1
                    }
                }
            })
            .buffer_unordered(32)
            .fold(0u64, |a, b| async move { a + b })
            .await;
        if failed > 0 {
            say(format!("long run: retention: {failed} deletes failed"));
        }
    }
}

/// Whether a CREATE was denied, with its reason.
pub(crate) fn denial_of(a: &Attempt) -> Option<&str> {
    match &a.outcome {
        Outcome::Denied { reason, .. } => Some(reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(minutes: u64) -> LongRunOptions {
        LongRunOptions {
            total: Duration::from_secs(minutes * 60),
            ..LongRunOptions::default()
        }
    }

    #[test]
    fn an_hour_has_twelve_waves_and_the_outage_early() {
        let t = long(60).timetable(Duration::from_secs(30)).unwrap();
        assert_eq!(t.wave_every, Duration::from_secs(300));
        assert_eq!(t.waves, 12);
        assert_eq!(t.outage, Duration::from_secs(20));
        assert_eq!(t.outage_at, Duration::from_secs(300 + 32));
    }

    #[test]
    fn two_minutes_with_waves_every_15_s_fit_the_outage_early() {
        let o = LongRunOptions {
            wave_every: Some(Duration::from_secs(15)),
            outage: Some(Duration::from_secs(6)),
            ..long(2)
        };
        let t = o.timetable(Duration::from_secs(30)).unwrap();
        assert_eq!(t.spread, Duration::from_secs(5));
        assert_eq!(t.waves, 8);
        assert_eq!(t.outage_at, Duration::from_secs(22));
        assert!(t.outage_at + t.outage <= t.total / 3);
        assert_eq!(long(2).timetable(Duration::from_secs(30)).unwrap().waves, 4);
    }

    #[test]
    fn timetables_that_do_not_fit_are_refused() {
        assert!(long(0).timetable(Duration::from_secs(30)).is_err());
        let crowded = LongRunOptions {
            outage: Some(Duration::from_secs(25)),
            ..long(2)
        };
        let e = crowded.timetable(Duration::from_secs(30)).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn waves_have_their_own_snapshots_and_names() {
        let o = DemoOptions {
            volumes: 10,
            ..DemoOptions::default()
        };
        let a = wave_plan(&o, 20, 0);
        let b = wave_plan(&o, 20, 1);
        assert!(a.iter().all(|p| p.snapshot.ends_with("-w0")));
        assert!(b.iter().all(|p| p.snapshot.ends_with("-w1")));
        assert!(a.iter().all(|x| b.iter().all(|y| x.name != y.name)));
        let fates = |p: &[PlannedBackup]| p.iter().map(|x| x.fate).collect::<Vec<_>>();
        assert_eq!(
            fates(&a),
            fates(&b),
            "every wave loses the same share the same way"
        );
    }

    #[test]
    fn every_fault_is_injected_once_in_five_waves() {
        let names: std::collections::BTreeSet<_> = (0..5).map(|k| wave_fault(k).0).collect();
        assert_eq!(names.len(), 5);
        assert_eq!(wave_fault(4).0, "none");
    }

    #[test]
    fn the_long_run_policy_has_no_rate_limits() {
        let p = long_run_policy();
        assert!(!p.throttle.cluster_rate.enabled());
        assert!(!p.throttle.recurring_job_rate.enabled());
        assert!(!p.throttle.user_rate.enabled());
        assert_eq!(p.throttle.max_in_flight_per_volume, 1);
    }
}
