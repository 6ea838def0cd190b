//! The verdict's metrics (agent registry, prefix `longhorn_guard_agent_node_verdict`).

use std::sync::atomic::AtomicU64;

use ::node_verdict::Verdict;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub node: String,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub node: String,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub node: String,
    /// [`PublishError::label`](super::publish::PublishError::label).
    pub reason: &'static str,
}

/// Handles to the families; cloning shares the series.
#[derive(Clone, Debug, Default)]
pub struct VerdictMetrics {
    node: String,
    pub verdict: Family<VerdictLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub publish_errors: Family<ErrorLabels, Counter>,
    pub connections_per_minute: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    pub rss_bytes_per_minute: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    pub policy_errors: Family<NodeLabels, Counter>,
    pub last_publish_timestamp_seconds: Family<NodeLabels, Gauge<f64, AtomicU64>>,
}

impl VerdictMetrics {
    /// Registers the families under `registry` (the agent's `longhorn_guard_agent` sub-registry)
    /// with every series of `node` present from the start.
    pub fn register(registry: &mut Registry, node: &str) -> Self {
        let m = VerdictMetrics {
            node: node.to_owned(),
            ..VerdictMetrics::default()
        };
        registry.register(
            "node_verdict",
            "1 for the node's current longhorn-manager verdict (healthy, degrading, leaking), 0 for the others",
            m.verdict.clone(),
        );
        registry.register(
            "node_verdict_transitions",
            "Changes of the node's verdict, by from and to",
            m.transitions.clone(),
        );
        registry.register(
            "node_verdict_publish_errors",
            "Failed writes of the node's verdict Lease or transition Events, by reason",
            m.publish_errors.clone(),
        );
        registry.register(
            "node_verdict_connections_per_minute",
            "Growth of longhorn-manager's connection floor to instance managers over the verdict window (least squares)",
            m.connections_per_minute.clone(),
        );
        registry.register(
            "node_verdict_rss_bytes_per_minute",
            "Growth of longhorn-manager's RSS floor over the verdict window (least squares)",
            m.rss_bytes_per_minute.clone(),
        );
        registry.register(
            "node_verdict_policy_errors",
            "Policy file reads that failed or whose nodeProtection.thresholds were invalid (the last good thresholds stay in force)",
            m.policy_errors.clone(),
        );
        registry.register(
            "node_verdict_last_publish_timestamp_seconds",
            "Unix time of the last successful write of the node's verdict Lease",
            m.last_publish_timestamp_seconds.clone(),
        );
        m.set_verdict(Verdict::Healthy);
        for from in Verdict::ALL {
            for to in Verdict::ALL.into_iter().filter(|to| *to != from) {
                m.transitions
                    .get_or_create(&TransitionLabels {
                        node: m.node.clone(),
                        from: from.as_str(),
                        to: to.as_str(),
                    })
                    .inc_by(0);
            }
        }
        for reason in super::publish::PublishError::LABELS {
            m.publish_errors
                .get_or_create(&ErrorLabels {
                    node: m.node.clone(),
                    reason,
                })
                .inc_by(0);
        }
        m.policy_errors.get_or_create(&m.node_labels()).inc_by(0);
        m.set_slopes(0.0, 0.0);
        m
    }

    fn node_labels(&self) -> NodeLabels {
        NodeLabels {
            node: self.node.clone(),
        }
    }

    pub fn set_verdict(&self, current: Verdict) {
        for v in Verdict::ALL {
            self.verdict
                .get_or_create(&VerdictLabels {
                    node: self.node.clone(),
                    verdict: v.as_str(),
                })
                .set(i64::from(v == current));
        }
    }

    pub fn transition(&self, from: Verdict, to: Verdict) {
        self.transitions
            .get_or_create(&TransitionLabels {
                node: self.node.clone(),
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
    }

    pub fn set_slopes(&self, connections_per_minute: f64, rss_bytes_per_minute: f64) {
        let n = self.node_labels();
        self.connections_per_minute
            .get_or_create(&n)
            .set(connections_per_minute);
        self.rss_bytes_per_minute
            .get_or_create(&n)
            .set(rss_bytes_per_minute);
    }

    pub fn publish_error(&self, reason: &'static str) {
        self.publish_errors
            .get_or_create(&ErrorLabels {
                node: self.node.clone(),
                reason,
            })
            .inc();
    }

    pub fn policy_error(&self) {
        self.policy_errors.get_or_create(&self.node_labels()).inc();
    }

    pub fn published(&self, unix_seconds: f64) {
        self.last_publish_timestamp_seconds
            .get_or_create(&self.node_labels())
            .set(unix_seconds);
    }
}
