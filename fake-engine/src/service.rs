//! `imrpc.ProxyEngineService` over the fake's state, answering like Longhorn v1.7.2's proxy (reference
//! §1.10): identity checks, error codes and wording, each engine's version and volume, its replicas,
//! the snapshot list of its first RW replica with `volume-head`, backup status.

use std::future;

use longhorn_guard_proto::VOLUME_HEAD;
use longhorn_guard_proto::imrpc::proxy_engine_service_server::ProxyEngineService;
use longhorn_guard_proto::imrpc::{
    EngineReplicaListProxyResponse, EngineSnapshotBackupProxyResponse, EngineSnapshotBackupRequest,
    EngineSnapshotBackupStatusProxyResponse, EngineSnapshotBackupStatusRequest,
    EngineSnapshotListProxyResponse, EngineVersionProxyResponse, EngineVolumeGetProxyResponse,
    ProxyEngineRequest,
};
use tonic::{Code, Request, Response, Status};

use crate::conn::ConnControl;
use crate::fault::{Action, Method};
use crate::state::{Backup, Data, Engine, FakeEngine};

pub(crate) struct ProxyService {
    engine: FakeEngine,
}

impl ProxyService {
    pub(crate) fn new(engine: FakeEngine) -> Self {
        ProxyService { engine }
    }

    /// Applies the fault configured for `method` to this call. `Ok` = go on with normal handling.
    async fn apply_fault<T>(&self, method: Method, req: &Request<T>) -> Result<(), Status> {
        match self.engine.action_for(method) {
            Action::Proceed => Ok(()),
            Action::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Action::Error(code, message) => Err(Status::new(code, message)),
            Action::BlackHole => future::pending().await,
            Action::Reset => match req.extensions().get::<ConnControl>() {
                Some(conn) => {
                    conn.reset();
                    // The connection task drops the connection, which cancels this call.
                    future::pending().await
                }
                None => Err(Status::unavailable("fake-engine: connection reset")),
            },
            Action::GoAway => {
                if let Some(conn) = req.extensions().get::<ConnControl>() {
                    conn.go_away();
                }
                Err(Status::unavailable(
                    "fake-engine: connection going away (HTTP/2 GOAWAY sent)",
                ))
            }
        }
    }
}

/// How the real proxy wraps the engine-side error of each method (reference §1.10).
#[derive(Clone, Copy)]
enum Wrap {
    VersionDetail,
    Volume,
    ListReplicas,
    CreateBackup,
}

fn wrap(kind: Wrap, address: &str, code: Code, inner: &str) -> Status {
    match kind {
        Wrap::VersionDetail => Status::new(code, format!("failed to get version detail: {inner}")),
        Wrap::Volume => Status::new(code, format!("failed to get volume {address}: {inner}")),
        Wrap::ListReplicas => Status::new(
            code,
            format!("failed to list replicas for volume {address}: {inner}"),
        ),
        // Every error inside SnapshotBackup comes back as INTERNAL.
        Wrap::CreateBackup => Status::internal(format!("failed to create backup: {inner}")),
    }
}

/// The proxy's checks before it talks to the engine at `req.address`: data engine, reachability, then
/// volume name and engine (instance) name, an empty name skipping its check.
fn find_engine<'a>(
    data: &'a mut Data,
    req: &ProxyEngineRequest,
    kind: Wrap,
) -> Result<&'a mut Engine, Status> {
    if !(0..=1).contains(&req.data_engine) {
        return Err(Status::unimplemented(format!(
            "unsupported data engine {}",
            req.data_engine
        )));
    }
    let address = req.address.as_str();
    let Some(engine) = data.engines.get_mut(address) else {
        return Err(wrap(
            kind,
            address,
            Code::Unavailable,
            &format!("dial tcp {address}: connect: connection refused"),
        ));
    };
    let spec = &engine.spec;
    if !req.volume_name.is_empty()
        && !spec.volume_name.is_empty()
        && req.volume_name != spec.volume_name
    {
        return Err(wrap(
            kind,
            address,
            Code::FailedPrecondition,
            &format!(
                "incorrect volume name {}; check controller address",
                req.volume_name
            ),
        ));
    }
    if !req.engine_name.is_empty()
        && !spec.engine_name.is_empty()
        && req.engine_name != spec.engine_name
    {
        return Err(wrap(
            kind,
            address,
            Code::FailedPrecondition,
            &format!(
                "incorrect instance name {}; check controller address",
                req.engine_name
            ),
        ));
    }
    Ok(engine)
}

/// Longhorn reads the chain of the first RW replica; without one the list is empty.
fn snapshot_list(engine: &Engine) -> EngineSnapshotListProxyResponse {
    EngineSnapshotListProxyResponse {
        disks: engine
            .first_rw()
            .map(|r| r.chain.disks())
            .unwrap_or_default(),
    }
}

