//! The monitor's metric families (prefix `longhorn_guard_manager`, base units, a `node` label on
//! every series, no per-object labels).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The prefix every family of this crate carries.
pub const PREFIX: &str = "longhorn_guard_manager";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub node: String,
    /// The instance-manager port, e.g. `8501`.
    pub remote_port: String,
    /// Linux TCP state name: `established`, `close_wait`, `time_wait`, `syn_sent`, ...
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub node: String,
    /// [`crate::Error::metric_label`].
    pub reason: &'static str,
}

/// Handles to every family; cloning shares the series.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub up: Family<NodeLabels, Gauge>,
    pub resident_memory_bytes: Family<NodeLabels, Gauge>,
    pub resident_memory_peak_bytes: Family<NodeLabels, Gauge>,
    pub threads: Family<NodeLabels, Gauge>,
    pub open_fds: Family<NodeLabels, Gauge>,
    pub im_connections: Family<ConnectionLabels, Gauge>,
    pub goroutines: Family<NodeLabels, Gauge>,
    pub restarts: Family<NodeLabels, Counter>,
    pub longhorn_proxy_grpc_connections: Family<NodeLabels, Gauge>,
    pub proxy_connection_drift: Family<NodeLabels, Gauge>,
    pub sample_errors: Family<ErrorLabels, Counter>,
    pub last_sample_timestamp_seconds: Family<NodeLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// Registers every family under `registry` with the [`PREFIX`] (pass an unprefixed root
    /// registry; the monitor adds its own prefix through a sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "up",
            "1 while a longhorn-manager process is found and sampled on this node, else 0",
            self.up.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident set size of longhorn-manager (VmRSS)",
            self.resident_memory_bytes.clone(),
        );
        r.register(
            "resident_memory_peak_bytes",
            "Peak resident set size of longhorn-manager since it started (VmHWM)",
            self.resident_memory_peak_bytes.clone(),
        );
        r.register(
            "threads",
            "OS threads of longhorn-manager",
            self.threads.clone(),
        );
        r.register(
            "open_fds",
            "Open file descriptors of longhorn-manager",
            self.open_fds.clone(),
        );
        r.register(
            "im_connections",
            "TCP sockets owned by longhorn-manager to instance-manager ports (8500-8504), by remote port and TCP state",
            self.im_connections.clone(),
        );
        r.register(
            "goroutines",
            "Goroutines of longhorn-manager (Go pprof), when its pprof endpoint is configured",
            self.goroutines.clone(),
        );
        r.register(
            "restarts",
            "Times the followed longhorn-manager process changed (new pid or start time)",
            self.restarts.clone(),
        );
        r.register(
            "longhorn_proxy_grpc_connections",
            "longhorn_instance_manager_proxy_grpc_connection summed over this node, scraped from longhorn-manager",
            self.longhorn_proxy_grpc_connections.clone(),
        );
        r.register(
            "proxy_connection_drift",
            "Scraped longhorn_instance_manager_proxy_grpc_connection minus the sockets longhorn-manager actually holds open to the engine-proxy port",
            self.proxy_connection_drift.clone(),
        );
        r.register(
            "sample_errors",
            "Failed samples or sample parts, by reason",
            self.sample_errors.clone(),
        );
        r.register(
            "last_sample_timestamp_seconds",
            "Unix time of the last sample attempt",
            self.last_sample_timestamp_seconds.clone(),
        );
    }
}
