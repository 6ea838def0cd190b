//! gRPC definitions for longhorn-guard, compiled from `proto/` at build time.
//!
//! - [`imrpc`] and [`ptypes`]: the subset of Longhorn's instance-manager engine-proxy API
//!   (`imrpc.ProxyEngineService`) the guard uses, wire-compatible with Longhorn v1.7.2+.
//! - [`agent`]: the guard agent's own API (`longhornguard.agent.v1.SnapshotService`).
//!
//! This crate holds generated types and a few constants only: no I/O, no policy.

#[allow(clippy::all, clippy::pedantic)]
pub mod ptypes {
    tonic::include_proto!("ptypes");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod imrpc {
    tonic::include_proto!("imrpc");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod agent {
    tonic::include_proto!("longhornguard.agent.v1");
}

/// Port of the engine proxy on every instance manager (Longhorn's process-manager port + 1).
pub const ENGINE_PROXY_PORT: u16 = 8501;

/// Name of the live head in the engine's snapshot chain; never a snapshot.
pub const VOLUME_HEAD: &str = "volume-head";

/// TLS peer name Longhorn's gRPC servers and clients use when `longhorn-grpc-tls` is mounted.
pub const LONGHORN_GRPC_PEER_NAME: &str = "longhorn-backend.longhorn-system";
