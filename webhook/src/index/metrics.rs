//! The index's own metrics: objects per kind, watch restarts and errors, list durations, sync
//! ages, trust. The watch tasks count into an [`IndexMetrics`] handle (cheap to clone: the
//! families are shared); the crate's `Metrics` registers it and refreshes the scrape-time
//! figures with [`IndexMetrics::refresh`].

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Index, Kind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

impl KindLabels {
    fn of(kind: Kind) -> Self {
        Self {
            kind: kind.as_str(),
        }
    }
}

/// Handle on the index's metric families.
#[derive(Clone, Debug, Default)]
pub struct IndexMetrics {
    pub index_objects: Family<KindLabels, Gauge>,
    pub watch_restarts: Family<KindLabels, Counter>,
    pub watch_errors: Family<KindLabels, Counter>,
    pub last_sync_age: Family<KindLabels, Gauge<f64, AtomicU64>>,
    pub list_duration: Family<KindLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the kind is listed and its watch has not failed past the staleness bound.
    pub index_trusted: Family<KindLabels, Gauge>,
    /// Times the kind's watch failed for longer than the staleness bound (each forces a relist).
    pub index_stale: Family<KindLabels, Counter>,
}

impl IndexMetrics {
    /// New families registered in `registry` (names as the webhook has always exported them).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "index_objects",
            "Objects in the index, by kind",
            m.index_objects.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch restarts (relists after the initial one), by kind",
            m.watch_restarts.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors (retried with backoff), by kind",
            m.watch_errors.clone(),
        );
        registry.register(
            "last_sync_age_seconds",
            "Seconds since the kind's watch last delivered an event (-1 before the first)",
            m.last_sync_age.clone(),
        );
        registry.register(
            "list_duration_seconds",
            "How long the kind's last completed (re)list took, from its request to its last \
             item indexed (what a replica's start-up waits for)",
            m.list_duration.clone(),
        );
        registry.register(
            "index_trusted",
            "1 when the kind is listed and its watch has not been failing for longer than the \
             staleness bound (what /readyz requires of every kind), else 0",
            m.index_trusted.clone(),
        );
        registry.register(
            "index_stale",
            "Times the kind's watch failed for longer than the staleness bound (each forces a relist)",
            m.index_stale.clone(),
        );
        m
    }

    pub fn watch_restarted(&self, kind: Kind) {
        self.watch_restarts
            .get_or_create(&KindLabels::of(kind))
            .inc();
    }

    pub fn watch_failed(&self, kind: Kind) {
        self.watch_errors.get_or_create(&KindLabels::of(kind)).inc();
    }

    pub fn list_done(&self, kind: Kind, took: std::time::Duration) {
        self.list_duration
            .get_or_create(&KindLabels::of(kind))
            .set(took.as_secs_f64());
    }

    pub fn index_went_stale(&self, kind: Kind) {
        self.index_stale.get_or_create(&KindLabels::of(kind)).inc();
    }

    /// Sets the scrape-time figures (objects, sync ages, trust) from `index`.
    pub fn refresh(&self, index: &Index) {
        for (kind, n) in index.counts() {
            let labels = KindLabels::of(kind);
            self.index_objects.get_or_create(&labels).set(n as i64);
            self.last_sync_age
                .get_or_create(&labels)
                .set(index.last_event_age_seconds(kind).unwrap_or(-1.0));
            self.index_trusted
                .get_or_create(&labels)
                .set(i64::from(index.trust(kind).is_trusted()));
        }
    }
}
