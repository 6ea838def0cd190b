//! One engine check, step by step: find the node's agent, take a permit, pass the breaker,
//! fit the budget, ask the engine for the snapshot (`GetSnapshot`), and on "not found" list
//! its snapshots to tell a definite absence from an unreadable chain.

use std::time::{Duration, Instant};

use longhorn_guard_proto::agent::{GetSnapshotRequest, ListSnapshotsRequest};

use super::breaker::{Admit, Breakers};
use super::channels::{self, CallError};
use super::{BackupEngine, EngineTruth, Finding, MIN_BUDGET, Outcome, check_budget};
use crate::decision::BackupRequest;

/// One engine check's call: the agent, its channel, the budget and the deadline.
struct Call<'a> {
    agent: &'a str,
    channel: tonic::transport::Channel,
    budget: Duration,
    grace: Duration,
    deadline: Instant,
}

/// `f` with `outcome` and why the check did not give a definite answer.
fn skipped(mut f: Finding, outcome: Outcome, detail: String) -> Finding {
    f.outcome = outcome;
    f.detail = detail;
    f
}

struct ProbeGuard<'a> {
    breakers: &'a Breakers,
    agent: &'a str,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breakers.release_probe(self.agent);
        }
    }
}

/// The finding when the index names no engine for the Backup (`why`).
fn no_engine(req: &BackupRequest, why: String) -> Finding {
    Finding {
        outcome: Outcome::NoAgent,
        volume: req.volume_label().unwrap_or_default().to_string(),
        engine: None,
        node: None,
        detail: why,
        cr_ready: None,
    }
}

impl Finding {
    /// A finding about `target` before any answer (outcome `NoAgent` until one).
    fn of(target: &BackupEngine) -> Self {
        Finding {
            outcome: Outcome::NoAgent,
            volume: target.volume.clone(),
            engine: Some(target.engine.clone()),
            node: Some(target.node.clone()),
            detail: String::new(),
            cr_ready: target.cr_ready,
        }
    }
}

impl EngineTruth {
    pub(super) async fn check_inner(
        &self,
        req: &BackupRequest,
        target: Result<BackupEngine, String>,
        policy_budget: Duration,
        deadline: Instant,
    ) -> Finding {
        let target = match target {
            Ok(t) => t,
            Err(why) => return no_engine(req, why),
        };
        let finding = Finding::of(&target);
        let Some(agent) = self.directory.agent_for(&target.node) else {
            let detail = format!(
                "no agent known for node {:?} (engine {:?}; discovery: {})",
                target.node,
                target.engine,
                self.directory.describe()
            );
            return skipped(finding, Outcome::NoAgent, detail);
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            let detail = format!(
                "too many engine checks in flight (agent {agent}, node {:?})",
                target.node
            );
            return skipped(finding, Outcome::Overflow, detail);
        };
        let now = Instant::now();
        let admit = self.breakers.admit(&agent, now);
        if admit == Admit::Skip {
            let detail = format!(
                "the circuit breaker of agent {agent} (node {:?}) is open after repeated failures",
                target.node
            );
            return skipped(finding, Outcome::BreakerOpen, detail);
        }
        let mut probe = ProbeGuard {
            breakers: &self.breakers,
            agent: &agent,
            armed: admit == Admit::Probe,
        };
        let budget = check_budget(policy_budget, now, deadline);
        if budget < MIN_BUDGET {
            let detail = format!(
                "only {} ms left of the review's deadline (agent {agent}, node {:?})",
                budget.as_millis(),
                target.node
            );
            return skipped(finding, Outcome::Timeout, detail);
        }
        let grace = (deadline
            .saturating_duration_since(now)
            .saturating_sub(budget)
            / 2)
        .min(Duration::from_millis(15));
        let call_deadline = now + budget;

        let channel = match self.channels.channel(&agent, now) {
            Ok(c) => c,
            Err(why) => {
                return skipped(finding, Outcome::Error, why);
            }
        };
        let call = Call {
            agent: &agent,
            channel,
            budget,
            grace,
            deadline: call_deadline,
        };
        self.ask(req, &target.volume, finding, call, &mut probe)
            .await
    }

