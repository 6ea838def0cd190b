//! The node-verdict metrics (registered in `crate::metrics`, prefix `longhorn_guard_webhook`):
//! the verdict per node and the expired ones (refreshed at scrape), verdict changes seen, the
//! Backups held back by a verdict, unreadable verdict Leases and watch failures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Change, NodeStatus, NodeVerdicts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeVerdictLabels {
    pub node: String,
    /// `healthy`, `degrading`, `leaking` or `expired`.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub node: String,
    /// The verdict before (`none` for a node seen for the first time).
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabels {
    pub node: String,
    /// `denied` or `warned`.
    pub action: &'static str,
}

/// Handles on the node-verdict metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct NodeVerdictMetrics {
    pub verdict: Family<NodeVerdictLabels, Gauge>,
    pub expired: Gauge,
    pub changes: Family<ChangeLabels, Counter>,
    pub held: Family<HeldLabels, Counter>,
    pub unreadable: Gauge,
    pub watch_failures: Counter,
}

impl NodeVerdictMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "node_verdict",
            "1 for each node's verdict as the webhook acts on it: healthy, degrading, leaking, or expired (its agent stopped renewing the verdict Lease: it no longer protects)",
            m.verdict.clone(),
        );
        registry.register(
            "node_verdicts_expired",
            "Verdict Leases past renewTime + leaseDurationSeconds: their nodes are no longer protected (agent down or cut off from the API server)",
            m.expired.clone(),
        );
        registry.register(
            "node_verdict_changes",
            "Verdict changes seen in the verdict Leases, by node, from and to",
            m.changes.clone(),
        );
        registry.register(
            "backups_held_by_node_verdict",
            "Backup CREATEs refused (denied) or warned about (warned) because their volume's node is leaking or degrading, by node and action",
            m.held.clone(),
        );
        registry.register(
            "node_verdict_leases_unreadable",
            "Verdict Leases that cannot be read (ignored; their names are in the webhook's warnings)",
            m.unreadable.clone(),
        );
        registry.register(
            "node_verdict_watch_failures",
            "List and watch errors of the verdict Leases",
            m.watch_failures.clone(),
        );
        m
    }

    pub fn changed(&self, changes: impl IntoIterator<Item = Change>) {
        for (node, from, to) in changes {
            tracing::info!(%node, from, to, "node verdict changed");
            self.changes
                .get_or_create(&ChangeLabels { node, from, to })
                .inc();
        }
    }

    pub fn held(&self, node: &str, action: &'static str) {
        self.held
            .get_or_create(&HeldLabels {
                node: node.to_string(),
                action,
            })
            .inc();
    }

    /// The per-node verdicts and the expired count as of now.
    pub fn refresh(&self, verdicts: &NodeVerdicts) {
        let view = verdicts.view();
        self.verdict.clear();
        let mut expired = 0;
        for (node, _) in view.table().nodes() {
            let status = view.status(node);
            if matches!(status, NodeStatus::Expired(_)) {
                expired += 1;
            }
            self.verdict
                .get_or_create(&NodeVerdictLabels {
                    node: node.clone(),
                    verdict: status.label(),
                })
                .set(1);
        }
        self.expired.set(expired);
        self.unreadable
            .set(i64::try_from(view.table().unreadable().len()).unwrap_or(i64::MAX));
    }
}
