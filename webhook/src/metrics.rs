//! Prometheus metrics (prefix `longhorn_guard_webhook`, base units, typed label sets, no
//! per-object labels). Index sizes and sync ages are refreshed from the index at scrape.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::decision::Reason;
use crate::index::{Index, IndexMetrics};

/// Buckets from 100 µs to 2.5 s: resolves in-memory decisions and live GETs alike.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT` or `unknown`.
    pub operation: &'static str,
    /// `allowed`, `warned`, `denied`, `patched` or `invalid`.
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `validate` or `mutate`.
    pub endpoint: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum LookupOutcome {
    Found,
    NotFound,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub outcome: LookupOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SectionLabels {
    /// `exemptions` or `throttle.exemptions`.
    pub section: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    /// `body_too_large`, `unreadable_body`, `invalid_review`, `invalid_object`.
    pub problem: &'static str,
}

/// The webhook's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_duration: Family<EndpointLabels, Histogram>,
    pub live_get_fallbacks: Family<LookupLabels, Counter>,
    /// The index's list and watch figures (`crate::index::metrics`).
    pub index: IndexMetrics,
    pub deadline_exceeded: Counter,
    pub malformed: Family<MalformedLabels, Counter>,
    pub in_flight: Gauge,
    /// Exemption entries of the policy in force that cover Longhorn's own service account
    /// (`Policy::longhorn_exemptions`), by policy section.
    pub policy_longhorn_exemptions: Family<SectionLabels, Gauge>,
    /// Throttling and Backup-index figures (`crate::throttle::metrics`).
    pub throttle: crate::throttle::ThrottleMetrics,
    /// Engine-truth checks through the agents (`crate::engine_truth::metrics`).
    pub engine_checks: crate::engine_truth::EngineCheckMetrics,
    /// The detected Longhorn (`crate::version`).
    pub longhorn: crate::version::VersionMetrics,
    /// Events about refused Backups (`crate::events`).
    pub events: crate::events::EventMetrics,
    /// The nodes' leak verdicts and the Backups they held back (`crate::node_verdicts`).
    pub node_verdicts: crate::node_verdicts::NodeVerdictMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("longhorn_guard_webhook");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by operation, decision and reason",
            reviews.clone(),
        );
        let review_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "review_duration_seconds",
            "Time from receiving an AdmissionReview to answering it",
            review_duration.clone(),
        );
        let live_get_fallbacks = Family::<LookupLabels, Counter>::default();
        registry.register(
            "live_get_fallbacks",
            "Live GETs of Snapshots the index did not have, by outcome",
            live_get_fallbacks.clone(),
        );
        let index = IndexMetrics::register(&mut registry);
        let deadline_exceeded = Counter::default();
        registry.register(
            "deadline_exceeded",
            "Reviews that hit the per-request deadline",
            deadline_exceeded.clone(),
        );
        let malformed = Family::<MalformedLabels, Counter>::default();
        registry.register(
            "malformed_reviews",
            "Request bodies that were not a usable AdmissionReview, by problem",
            malformed.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "reviews_in_flight",
            "Reviews being processed now",
            in_flight.clone(),
        );
        let policy_longhorn_exemptions = Family::<SectionLabels, Gauge>::default();
        registry.register(
            "policy_longhorn_exemptions",
            "Exemption entries of the policy in force that cover Longhorn's own service account (its recurring-job Backups then skip the guard), by policy section",
            policy_longhorn_exemptions.clone(),
        );
        let throttle = crate::throttle::ThrottleMetrics::register(&mut registry);
        let engine_checks = crate::engine_truth::EngineCheckMetrics::register(&mut registry);
        let longhorn = crate::version::VersionMetrics::register(&mut registry);
        let events = crate::events::EventMetrics::register(&mut registry);
        let node_verdicts = crate::node_verdicts::NodeVerdictMetrics::register(&mut registry);
        Self {
            node_verdicts,
            events,
            longhorn,
            throttle,
            engine_checks,
            registry,
            reviews,
            review_duration,
            live_get_fallbacks,
            index,
            deadline_exceeded,
            malformed,
            in_flight,
            policy_longhorn_exemptions,
        }
    }

    /// Warns about the exemptions of `policy` that cover Longhorn's own service account in
    /// `longhorn_namespace` (`None`: any): one log line each, and the
    /// `policy_longhorn_exemptions` gauge per section (0 when none). Run for every policy put
    /// in force (start and hot reload).
    pub fn policy_in_force(
        &self,
        policy: &crate::policy::Policy,
        longhorn_namespace: Option<&str>,
    ) {
        use crate::policy::ExemptedSection;
        let found = policy.longhorn_exemptions(longhorn_namespace);
        for exemption in &found {
            tracing::warn!(
                section = exemption.section.as_str(),
                entry = %exemption.entry,
                "{exemption}"
            );
        }
        for section in [
            ExemptedSection::Checks,
            ExemptedSection::Throttle,
            ExemptedSection::NodeProtection,
        ] {
            let n = found.iter().filter(|e| e.section == section).count();
            self.policy_longhorn_exemptions
                .get_or_create(&SectionLabels {
                    section: section.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn review(&self, operation: &'static str, decision: &'static str, reason: Reason) {
        self.reviews
            .get_or_create(&ReviewLabels {
                operation,
                decision,
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn live_get(&self, outcome: LookupOutcome) {
        self.live_get_fallbacks
            .get_or_create(&LookupLabels { outcome })
            .inc();
    }

    pub fn malformed(&self, problem: &'static str) {
        self.malformed
            .get_or_create(&MalformedLabels { problem })
            .inc();
    }

    /// Total reviews counted so far (all labels); for tests.
    pub fn reviews_total(&self) -> u64 {
        // prometheus-client has no iteration over a family; encode and sum instead.
        let text = self.encode_text();
        sum_samples(&text, "longhorn_guard_webhook_reviews_total")
    }

    /// Refreshes scrape-time values from the index and encodes OpenMetrics text.
    pub fn encode(&self, index: &Index) -> String {
        self.index.refresh(index);
        self.encode_text()
    }

    fn encode_text(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }

    /// Starts timing a review; the duration is observed when the guard drops.
    pub fn time_review(self: &Arc<Self>, endpoint: &'static str) -> ReviewTimer {
        self.in_flight.inc();
        ReviewTimer {
            metrics: Arc::clone(self),
            endpoint,
            start: Instant::now(),
        }
    }
}

/// Sums every sample of `name` (with any labels) in OpenMetrics text.
pub fn sum_samples(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Observes a review's duration on drop, so no early return skips it.
pub struct ReviewTimer {
    metrics: Arc<Metrics>,
    endpoint: &'static str,
    start: Instant,
}

impl Drop for ReviewTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .review_duration
            .get_or_create(&EndpointLabels {
                endpoint: self.endpoint,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}
