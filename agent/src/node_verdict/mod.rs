//! The node's leak verdict (issue #19), computed from the manager monitor's samples and
//! published for the webhook.
//!
//! - Every sample of the longhorn-manager monitor goes to a [`Tracker`] (hysteresis, in
//!   `node-verdict`); the verdict and slopes are exported at once
//!   (`longhorn_guard_agent_node_verdict*`).
//! - A publisher task keeps one `coordination.k8s.io/v1` Lease per node in the guard's
//!   namespace (name, labels and annotations from [`::node_verdict::lease`]),
//!   holder = this agent's pod, renewed every `renew_period` and at once on a transition, so
//!   a dead agent's verdict expires after `lease_duration` instead of sticking. Each
//!   transition also becomes an Event on the Node.
//! - The thresholds come from the policy file (`nodeProtection.thresholds`), looked at every
//!   renewal; see [`policy`].
//!
//! API errors are counted (`node_verdict_publish_errors_total{reason}`) and logged once per
//! reason in a row; they never stop the gRPC service or the monitor.

pub mod metrics;
pub mod policy;
pub mod publish;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use ::node_verdict::{Evidence, Observation, ProcessKey, Thresholds, Tracker, Transition, Verdict};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use longhorn_guard_manager_monitor::Sample;
use tokio::sync::Notify;

pub use metrics::VerdictMetrics;
pub use policy::{PolicyCheck, PolicyFile};
pub use publish::{LeaseWriter, PublishError};

/// The guard's namespace in the manifests (where the webhook looks for verdict Leases).
pub const DEFAULT_LEASE_NAMESPACE: &str = "longhorn-guard";
/// A Node's Events live here (cluster-scoped objects' Events go to `default`).
pub const DEFAULT_EVENT_NAMESPACE: &str = "default";
pub const DEFAULT_RENEW_PERIOD: Duration = Duration::from_secs(10);
/// Four renewals: one or two lost writes do not expire a live agent's verdict.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(40);
/// Transitions kept for their Event while the API server does not answer (oldest dropped).
const MAX_PENDING_EVENTS: usize = 16;
/// Attempts per Event before it is given up (counted in the publish errors each time).
const EVENT_ATTEMPTS: u32 = 3;

/// Where and how the verdict is published.
#[derive(Debug, Clone)]
pub struct NodeVerdictConfig {
    /// The guard's namespace: where the node's Lease lives.
    pub lease_namespace: String,
    /// Where the Node's transition Events are written.
    pub event_namespace: String,
    /// This agent (its pod name): the Lease's holder and the Events' reporting instance.
    pub holder: String,
    pub renew_period: Duration,
    pub lease_duration: Duration,
    /// The policy file (`nodeProtection.thresholds`); `None` (or a missing file): defaults.
    pub policy_file: Option<PathBuf>,
}

