//! Engine-check metrics, registered into the webhook's registry (prefix
//! `longhorn_guard_webhook`): checks by outcome, their duration, and the agent channels held.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::outcome::Outcome;

/// 1 ms to 2.5 s: a check over a warm channel takes about a millisecond; the budget is
/// 250 ms by default.
pub const CHECK_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `present`, `absent`, `removed`, `error`, `timeout`, `breaker_open`, `no_agent`,
    /// `overflow`.
    pub outcome: &'static str,
}

/// The engine check's metric families.
#[derive(Clone, Debug)]
pub struct EngineCheckMetrics {
    pub checks: Family<OutcomeLabels, Counter>,
    pub duration: Family<OutcomeLabels, Histogram>,
    pub channels: Gauge,
    pub channels_opened: Counter,
}

fn histogram() -> Histogram {
    Histogram::new(CHECK_BUCKETS)
}

impl Default for EngineCheckMetrics {
    fn default() -> Self {
        Self {
            checks: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            channels: Gauge::default(),
            channels_opened: Counter::default(),
        }
    }
}

impl EngineCheckMetrics {
    /// Registers every family into `registry` (which carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "engine_checks",
            "Engine-truth checks of a Backup's snapshot through the node's agent, by outcome",
            m.checks.clone(),
        );
        registry.register(
            "engine_check_duration_seconds",
            "Time an engine-truth check took, by outcome (bounded by the check budget)",
            m.duration.clone(),
        );
        registry.register(
            "engine_check_agent_channels",
            "gRPC channels to agents held now (one per agent address)",
            m.channels.clone(),
        );
        registry.register(
            "engine_check_agent_channels_opened",
            "gRPC channels to agents opened (a transport error or timeout evicts one)",
            m.channels_opened.clone(),
        );
        m
    }

    pub fn observe(&self, outcome: Outcome, seconds: f64) {
        let labels = OutcomeLabels {
            outcome: outcome.as_str(),
        };
        self.checks.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }
}
