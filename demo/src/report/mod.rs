//! The demo's report: figures of each run side by side, as JSON and Markdown ([`markdown`]),
//! and the percentile arithmetic behind the admission latencies.

mod markdown;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// In-flight (non-terminal) Backups at `t` seconds after the storm started.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub in_flight: u64,
}

/// What the agents' `/metrics` said at the end of a run (summed over the nodes' agents).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentFigures {
    pub agents: u64,
    /// `GetSnapshot` calls the demo's engine probe sent through the agents.
    pub engine_checks: u64,
    pub engine_check_errors: u64,
    pub channels_created: u64,
    pub channels_active: u64,
    pub leases_acquired: u64,
    pub leases_active: u64,
    /// Leases / channels the agents' leak sweep found leaked at its last pass (the gauges).
    pub leaked_leases: u64,
    pub leaked_channels: u64,
    /// Distinct leases / channels the sweep found leaked during the whole run.
    pub leaked_leases_detected: u64,
    pub leaked_channels_detected: u64,
    /// Sweeps the agents made (each sweeps its live leases and channels).
    pub leak_sweeps: u64,
}

/// The figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub namespace: String,
    pub guard: bool,
    /// Backup CREATEs sent.
    pub attempted: u64,
    /// Planned Backups not sent because the run's time bound was reached.
    pub not_sent: u64,
    pub admitted: u64,
    pub denied: u64,
    /// Denials by the webhook's reason (`snapshot_missing`, `throttled:volume`, ...).
    pub denied_by_reason: BTreeMap<String, u64>,
    /// Denials by the throttle (every `throttled:*` reason).
    pub throttled: u64,
    /// CREATEs that failed for another reason than a denial (timeouts, API errors).
    pub errors: u64,
    pub peak_in_flight: u64,
    /// Backups the API server holds in this namespace at the end, by `status.state`
    /// (`""` shown as `New`).
    pub backups_by_state: BTreeMap<String, u64>,
    pub in_flight_end: u64,
    /// Backups `Pending` at the end: their snapshot is gone, v1.7.2 retries them forever.
    pub stuck_pending_end: u64,
    pub completed_end: u64,
    /// Snapshots deleted right after their Backup was admitted (the incident's mid-storm loss).
    pub snapshots_lost_mid_storm: u64,
    /// gRPC connections the simulated v1.7.2 controller opened and never closed.
    pub leaked_manager_connections: u64,
    /// Connections open on the fake engine proxies at the end: the leaks, plus the connections
    /// of Backups waiting for or holding a backup slot, plus the agents' channels.
    pub engine_proxy_open_connections: u64,
    /// The port the fake instance managers served their engine proxy on (8501 unless taken;
    /// the agents were told it).
    #[serde(default)]
    pub engine_proxy_port: u16,
    /// The leak reached the demo's safety cap and the run was cut short.
    pub leak_cap_hit: bool,
    pub reconciles: u64,
    pub admission_p50_ms: f64,
    pub admission_p99_ms: f64,
    pub storm_seconds: f64,
    pub run_seconds: f64,
    pub agent: Option<AgentFigures>,
    pub timeline: Vec<Sample>,
}

/// The leaky node's manager at `t` seconds after a slow-leak run's storm started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ManagerSample {
    pub t: f64,
    /// Established connections to instance-manager ports, as the node's agent's monitor sees
    /// them (`longhorn_guard_manager_im_connections`).
    pub connections: u64,
    /// Resident memory, MiB (`longhorn_guard_manager_resident_memory_bytes`).
    pub rss_mib: f64,
    /// The agent's verdict (`longhorn_guard_agent_node_verdict`).
    pub agent_verdict: String,
    /// The webhook's `longhorn_guard_webhook_node_verdict{verdict="leaking"}` is 1.
    pub webhook_leaking: bool,
    /// Connections the simulated controller had made the manager leak by then.
    pub leaked_by_controller: u64,
}