fn backup_status(
    engine: &mut Engine,
    req: &EngineSnapshotBackupStatusRequest,
    polls_to_complete: u32,
) -> EngineSnapshotBackupStatusProxyResponse {
    let volume = engine.spec.volume_name.clone();
    let replica = engine.replica_address();
    let Some(b) = engine.backups.get_mut(&req.backup_name) else {
        let on = if req.replica_address.is_empty() {
            replica
        } else {
            req.replica_address.clone()
        };
        return EngineSnapshotBackupStatusProxyResponse {
            error: format!(
                "Failed to get backup status on {on} for {name}: rpc error: code = Unknown desc = backup not found {name}",
                name = req.backup_name
            ),
            ..Default::default()
        };
    };
    b.polls = b.polls.saturating_add(1);
    let progress = if polls_to_complete == 0 {
        100
    } else {
        (u64::from(b.polls) * 100 / u64::from(polls_to_complete)).min(100)
    };
    let progress = i32::try_from(progress).unwrap_or(100);
    let mut resp = EngineSnapshotBackupStatusProxyResponse {
        progress,
        snapshot_name: b.snapshot.clone(),
        replica_address: b.replica.clone(),
        ..Default::default()
    };
    if let Some(error) = &b.error {
        resp.state = "error".to_string();
        resp.error = error.clone();
    } else if progress >= 100 {
        resp.state = "complete".to_string();
        resp.backup_url = format!("{}?backup={}&volume={volume}", b.target, req.backup_name);
    } else {
        resp.state = "in_progress".to_string();
    }
    resp
}

fn start_backup(
    engine: &mut Engine,
    req: &EngineSnapshotBackupRequest,
) -> Result<EngineSnapshotBackupProxyResponse, Status> {
    let fail = |inner: String| {
        Err(Status::internal(format!(
            "failed to create backup: {inner}"
        )))
    };
    if req.snapshot_name == VOLUME_HEAD {
        return fail("cannot backup the head disk in the chain".to_string());
    }
    let Some(first_rw) = engine.first_rw() else {
        return fail("cannot find an available replica for backup".to_string());
    };
    let replica = first_rw.address.clone();
    if !first_rw.chain.contains(&req.snapshot_name) {
        return fail(format!(
            "snapshot disk volume-snap-{}.img not found on replica {replica}",
            req.snapshot_name
        ));
    }
    if req.backup_name.is_empty() {
        return fail("backup name is required".to_string());
    }
    let is_incremental = !engine.backups.is_empty();
    engine.backups.insert(
        req.backup_name.clone(),
        Backup {
            snapshot: req.snapshot_name.clone(),
            target: req.backup_target.clone(),
            replica: replica.clone(),
            polls: 0,
            error: None,
        },
    );
    Ok(EngineSnapshotBackupProxyResponse {
        backup_id: req.backup_name.clone(),
        replica,
        is_incremental,
    })
}

#[tonic::async_trait]
impl ProxyEngineService for ProxyService {
    async fn server_version_get(
        &self,
        request: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineVersionProxyResponse>, Status> {
        let _call = self.engine.begin_call(Method::ServerVersionGet.rpc_name());
        self.apply_fault(Method::ServerVersionGet, &request).await?;
        let mut data = self.engine.data();
        Ok(Response::new(EngineVersionProxyResponse {
            version: Some(
                find_engine(&mut data, request.get_ref(), Wrap::VersionDetail)?
                    .version
                    .to_proto(),
            ),
        }))
    }

    async fn volume_get(
        &self,
        request: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineVolumeGetProxyResponse>, Status> {
        let _call = self.engine.begin_call(Method::VolumeGet.rpc_name());
        self.apply_fault(Method::VolumeGet, &request).await?;
        let mut data = self.engine.data();
        let engine = find_engine(&mut data, request.get_ref(), Wrap::Volume)?;
        Ok(Response::new(EngineVolumeGetProxyResponse {
            volume: Some(engine.volume()),
        }))
    }

    async fn snapshot_list(
        &self,
        request: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineSnapshotListProxyResponse>, Status> {
        let _call = self.engine.begin_call(Method::SnapshotList.rpc_name());
        self.apply_fault(Method::SnapshotList, &request).await?;
        let mut data = self.engine.data();
        let engine = find_engine(&mut data, request.get_ref(), Wrap::ListReplicas)?;
        Ok(Response::new(snapshot_list(engine)))
    }

    async fn snapshot_backup(
        &self,
        request: Request<EngineSnapshotBackupRequest>,
    ) -> Result<Response<EngineSnapshotBackupProxyResponse>, Status> {
        let _call = self.engine.begin_call(Method::SnapshotBackup.rpc_name());
        self.apply_fault(Method::SnapshotBackup, &request).await?;
        let req = request.get_ref();
        let proxy = req.proxy_engine_request.clone().unwrap_or_default();
        let mut data = self.engine.data();
        let engine = find_engine(&mut data, &proxy, Wrap::CreateBackup)?;
        start_backup(engine, req).map(Response::new)
    }

    async fn snapshot_backup_status(
        &self,
        request: Request<EngineSnapshotBackupStatusRequest>,
    ) -> Result<Response<EngineSnapshotBackupStatusProxyResponse>, Status> {
        let _call = self
            .engine
            .begin_call(Method::SnapshotBackupStatus.rpc_name());
        self.apply_fault(Method::SnapshotBackupStatus, &request)
            .await?;
        let req = request.get_ref();
        let proxy = req.proxy_engine_request.clone().unwrap_or_default();
        let mut data = self.engine.data();
        let polls = data.backup_polls_to_complete;
        let engine = find_engine(&mut data, &proxy, Wrap::ListReplicas)?;
        Ok(Response::new(backup_status(engine, req, polls)))
    }

    async fn replica_list(
        &self,
        request: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineReplicaListProxyResponse>, Status> {
        let _call = self.engine.begin_call(Method::ReplicaList.rpc_name());
        self.apply_fault(Method::ReplicaList, &request).await?;
        let mut data = self.engine.data();
        let engine = find_engine(&mut data, request.get_ref(), Wrap::ListReplicas)?;
        Ok(Response::new(EngineReplicaListProxyResponse {
            replica_list: Some(engine.replica_list()),
        }))
    }
}
