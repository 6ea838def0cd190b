//! longhorn-guard agent: the per-node component through which the guard talks gRPC to Longhorn's
//! engine proxies (instance managers on `ip:8501`), and the `SnapshotService` it serves.
//!
//! Every engine call goes through a [`LeasePool`]: bounded channels per endpoint, bounded
//! concurrent calls, a deadline on every call, a circuit breaker, and exact opened/closed and
//! acquired/released accounting exported as metrics. This crate must not open a gRPC client per
//! call, hold a call past its deadline, ping faster than Longhorn's 10 s keepalive minimum, or
//! write to the cluster beyond its node's verdict Lease and its Events (it reads Engines and
//! InstanceManagers).

pub mod cli;
pub mod config;
pub mod connect;
pub mod engine_client;
pub mod engine_index;
pub mod metrics;
pub mod node_verdict;
pub mod pool;
pub mod server;
pub mod snapshot_service;
mod tls_server;

pub use config::{AgentConfig, ConfigError, PoolConfig, parse_process_match};
pub use engine_client::{EngineClient, EngineTarget};
pub use engine_index::{EngineIndex, LookupError};
pub use longhorn_guard_manager_monitor::{ManagerMonitorConfig, ProcessMatch};
/// The endpoint circuit breaker (shared with the webhook).
pub use longhorn_guard_runtime::breaker;
pub use metrics::PoolMetrics;
pub use node_verdict::{NodeVerdictConfig, VerdictState};
pub use pool::{EndpointStatus, LeasePool, PoolLiveness};
pub use server::{Agent, run};
pub use snapshot_service::SnapshotApi;
