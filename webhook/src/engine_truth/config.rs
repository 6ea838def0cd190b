//! How the webhook reaches the agents: mTLS material, where each node's agent listens, and the
//! limits that keep engine checks cheap (concurrency, breaker). Fixed at start; the per-review
//! switch and budget are in the policy (`crate::policy::EngineCheckMode`,
//! `engineCheckBudgetMs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The name the agent's serving certificate is checked against when none is configured: the
/// agent Service's name, as `longhorn_guard_certs` issues it (`<svc>.<ns>.svc`).
pub const DEFAULT_AGENT_SERVER_NAME: &str = "longhorn-guard-agent.longhorn-guard.svc";

/// Where the agent serving a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentDiscovery {
    /// Agent pods found through the API: pods matching `selector` in `namespace`, by
    /// `spec.nodeName`, dialled at `status.podIP:port`.
    Pods {
        namespace: String,
        /// A label selector (`k=v,k2=v2`).
        selector: String,
        port: u16,
    },
    /// An address pattern with a `{node}` placeholder, e.g.
    /// `https://{node}.agents.example:9443`; `https://` is added when no scheme is given.
    Pattern(String),
    /// A fixed node → `host:port` (or URI) map (tests, small static clusters).
    Static(BTreeMap<String, String>),
}

/// Everything the engine check needs besides the policy.
#[derive(Clone, Debug)]
pub struct EngineTruthConfig {
    /// The webhook's client certificate and key for mTLS to the agents (PEM).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA the agents' serving certificates are signed by (PEM).
    pub ca: PathBuf,
    /// The DNS name the agent certificate must carry (the address dialled is usually a pod IP).
    pub server_name: String,
    pub discovery: AgentDiscovery,
    /// Engine checks in flight at once; a review that finds none free falls back (`overflow`).
    pub max_concurrent_checks: usize,
    /// Consecutive failures (transport errors, timeouts) that open an agent's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips the agent before one probe is let through.
    pub breaker_cool_down: Duration,
    /// A channel to an agent unused this long is closed (agents come and go with their pods).
    pub channel_idle_timeout: Duration,
    /// Most agent channels kept at once (one per agent address).
    pub max_channels: usize,
}

impl EngineTruthConfig {
    /// Defaults for everything but the files and the discovery.
    pub fn new(
        client_cert: impl Into<PathBuf>,
        client_key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
        discovery: AgentDiscovery,
    ) -> Self {
        Self {
            client_cert: client_cert.into(),
            client_key: client_key.into(),
            ca: ca.into(),
            server_name: DEFAULT_AGENT_SERVER_NAME.to_string(),
            discovery,
            max_concurrent_checks: 32,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(10),
            channel_idle_timeout: Duration::from_secs(300),
            max_channels: 1024,
        }
    }

    /// Refuses values that would make every check fail or never stop.
    pub fn validate(&self) -> Result<(), String> {
        if self.server_name.trim().is_empty() {
            return Err("agent server name is empty".into());
        }
        if self.max_concurrent_checks == 0 {
            return Err("max concurrent engine checks must be > 0".into());
        }
        if self.breaker_failures == 0 {
            return Err("breaker failure threshold must be > 0".into());
        }
        if self.max_channels == 0 {
            return Err("max agent channels must be > 0".into());
        }
        match &self.discovery {
            AgentDiscovery::Pods {
                namespace,
                selector,
                port,
            } => {
                if namespace.is_empty() || selector.trim().is_empty() || *port == 0 {
                    return Err(
                        "agent discovery by pods needs a namespace, a label selector and a port"
                            .into(),
                    );
                }
            }
            AgentDiscovery::Pattern(p) => {
                if !p.contains("{node}") {
                    return Err(format!(
                        "agent address pattern {p:?} has no {{node}} placeholder"
                    ));
                }
            }
            AgentDiscovery::Static(_) => {}
        }
        Ok(())
    }
}
