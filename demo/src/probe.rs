//! The guard's side of a run B as the demo measures it: the engine probe that calls the agents
//! (the access pattern of the v1.7.2 controller, through lease-bounded channels) and the sum of
//! the agents' `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use futures::StreamExt;
use longhorn_guard_proto::agent::GetSnapshotRequest;
use longhorn_guard_proto::agent::snapshot_service_client::SnapshotServiceClient;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::guard::{Served, http_get};
use crate::report::AgentFigures;

/// Counts of the engine probe.
#[derive(Default, Debug)]
pub struct ProbeCounts {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
}

/// The guard's engine probe: every `every`, asks the node's agent whether each non-terminal
/// Backup's snapshot exists in its engine, the same access pattern as the v1.7.2 controller's
/// reconciles, but through the agents' lease-bounded channel pools.
pub struct EngineProbe {
    /// Node → its agent's gRPC address.
    pub agents: BTreeMap<String, SocketAddr>,
    pub ca_pem: String,
    pub namespace: String,
    pub volume_nodes: Arc<HashMap<String, String>>,
    /// `(volume, snapshot)` of the Backups to check, read at every round.
    pub targets: Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>,
    pub every: Duration,
    pub counts: Arc<ProbeCounts>,
}

impl EngineProbe {
    /// Runs rounds until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let EngineProbe {
            agents,
            ca_pem,
            namespace,
            volume_nodes,
            targets,
            every,
            counts,
        } = self;
        probe_loop(
            agents,
            ca_pem,
            namespace,
            volume_nodes,
            targets,
            every,
            counts,
            stop,
        )
        .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    agents: BTreeMap<String, SocketAddr>,
    ca_pem: String,
    namespace: String,
    volume_nodes: Arc<HashMap<String, String>>,
    targets: Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>,
    every: Duration,
    counts: Arc<ProbeCounts>,
    mut stop: watch::Receiver<bool>,
) {
    let mut clients: HashMap<String, SnapshotServiceClient<Channel>> = HashMap::new();
    for (node, addr) in &agents {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem.as_bytes()))
            .domain_name("127.0.0.1");
        let Ok(endpoint) = Endpoint::from_shared(format!("https://{addr}")) else {
            continue;
        };
        let Ok(endpoint) = endpoint.tls_config(tls) else {
            continue;
        };
        let channel = endpoint.timeout(Duration::from_secs(5)).connect_lazy();
        clients.insert(node.clone(), SnapshotServiceClient::new(channel));
    }
    loop {
        let list = targets();
        let calls = futures::stream::iter(list)
            .filter_map(|(volume, snapshot)| {
                let client = volume_nodes
                    .get(&volume)
                    .and_then(|n| clients.get(n))
                    .cloned();
                let namespace = namespace.clone();
                async move { client.map(|c| (c, namespace, volume, snapshot)) }
            })
            .map(|(mut client, namespace, volume, snapshot)| {
                let counts = counts.clone();
                async move {
                    counts.calls.fetch_add(1, Ordering::Relaxed);
                    let r = client
                        .get_snapshot(GetSnapshotRequest {
                            namespace,
                            volume,
                            snapshot,
                        })
                        .await;
                    if r.is_err() {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<()>>();
        tokio::select! {
            _ = stop.changed() => return,
            _ = calls => {}
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Sums of the `longhorn_guard_agent_*` samples of an OpenMetrics text, by metric name
/// (labels dropped).
pub fn sum_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name_labels, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let name = name_labels.split('{').next().unwrap_or_default().trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *sums.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    sums
}

/// Scrapes every agent's `/metrics` and adds them up.
pub async fn agent_figures(
    agents: &BTreeMap<String, Served>,
    probe: &ProbeCounts,
) -> anyhow::Result<AgentFigures> {
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for served in agents.values() {
        let (code, body) = http_get(served.metrics, "/metrics").await?;
        if code != 200 {
            bail!("{} /metrics answered {code}", served.name);
        }
        for (k, v) in sum_metrics(&body) {
            *total.entry(k).or_insert(0.0) += v;
        }
    }
    let get = |k: &str| {
        total
            .get(&format!("longhorn_guard_agent_{k}"))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(AgentFigures {
        agents: agents.len() as u64,
        engine_checks: probe.calls.load(Ordering::Relaxed),
        engine_check_errors: probe.errors.load(Ordering::Relaxed),
        channels_created: get("channels_created_total") as u64,
        channels_active: get("channels_active") as u64,
        leases_acquired: get("leases_acquired_total") as u64,
        leases_active: get("leases_active") as u64,
        leaked_leases: get("leaked_leases") as u64,
        leaked_channels: get("leaked_channels") as u64,
        leaked_leases_detected: get("leaked_leases_detected_total") as u64,
        leaked_channels_detected: get("leaked_channels_detected_total") as u64,
        leak_sweeps: get("leak_sweeps_total") as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_drop_labels_and_comments() {
        let text = "# HELP x y\n# TYPE longhorn_guard_agent_channels_created counter\n\
            longhorn_guard_agent_channels_created_total{endpoint=\"a\"} 2\n\
            longhorn_guard_agent_channels_created_total{endpoint=\"b\"} 3\n\
            longhorn_guard_agent_leaked_leases 0\n\
            broken line without value x\n# EOF\n";
        let s = sum_metrics(text);
        assert_eq!(
            s.get("longhorn_guard_agent_channels_created_total"),
            Some(&5.0)
        );
        assert_eq!(s.get("longhorn_guard_agent_leaked_leases"), Some(&0.0));
        assert_eq!(s.len(), 2);
    }
}