/// One slow-leak run (the third run: a leak the static caps cannot see), with the loop off or
/// enforcing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlowLeakRun {
    pub label: String,
    pub namespace: String,
    /// `nodeProtection.mode`: `off` or `enforce`.
    pub mode: String,
    pub leaky_node: String,
    pub sent: u64,
    pub admitted: u64,
    pub denied_by_reason: BTreeMap<String, u64>,
    pub errors: u64,
    /// The leaky node's Backups admitted / denied over the whole run.
    pub leaky_node_admitted: u64,
    pub leaky_node_denied: u64,
    /// The leaky node's Backups admitted while the webhook was seen believing it `leaking`
    /// (sent after a sample showed it, answered before a later sample of the same stretch).
    pub leaky_node_admitted_while_leaking: u64,
    /// First sample at which the manager had leaked (seconds after the storm started).
    pub leak_started_s: Option<f64>,
    /// First sample at which the webhook said the node is `leaking`.
    pub protected_at_s: Option<f64>,
    pub time_to_protection_s: Option<f64>,
    /// Stretches (from, to) during which the webhook was seen saying `leaking`.
    pub leaking_spans: Vec<(f64, f64)>,
    pub peak_connections: u64,
    pub peak_rss_mib: f64,
    pub leaked_by_controller: u64,
    pub leak_cap_hit: bool,
    pub backups_by_state: BTreeMap<String, u64>,
    pub samples: Vec<ManagerSample>,
}

/// The settings a demo ran with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub backups: usize,
    pub volumes: usize,
    pub nodes: usize,
    pub lost_share: f64,
    pub mid_storm_loss_share: f64,
    pub duration_seconds: f64,
    pub resync_seconds: f64,
    pub concurrency: usize,
    pub leak_cap: usize,
    pub cluster: String,
    /// Length of each slow-leak run, seconds (0: no third run).
    #[serde(default)]
    pub slow_leak_seconds: f64,
    /// Backups a second in the slow-leak runs.
    #[serde(default)]
    pub slow_leak_rate: f64,
}

/// The whole demo report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub settings: Settings,
    pub runs: Vec<RunReport>,
    /// The third run, "slow leak": loop off, then enforcing (empty when skipped).
    #[serde(default)]
    pub slow_leak: Vec<SlowLeakRun>,
    pub total_seconds: f64,
}

/// Nearest-rank percentile (`p` in 0..=100) of `values`, which need not be sorted. `None`
/// for an empty slice.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

/// Classifies a denial by the reason the webhook put in brackets in its message:
/// `[throttled: volume]` → `throttled:volume`, `[snapshot_missing]` → `snapshot_missing`.
/// Denials without a recognisable reason are `other:<code>`.
pub fn denial_reason(code: u16, message: &str) -> String {
    if let Some(start) = message.find("[throttled: ") {
        let rest = &message[start + "[throttled: ".len()..];
        if let Some(end) = rest.find(']') {
            return format!("throttled:{}", rest[..end].trim());
        }
    }
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            break;
        };
        let inner = &after[..close];
        if !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            return inner.to_string();
        }
        rest = &after[close + 1..];
    }
    format!("other:{code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
    }

    #[test]
    fn denial_reasons_come_from_the_webhook_messages() {
        assert_eq!(
            denial_reason(
                404,
                "longhorn-guard denied Backup \"b\": Snapshot \"s\" of volume \"v\" does not exist [snapshot_missing]. Create a new snapshot"
            ),
            "snapshot_missing"
        );
        assert_eq!(
            denial_reason(
                429,
                "longhorn-guard throttled Backup \"b\" in namespace \"n\" (snapshot \"s\", volume \"v\", node \"n1\") [throttled: volume]: volume \"v\" has 1 Backup(s) in flight"
            ),
            "throttled:volume"
        );
        assert_eq!(
            denial_reason(404, "x [Not A Reason] then [snapshot_lost]."),
            "snapshot_lost"
        );
        assert_eq!(denial_reason(500, "internal error"), "other:500");
    }
}
