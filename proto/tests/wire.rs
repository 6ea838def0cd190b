//! Wire compatibility with Longhorn's engine proxy: the hex examples of reference §1.11 (encoded with
//! stubs generated from Longhorn's own proto at types@3640f2357238) must decode to the documented values
//! with our prost types and re-encode to the same bytes; and every RPC must travel on the HTTP/2 path
//! `/imrpc.ProxyEngineService/<Rpc>`, on the client side and on the server side.
//!
//! prost writes fields in field-number order (prost-derive sorts them by tag), which is also the order of
//! the reference bytes, so byte equality holds even for `EngineSnapshotBackupRequest`, whose `envs`
//! (field 8) is declared first in the .proto.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use longhorn_guard_proto::imrpc::{
    BackendStoreDriver, DataEngine, EngineReplicaListProxyResponse,
    EngineSnapshotBackupProxyResponse, EngineSnapshotBackupRequest,
    EngineSnapshotBackupStatusProxyResponse, EngineSnapshotBackupStatusRequest,
    EngineSnapshotDiskInfo, EngineSnapshotListProxyResponse, EngineVersionProxyResponse,
    EngineVolumeGetProxyResponse, ProxyEngineRequest,
    proxy_engine_service_client::ProxyEngineServiceClient,
    proxy_engine_service_server::{ProxyEngineService, ProxyEngineServiceServer},
};
use prost::Message;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

const PROXY_ENGINE_REQUEST: &str =
    "0a1031302e34322e312e31373a313030313010011a097076632d312d652d3022057076632d312801";
const SNAPSHOT_LIST_RESPONSE: &str = "0a580a06736e61702d61124e0a06736e61702d611a0f0a0b766f6c756d652d68656164100128013214323032362d31312d32345431303a30303a30305a3a043430393642150a0c526563757272696e674a6f6212056461696c79";
const SNAPSHOT_BACKUP_REQUEST: &str = "0a240a1031302e34322e312e31373a31303031301a097076632d312d652d3022057076632d3112176261636b75702d303132333435363738396162636465661a06736e61702d61221273333a2f2f626b4075732d656173742d312f42144157535f524547494f4e3d75732d656173742d314a036c7a345002";
const SNAPSHOT_BACKUP_STATUS_RESPONSE: &str = "0a3e73333a2f2f626b4075732d656173742d312f3f6261636b75703d6261636b75702d3031323334353637383961626364656626766f6c756d653d7076632d3118642206736e61702d612a08636f6d706c65746532167463703a2f2f31302e34322e312e31383a3130303030";

/// Decodes `hex`, checks it re-encodes to the very same bytes, and returns the message.
fn decode_roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(hex_bytes: &str) -> M {
    let bytes = hex::decode(hex_bytes).expect("reference hex is valid");
    let msg = M::decode(bytes.as_slice()).expect("reference bytes decode");
    let encoded = msg.encode_to_vec();
    assert_eq!(
        hex::encode(&encoded),
        hex_bytes,
        "re-encoding {msg:?} must give the reference bytes"
    );
    assert_eq!(M::decode(encoded.as_slice()).expect("re-decode"), msg);
    msg
}

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn proxy_engine_request_matches_reference_bytes() {
    let req: ProxyEngineRequest = decode_roundtrip(PROXY_ENGINE_REQUEST);
    assert_eq!(req.address, "10.42.1.17:10010");
    assert_eq!(req.engine_name, "pvc-1-e-0");
    assert_eq!(req.volume_name, "pvc-1");
    assert_eq!(req.data_engine(), DataEngine::V2);
    assert_eq!(req.data_engine, 1);
    assert_eq!(req.backend_store_driver(), BackendStoreDriver::V2);
    assert_eq!(req.backend_store_driver, 1);
    // Built from the values (not from the bytes), the message encodes to the same bytes.
    let built = ProxyEngineRequest {
        address: "10.42.1.17:10010".into(),
        backend_store_driver: BackendStoreDriver::V2 as i32,
        engine_name: "pvc-1-e-0".into(),
        volume_name: "pvc-1".into(),
        data_engine: DataEngine::V2 as i32,
    };
    assert_eq!(built, req);
    assert_eq!(hex::encode(built.encode_to_vec()), PROXY_ENGINE_REQUEST);
}

