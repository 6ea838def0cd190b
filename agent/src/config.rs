//! Plain configuration structs (no clap): the CLI fills them, tests build them directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use longhorn_guard_manager_monitor::{ManagerMonitorConfig, ProcessMatch};

/// Longhorn's engine-proxy server enforces `MinTime: 10s` on keepalive pings; pinging more often
/// gets the connection closed with GOAWAY `too_many_pings`.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the agent needs to run on one node.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Kubernetes node this agent serves: only Engines with `spec.nodeID` equal to it are indexed.
    pub node_name: String,
    /// Namespace of the Longhorn objects (Longhorn's install namespace).
    pub namespace: String,
    /// Address of the `SnapshotService` + `grpc.health.v1.Health` gRPC server (TLS).
    pub grpc_listen: SocketAddr,
    /// Address of the plain-HTTP `/metrics`, `/healthz`, `/readyz` server.
    pub metrics_listen: SocketAddr,
    /// Serving certificate and key of the agent's gRPC server (PEM).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// When set, clients of the agent's gRPC server must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// TLS handshakes the gRPC server runs at once; at the cap the longest-waiting one gives way
    /// to a new connection (a connection flood costs a bounded number of tasks and sockets).
    pub max_tls_handshakes: usize,
    /// Longest deadline any engine call may get, whatever the caller asks for.
    pub max_call_timeout: Duration,
    /// Port of the engine proxy on instance managers. Longhorn always uses 8501
    /// ([`longhorn_guard_proto::ENGINE_PROXY_PORT`]); only tests and the demo's fake instance
    /// managers change it (`--engine-proxy-port`).
    pub engine_proxy_port: u16,
    /// Pool of channels to the instance managers' engine proxies.
    pub pool: PoolConfig,
    /// How often `server_cert`, `server_key` and `client_ca` are checked for a change; a
    /// rotated certificate is served from the next handshake on, without a restart.
    pub tls_reload_interval: Duration,
    /// The longhorn-manager leak monitor embedded in the agent (the agent must run with
    /// `hostPID` or share longhorn-manager's process namespace); `None` turns it off.
    pub manager_monitor: Option<ManagerMonitorConfig>,
    /// The node's leak verdict, judged from the manager monitor's samples and published in a
    /// Lease (needs the monitor and a Kubernetes client); `None` turns it off.
    pub node_verdict: Option<crate::node_verdict::NodeVerdictConfig>,
}

impl AgentConfig {
    /// Defaults for everything but the node name; the flags' defaults where there is a flag
    /// ([`crate::cli::AgentArgs`]).
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            namespace: longhorn_types::DEFAULT_NAMESPACE.to_string(),
            grpc_listen: crate::cli::DEFAULT_LISTEN,
            metrics_listen: crate::cli::DEFAULT_METRICS_LISTEN,
            server_cert: PathBuf::from(crate::cli::DEFAULT_TLS_CERT),
            server_key: PathBuf::from(crate::cli::DEFAULT_TLS_KEY),
            client_ca: None,
            max_tls_handshakes: 64,
            max_call_timeout: Duration::from_secs(30),
            engine_proxy_port: longhorn_guard_proto::ENGINE_PROXY_PORT,
            pool: PoolConfig::default(),
            tls_reload_interval: Duration::from_secs(3),
            manager_monitor: None,
            node_verdict: None,
        }
    }

    /// Checks the values a misconfiguration would turn into an outage or a leak.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(ConfigError::Invalid("node name is empty".to_string()));
        }
        if self.namespace.is_empty() {
            return Err(ConfigError::Invalid("namespace is empty".to_string()));
        }
        if self.max_call_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "max call timeout must be > 0".to_string(),
            ));
        }
        if self.max_tls_handshakes == 0 {
            return Err(ConfigError::Invalid(
                "max TLS handshakes must be > 0".to_string(),
            ));
        }
        if self.tls_reload_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "TLS reload interval must be > 0".to_string(),
            ));
        }
        if let Some(monitor) = &self.manager_monitor
            && monitor.node != self.node_name
        {
            return Err(ConfigError::Invalid(format!(
                "the longhorn-manager monitor is set up for node {:?} but the agent serves node {:?}",
                monitor.node, self.node_name
            )));
        }
        if let Some(verdict) = &self.node_verdict {
            verdict.validate().map_err(ConfigError::Invalid)?;
        }
        self.pool.validate()
    }
}

