//! The run itself: the simulated controller, the engine probe, the sampler, the storm waves
//! with their faults and retention, and the API server outage, all at once; what they saw is
//! left in [`Observed`] to judge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fake_engine::Method;
use futures::StreamExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::outage::ApiRelay;
use super::report::{OutageFigures, WaveFigures};
use super::sampler::{self, Row};
use super::{Guard, LongRunOptions, Timetable, wave_fault, wave_plan};
use crate::guard::Served;
use crate::inflight::InFlightTracker;
use crate::probe::{EngineProbe, ProbeCounts};
use crate::simulated_controller::{ControllerConfig, SimulatedController};
use crate::storm::{self, Attempt, Outcome, PlannedBackup, StormConfig};
use crate::world::{self, Nodes};
use crate::{DemoOptions, say};

/// One long run in progress: what the observers share.
pub(super) struct Run<'a> {
    pub(super) options: &'a DemoOptions,
    pub(super) long: &'a LongRunOptions,
    pub(super) timetable: Timetable,
    pub(super) client: &'a Client,
    pub(super) storm_client: &'a Client,
    pub(super) ns: &'a str,
    pub(super) nodes: &'a Nodes,
    pub(super) volume_nodes: &'a HashMap<String, String>,
    pub(super) guard: &'a Guard,
    pub(super) relay: &'a ApiRelay,
    /// `(volume, snapshot)` the engine probe asks the agents about, set at each wave.
    pub(super) probe_targets: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// Waves whose CREATEs are all sent.
    pub(super) waves_done: watch::Sender<u32>,
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
    pub(super) async fn observe(&self, first: Vec<PlannedBackup>) -> anyhow::Result<Observed> {
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
