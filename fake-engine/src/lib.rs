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
//! It answers like Longhorn v1.7.2's proxy where the project's reference says how (error codes and
//! message wording, the `volume-head` entry, backup status), and nothing more: it is not a storage engine
//! and must never listen on a non-loopback address.

mod fault;
mod health;
mod server;
mod service;
mod state;
mod tasks;
mod tls;

pub use fault::{Fault, Method};
pub use server::{RunningServer, serve, serve_tls};
pub use state::{EngineSpec, FakeEngine, SnapshotSpec, Stats, WeakFakeEngine};
pub use tls::{FakeTls, LONGHORN_PEER_NAME};
