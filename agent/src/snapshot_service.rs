//! `longhornguard.agent.v1.SnapshotService`: answers from the engine itself (proxy
//! `SnapshotList` through the pool), within the caller's deadline.

use std::time::Duration;

use longhorn_guard_proto::VOLUME_HEAD;
use longhorn_guard_proto::agent::snapshot_service_server::SnapshotService;
use longhorn_guard_proto::agent::{
    EngineRef, EngineSnapshot, GetSnapshotRequest, GetSnapshotResponse, ListSnapshotsRequest,
    ListSnapshotsResponse,
};
use longhorn_guard_proto::imrpc::{EngineSnapshotDiskInfo, EngineSnapshotListProxyResponse};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::engine_client::{EngineClient, EngineTarget};
use crate::engine_index::EngineIndex;

/// The agent's gRPC API over an [`EngineIndex`] and an [`EngineClient`].
#[derive(Clone, Debug)]
pub struct SnapshotApi {
    index: EngineIndex,
    client: EngineClient,
    max_call_timeout: Duration,
}

impl SnapshotApi {
    pub fn new(index: EngineIndex, client: EngineClient, max_call_timeout: Duration) -> Self {
        Self {
            index,
            client,
            max_call_timeout,
        }
    }

    /// min(caller's `grpc-timeout`, configured maximum), from now.
    fn deadline(&self, metadata: &MetadataMap) -> Instant {
        let caller = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let budget = caller.map_or(self.max_call_timeout, |c| c.min(self.max_call_timeout));
        Instant::now() + budget
    }

    fn check_request(&self, namespace: &str, volume: &str) -> Result<(), Status> {
        if !namespace.is_empty() && namespace != self.index.namespace() {
            return Err(Status::invalid_argument(format!(
                "the agent on node {} serves namespace {}, not {namespace} (volume {volume})",
                self.index.node(),
                self.index.namespace()
            )));
        }
        if volume.is_empty() {
            return Err(Status::invalid_argument(format!(
                "volume name is empty (agent on node {})",
                self.index.node()
            )));
        }
        Ok(())
    }
}

fn engine_ref(target: &EngineTarget) -> EngineRef {
    EngineRef {
        engine_name: target.engine_name.clone(),
        node: target.node.clone(),
        instance_manager: target.instance_manager.clone(),
        proxy_endpoint: target.proxy_endpoint.clone(),
    }
}

/// The snapshot `name` (its key in the engine's answer) as the agent returns it. Named by the
/// key, never by the disk's own `name` field: the key is what `GetSnapshot` looks up and what
/// `volume-head` is filtered by, so a disk whose `name` disagrees with its key (found by the
/// `engine_responses` fuzz target: a disk keyed `snam-a` named `volume-head` was listed as a
/// snapshot called `volume-head`) cannot smuggle the live head or another name in.
fn snapshot_of(name: &str, disk: EngineSnapshotDiskInfo) -> EngineSnapshot {
    EngineSnapshot {
        name: name.to_string(),
        parent: disk.parent,
        removed: disk.removed,
        user_created: disk.user_created,
        created: disk.created,
        size: disk.size,
        labels: disk.labels,
    }
}

#[tonic::async_trait]
impl SnapshotService for SnapshotApi {
    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        let deadline = self.deadline(request.metadata());
        let request = request.into_inner();
        self.check_request(&request.namespace, &request.volume)?;
        if request.snapshot.is_empty() {
            return Err(Status::invalid_argument(format!(
                "snapshot name is empty (volume {}, agent on node {})",
                request.volume,
                self.index.node()
            )));
        }
        let target = self.index.lookup(&request.volume)?;
        if request.snapshot == VOLUME_HEAD {
            // The live head is in every engine's chain but is never a snapshot.
            return Ok(Response::new(GetSnapshotResponse {
                engine: Some(engine_ref(&target)),
                found: false,
                snapshot: None,
            }));
        }
        let list = self.client.snapshot_list(&target, deadline).await?;
        let snapshot = snapshot_in_list(list, &request.snapshot);
        Ok(Response::new(GetSnapshotResponse {
            engine: Some(engine_ref(&target)),
            found: snapshot.is_some(),
            snapshot,
        }))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let deadline = self.deadline(request.metadata());
        let request = request.into_inner();
        self.check_request(&request.namespace, &request.volume)?;
        let target = self.index.lookup(&request.volume)?;
        let list = self.client.snapshot_list(&target, deadline).await?;
        Ok(Response::new(ListSnapshotsResponse {
            engine: Some(engine_ref(&target)),
            snapshots: snapshots_in_list(list),
        }))
    }
}

/// `snapshot` of an engine's `SnapshotList` answer as `GetSnapshot` returns it (the caller
/// has ruled out `volume-head`). Public for fuzzing and tests.
pub fn snapshot_in_list(
    mut list: EngineSnapshotListProxyResponse,
    snapshot: &str,
) -> Option<EngineSnapshot> {
    list.disks
        .remove(snapshot)
        .map(|disk| snapshot_of(snapshot, disk))
}

/// The snapshots of an engine's `SnapshotList` answer as `ListSnapshots` returns them:
/// `volume-head` left out, sorted by name. Public for fuzzing and tests.
pub fn snapshots_in_list(list: EngineSnapshotListProxyResponse) -> Vec<EngineSnapshot> {
    let mut snapshots: Vec<EngineSnapshot> = list
        .disks
        .into_iter()
        .filter(|(name, _)| name != VOLUME_HEAD)
        .map(|(name, disk)| snapshot_of(&name, disk))
        .collect();
    snapshots.sort_by(|a, b| a.name.cmp(&b.name));
    snapshots
}

/// Parses a `grpc-timeout` header value: 1–8 digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // ASCII only: splitting off the unit byte of a non-ASCII value would not be a char boundary.
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str) -> EngineSnapshotDiskInfo {
        EngineSnapshotDiskInfo {
            name: name.into(),
            user_created: true,
            ..EngineSnapshotDiskInfo::default()
        }
    }

    /// The `engine_responses` fuzz target's crash input, reduced: the key says `snam-a`, the
    /// disk's name field says `volume-head`.
    #[test]
    fn a_disk_keyed_snam_a_but_named_volume_head_is_listed_as_snam_a() {
        let list = EngineSnapshotListProxyResponse {
            disks: [
                ("snam-a".to_string(), disk(VOLUME_HEAD)),
                ("snap-b".to_string(), disk("")),
                (VOLUME_HEAD.to_string(), disk(VOLUME_HEAD)),
            ]
            .into(),
        };
        let names: Vec<String> = snapshots_in_list(list.clone())
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["snam-a", "snap-b"]);
        let got = snapshot_in_list(list.clone(), "snam-a").map(|s| s.name);
        assert_eq!(got.as_deref(), Some("snam-a"));
        assert_eq!(snapshot_in_list(list, "snap-c"), None);
    }

    #[test]
    fn grpc_timeout_header_values() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}
