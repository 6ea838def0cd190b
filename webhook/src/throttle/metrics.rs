//! Throttling metrics (registered into the webhook's registry, prefix
//! `longhorn_guard_webhook`): throttled reviews by scope, in-flight Backups for the cluster
//! and per node (no per-volume or per-Backup label), cluster bucket tokens per namespace, the policy
//! generation and reload errors, and the Backup index figures for alerting, computed at
//! scrape time, among them Backups that cannot finish by volume (only volumes that have
//! some, so usually no series at all).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Scope;
use super::inflight::BackupFigures;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InFlightLabels {
    /// `cluster` or `node`.
    pub scope: &'static str,
    /// Set for `scope="node"` only; bounded by the nodes of the cluster.
    pub node: Option<String>,
}

/// A volume with Backups that cannot finish (bounded by such volumes, usually none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    /// The Longhorn namespace (not `namespace`, which Prometheus gives the scraped pod).
    pub longhorn_namespace: String,
    pub volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    pub bucket: &'static str,
    /// The namespace the bucket limits (one Longhorn install); bounded by the namespaces
    /// holding Backups.
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// The throttle's metric families.
#[derive(Clone, Debug, Default)]
pub struct ThrottleMetrics {
    pub throttled: Family<ScopeLabels, Counter>,
    /// Would-be denials allowed with a warning (warn-only, recurring-job rule).
    pub warned: Family<ScopeLabels, Counter>,
    pub in_flight: Family<InFlightLabels, Gauge>,
    pub rate_tokens: Family<BucketLabels, Gauge<f64, AtomicU64>>,
    pub reservations: Gauge,
    pub policy_generation: Gauge,
    pub policy_reload_errors: Counter,
    pub backups: Family<StateLabels, Gauge>,
    pub oldest_non_terminal_age: Gauge<f64, AtomicU64>,
    pub doomed_backups: Family<VolumeLabels, Gauge>,
    pub doomed_volume_last_backup_age: Family<VolumeLabels, Gauge<f64, AtomicU64>>,
}

impl ThrottleMetrics {
    /// Registers every family into `registry` (which carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "throttled_reviews",
            "Backup CREATEs denied by the throttle (code 429), by scope",
            m.throttled.clone(),
        );
        registry.register(
            "throttle_warned_reviews",
            "Backup CREATEs the throttle would have denied but allowed with a warning (warn-only, recurring-job rule), by scope",
            m.warned.clone(),
        );
        registry.register(
            "inflight_backups",
            "Non-terminal Backups with a snapshot name, for the cluster and per node of the volume's engine",
            m.in_flight.clone(),
        );
        registry.register(
            "rate_tokens",
            "Tokens left in this replica's creation-rate bucket, per namespace",
            m.rate_tokens.clone(),
        );
        registry.register(
            "throttle_reservations",
            "Backups this replica admitted that its watch has not delivered yet",
            m.reservations.clone(),
        );
        registry.register(
            "policy_generation",
            "Generation of the policy in force (1 = loaded at start, +1 per reload)",
            m.policy_generation.clone(),
        );
        registry.register(
            "policy_reload_errors",
            "Policy file contents rejected by hot reload (the last good policy stays)",
            m.policy_reload_errors.clone(),
        );
        registry.register(
            "backups",
            "Backups in the index, by status.state",
            m.backups.clone(),
        );
        registry.register(
            "backups_oldest_non_terminal_age_seconds",
            "Age of the oldest non-terminal Backup in the index (0 when none)",
            m.oldest_non_terminal_age.clone(),
        );
        registry.register(
            "doomed_backups",
            "Backups that cannot finish (New or Pending, their snapshot gone, marked removed or lost in the engine), by volume; they hold the volume's throttle slot only until stuckAfterSeconds old",
            m.doomed_backups.clone(),
        );
        registry.register(
            "doomed_volume_last_backup_age_seconds",
            "For each volume with Backups that cannot finish: seconds since its last completed Backup (Volume status.lastBackupAt), else the age of its oldest Backup that cannot finish",
            m.doomed_volume_last_backup_age.clone(),
        );
        for s in Scope::ALL {
            let _ = m
                .throttled
                .get_or_create(&ScopeLabels { scope: s.as_str() });
        }
        m
    }

    pub fn throttled(&self, scope: Scope) -> u64 {
        self.throttled
            .get_or_create(&ScopeLabels {
                scope: scope.as_str(),
            })
            .inc()
    }

    pub fn warned(&self, scope: Scope) -> u64 {
        self.warned
            .get_or_create(&ScopeLabels {
                scope: scope.as_str(),
            })
            .inc()
    }

    /// Refreshes the scrape-time gauges.
    pub fn refresh(
        &self,
        figures: &BackupFigures,
        cluster_tokens: &[(std::sync::Arc<str>, f64)],
        reservations: usize,
    ) {
        self.in_flight.clear();
        self.in_flight
            .get_or_create(&InFlightLabels {
                scope: "cluster",
                node: None,
            })
            .set(i64::try_from(figures.in_flight).unwrap_or(i64::MAX));
        for (node, n) in &figures.in_flight_by_node {
            self.in_flight
                .get_or_create(&InFlightLabels {
                    scope: "node",
                    node: Some(if node.is_empty() {
                        "unknown".to_string()
                    } else {
                        node.clone()
                    }),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.rate_tokens.clear();
        for (namespace, t) in cluster_tokens {
            self.rate_tokens
                .get_or_create(&BucketLabels {
                    bucket: "cluster",
                    namespace: namespace.to_string(),
                })
                .set(*t);
        }
        self.reservations
            .set(i64::try_from(reservations).unwrap_or(i64::MAX));
        for (state, n) in &figures.by_state {
            self.backups
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.oldest_non_terminal_age
            .set(figures.oldest_non_terminal_age_seconds);
        self.doomed_backups.clear();
        self.doomed_volume_last_backup_age.clear();
        for ((ns, volume), d) in &figures.doomed_by_volume {
            let labels = VolumeLabels {
                longhorn_namespace: ns.clone(),
                volume: volume.clone(),
            };
            self.doomed_backups
                .get_or_create(&labels)
                .set(i64::try_from(d.backups).unwrap_or(i64::MAX));
            self.doomed_volume_last_backup_age
                .get_or_create(&labels)
                .set(d.last_backup_age_seconds);
        }
    }
}
