//! A granted call slot: permits, channel and breaker verdict, booked when it drops.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::{EndpointState, PoolInner, lock};
use crate::breaker::Admission;
use crate::metrics::{CloseReason, LeaseOutcome};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Success,
    Failure,
    /// The call failed because pooled channel `id` broke.
    ConnectionFailure(u64),
    None,
}

/// A granted call slot. Dropping it, on any path, returns the permits, releases the channel and
/// books the outcome: `cancelled` when dropped without one, `panic` when dropped while unwinding.
pub(super) struct Lease {
    /// Key in the pool's registry of live leases.
    pub(super) id: u64,
    pub(super) pool: Arc<PoolInner>,
    pub(super) endpoint: Arc<EndpointState>,
    pub(super) channel_id: Option<u64>,
    pub(super) admission: Admission,
    pub(super) verdict_recorded: bool,
    pub(super) outcome: Option<LeaseOutcome>,
    pub(super) _endpoint_permit: OwnedSemaphorePermit,
    pub(super) _global_permit: OwnedSemaphorePermit,
}

impl Lease {
    pub(super) fn finish(&mut self, outcome: LeaseOutcome, verdict: Verdict) {
        self.outcome = Some(outcome);
        if verdict == Verdict::None {
            return;
        }
        let mut breaker = lock(&self.endpoint.breaker);
        match verdict {
            Verdict::Success => breaker.on_success(),
            Verdict::Failure => breaker.on_failure(Instant::now()),
            Verdict::ConnectionFailure(id) => breaker.on_connection_failure(Instant::now(), id),
            Verdict::None => {}
        }
        self.verdict_recorded = true;
        self.pool
            .metrics
            .set_breaker_state(&self.endpoint.endpoint, breaker.state().metric_value());
    }

    pub(super) fn evict_channel(&mut self, reason: CloseReason) {
        if let Some(id) = self.channel_id.take() {
            self.pool.remove_channel(&self.endpoint, id, reason);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(if std::thread::panicking() {
            LeaseOutcome::Panic
        } else {
            LeaseOutcome::Cancelled
        });
        if let Some(id) = self.channel_id.take() {
            let now = Instant::now();
            if let Some(c) = lock(&self.endpoint.channels)
                .iter_mut()
                .find(|c| c.id == id)
            {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.last_used = now;
            }
        }
        if self.admission == Admission::Probe && !self.verdict_recorded {
            let mut breaker = lock(&self.endpoint.breaker);
            breaker.on_probe_abandoned();
            self.pool
                .metrics
                .set_breaker_state(&self.endpoint.endpoint, breaker.state().metric_value());
        }
        lock(&self.pool.live_leases).remove(&self.id);
        self.pool.metrics.lease_released(outcome);
    }
}
