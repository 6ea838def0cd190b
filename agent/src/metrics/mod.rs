//! The agent's Prometheus metrics (prefix `longhorn_guard_agent`): the exact lease / channel
//! bookkeeping and the result of the pool's leak sweep (`leaked_leases`, `leaked_channels`).
//!
//! Counters and gauges are mirrored from a [`PoolBook`] updated under one lock. `leases_active`
//! and `channels_active` are exact counts; whether a lease or channel is *leaked* is decided by
//! the sweep of the pool's live set ([`crate::LeasePool`]), which looks at each lease's deadline
//! and each channel's liveness, not at the counters.
//!
//! [`labels`] holds the label sets, [`collectors`] what is read at scrape time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod collectors;
mod labels;

use collectors::LeakCheckCollector;
pub(crate) use collectors::encode_const_counter;
pub use collectors::{
    AGENT_PREFIX, ProcessCollector, agent_registry, encode_registry, process_open_fds,
    process_resident_memory_bytes,
};
pub use labels::{
    CallLabels, CloseLabels, CloseReason, EndpointLabels, LATENCY_BUCKETS_SECONDS, LeaseOutcome,
    OutcomeLabels, code_label,
};

/// Exact counts, changed only under the lock together with the exported metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolBook {
    pub leases_acquired: u64,
    pub leases_released: u64,
    pub leases_released_by_outcome: [u64; 5],
    pub leases_active: u64,
    pub channels_created: u64,
    pub channels_closed: u64,
    pub channels_closed_by_reason: [u64; 4],
    pub channels_active: u64,
    pub lease_wait_overflow: u64,
    pub deadline_exceeded: u64,
    /// Channels opened in plaintext because mTLS failed although Longhorn's TLS files exist.
    pub tls_fallbacks: u64,
    /// Leak sweeps done so far.
    pub leak_sweeps: u64,
    /// Leases the last sweep found held past their deadline + grace.
    pub leaked_leases: u64,
    /// Time since the oldest of them was acquired (zero when there is none).
    pub leaked_lease_oldest_age: Duration,
    /// Distinct leases ever found leaked.
    pub leaked_leases_detected: u64,
    /// Channels the last sweep found alive past what the pool allows them.
    pub leaked_channels: u64,
    /// Time since the oldest of them was opened (zero when there is none).
    pub leaked_channel_oldest_age: Duration,
    /// Distinct channels ever found leaked.
    pub leaked_channels_detected: u64,
}

/// What one leak sweep of the pool found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeakSweep {
    pub leaked_leases: u64,
    pub oldest_leaked_lease: Duration,
    pub newly_leaked_leases: u64,
    pub leaked_channels: u64,
    pub oldest_leaked_channel: Duration,
    pub newly_leaked_channels: u64,
}

impl PoolBook {
    pub fn released(&self, outcome: LeaseOutcome) -> u64 {
        self.leases_released_by_outcome[outcome.index()]
    }

    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.channels_closed_by_reason[reason as usize]
    }
}

/// Metrics of the lease pool and the engine calls made through it.
#[derive(Debug)]
pub struct PoolMetrics {
    book: Mutex<PoolBook>,
    channels_active: Gauge,
    channels_created: Counter,
    channels_closed: Family<CloseLabels, Counter>,
    leases_active: Gauge,
    leases_acquired: Counter,
    leases_released: Family<OutcomeLabels, Counter>,
    lease_wait_overflow: Counter,
    deadline_exceeded: Counter,
    tls_fallbacks: Counter,
    breaker_state: Family<EndpointLabels, Gauge>,
    call_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    lease_wait: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

impl Default for PoolMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolMetrics {
    pub fn new() -> Self {
        let metrics = Self {
            book: Mutex::new(PoolBook::default()),
            channels_active: Gauge::default(),
            channels_created: Counter::default(),
            channels_closed: Family::default(),
            leases_active: Gauge::default(),
            leases_acquired: Counter::default(),
            leases_released: Family::default(),
            lease_wait_overflow: Counter::default(),
            deadline_exceeded: Counter::default(),
            tls_fallbacks: Counter::default(),
            breaker_state: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            lease_wait: latency_histogram(),
        };
        // Every label value exists from the first scrape: a zero is visible, not an absent series.
        for reason in CloseReason::ALL {
            let _ = metrics
                .channels_closed
                .get_or_create(&CloseLabels { reason });
        }
        for outcome in LeaseOutcome::ALL {
            let _ = metrics
                .leases_released
                .get_or_create(&OutcomeLabels { outcome });
        }
        metrics
    }

