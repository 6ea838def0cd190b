//! The agent's flags, shared by the dedicated `longhorn-guard-agent` binary (what the
//! DaemonSet and the sidecar run: a smaller executable, so a smaller resident footprint on
//! every node) and the `longhorn-guard agent` subcommand of the all-in-one binary.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use std::time::Duration;

use crate::{
    AgentConfig, ManagerMonitorConfig, NodeVerdictConfig, ProcessMatch, parse_process_match,
};

/// The agent's gRPC API (TLS).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9443));
/// `/healthz`, `/readyz`, `/metrics` (plain HTTP); 9091, beside the webhook's 9090 when both
/// run in one network namespace.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9091));
/// The serving certificate and key (the agent TLS Secret's mount).
pub const DEFAULT_TLS_CERT: &str = "/certs/tls.crt";
pub const DEFAULT_TLS_KEY: &str = "/certs/tls.key";

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The node this agent serves (from the downward API in a DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Longhorn's namespace.
    #[arg(long, env = "LHG_NAMESPACE", default_value = longhorn_types::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// The agent's gRPC API (TLS).
    #[arg(long, env = "LHG_AGENT_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` (plain HTTP).
    #[arg(long, env = "LHG_AGENT_METRICS_LISTEN", default_value_t = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,
    #[arg(long, env = "LHG_TLS_CERT", default_value = DEFAULT_TLS_CERT)]
    pub tls_cert: PathBuf,
    #[arg(long, env = "LHG_TLS_KEY", default_value = DEFAULT_TLS_KEY)]
    pub tls_key: PathBuf,
    /// Require client certificates signed by this CA (webhook<->agent mTLS).
    #[arg(long, env = "LHG_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Longhorn's gRPC TLS files (`ca.crt`, `tls.crt`, `tls.key` of the `longhorn-grpc-tls`
    /// Secret): mTLS to instance managers when present, plaintext otherwise (as Longhorn).
    #[arg(long, env = "LHG_LONGHORN_TLS_DIR", default_value = "/tls-files")]
    pub longhorn_tls_dir: PathBuf,
    /// Do not run the embedded longhorn-manager leak monitor (it needs hostPID or a process
    /// namespace shared with longhorn-manager).
    #[arg(long, env = "LHG_NO_MANAGER_MONITOR")]
    pub no_manager_monitor: bool,
    /// How to recognise longhorn-manager: `NAME` / `name:NAME` (comm or argv[0] basename),
    /// `cmdline:EXACT`, or `regex:RE` on the command line.
    #[arg(long, env = "LHG_MANAGER_PROCESS_MATCH", default_value = "longhorn-manager",
          value_parser = parse_process_match)]
    pub manager_process_match: ProcessMatch,
    /// longhorn-manager's Go pprof goroutine endpoint, e.g.
    /// `http://127.0.0.1:6060/debug/pprof/goroutine?debug=1`.
    #[arg(long, env = "LHG_MANAGER_PPROF_URL")]
    pub manager_pprof_url: Option<String>,
    /// longhorn-manager's own metrics, e.g. `http://127.0.0.1:9500/metrics` in sidecar mode.
    #[arg(long, env = "LHG_MANAGER_METRICS_URL")]
    pub manager_metrics_url: Option<String>,
    /// How often the manager monitor samples longhorn-manager (and feeds the verdict),
    /// milliseconds. A demo or test stand samples faster than the 15 s default.
    #[arg(long, env = "LHG_MANAGER_MONITOR_INTERVAL_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub manager_monitor_interval_ms: u64,
    /// Where procfs is mounted (the host's with hostPID, the pod's in sidecar mode).
    #[arg(long, env = "LHG_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Port of the engine proxy on every instance manager: Longhorn's is always 8501; a test
    /// stand (the demo's fake instance managers) may serve it on another.
    #[arg(long, env = "LHG_ENGINE_PROXY_PORT", default_value_t = longhorn_guard_proto::ENGINE_PROXY_PORT)]
    pub engine_proxy_port: u16,
    /// Do not judge and publish the node's longhorn-manager verdict (it needs the manager
    /// monitor; without it there is no verdict either).
    #[arg(long, env = "LHG_NO_NODE_VERDICT")]
    pub no_node_verdict: bool,
    /// This agent's pod name (downward API): the holder of the node's verdict Lease and the
    /// reporting instance of its Events. Default: `longhorn-guard-agent@<node>`.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The guard's namespace, where the node's verdict Lease is kept (the webhook reads it
    /// there). The DaemonSet passes its own namespace.
    #[arg(long, env = "LHG_VERDICT_NAMESPACE", default_value = crate::node_verdict::DEFAULT_LEASE_NAMESPACE)]
    pub verdict_namespace: String,
    /// Where the Events on the Node about verdict changes are written (the Events of a
    /// cluster-scoped object live in `default`).
    #[arg(long, env = "LHG_VERDICT_EVENT_NAMESPACE", default_value = crate::node_verdict::DEFAULT_EVENT_NAMESPACE)]
    pub verdict_event_namespace: String,
    /// How often the verdict Lease is renewed (and the policy file looked at), seconds.
    #[arg(long, env = "LHG_VERDICT_RENEW_SECONDS", default_value_t = crate::node_verdict::DEFAULT_RENEW_PERIOD.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub verdict_renew_seconds: u64,
    /// How long the verdict stays valid without a renewal (`leaseDurationSeconds`): a dead
    /// agent's verdict expires after it. Longer than the renew period.
    #[arg(long, env = "LHG_VERDICT_LEASE_SECONDS", default_value_t = crate::node_verdict::DEFAULT_LEASE_DURATION.as_secs(),
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub verdict_lease_seconds: u64,
    /// The policy file (the webhook's ConfigMap): the verdict's `nodeProtection.thresholds`
    /// are read from it and again whenever it changes. Defaults when absent.
    #[arg(long, env = "LHG_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// Async runtime worker threads. The agent's work is a few calls at a time, so it does
    /// not follow the node's core count (a 64-core node would otherwise get 64 threads and
    /// their allocator arenas).
    #[arg(long, env = "LHG_AGENT_WORKER_THREADS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
}