/// Parses how the longhorn-manager process is recognised: `name:NAME` (or a bare `NAME`):
/// `comm` or the basename of `argv[0]`; `cmdline:EXACT`: the whole command line, arguments
/// joined by single spaces; `regex:RE`: a regex matched anywhere in that command line.
pub fn parse_process_match(spec: &str) -> Result<ProcessMatch, ConfigError> {
    let invalid =
        |why: String| ConfigError::Invalid(format!("manager process match {spec:?}: {why}"));
    let (kind, value) = match spec.split_once(':') {
        Some((kind @ ("name" | "cmdline" | "regex"), value)) => (kind, value),
        _ => ("name", spec),
    };
    if value.is_empty() {
        return Err(invalid("empty".to_string()));
    }
    Ok(match kind {
        "cmdline" => ProcessMatch::CmdlineExact(value.to_string()),
        "regex" => ProcessMatch::CmdlineRegex(
            regex::Regex::new(value).map_err(|e| invalid(e.to_string()))?,
        ),
        _ => ProcessMatch::Name(value.to_string()),
    })
}

/// Caps and timers of the [`crate::LeasePool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// HTTP/2 channels per instance-manager endpoint (N).
    pub max_channels_per_endpoint: usize,
    /// Concurrent calls (leases) per endpoint (M).
    pub max_leases_per_endpoint: usize,
    /// Channels over all endpoints.
    pub max_channels_total: usize,
    /// Concurrent calls over all endpoints.
    pub max_leases_total: usize,
    /// Longest wait for a lease before the call fails with RESOURCE_EXHAUSTED.
    pub queue_timeout: Duration,
    /// Longest lease the pool grants, whatever deadline the caller asks for.
    pub max_lease: Duration,
    /// TCP connect + TLS + health-check budget when a channel is opened.
    pub connect_timeout: Duration,
    /// A channel with no call for this long is closed.
    pub idle_timeout: Duration,
    /// A channel older than this is closed (new calls get a fresh one).
    pub max_age: Duration,
    /// HTTP/2 keepalive ping interval; at least [`MIN_KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// How long to wait for a ping ack before the connection is declared dead.
    pub keepalive_timeout: Duration,
    /// Ping even when no call is in flight (Longhorn's server permits it).
    pub keepalive_while_idle: bool,
    /// Consecutive failures that open an endpoint's circuit breaker (K).
    pub breaker_failure_threshold: u32,
    /// Time an open breaker sheds calls before it lets one probe through.
    pub breaker_cool_down: Duration,
    /// Directory holding Longhorn's gRPC TLS files (`ca.crt`, `tls.crt`, `tls.key`); Longhorn
    /// mounts them at `/tls-files/`. Plaintext h2c when unset or the files are absent.
    pub longhorn_tls_dir: Option<PathBuf>,
    /// How often idle / aged channels are looked for, and the live leases and channels are swept
    /// for leaks.
    pub reap_interval: Duration,
    /// Slack the leak sweep allows past each bound before it calls a lease or channel leaked: a
    /// lease held past `deadline + leak_grace`, a channel still open `max_lease + leak_grace`
    /// after the pool let it go (an in-flight call may use it up to its deadline) or older than
    /// `max_age + max_lease + leak_grace`.
    pub leak_grace: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_channels_per_endpoint: 2,
            max_leases_per_endpoint: 16,
            max_channels_total: 64,
            max_leases_total: 256,
            queue_timeout: Duration::from_secs(2),
            max_lease: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_age: Duration::from_secs(30 * 60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            keepalive_while_idle: true,
            breaker_failure_threshold: 5,
            breaker_cool_down: Duration::from_secs(10),
            longhorn_tls_dir: None,
            reap_interval: Duration::from_secs(1),
            leak_grace: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// Refuses values that would leak, spin or get the connection killed by Longhorn's server.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keepalive_interval < MIN_KEEPALIVE_INTERVAL {
            return Err(ConfigError::KeepaliveTooShort {
                requested: self.keepalive_interval,
            });
        }
        let positive: [(&str, usize); 4] = [
            ("max channels per endpoint", self.max_channels_per_endpoint),
            ("max leases per endpoint", self.max_leases_per_endpoint),
            ("max channels total", self.max_channels_total),
            ("max leases total", self.max_leases_total),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        if self.max_channels_per_endpoint > self.max_channels_total {
            return Err(ConfigError::Invalid(format!(
                "max channels per endpoint ({}) exceeds max channels total ({})",
                self.max_channels_per_endpoint, self.max_channels_total
            )));
        }
        if self.max_leases_per_endpoint > self.max_leases_total {
            return Err(ConfigError::Invalid(format!(
                "max leases per endpoint ({}) exceeds max leases total ({})",
                self.max_leases_per_endpoint, self.max_leases_total
            )));
        }
        let timers: [(&str, Duration); 8] = [
            ("queue timeout", self.queue_timeout),
            ("max lease", self.max_lease),
            ("connect timeout", self.connect_timeout),
            ("idle timeout", self.idle_timeout),
            ("max age", self.max_age),
            ("keepalive timeout", self.keepalive_timeout),
            ("reap interval", self.reap_interval),
            ("leak grace", self.leak_grace),
        ];
        for (name, value) in timers {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        if self.breaker_failure_threshold == 0 {
            return Err(ConfigError::Invalid(
                "breaker failure threshold must be > 0".to_string(),
            ));
        }
        Ok(())
    }

    /// A copy with the keepalive raised to Longhorn's minimum, for callers that prefer clamping
    /// over refusing.
    pub fn with_clamped_keepalive(mut self) -> Self {
        self.keepalive_interval = self.keepalive_interval.max(MIN_KEEPALIVE_INTERVAL);
        self
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "HTTP/2 keepalive interval {requested:?} is below Longhorn's engine-proxy minimum of 10s: \
         the instance manager would close the connection with GOAWAY too_many_pings \
         (use >= 10s; Longhorn's own client uses 30s)"
    )]
    KeepaliveTooShort { requested: Duration },
    #[error("invalid agent configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_pings_every_30s_while_idle() {
        let config = AgentConfig::new("node-1");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.pool.keepalive_interval, Duration::from_secs(30));
        assert!(config.pool.keepalive_while_idle);
        assert_eq!(config.namespace, "longhorn-system");
    }

    #[test]
    fn keepalive_below_10s_is_refused_with_a_clear_error() {
        let pool = PoolConfig {
            keepalive_interval: Duration::from_secs(5),
            ..PoolConfig::default()
        };
        let err = pool.validate().err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("too_many_pings"), "{err}");
        assert!(err.contains("5s"), "{err}");
        let clamped = pool.with_clamped_keepalive();
        assert_eq!(clamped.keepalive_interval, MIN_KEEPALIVE_INTERVAL);
        assert_eq!(clamped.validate(), Ok(()));
    }

    #[test]
    fn process_match_specs() {
        assert!(matches!(
            parse_process_match("longhorn-manager"),
            Ok(ProcessMatch::Name(n)) if n == "longhorn-manager"
        ));
        assert!(matches!(
            parse_process_match("name:lhm"),
            Ok(ProcessMatch::Name(n)) if n == "lhm"
        ));
        assert!(matches!(
            parse_process_match("cmdline:longhorn-manager -d daemon"),
            Ok(ProcessMatch::CmdlineExact(c)) if c == "longhorn-manager -d daemon"
        ));
        assert!(matches!(
            parse_process_match("regex:longhorn-manager .*daemon"),
            Ok(ProcessMatch::CmdlineRegex(_))
        ));
        let bad = parse_process_match("regex:(").err().map(|e| e.to_string());
        assert!(bad.is_some_and(|e| e.contains("regex:(")));
        assert!(parse_process_match("cmdline:").is_err());
    }

    #[test]
    fn monitor_for_another_node_is_refused() {
        let mut config = AgentConfig::new("node-1");
        config.manager_monitor = Some(ManagerMonitorConfig::for_node("node-2"));
        assert!(config.validate().is_err());
        config.manager_monitor = Some(ManagerMonitorConfig::for_node("node-1"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn zero_caps_and_inverted_caps_are_refused() {
        let zero = PoolConfig {
            max_leases_per_endpoint: 0,
            ..PoolConfig::default()
        };
        assert!(zero.validate().is_err());
        let inverted = PoolConfig {
            max_channels_per_endpoint: 10,
            max_channels_total: 2,
            ..PoolConfig::default()
        };
        assert!(inverted.validate().is_err());
    }
}