    fn book(&self) -> MutexGuard<'_, PoolBook> {
        // A poisoned lock only means a panic elsewhere; the counts are still consistent.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consistent copy of the bookkeeping.
    pub fn snapshot(&self) -> PoolBook {
        *self.book()
    }

    pub(crate) fn lease_acquired(&self) {
        let mut book = self.book();
        book.leases_acquired += 1;
        book.leases_active += 1;
        self.leases_acquired.inc();
        self.leases_active.inc();
    }

    pub(crate) fn lease_released(&self, outcome: LeaseOutcome) {
        let mut book = self.book();
        book.leases_released += 1;
        book.leases_released_by_outcome[outcome.index()] += 1;
        book.leases_active = book.leases_active.saturating_sub(1);
        if outcome == LeaseOutcome::Deadline {
            book.deadline_exceeded += 1;
            self.deadline_exceeded.inc();
        }
        self.leases_released
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.leases_active.dec();
    }

    pub(crate) fn lease_wait_overflowed(&self) {
        let mut book = self.book();
        book.lease_wait_overflow += 1;
        self.lease_wait_overflow.inc();
    }

    pub(crate) fn tls_fell_back(&self) {
        let mut book = self.book();
        book.tls_fallbacks += 1;
        self.tls_fallbacks.inc();
    }

    pub(crate) fn observe_lease_wait(&self, seconds: f64) {
        self.lease_wait.observe(seconds);
    }

    pub(crate) fn channel_created(&self) {
        let mut book = self.book();
        book.channels_created += 1;
        book.channels_active += 1;
        self.channels_created.inc();
        self.channels_active.inc();
    }

    pub(crate) fn channel_closed(&self, reason: CloseReason) {
        let mut book = self.book();
        book.channels_closed += 1;
        book.channels_closed_by_reason[reason as usize] += 1;
        book.channels_active = book.channels_active.saturating_sub(1);
        self.channels_closed
            .get_or_create(&CloseLabels { reason })
            .inc();
        self.channels_active.dec();
    }

    pub(crate) fn leak_swept(&self, sweep: &LeakSweep) {
        let mut book = self.book();
        book.leak_sweeps += 1;
        book.leaked_leases = sweep.leaked_leases;
        book.leaked_lease_oldest_age = sweep.oldest_leaked_lease;
        book.leaked_leases_detected += sweep.newly_leaked_leases;
        book.leaked_channels = sweep.leaked_channels;
        book.leaked_channel_oldest_age = sweep.oldest_leaked_channel;
        book.leaked_channels_detected += sweep.newly_leaked_channels;
    }

    pub(crate) fn set_breaker_state(&self, endpoint: &str, state: i64) {
        self.breaker_state
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .set(state);
    }

    pub(crate) fn forget_endpoint(&self, endpoint: &str) {
        self.breaker_state.remove(&EndpointLabels {
            endpoint: endpoint.to_string(),
        });
    }

    pub(crate) fn observe_call(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.call_duration
            .get_or_create(&CallLabels {
                method,
                code: code_label(code),
            })
            .observe(seconds);
    }