    /// Asks the engine for the snapshot; a "not found" goes on to [`Self::confirm_absent`].
    async fn ask(
        &self,
        req: &BackupRequest,
        volume: &str,
        mut finding: Finding,
        call: Call<'_>,
        probe: &mut ProbeGuard<'_>,
    ) -> Finding {
        let request = GetSnapshotRequest {
            namespace: req.namespace.clone(),
            volume: volume.to_string(),
            snapshot: req.snapshot.clone(),
        };
        let answer =
            channels::get_snapshot(call.channel.clone(), request, call.budget, call.grace).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                probe.armed = false;
                return self.failed(finding, call.agent, e, call.budget);
            }
        };
        if let Some(engine) = answer.engine.as_ref() {
            if !engine.engine_name.is_empty() {
                finding.engine = Some(engine.engine_name.clone());
            }
            if !engine.node.is_empty() {
                finding.node = Some(engine.node.clone());
            }
        }
        if answer.found {
            probe.armed = false;
            self.breakers.success(call.agent);
            let removed = answer.snapshot.as_ref().is_some_and(|s| s.removed);
            finding.outcome = if removed {
                Outcome::Removed
            } else {
                Outcome::Present
            };
            return finding;
        }
        self.confirm_absent(req, volume, finding, call, probe).await
    }

    /// "Not found" is only definite when the engine's chain is otherwise readable: with no
    /// RW replica the proxy lists nothing at all. Lists the snapshots to tell.
    async fn confirm_absent(
        &self,
        req: &BackupRequest,
        volume: &str,
        mut finding: Finding,
        call: Call<'_>,
        probe: &mut ProbeGuard<'_>,
    ) -> Finding {
        let agent = call.agent;
        let left = call.deadline.saturating_duration_since(Instant::now());
        if left < MIN_BUDGET {
            probe.armed = false;
            self.breakers.success(agent);
            let detail = format!(
                "engine {:?} on node {:?} does not list snapshot {:?}, and no time was left to confirm its chain is readable",
                finding.engine.as_deref().unwrap_or_default(),
                finding.node.as_deref().unwrap_or_default(),
                req.snapshot
            );
            return skipped(finding, Outcome::Timeout, detail);
        }
        let list = channels::list_snapshots(
            call.channel,
            ListSnapshotsRequest {
                namespace: req.namespace.clone(),
                volume: volume.to_string(),
            },
            left,
            call.grace,
        )
        .await;
        probe.armed = false;
        match list {
            Err(e) => self.failed(finding, agent, e, left),
            Ok(list) if list.snapshots.iter().any(|s| s.name == req.snapshot) => {
                // Appeared between the two calls: the engine has it now.
                self.breakers.success(agent);
                finding.outcome = Outcome::Present;
                finding
            }
            Ok(list) if list.snapshots.is_empty() => {
                self.breakers.success(agent);
                let detail = format!(
                    "engine {:?} on node {:?} lists no snapshot at all (no RW replica?), so its \"not found\" for {:?} is not definite",
                    finding.engine.as_deref().unwrap_or_default(),
                    finding.node.as_deref().unwrap_or_default(),
                    req.snapshot
                );
                skipped(finding, Outcome::Error, detail)
            }
            Ok(_) => {
                self.breakers.success(agent);
                finding.outcome = Outcome::Absent;
                finding
            }
        }
    }

    /// Books a failed call (breaker, channel) and turns it into a finding.
    fn failed(&self, finding: Finding, agent: &str, error: CallError, budget: Duration) -> Finding {
        if error.evicts() {
            self.channels.evict(agent);
        }
        if error.is_failure() {
            if self.breakers.failure(agent, Instant::now()) {
                tracing::warn!(%agent, "agent circuit breaker opened");
            }
        } else {
            self.breakers.success(agent);
        }
        let outcome = match &error {
            CallError::Timeout { .. } => Outcome::Timeout,
            CallError::Agent(s) if s.code() == tonic::Code::DeadlineExceeded => Outcome::Timeout,
            _ => Outcome::Error,
        };
        let detail = format!(
            "agent {agent} for engine {:?} on node {:?}: {error}{}",
            finding.engine.as_deref().unwrap_or_default(),
            finding.node.as_deref().unwrap_or_default(),
            if outcome == Outcome::Timeout {
                format!(" (budget {} ms)", budget.as_millis())
            } else {
                String::new()
            }
        );
        Finding {
            outcome,
            detail,
            ..finding
        }
    }
}