impl AgentArgs {
    /// The agent's configuration; the manager monitor is on unless `--no-manager-monitor`,
    /// the node verdict with it unless `--no-node-verdict`.
    pub fn config(self) -> AgentConfig {
        let mut config = AgentConfig::new(self.node);
        config.namespace = self.namespace;
        config.grpc_listen = self.listen;
        config.metrics_listen = self.metrics_listen;
        config.server_cert = self.tls_cert;
        config.server_key = self.tls_key;
        config.client_ca = self.client_ca;
        config.engine_proxy_port = self.engine_proxy_port;
        config.pool.longhorn_tls_dir = Some(self.longhorn_tls_dir);
        if !self.no_manager_monitor {
            let mut monitor = ManagerMonitorConfig::for_node(&config.node_name);
            monitor.process_match = self.manager_process_match;
            monitor.pprof_goroutine_url = self.manager_pprof_url;
            monitor.manager_metrics_url = self.manager_metrics_url;
            monitor.proc_root = self.proc_root;
            monitor.interval = Duration::from_millis(self.manager_monitor_interval_ms);
            // The engine proxy is an instance-manager port wherever it is served (a test
            // stand's fake instance managers may serve it outside 8500..=8504).
            monitor.engine_proxy_port = self.engine_proxy_port;
            if !monitor.im_ports.contains(&self.engine_proxy_port) {
                monitor.im_ports = self.engine_proxy_port..=self.engine_proxy_port;
            }
            config.manager_monitor = Some(monitor);
            if !self.no_node_verdict {
                let holder = self
                    .pod_name
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| format!("longhorn-guard-agent@{}", config.node_name));
                let mut verdict = NodeVerdictConfig::new(holder);
                verdict.lease_namespace = self.verdict_namespace;
                verdict.event_namespace = self.verdict_event_namespace;
                verdict.renew_period = Duration::from_secs(self.verdict_renew_seconds);
                verdict.lease_duration = Duration::from_secs(self.verdict_lease_seconds);
                verdict.policy_file = self.policy_file;
                config.node_verdict = Some(verdict);
            }
        }
        config
    }

    /// Runs the agent until SIGINT/SIGTERM on a runtime of `--worker-threads` workers.
    pub fn run(self) -> anyhow::Result<()> {
        longhorn_guard_runtime::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(self.worker_threads))
            .enable_all()
            .build()?;
        let config = self.config();
        runtime.block_on(crate::run(
            config,
            longhorn_guard_runtime::shutdown_signal(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        agent: AgentArgs,
    }

    /// The flags' defaults are `AgentConfig::new`'s (once they disagreed: metrics on 9090 vs
    /// 9091, certificates under /etc/longhorn-guard/tls vs /certs).
    #[test]
    fn the_flags_defaults_are_the_config_defaults() {
        let Ok(flags) = Flags::try_parse_from(["agent", "--node=node-1"]) else {
            panic!("the agent parses with only --node");
        };
        let from_flags = flags.agent.config();
        let default = AgentConfig::new("node-1");
        assert_eq!(from_flags.namespace, default.namespace);
        assert_eq!(from_flags.grpc_listen, default.grpc_listen);
        assert_eq!(from_flags.metrics_listen, default.metrics_listen);
        assert_eq!(from_flags.server_cert, default.server_cert);
        assert_eq!(from_flags.server_key, default.server_key);
        assert_eq!(from_flags.client_ca, default.client_ca);
        assert_eq!(from_flags.engine_proxy_port, default.engine_proxy_port);
        let (Some(monitor), fresh) = (
            from_flags.manager_monitor,
            ManagerMonitorConfig::for_node("node-1"),
        ) else {
            panic!("the manager monitor is on by default");
        };
        assert_eq!(monitor.interval, fresh.interval);
        assert_eq!(monitor.im_ports, fresh.im_ports);
        assert_eq!(monitor.engine_proxy_port, fresh.engine_proxy_port);
    }

    /// A stand serving the engine proxy outside 8500..=8504 (the demo's fake instance managers
    /// when 8501 is taken): the monitor counts the manager's connections to that port.
    #[test]
    fn the_monitor_counts_connections_to_the_engine_proxy_port_it_is_told() {
        let Ok(flags) = Flags::try_parse_from([
            "agent",
            "--node=node-1",
            "--engine-proxy-port=40123",
            "--manager-monitor-interval-ms=500",
        ]) else {
            panic!("the flags parse");
        };
        let Some(monitor) = flags.agent.config().manager_monitor else {
            panic!("the manager monitor is on");
        };
        assert_eq!(monitor.im_ports, 40123..=40123);
        assert_eq!(monitor.engine_proxy_port, 40123);
        assert_eq!(monitor.interval, Duration::from_millis(500));
    }
}