    /// Registers every metric in `registry` (which should carry the `longhorn_guard_agent` prefix).
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "channels_active",
            "HTTP/2 channels to engine proxies currently open",
            self.channels_active.clone(),
        );
        registry.register(
            "channels_created",
            "HTTP/2 channels to engine proxies opened",
            self.channels_created.clone(),
        );
        registry.register(
            "channels_closed",
            "HTTP/2 channels to engine proxies closed, by reason",
            self.channels_closed.clone(),
        );
        registry.register(
            "leases_active",
            "Engine calls holding a lease right now",
            self.leases_active.clone(),
        );
        registry.register(
            "leases_acquired",
            "Leases granted",
            self.leases_acquired.clone(),
        );
        registry.register(
            "leases_released",
            "Leases returned, by how the call ended",
            self.leases_released.clone(),
        );
        registry.register(
            "lease_wait_overflow",
            "Calls refused with RESOURCE_EXHAUSTED because no lease freed up within the queue timeout",
            self.lease_wait_overflow.clone(),
        );
        registry.register(
            "deadline_exceeded",
            "Engine calls cut off at their lease deadline",
            self.deadline_exceeded.clone(),
        );
        registry.register(
            "tls_fallbacks",
            "Engine-proxy channels opened in plaintext after mTLS failed although Longhorn's gRPC TLS files are present (as longhorn-manager falls back)",
            self.tls_fallbacks.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per engine-proxy endpoint: 0 closed, 1 half-open, 2 open",
            self.breaker_state.clone(),
        );
        registry.register_with_unit(
            "call_duration",
            "Engine-proxy call latency including the lease wait, by RPC and gRPC code",
            Unit::Seconds,
            self.call_duration.clone(),
        );
        registry.register_with_unit(
            "lease_wait",
            "Time spent waiting for a lease",
            Unit::Seconds,
            self.lease_wait.clone(),
        );
        registry.register_collector(Box::new(LeakCheckCollector {
            metrics: Arc::clone(self),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_balances_and_exposition_has_prefixed_names() {
        let metrics = Arc::new(PoolMetrics::new());
        metrics.lease_acquired();
        metrics.lease_acquired();
        metrics.lease_released(LeaseOutcome::Ok);
        assert_eq!(metrics.snapshot().leases_active, 1);
        metrics.lease_released(LeaseOutcome::Deadline);
        metrics.channel_created();
        metrics.channel_closed(CloseReason::Idle);
        let book = metrics.snapshot();
        assert_eq!(book.leases_active, 0);
        assert_eq!(book.channels_active, 0);
        assert_eq!(book.deadline_exceeded, 1);
        assert_eq!(book.released(LeaseOutcome::Deadline), 1);

        let registry = agent_registry(&metrics);
        let text = encode_registry(&registry).unwrap_or_default();
        for needle in [
            "longhorn_guard_agent_leases_acquired_total 2",
            "longhorn_guard_agent_leases_released_total{outcome=\"deadline\"} 1",
            "longhorn_guard_agent_channels_closed_total{reason=\"idle\"} 1",
            "longhorn_guard_agent_channels_closed_total{reason=\"shutdown\"} 0",
            "longhorn_guard_agent_leaked_leases 0",
            "longhorn_guard_agent_process_open_fds ",
            "longhorn_guard_agent_process_resident_memory_bytes ",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn a_sweep_sets_the_gauges_and_counts_each_leak_once() {
        let metrics = Arc::new(PoolMetrics::new());
        let found = LeakSweep {
            leaked_leases: 2,
            oldest_leaked_lease: Duration::from_millis(42_500),
            newly_leaked_leases: 2,
            leaked_channels: 1,
            oldest_leaked_channel: Duration::from_secs(1_900),
            newly_leaked_channels: 1,
        };
        metrics.leak_swept(&found);
        // The same leases found again: still leaked, not counted again.
        metrics.leak_swept(&LeakSweep {
            newly_leaked_leases: 0,
            newly_leaked_channels: 0,
            ..found
        });
        let book = metrics.snapshot();
        assert_eq!(
            (
                book.leak_sweeps,
                book.leaked_leases,
                book.leaked_leases_detected
            ),
            (2, 2, 2)
        );
        assert_eq!(
            (book.leaked_channels, book.leaked_channels_detected),
            (1, 1)
        );
        let text = encode_registry(&agent_registry(&metrics)).unwrap_or_default();
        for needle in [
            "# TYPE longhorn_guard_agent_leaked_leases gauge",
            "longhorn_guard_agent_leaked_leases 2\n",
            "longhorn_guard_agent_leaked_lease_oldest_age_seconds 42.5\n",
            "longhorn_guard_agent_leaked_channels 1\n",
            "longhorn_guard_agent_leaked_channel_oldest_age_seconds 1900.0\n",
            "longhorn_guard_agent_leaked_leases_detected_total 2\n",
            "longhorn_guard_agent_leaked_channels_detected_total 1\n",
            "longhorn_guard_agent_leak_sweeps_total 2\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // A clean sweep clears the gauges; the counters keep what was found.
        metrics.leak_swept(&LeakSweep::default());
        let book = metrics.snapshot();
        assert_eq!((book.leaked_leases, book.leaked_channels), (0, 0));
        assert_eq!(book.leaked_lease_oldest_age, Duration::ZERO);
        assert_eq!(book.leaked_leases_detected, 2);
    }
}
