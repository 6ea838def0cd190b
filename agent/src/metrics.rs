//! The agent's Prometheus metrics (prefix `longhorn_guard_agent`): the exact lease / channel
//! bookkeeping and the result of the pool's leak sweep (`leaked_leases`, `leaked_channels`).
//!
//! Counters and gauges are mirrored from a [`PoolBook`] updated under one lock. `leases_active`
//! and `channels_active` are exact counts; whether a lease or channel is *leaked* is decided by
//! the sweep of the pool's live set ([`crate::LeasePool`]), which looks at each lease's deadline
//! and each channel's liveness, not at the counters.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets in seconds, resolving sub-millisecond calls (loopback) up to the 30 s cap.
pub const LATENCY_BUCKETS_SECONDS: [f64; 18] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Why a pooled channel was closed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseReason {
    Idle,
    MaxAge,
    TransportError,
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::Idle,
        CloseReason::MaxAge,
        CloseReason::TransportError,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::MaxAge => "max_age",
            CloseReason::TransportError => "transport_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LeaseOutcome {
    Ok,
    Error,
    Deadline,
    Cancelled,
    Panic,
}

impl LeaseOutcome {
    pub const ALL: [LeaseOutcome; 5] = [
        LeaseOutcome::Ok,
        LeaseOutcome::Error,
        LeaseOutcome::Deadline,
        LeaseOutcome::Cancelled,
        LeaseOutcome::Panic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseOutcome::Ok => "ok",
            LeaseOutcome::Error => "error",
            LeaseOutcome::Deadline => "deadline",
            LeaseOutcome::Cancelled => "cancelled",
            LeaseOutcome::Panic => "panic",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

macro_rules! label_value_as_str {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}
label_value_as_str!(CloseReason);
label_value_as_str!(LeaseOutcome);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub reason: CloseReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: LeaseOutcome,
}

/// `endpoint` is an instance manager's `ip:port`: bounded by the number of nodes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// `method` is an engine-proxy RPC name, `code` a gRPC status code name: both closed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub code: &'static str,
}

/// Snake-case name of a gRPC code, for labels.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

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

/// The last leak sweep's result (see [`crate::LeasePool`]), read from the book at scrape time.
#[derive(Debug)]
struct LeakCheckCollector {
    metrics: Arc<PoolMetrics>,
}

impl Collector for LeakCheckCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let book = self.metrics.snapshot();
        encode_const_gauge(
            &mut encoder,
            "leaked_leases",
            "Engine-proxy leases the last sweep found still held past their deadline + leak grace (a call future neither polled nor dropped); must be 0",
            None,
            book.leaked_leases as i64,
        )?;
        encode_const_gauge(
            &mut encoder,
            "leaked_lease_oldest_age",
            "Time since the oldest leaked lease was acquired; 0 when none is leaked",
            Some(&Unit::Seconds),
            book.leaked_lease_oldest_age.as_secs_f64(),
        )?;
        encode_const_gauge(
            &mut encoder,
            "leaked_channels",
            "Engine-proxy channels the last sweep found still open max-lease + leak grace after the pool closed them, or older than max-age + max-lease + leak grace; must be 0",
            None,
            book.leaked_channels as i64,
        )?;
        encode_const_gauge(
            &mut encoder,
            "leaked_channel_oldest_age",
            "Time since the oldest leaked channel was opened; 0 when none is leaked",
            Some(&Unit::Seconds),
            book.leaked_channel_oldest_age.as_secs_f64(),
        )?;
        for (name, help, value) in [
            (
                "leaked_leases_detected",
                "Distinct leases ever found leaked by the sweep",
                book.leaked_leases_detected,
            ),
            (
                "leaked_channels_detected",
                "Distinct channels ever found leaked by the sweep",
                book.leaked_channels_detected,
            ),
            (
                "leak_sweeps",
                "Sweeps of the live leases and channels for leaks",
                book.leak_sweeps,
            ),
        ] {
            encode_const_counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

/// Open file descriptors and resident memory of this process, read from /proc at scrape time.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(fds) = process_open_fds() {
            encode_const_gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors of the agent process (/proc/self/fd)",
                None,
                fds as i64,
            )?;
        }
        if let Some(rss) = process_resident_memory_bytes() {
            encode_const_gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident set size of the agent process (VmRSS in /proc/self/status)",
                Some(&Unit::Bytes),
                rss as i64,
            )?;
        }
        Ok(())
    }
}

/// One counter family `name` (`_total` is appended) with one sample, for collectors.
pub(crate) fn encode_const_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

fn encode_const_gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric_encoder)
}

/// Number of entries in /proc/self/fd (None off Linux).
pub fn process_open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count())
}

/// VmRSS of /proc/self/status in bytes (None off Linux).
pub fn process_resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Prefix of every metric the agent itself exports.
pub const AGENT_PREFIX: &str = "longhorn_guard_agent";

/// Builds the agent's root registry: unprefixed, with the agent's own metrics in a
/// `longhorn_guard_agent` sub-registry, so that embedded components (the longhorn-manager
/// monitor registers `longhorn_guard_manager_*`) can register their own prefix beside it.
pub fn agent_registry(pool: &Arc<PoolMetrics>) -> Registry {
    let mut root = Registry::default();
    let agent = root.sub_registry_with_prefix(AGENT_PREFIX);
    pool.register(agent);
    agent.register_collector(Box::new(ProcessCollector));
    root
}

/// OpenMetrics text of `registry`.
pub fn encode_registry(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
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
