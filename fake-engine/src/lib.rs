//! A scriptable stand-in for one Longhorn instance-manager engine proxy (`imrpc.ProxyEngineService` plus
//! `grpc.health.v1.Health`), for tests and benchmarks of longhorn-guard.
//!
//! - [`FakeEngine`] is the shared, scriptable state: which engines the proxy can reach, their snapshot
//!   chains and backups, per-method [`Fault`]s, and call/connection counters ([`Stats`]).
//! - [`serve`] runs it on a loopback address with its own accept loop, so faults can act on the TCP
//!   connection that carries a call (reset it, send GOAWAY); [`serve_tls`] does the same over TLS
//!   configured like Longhorn's (TLS 1.3, mandatory client certificate named
//!   `longhorn-backend.longhorn-system`).
//!
//! - [`Scenario`] is the one format (YAML, documented in `fake-engine/SCENARIOS.md`) that says
//!   which engines a fake serves: version (presets of real releases, [`EngineVersion`]), volume,
//!   replicas and their modes, snapshot chains with branches, removed snapshots, labels, sizes
//!   and times, checked for consistency before anything is served.
//!
//! It answers like Longhorn v1.7.2's proxy where the project's reference says how (error codes and
//! message wording, versions, volumes, replicas, the first RW replica's chain with `volume-head`,
//! backup status, the keepalive enforcement of [`KeepalivePolicy::LONGHORN`]), and nothing more: it
//! is not a storage engine and must never listen on a non-loopback address.

mod conn;
mod fault;
mod health;
mod keepalive;
mod scenario;
mod server;
mod service;
mod state;
mod tasks;
mod tls;
mod version;

pub use fault::{Fault, Method};
pub use keepalive::KeepalivePolicy;
pub use scenario::{
    EngineScenario, HeadScenario, ReplicaScenario, Scenario, ScenarioError, SnapshotScenario,
    VersionChoice,
};
pub use server::{RunningServer, serve, serve_tls};
pub use state::{
    ConnectionInfo, DEFAULT_SNAPSHOT_MAX_COUNT, DEFAULT_VOLUME_SIZE, EngineSpec, FRONTEND_BLOCKDEV,
    FakeEngine, ReplicaMode, SnapshotSpec, Stats, WeakFakeEngine,
};
pub use tls::{FakeTls, LONGHORN_PEER_NAME};
pub use version::{EngineVersion, VERSION_PRESETS};