#[test]
fn snapshot_list_response_matches_reference_bytes() {
    let resp: EngineSnapshotListProxyResponse = decode_roundtrip(SNAPSHOT_LIST_RESPONSE);
    assert_eq!(resp.disks.len(), 1);
    let disk = resp.disks.get("snap-a").expect("key snap-a");
    assert_eq!(disk.name, "snap-a");
    assert_eq!(disk.parent, "");
    assert_eq!(
        disk.children,
        HashMap::from([("volume-head".to_string(), true)])
    );
    assert!(!disk.removed);
    assert!(disk.user_created);
    assert_eq!(disk.created, "2026-11-24T10:00:00Z");
    assert_eq!(disk.size, "4096");
    assert_eq!(disk.labels, strings(&[("RecurringJob", "daily")]));

    let built = EngineSnapshotListProxyResponse {
        disks: HashMap::from([(
            "snap-a".to_string(),
            EngineSnapshotDiskInfo {
                name: "snap-a".into(),
                parent: String::new(),
                children: HashMap::from([("volume-head".to_string(), true)]),
                removed: false,
                user_created: true,
                created: "2026-11-24T10:00:00Z".into(),
                size: "4096".into(),
                labels: strings(&[("RecurringJob", "daily")]),
            },
        )]),
    };
    assert_eq!(built, resp);
    assert_eq!(hex::encode(built.encode_to_vec()), SNAPSHOT_LIST_RESPONSE);
}

#[test]
fn snapshot_backup_request_matches_reference_bytes() {
    let req: EngineSnapshotBackupRequest = decode_roundtrip(SNAPSHOT_BACKUP_REQUEST);
    let proxy = req
        .proxy_engine_request
        .as_ref()
        .expect("proxy_engine_request set");
    assert_eq!(proxy.address, "10.42.1.17:10010");
    assert_eq!(proxy.engine_name, "pvc-1-e-0");
    assert_eq!(proxy.volume_name, "pvc-1");
    assert_eq!(proxy.data_engine(), DataEngine::V1);
    assert_eq!(proxy.backend_store_driver(), BackendStoreDriver::V1);
    assert_eq!(req.envs, vec!["AWS_REGION=us-east-1".to_string()]);
    assert_eq!(req.backup_name, "backup-0123456789abcdef");
    assert_eq!(req.snapshot_name, "snap-a");
    assert_eq!(req.backup_target, "s3://bk@us-east-1/");
    assert_eq!(req.compression_method, "lz4");
    assert_eq!(req.concurrent_limit, 2);
    assert_eq!(req.backing_image_name, "");
    assert_eq!(req.backing_image_checksum, "");
    assert_eq!(req.storage_class_name, "");
    assert!(req.labels.is_empty());
    assert!(req.parameters.is_empty());

    let built = EngineSnapshotBackupRequest {
        proxy_engine_request: Some(ProxyEngineRequest {
            address: "10.42.1.17:10010".into(),
            engine_name: "pvc-1-e-0".into(),
            volume_name: "pvc-1".into(),
            ..Default::default()
        }),
        envs: vec!["AWS_REGION=us-east-1".into()],
        backup_name: "backup-0123456789abcdef".into(),
        snapshot_name: "snap-a".into(),
        backup_target: "s3://bk@us-east-1/".into(),
        compression_method: "lz4".into(),
        concurrent_limit: 2,
        ..Default::default()
    };
    assert_eq!(built, req);
    // envs is declared before field 2 in the .proto; prost still writes it after field 4 (tag order),
    // exactly where the reference bytes have it (0x42 = field 8, wire type 2).
    assert_eq!(hex::encode(built.encode_to_vec()), SNAPSHOT_BACKUP_REQUEST);
}

#[test]
fn snapshot_backup_status_response_matches_reference_bytes() {
    let resp: EngineSnapshotBackupStatusProxyResponse =
        decode_roundtrip(SNAPSHOT_BACKUP_STATUS_RESPONSE);
    assert_eq!(
        resp.backup_url,
        "s3://bk@us-east-1/?backup=backup-0123456789abcdef&volume=pvc-1"
    );
    assert_eq!(resp.error, "");
    assert_eq!(resp.progress, 100);
    assert_eq!(resp.snapshot_name, "snap-a");
    assert_eq!(resp.state, "complete");
    assert_eq!(resp.replica_address, "tcp://10.42.1.18:10000");

    let built = EngineSnapshotBackupStatusProxyResponse {
        backup_url: "s3://bk@us-east-1/?backup=backup-0123456789abcdef&volume=pvc-1".into(),
        error: String::new(),
        progress: 100,
        snapshot_name: "snap-a".into(),
        state: "complete".into(),
        replica_address: "tcp://10.42.1.18:10000".into(),
    };
    assert_eq!(built, resp);
    assert_eq!(
        hex::encode(built.encode_to_vec()),
        SNAPSHOT_BACKUP_STATUS_RESPONSE
    );
}

#[test]
fn decoding_accepts_fields_out_of_order() {
    // Same ProxyEngineRequest with its fields written in reverse order: decoders must accept any order.
    let ordered = hex::decode(PROXY_ENGINE_REQUEST).expect("hex");
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut rest = ordered.as_slice();
    while !rest.is_empty() {
        let tag = rest[0];
        let len = match tag & 7 {
            0 => 2,                        // one-byte varint value
            2 => 2 + usize::from(rest[1]), // one-byte length
            other => panic!("unexpected wire type {other}"),
        };
        fields.push(&rest[..len]);
        rest = &rest[len..];
    }
    assert_eq!(fields.len(), 5);
    let reversed: Vec<u8> = fields
        .iter()
        .rev()
        .flat_map(|f| f.iter().copied())
        .collect();
    assert_ne!(reversed, ordered);
    let a = ProxyEngineRequest::decode(ordered.as_slice()).expect("decode");
    let b = ProxyEngineRequest::decode(reversed.as_slice()).expect("decode");
    assert_eq!(a, b);
}

