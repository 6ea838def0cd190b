//! The agent's `SnapshotService` handlers (`GetSnapshot`, `ListSnapshots`) with arbitrary
//! requests and `grpc-timeout` metadata against an index with no engines (so no engine is
//! ever dialled), plus the pure `parse_grpc_timeout` on the header values tonic can deliver
//! (visible ASCII, as `HeaderValue::to_str` enforces).
//!
//! Input: `TIMEOUT \0 NAMESPACE \0 VOLUME \0 SNAPSHOT`.
//! Invariants: no panic; every answer is an error status with a message (no engine exists);
//! an empty volume/snapshot or a foreign namespace is InvalidArgument.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use longhorn_guard_agent::snapshot_service::parse_grpc_timeout;
use longhorn_guard_agent::{
    EngineClient, EngineIndex, LeasePool, PoolConfig, PoolMetrics, SnapshotApi,
};
use longhorn_guard_proto::agent::snapshot_service_server::SnapshotService;
use longhorn_guard_proto::agent::{GetSnapshotRequest, ListSnapshotsRequest};
use tonic::Code;

const NS: &str = "longhorn-system";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn api() -> &'static SnapshotApi {
    static API: OnceLock<SnapshotApi> = OnceLock::new();
    API.get_or_init(|| {
        runtime().block_on(async {
            let pool = LeasePool::new(PoolConfig::default(), Arc::new(PoolMetrics::new()))
                .expect("default pool config");
            let index = EngineIndex::new("node-1", NS, 8501);
            index.mark_synced();
            SnapshotApi::new(index, EngineClient::new(pool), Duration::from_millis(200))
        })
    })
}

/// The request with `grpc-timeout` set from the fuzz bytes, when they are a valid value.
fn with_meta<T>(mut req: tonic::Request<T>, timeout: &[u8]) -> tonic::Request<T> {
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(timeout) {
        req.metadata_mut().insert("grpc-timeout", v);
    }
    req
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0);
    let timeout = parts.next().unwrap_or_default();
    let namespace = text(parts.next().unwrap_or_default());
    let volume = text(parts.next().unwrap_or_default());
    let snapshot = text(parts.next().unwrap_or_default());

    // What tonic hands the handler: only visible-ASCII header values reach `to_str`.
    if let Ok(s) = std::str::from_utf8(timeout)
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        let _ = parse_grpc_timeout(s);
    }

    let api = api();
    let get = runtime().block_on(api.get_snapshot(with_meta(
        tonic::Request::new(GetSnapshotRequest {
            namespace: namespace.clone(),
            volume: volume.clone(),
            snapshot: snapshot.clone(),
        }),
        timeout,
    )));
    let status = get
        .err()
        .expect("no engine is indexed: GetSnapshot must fail");
    assert!(!status.message().is_empty());
    let invalid = volume.is_empty() || (!namespace.is_empty() && namespace != NS);
    if invalid || snapshot.is_empty() {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let list = runtime().block_on(api.list_snapshots(with_meta(
        tonic::Request::new(ListSnapshotsRequest { namespace, volume }),
        timeout,
    )));
    let status = list
        .err()
        .expect("no engine is indexed: ListSnapshots must fail");
    assert!(!status.message().is_empty());
    if invalid {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
});