impl NodeVerdictConfig {
    pub fn new(holder: impl Into<String>) -> Self {
        NodeVerdictConfig {
            lease_namespace: DEFAULT_LEASE_NAMESPACE.to_owned(),
            event_namespace: DEFAULT_EVENT_NAMESPACE.to_owned(),
            holder: holder.into(),
            renew_period: DEFAULT_RENEW_PERIOD,
            lease_duration: DEFAULT_LEASE_DURATION,
            policy_file: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.holder.is_empty() {
            return Err("node verdict: holder (the agent's pod name, POD_NAME) is empty".into());
        }
        if self.lease_namespace.is_empty() || self.event_namespace.is_empty() {
            return Err("node verdict: Lease and Event namespaces must not be empty".into());
        }
        if self.renew_period.is_zero() {
            return Err("node verdict: renew period must be > 0".into());
        }
        if self.lease_duration <= self.renew_period {
            return Err(format!(
                "node verdict: Lease duration {:?} must be longer than the renew period {:?} \
                 (or the verdict expires between renewals)",
                self.lease_duration, self.renew_period
            ));
        }
        Ok(())
    }
}

struct PendingEvent {
    transition: Transition,
    evidence: Evidence,
    attempts: u32,
}

struct Inner {
    tracker: Tracker,
    pending: VecDeque<PendingEvent>,
}

/// The node's verdict: fed by the monitor, read by the publisher.
pub struct VerdictState {
    node: String,
    inner: Mutex<Inner>,
    metrics: VerdictMetrics,
    /// Woken on a transition, so the Lease and the Event go out without waiting a renewal.
    changed: Notify,
}

impl VerdictState {
    pub fn new(node: &str, thresholds: Thresholds, metrics: VerdictMetrics) -> Self {
        VerdictState {
            node: node.to_owned(),
            inner: Mutex::new(Inner {
                tracker: Tracker::new(thresholds, SystemTime::now()),
                pending: VecDeque::new(),
            }),
            metrics,
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The tracker holds no invariant a panic elsewhere could break half-way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn metrics(&self) -> &VerdictMetrics {
        &self.metrics
    }

    /// The current verdict and its evidence.
    pub fn current(&self) -> (Verdict, Evidence) {
        let inner = self.lock();
        (inner.tracker.verdict(), inner.tracker.evidence().clone())
    }

    pub fn set_thresholds(&self, thresholds: Thresholds) {
        self.lock().tracker.set_thresholds(thresholds);
    }

    /// One monitor sample: judged at once, the metrics follow.
    pub fn on_sample(&self, sample: &Sample) {
        let judgement = {
            let mut inner = self.lock();
            let judgement = match &sample.process {
                Some(p) => inner.tracker.observe(Observation {
                    at: sample.timestamp,
                    process: ProcessKey {
                        pid: p.identity.pid,
                        start_time_ticks: p.identity.start_time_ticks,
                    },
                    connections: p.open_connections(),
                    rss_bytes: p.resident_memory_bytes,
                    threads: p.threads,
                    fds: p.open_fds,
                }),
                None => inner.tracker.observe_absent(sample.timestamp),
            };
            if let Some(transition) = judgement.transition {
                if inner.pending.len() >= MAX_PENDING_EVENTS {
                    inner.pending.pop_front();
                }
                inner.pending.push_back(PendingEvent {
                    transition,
                    evidence: judgement.evidence.clone(),
                    attempts: 0,
                });
            }
            judgement
        };
        let e = &judgement.evidence;
        self.metrics
            .set_slopes(e.connections_per_minute, e.rss_bytes_per_minute);
        self.metrics.set_verdict(judgement.verdict);
        if let Some(t) = judgement.transition {
            self.metrics.transition(t.from, t.to);
            let level = if t.to > t.from {
                "entered"
            } else {
                "stepped down to"
            };
            tracing::warn!(
                node = %self.node,
                from = %t.from,
                to = %t.to,
                evidence = %e.summary(),
                reason = %e.reason,
                "longhorn-manager verdict {level} {}",
                t.to
            );
            self.changed.notify_one();
        }
    }

    fn take_pending(&self) -> Vec<PendingEvent> {
        self.lock().pending.drain(..).collect()
    }

    /// Puts `events` back in front of any newer ones, oldest dropped past the bound.
    fn requeue(&self, events: Vec<PendingEvent>) {
        let mut inner = self.lock();
        for event in events.into_iter().rev() {
            inner.pending.push_front(event);
        }
        while inner.pending.len() > MAX_PENDING_EVENTS {
            inner.pending.pop_front();
        }
    }
}

/// Writes the node's Lease and transition Events until shutdown.
pub struct Publisher {
    config: NodeVerdictConfig,
    state: Arc<VerdictState>,
    policy: PolicyFile,
    leases: LeaseWriter,
    events: Api<Event>,
    /// The last failure's reason, to log a run of the same failure once.
    last_error: Option<&'static str>,
}

impl Publisher {
    pub fn new(
        config: NodeVerdictConfig,
        state: Arc<VerdictState>,
        policy: PolicyFile,
        client: kube::Client,
    ) -> Self {
        let leases = LeaseWriter::new(
            client.clone(),
            &config.lease_namespace,
            &state.node,
            &config.holder,
            config.lease_duration,
        );
        let events = Api::namespaced(client, &config.event_namespace);
        Publisher {
            config,
            state,
            policy,
            leases,
            events,
            last_error: None,
        }
    }

    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut renew = tokio::time::interval(self.config.renew_period);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            node = %self.state.node,
            lease = %self.leases.name(),
            namespace = %self.config.lease_namespace,
            holder = %self.config.holder,
            renew_period = ?self.config.renew_period,
            lease_duration = ?self.config.lease_duration,
            "publishing the node's longhorn-manager verdict"
        );
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = self.state.changed.notified() => {}
                _ = renew.tick() => {}
            }
            self.reload_policy();
            self.write_events().await;
            let (verdict, evidence) = self.state.current();
            match self.leases.publish(verdict, &evidence).await {
                Ok(()) => {
                    self.state.metrics.published(publish::unix_now());
                    if self.last_error.take().is_some() {
                        tracing::info!(node = %self.state.node, "verdict Lease written again");
                    }
                }
                Err(e) => self.failed("write the verdict Lease", &e),
            }
        }
        // The Lease is left as it is: it expires `lease_duration` after the last renewal.
        tracing::info!(node = %self.state.node, "verdict publisher stopped");
    }

    fn reload_policy(&mut self) {
        match self.policy.check() {
            PolicyCheck::Unchanged => {}
            PolicyCheck::Changed(t) => {
                tracing::info!(node = %self.state.node, thresholds = ?t, "node verdict thresholds loaded from the policy file");
                self.state.set_thresholds(t);
            }
            PolicyCheck::Bad(why) => {
                self.state.metrics.policy_error();
                tracing::warn!(node = %self.state.node, error = %why, "node verdict thresholds not changed: the policy file is bad; the last good thresholds stay");
            }
        }
    }

    async fn write_events(&mut self) {
        let mut pending = self.state.take_pending().into_iter();
        while let Some(mut next) = pending.next() {
            let event = publish::transition_event(
                &self.state.node,
                &self.config.event_namespace,
                &self.config.holder,
                &next.transition,
                &next.evidence,
            );
            if let Err(e) = publish::create_event(&self.events, &event).await {
                self.failed("write the Event of a verdict transition", &e);
                next.attempts += 1;
                // One failed write per round: the rest waits for the next one, in order.
                let rest = std::iter::once(next)
                    .filter(|p| p.attempts < EVENT_ATTEMPTS)
                    .chain(pending)
                    .collect();
                self.state.requeue(rest);
                return;
            }
        }
    }

    fn failed(&mut self, what: &str, e: &PublishError) {
        let reason = e.label();
        self.state.metrics.publish_error(reason);
        if self.last_error == Some(reason) {
            tracing::debug!(node = %self.state.node, reason, error = %e, "cannot {what} (again)");
        } else {
            tracing::warn!(
                node = %self.state.node,
                reason,
                error = %e,
                lease = %self.leases.name(),
                namespace = %self.config.lease_namespace,
                "cannot {what}; the agent keeps serving, retried at the next renewal"
            );
        }
        self.last_error = Some(reason);
    }
}
