//! `EngineClient`: the engine-proxy RPCs the guard needs, over the [`LeasePool`], with
//! `ProxyEngineRequest` filled exactly as longhorn-manager fills it.

use longhorn_guard_proto::imrpc::proxy_engine_service_client::ProxyEngineServiceClient;
use longhorn_guard_proto::imrpc::{
    BackendStoreDriver, DataEngine, EngineSnapshotBackupStatusProxyResponse,
    EngineSnapshotBackupStatusRequest, EngineSnapshotListProxyResponse, EngineVersionProxyResponse,
    EngineVolumeGetProxyResponse, ProxyEngineRequest,
};
use std::future::Future;
use tokio::time::Instant;

use tonic::Status;
use tonic::transport::Channel;

use crate::pool::LeasePool;

/// One engine as seen through one instance manager's proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTarget {
    /// `<InstanceManager.status.ip>:8501`: where the call is dialled.
    pub proxy_endpoint: String,
    /// InstanceManager CR name.
    pub instance_manager: String,
    /// Node the engine runs on (`Engine.spec.nodeID`).
    pub node: String,
    /// Engine CR `metadata.name`.
    pub engine_name: String,
    /// Engine `spec.volumeName`.
    pub volume_name: String,
    /// `<Engine.status.storageIP>:<Engine.status.port>`: the engine process itself.
    pub engine_address: String,
    /// Engine `spec.dataEngine` (`v1` / `v2`).
    pub data_engine: String,
}

/// `DATA_ENGINE_V2` when the data-engine string ends in `v2`, else `DATA_ENGINE_V1` (as
/// longhorn-manager's `getDataEngine` does).
pub fn data_engine_of(data_engine: &str) -> DataEngine {
    if data_engine.ends_with("v2") {
        DataEngine::V2
    } else {
        DataEngine::V1
    }
}

impl EngineTarget {
    /// The request longhorn-manager sends for this engine; `backend_store_driver` carries the
    /// same number as `data_engine`.
    pub fn proxy_request(&self) -> ProxyEngineRequest {
        let data_engine = data_engine_of(&self.data_engine);
        let backend_store_driver = match data_engine {
            DataEngine::V2 => BackendStoreDriver::V2,
            DataEngine::V1 => BackendStoreDriver::V1,
        };
        ProxyEngineRequest {
            address: self.engine_address.clone(),
            backend_store_driver: backend_store_driver as i32,
            engine_name: self.engine_name.clone(),
            volume_name: self.volume_name.clone(),
            data_engine: data_engine as i32,
        }
    }

    /// Prefixes `status` with the engine and volume, keeping its code.
    fn annotate(&self, status: Status) -> Status {
        Status::new(
            status.code(),
            format!(
                "engine {} of volume {} (engine address {}, node {}): {}",
                self.engine_name,
                self.volume_name,
                self.engine_address,
                self.node,
                status.message()
            ),
        )
    }

    /// The Go client refuses empty names / address before dialling; so do we.
    fn check(&self, method: &str) -> Result<(), Status> {
        let missing: Vec<&str> = [
            ("engine name", &self.engine_name),
            ("volume name", &self.volume_name),
            ("engine address", &self.engine_address),
            ("proxy endpoint", &self.proxy_endpoint),
        ]
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(n, _)| *n)
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Status::invalid_argument(format!(
                "{method} for engine {:?} of volume {:?}: missing {}",
                self.engine_name,
                self.volume_name,
                missing.join(", ")
            )))
        }
    }
}

/// Engine-proxy RPCs through a [`LeasePool`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineClient {
    pool: LeasePool,
}