/// Server half of the path test: records which handler the generated router dispatched to.
#[derive(Default, Clone)]
struct RecordingEngine {
    handled: Arc<Mutex<Vec<&'static str>>>,
}

impl RecordingEngine {
    fn record(&self, rpc: &'static str) {
        self.handled.lock().expect("lock").push(rpc);
    }
}

#[tonic::async_trait]
impl ProxyEngineService for RecordingEngine {
    async fn server_version_get(
        &self,
        _: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineVersionProxyResponse>, Status> {
        self.record("ServerVersionGet");
        Ok(Response::new(Default::default()))
    }
    async fn volume_get(
        &self,
        _: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineVolumeGetProxyResponse>, Status> {
        self.record("VolumeGet");
        Ok(Response::new(Default::default()))
    }
    async fn snapshot_list(
        &self,
        _: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineSnapshotListProxyResponse>, Status> {
        self.record("SnapshotList");
        Ok(Response::new(Default::default()))
    }
    async fn snapshot_backup(
        &self,
        _: Request<EngineSnapshotBackupRequest>,
    ) -> Result<Response<EngineSnapshotBackupProxyResponse>, Status> {
        self.record("SnapshotBackup");
        Ok(Response::new(Default::default()))
    }
    async fn snapshot_backup_status(
        &self,
        _: Request<EngineSnapshotBackupStatusRequest>,
    ) -> Result<Response<EngineSnapshotBackupStatusProxyResponse>, Status> {
        self.record("SnapshotBackupStatus");
        Ok(Response::new(Default::default()))
    }
    async fn replica_list(
        &self,
        _: Request<ProxyEngineRequest>,
    ) -> Result<Response<EngineReplicaListProxyResponse>, Status> {
        self.record("ReplicaList");
        Ok(Response::new(Default::default()))
    }
}

const RPCS: [&str; 6] = [
    "ServerVersionGet",
    "VolumeGet",
    "SnapshotList",
    "SnapshotBackup",
    "SnapshotBackupStatus",
    "ReplicaList",
];

/// The generated client puts each call on `/imrpc.ProxyEngineService/<Rpc>`, and the generated server
/// routes exactly that path to the matching handler. The client talks to the server in-process through a
/// tower service that records every request path.
#[tokio::test]
async fn every_rpc_travels_on_the_imrpc_proxy_engine_service_path() {
    let engine = RecordingEngine::default();
    let server = ProxyEngineServiceServer::new(engine.clone());
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = paths.clone();
    let transport = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        seen.lock()
            .expect("lock")
            .push(req.uri().path().to_string());
        let mut server = server.clone();
        async move { tower::Service::call(&mut server, req).await }
    });
    let mut client = ProxyEngineServiceClient::new(transport);

    let req = ProxyEngineRequest::default;
    client
        .server_version_get(req())
        .await
        .expect("ServerVersionGet");
    client.volume_get(req()).await.expect("VolumeGet");
    client.snapshot_list(req()).await.expect("SnapshotList");
    client
        .snapshot_backup(EngineSnapshotBackupRequest::default())
        .await
        .expect("SnapshotBackup");
    client
        .snapshot_backup_status(EngineSnapshotBackupStatusRequest::default())
        .await
        .expect("SnapshotBackupStatus");
    client.replica_list(req()).await.expect("ReplicaList");

    let expected: Vec<String> = RPCS
        .iter()
        .map(|rpc| format!("/imrpc.ProxyEngineService/{rpc}"))
        .collect();
    assert_eq!(*paths.lock().expect("lock"), expected);
    assert_eq!(*engine.handled.lock().expect("lock"), RPCS.to_vec());
}

/// The server answers UNIMPLEMENTED for a path it does not know (e.g. a wrong package), so the path test
/// above would fail if the generated server matched on anything but the exact Longhorn path.
#[tokio::test]
async fn server_rejects_a_path_outside_imrpc_proxy_engine_service() {
    let engine = RecordingEngine::default();
    let mut server = ProxyEngineServiceServer::new(engine.clone());
    for path in [
        "/longhorn.ProxyEngineService/SnapshotList",
        "/imrpc.ProxyEngineService/snapshotList",
        "/imrpc.ProxyEngineService/SnapshotRemove",
    ] {
        let body = tonic::body::Body::empty();
        let req = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .body(body)
            .expect("request");
        let resp = tower::Service::call(&mut server, req)
            .await
            .expect("response");
        let status = Status::from_header_map(resp.headers()).expect("grpc-status in headers");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
    }
    assert!(engine.handled.lock().expect("lock").is_empty());
}
