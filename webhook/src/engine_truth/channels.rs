//! One tonic channel per agent address, created lazily over mutual TLS and reused by every
//! check; evicted on a transport error or a check that got no answer at all, and when idle.
//! The number held is bounded (`max_channels`, least recently used evicted first), so a
//! churn of agent pods or addresses cannot grow it: the guard must not leak what
//! longhorn-manager leaked.
//!
//! The certificate files are read when a channel is created, so a rotated client
//! certificate is picked up by the next channel (an evicted one, or a new agent).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use longhorn_guard_proto::agent::snapshot_service_client::SnapshotServiceClient;
use longhorn_guard_proto::agent::{
    GetSnapshotRequest, GetSnapshotResponse, ListSnapshotsRequest, ListSnapshotsResponse,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::config::EngineTruthConfig;
use super::metrics::EngineCheckMetrics;

/// Why a call to an agent brought no answer.
#[derive(Debug)]
pub enum CallError {
    /// Could not reach the agent: refused, reset, TLS handshake failed, channel not buildable.
    Transport(String),
    /// Nothing came back in time. `connected` is false when the time ran out before the
    /// request could even be sent (connect or handshake hanging).
    Timeout { connected: bool },
    /// The agent answered with an error status.
    Agent(tonic::Status),
}

impl CallError {
    /// Whether the channel should be dropped: the connection is (or may be) broken.
    pub fn evicts(&self) -> bool {
        matches!(
            self,
            CallError::Transport(_) | CallError::Timeout { connected: false }
        )
    }

    /// Whether this counts against the agent's breaker: it cost time or the agent is gone.
    pub fn is_failure(&self) -> bool {
        match self {
            CallError::Transport(_) | CallError::Timeout { .. } => true,
            CallError::Agent(s) => s.code() == tonic::Code::DeadlineExceeded,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "transport error: {m}"),
            CallError::Timeout { connected: true } => f.write_str("no answer within the budget"),
            CallError::Timeout { connected: false } => {
                f.write_str("no connection within the budget (connect or TLS handshake hanging)")
            }
            CallError::Agent(s) => write!(f, "agent answered {:?}: {}", s.code(), s.message()),
        }
    }
}

/// The whole error chain of a client-side failure, without repeating identical links.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn classify(status: tonic::Status) -> CallError {
    let Some(source) = std::error::Error::source(&status) else {
        // No source: the status came from the server.
        return CallError::Agent(status);
    };
    let mut next = Some(source);
    while let Some(e) = next {
        if e.is::<tonic::TimeoutExpired>() {
            // tonic's own grpc-timeout: the request was sent over a working connection.
            return CallError::Timeout { connected: true };
        }
        next = e.source();
    }
    CallError::Transport(format!("{}: {}", status.message(), chain(source)))
}

struct Held {
    channel: Channel,
    last_used: Instant,
}

/// The agent channels.
pub struct AgentChannels {
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    ca: std::path::PathBuf,
    server_name: String,
    idle_timeout: Duration,
    max_channels: usize,
    held: Mutex<HashMap<String, Held>>,
    metrics: EngineCheckMetrics,
}

impl std::fmt::Debug for AgentChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentChannels")
            .field("server_name", &self.server_name)
            .field("held", &self.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl AgentChannels {
    pub fn new(config: &EngineTruthConfig, metrics: EngineCheckMetrics) -> Self {
        Self {
            client_cert: config.client_cert.clone(),
            client_key: config.client_key.clone(),
            ca: config.ca.clone(),
            server_name: config.server_name.clone(),
            idle_timeout: config.channel_idle_timeout,
            max_channels: config.max_channels.max(1),
            held: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Channels held now.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The TLS client configuration from the files as they are now.
    pub fn tls_config(&self) -> Result<ClientTlsConfig, String> {
        let cert = read(&self.client_cert, "agent client certificate")?;
        let key = read(&self.client_key, "agent client key")?;
        let ca = read(&self.ca, "agent CA")?;
        Ok(ClientTlsConfig::new()
            .domain_name(self.server_name.clone())
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key)))
    }

    fn build(&self, uri: &str) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| format!("agent address {uri:?} is not a valid URI: {e}"))?
            .tls_config(self.tls_config()?)
            .map_err(|e| format!("agent TLS configuration: {}", chain(&e)))?
            .connect_timeout(Duration::from_secs(2))
            // Find a dead agent connection between reviews rather than during one.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_lazy())
    }

    /// The channel to `uri`, created (lazily connecting) when there is none.
    pub fn channel(&self, uri: &str, now: Instant) -> Result<Channel, String> {
        let mut held = self.held();
        if let Some(h) = held.get_mut(uri) {
            h.last_used = now;
            return Ok(h.channel.clone());
        }
        let idle = self.idle_timeout;
        held.retain(|_, h| now.saturating_duration_since(h.last_used) < idle);
        while held.len() >= self.max_channels {
            let Some(oldest) = held
                .iter()
                .min_by_key(|(_, h)| h.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            held.remove(&oldest);
        }
        let channel = self.build(uri)?;
        held.insert(
            uri.to_string(),
            Held {
                channel: channel.clone(),
                last_used: now,
            },
        );
        self.metrics.channels_opened.inc();
        self.metrics.channels.set(held.len() as i64);
        Ok(channel)
    }

    /// Drops the channel to `uri` (the next check builds a new one).
    pub fn evict(&self, uri: &str) {
        let mut held = self.held();
        held.remove(uri);
        self.metrics.channels.set(held.len() as i64);
    }
}

/// `GetSnapshot` on `channel`: `budget` is sent to the agent as its deadline; the whole call,
/// connecting included, is cut at `budget + grace`.
pub async fn get_snapshot(
    channel: Channel,
    request: GetSnapshotRequest,
    budget: Duration,
    grace: Duration,
) -> Result<GetSnapshotResponse, CallError> {
    let mut client = SnapshotServiceClient::new(channel);
    let mut request = tonic::Request::new(request);
    request.set_timeout(budget);
    match tokio::time::timeout(budget + grace, client.get_snapshot(request)).await {
        Err(_) => Err(CallError::Timeout { connected: false }),
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(classify(status)),
    }
}

/// `ListSnapshots` on `channel`, same limits as [`get_snapshot`].
pub async fn list_snapshots(
    channel: Channel,
    request: ListSnapshotsRequest,
    budget: Duration,
    grace: Duration,
) -> Result<ListSnapshotsResponse, CallError> {
    let mut client = SnapshotServiceClient::new(channel);
    let mut request = tonic::Request::new(request);
    request.set_timeout(budget);
    match tokio::time::timeout(budget + grace, client.list_snapshots(request)).await {
        Err(_) => Err(CallError::Timeout { connected: false }),
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(classify(status)),
    }
}