impl EngineClient {
    pub fn new(pool: LeasePool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &LeasePool {
        &self.pool
    }

    /// `SnapshotList`: the chain of the first RW replica, keyed by snapshot name, including
    /// `volume-head`.
    pub async fn snapshot_list(
        &self,
        target: &EngineTarget,
        deadline: Instant,
    ) -> Result<EngineSnapshotListProxyResponse, Status> {
        const METHOD: &str = "SnapshotList";
        target.check(METHOD)?;
        let request = target.proxy_request();
        self.proxy_call(
            target,
            METHOD,
            deadline,
            request,
            |mut client, request| async move { client.snapshot_list(request).await },
        )
        .await
    }

    pub async fn volume_get(
        &self,
        target: &EngineTarget,
        deadline: Instant,
    ) -> Result<EngineVolumeGetProxyResponse, Status> {
        const METHOD: &str = "VolumeGet";
        target.check(METHOD)?;
        let request = target.proxy_request();
        self.proxy_call(
            target,
            METHOD,
            deadline,
            request,
            |mut client, request| async move { client.volume_get(request).await },
        )
        .await
    }

    /// `ServerVersionGet`, sent like longhorn-manager sends it: only `address` is set.
    pub async fn server_version_get(
        &self,
        target: &EngineTarget,
        deadline: Instant,
    ) -> Result<EngineVersionProxyResponse, Status> {
        const METHOD: &str = "ServerVersionGet";
        target.check(METHOD)?;
        let request = ProxyEngineRequest {
            address: target.engine_address.clone(),
            ..ProxyEngineRequest::default()
        };
        self.proxy_call(
            target,
            METHOD,
            deadline,
            request,
            |mut client, request| async move { client.server_version_get(request).await },
        )
        .await
    }

    /// `SnapshotBackupStatus` of `backup_name` on the replica that runs it (`replica_address` as
    /// returned by `SnapshotBackup`; `replica_name` is sent empty, as longhorn-manager does).
    pub async fn snapshot_backup_status(
        &self,
        target: &EngineTarget,
        backup_name: &str,
        replica_address: &str,
        deadline: Instant,
    ) -> Result<EngineSnapshotBackupStatusProxyResponse, Status> {
        const METHOD: &str = "SnapshotBackupStatus";
        target.check(METHOD)?;
        if backup_name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{METHOD} for engine {} of volume {}: backup name is empty",
                target.engine_name, target.volume_name
            )));
        }
        let request = EngineSnapshotBackupStatusRequest {
            proxy_engine_request: Some(target.proxy_request()),
            backup_name: backup_name.to_string(),
            replica_address: replica_address.to_string(),
            replica_name: String::new(),
        };
        self.proxy_call(
            target,
            METHOD,
            deadline,
            request,
            |mut client, request| async move { client.snapshot_backup_status(request).await },
        )
        .await
    }

    /// One proxy RPC under a lease: the lease's time left becomes the call's `grpc-timeout`,
    /// errors are annotated with the engine, volume and endpoint.
    async fn proxy_call<Req, Resp, F, Fut>(
        &self,
        target: &EngineTarget,
        method: &'static str,
        deadline: Instant,
        request: Req,
        rpc: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(ProxyEngineServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.pool
            .call(
                &target.proxy_endpoint,
                method,
                deadline,
                |channel, timeout| async move {
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(timeout);
                    rpc(ProxyEngineServiceClient::new(channel), request)
                        .await
                        .map(tonic::Response::into_inner)
                },
            )
            .await
            .map_err(|s| target.annotate(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(data_engine: &str) -> EngineTarget {
        EngineTarget {
            proxy_endpoint: "10.42.1.5:8501".into(),
            instance_manager: "instance-manager-abc".into(),
            node: "node-1".into(),
            engine_name: "pvc-1-e-0".into(),
            volume_name: "pvc-1".into(),
            engine_address: "10.42.1.17:10010".into(),
            data_engine: data_engine.into(),
        }
    }

    #[test]
    fn proxy_request_matches_longhorn_reference_bytes() {
        use prost::Message as _;
        // §1.11: address "10.42.1.17:10010", engine "pvc-1-e-0", volume "pvc-1", V2 / v2.
        let bytes = target("v2").proxy_request().encode_to_vec();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0a1031302e34322e312e31373a313030313010011a097076632d312d652d3022057076632d312801"
        );
        let v1 = target("v1").proxy_request();
        assert_eq!(v1.data_engine, DataEngine::V1 as i32);
        assert_eq!(v1.backend_store_driver, BackendStoreDriver::V1 as i32);
        assert_eq!(data_engine_of(""), DataEngine::V1);
    }
}
