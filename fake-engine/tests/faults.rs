//! The fake engine over real loopback sockets, driven by the real generated tonic clients.
#![allow(clippy::unwrap_used)] // test helpers may unwrap, like the tests themselves

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fake_engine::{EngineSpec, FakeEngine, Fault, Method, RunningServer, SnapshotSpec, serve};
use longhorn_guard_proto::imrpc::proxy_engine_service_client::ProxyEngineServiceClient;
use longhorn_guard_proto::imrpc::{
    EngineSnapshotBackupRequest, EngineSnapshotBackupStatusRequest, ProxyEngineRequest,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ADDR: &str = "10.42.1.17:10010";
const ENGINE: &str = "pvc-1-e-0";
const VOLUME: &str = "pvc-1";
const REPLICA: &str = "tcp://10.42.1.17:10000";
const TARGET: &str = "s3://bk@us-east-1/";

type Client = ProxyEngineServiceClient<Channel>;

fn snapshot(name: &str) -> SnapshotSpec {
    SnapshotSpec {
        name: name.to_string(),
        user_created: true,
        created: "2026-11-24T10:00:00Z".to_string(),
        size: 4096,
        labels: BTreeMap::from([("RecurringJob".to_string(), "daily".to_string())]),
        ..Default::default()
    }
}

/// One engine `pvc-1-e-0` of volume `pvc-1` at ADDR, chain snap-a <- snap-b.
fn engine_with_volume(engine: FakeEngine) -> FakeEngine {
    engine.add_engine(EngineSpec {
        address: ADDR.to_string(),
        engine_name: ENGINE.to_string(),
        volume_name: VOLUME.to_string(),
    });
    engine.set_snapshots(ADDR, vec![snapshot("snap-a"), snapshot("snap-b")]);
    engine
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn client(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    ProxyEngineServiceClient::new(channel)
}

async fn start(engine: &FakeEngine) -> (RunningServer, Client) {
    let server = serve(engine.clone(), loopback()).await.unwrap();
    let c = client(server.local_addr).await;
    (server, c)
}

fn req() -> ProxyEngineRequest {
    ProxyEngineRequest {
        address: ADDR.to_string(),
        engine_name: ENGINE.to_string(),
        volume_name: VOLUME.to_string(),
        ..Default::default()
    }
}

fn backup_req(backup: &str, snapshot: &str) -> EngineSnapshotBackupRequest {
    EngineSnapshotBackupRequest {
        proxy_engine_request: Some(req()),
        backup_name: backup.to_string(),
        snapshot_name: snapshot.to_string(),
        backup_target: TARGET.to_string(),
        compression_method: "lz4".to_string(),
        concurrent_limit: 2,
        ..Default::default()
    }
}

fn status_req(backup: &str) -> EngineSnapshotBackupStatusRequest {
    EngineSnapshotBackupStatusRequest {
        proxy_engine_request: Some(req()),
        backup_name: backup.to_string(),
        replica_address: REPLICA.to_string(),
        replica_name: String::new(),
    }
}

/// Waits (up to 10 s) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn snapshot_list_includes_volume_head() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;

    let disks = c.snapshot_list(req()).await.unwrap().into_inner().disks;
    let mut keys: Vec<&str> = disks.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["snap-a", "snap-b", "volume-head"]);
    let head = &disks["volume-head"];
    assert_eq!(head.name, "volume-head");
    assert_eq!(head.parent, "snap-b");
    assert!(!head.user_created);
    assert!(
        disks["snap-b"]
            .children
            .get("volume-head")
            .copied()
            .unwrap_or(false)
    );
    assert_eq!(disks["snap-b"].parent, "snap-a");
    assert_eq!(disks["snap-a"].parent, "");
    assert_eq!(
        disks["snap-a"].children.keys().collect::<Vec<_>>(),
        ["snap-b"]
    );
    assert_eq!(disks["snap-a"].size, "4096");
    assert_eq!(disks["snap-a"].created, "2026-11-24T10:00:00Z");
    assert_eq!(disks["snap-a"].labels["RecurringJob"], "daily");
    assert!(disks["snap-a"].user_created);
    assert!(!disks["snap-a"].removed);

    engine.mark_removed(ADDR, "snap-a");
    engine.add_snapshot(ADDR, snapshot("snap-c"));
    let disks = c.snapshot_list(req()).await.unwrap().into_inner().disks;
    assert!(disks["snap-a"].removed);
    assert_eq!(disks["snap-c"].parent, "snap-b");
    assert_eq!(disks["volume-head"].parent, "snap-c");
    assert!(!disks["snap-b"].children.contains_key("volume-head"));

    engine.remove_snapshot(ADDR, "snap-a");
    let disks = c.snapshot_list(req()).await.unwrap().into_inner().disks;
    assert!(!disks.contains_key("snap-a"));
    assert_eq!(disks["snap-b"].parent, "");
    assert_eq!(disks.len(), 3);

    // An engine without snapshots still lists its head.
    engine.set_snapshots(ADDR, Vec::new());
    let disks = c.snapshot_list(req()).await.unwrap().into_inner().disks;
    assert_eq!(disks.keys().collect::<Vec<_>>(), ["volume-head"]);
    assert_eq!(disks["volume-head"].parent, "");
}

#[tokio::test]
async fn other_rpcs_answer_for_a_known_engine() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    let version = c
        .server_version_get(ProxyEngineRequest {
            address: ADDR.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!version.version.unwrap().version.is_empty());
    let volume = c
        .volume_get(req())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume.name, VOLUME);
    let replicas = c
        .replica_list(req())
        .await
        .unwrap()
        .into_inner()
        .replica_list
        .unwrap()
        .replicas;
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0].address.as_ref().unwrap().address, REPLICA);
    let stats = engine.stats();
    assert_eq!(stats.calls_total, 3);
    assert_eq!(stats.calls_by_method["ServerVersionGet"], 1);
    assert_eq!(stats.calls_by_method["VolumeGet"], 1);
    assert_eq!(stats.calls_by_method["ReplicaList"], 1);
}

#[tokio::test]
async fn delay_fault_delays_only_its_method() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    let delay = Duration::from_millis(600);
    engine.set_fault(Method::SnapshotList, Fault::Delay(delay));

    let t = Instant::now();
    let disks = c.snapshot_list(req()).await.unwrap().into_inner().disks;
    assert!(t.elapsed() >= delay, "answered after {:?}", t.elapsed());
    assert_eq!(disks.len(), 3, "a delayed call still answers normally");

    let t = Instant::now();
    c.volume_get(req()).await.unwrap();
    assert!(t.elapsed() < delay, "VolumeGet took {:?}", t.elapsed());

    engine.clear_faults();
    let t = Instant::now();
    c.snapshot_list(req()).await.unwrap();
    assert!(t.elapsed() < delay, "after clear_faults: {:?}", t.elapsed());
}

#[tokio::test]
async fn random_delay_fault_stays_within_its_range() {
    let engine = engine_with_volume(FakeEngine::with_seed(3));
    let (_server, mut c) = start(&engine).await;
    let (min, max) = (Duration::from_millis(150), Duration::from_millis(300));
    engine.set_fault(Method::Any, Fault::RandomDelay { min, max });
    for _ in 0..4 {
        let t = Instant::now();
        c.volume_get(req()).await.unwrap();
        let took = t.elapsed();
        // Upper bound is loose: a loaded machine may add scheduling time, never remove it.
        assert!(
            took >= min && took < max + Duration::from_secs(2),
            "{took:?}"
        );
    }
}

#[tokio::test]
async fn error_fault_answers_with_its_status_and_method_fault_overrides_any() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    engine.set_fault(
        Method::Any,
        Fault::Error {
            code: Code::ResourceExhausted,
            message: "too many backups".to_string(),
        },
    );
    engine.set_fault(Method::SnapshotList, Fault::None);

    let err = c.volume_get(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "too many backups");
    let err = c
        .snapshot_backup(backup_req("b-1", "snap-a"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        engine.backup_names(ADDR).is_empty(),
        "faults apply before normal handling"
    );
    c.snapshot_list(req()).await.unwrap();

    engine.set_fault(
        Method::VolumeGet,
        Fault::Error {
            code: Code::Internal,
            message: "replaced".to_string(),
        },
    );
    assert_eq!(c.volume_get(req()).await.unwrap_err().message(), "replaced");
    engine.clear_faults();
    c.volume_get(req()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fault_aborts_the_connection() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    c.volume_get(req()).await.unwrap();
    assert_eq!(engine.stats().total_connections, 1);

    engine.set_fault(Method::SnapshotList, Fault::Reset);
    let err = c.snapshot_list(req()).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{err:?}"
    );
    eventually("connection closed", || engine.stats().open_connections == 0).await;
    eventually("call dropped", || engine.stats().concurrent_calls == 0).await;

    engine.clear_faults();
    // The channel reconnects on a new TCP connection; retry while it notices the old one is gone.
    let mut ok = false;
    for _ in 0..50 {
        if c.snapshot_list(req()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "no successful call after the reset");
    let stats = engine.stats();
    assert_eq!(stats.total_connections, 2);
    assert_eq!(stats.open_connections, 1);
}

#[tokio::test]
async fn black_hole_fault_never_answers_and_frees_the_call_when_the_client_gives_up() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, c) = start(&engine).await;
    engine.set_fault(Method::SnapshotBackupStatus, Fault::BlackHole);

    let mut c1 = c.clone();
    let call = tokio::spawn(async move {
        let mut r = tonic::Request::new(status_req("b-1"));
        r.set_timeout(Duration::from_millis(500));
        let t = Instant::now();
        (c1.snapshot_backup_status(r).await, t.elapsed())
    });
    eventually("call in flight", || engine.stats().concurrent_calls == 1).await;
    let (res, took) = call.await.unwrap();
    let err = res.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(took >= Duration::from_millis(500), "{took:?}");
    eventually("black-holed call dropped", || {
        engine.stats().concurrent_calls == 0
    })
    .await;
    assert_eq!(engine.stats().max_concurrent_calls, 1);
    assert_eq!(
        engine.stats().open_connections,
        1,
        "only the call was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_fault_closes_the_connection_and_the_client_reconnects() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    c.volume_get(req()).await.unwrap();
    engine.set_fault(Method::SnapshotList, Fault::GoAway);

    let err = c.snapshot_list(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually("connection closed after GOAWAY", || {
        engine.stats().open_connections == 0
    })
    .await;
    assert_eq!(engine.stats().total_connections, 1);

    engine.clear_faults();
    let mut ok = false;
    for _ in 0..50 {
        if c.snapshot_list(req()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "no successful call after GOAWAY");
    let stats = engine.stats();
    assert_eq!(stats.total_connections, 2);
    assert_eq!(stats.open_connections, 1);
}

#[tokio::test]
async fn probabilistic_fault_hits_about_its_share() {
    let engine = engine_with_volume(FakeEngine::with_seed(42));
    let (_server, mut c) = start(&engine).await;
    engine.set_fault(
        Method::VolumeGet,
        Fault::Probabilistic {
            probability: 0.3,
            fault: Box::new(Fault::Error {
                code: Code::Unavailable,
                message: "flaky".to_string(),
            }),
        },
    );
    let calls = 300;
    let mut failed = 0;
    for _ in 0..calls {
        match c.volume_get(req()).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.message(), "flaky");
                failed += 1;
            }
        }
    }
    // Expected 90 (sd ~8); seeded, and the band is wide.
    assert!((50..=130).contains(&failed), "{failed} of {calls} failed");
}

#[tokio::test]
async fn name_mismatches_fail_precondition_with_longhorn_wording() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    let wrong_volume = ProxyEngineRequest {
        volume_name: "pvc-x".to_string(),
        engine_name: "pvc-x-e-0".to_string(),
        ..req()
    };
    let volume_msg = "incorrect volume name pvc-x; check controller address";

    let err = c.snapshot_list(wrong_volume.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("failed to list replicas for volume {ADDR}: {volume_msg}"),
        "volume name is checked first"
    );
    let err = c.volume_get(wrong_volume.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("failed to get volume {ADDR}: {volume_msg}")
    );
    let err = c
        .server_version_get(wrong_volume.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("failed to get version detail: {volume_msg}")
    );
    let err = c
        .snapshot_backup_status(EngineSnapshotBackupStatusRequest {
            proxy_engine_request: Some(wrong_volume.clone()),
            ..status_req("b-1")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("failed to list replicas for volume {ADDR}: {volume_msg}")
    );

    let wrong_engine = ProxyEngineRequest {
        engine_name: "pvc-1-e-9".to_string(),
        ..req()
    };
    let err = c.snapshot_list(wrong_engine.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!(
            "failed to list replicas for volume {ADDR}: incorrect instance name pvc-1-e-9; check controller address"
        )
    );
    let err = c.volume_get(wrong_engine).await.unwrap_err();
    assert_eq!(
        err.message(),
        format!(
            "failed to get volume {ADDR}: incorrect instance name pvc-1-e-9; check controller address"
        )
    );

    // Empty names skip the checks.
    let anonymous = ProxyEngineRequest {
        address: ADDR.to_string(),
        ..Default::default()
    };
    c.snapshot_list(anonymous.clone()).await.unwrap();
    c.server_version_get(anonymous).await.unwrap();
}

#[tokio::test]
async fn unknown_address_is_unavailable_connection_refused() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    let elsewhere = ProxyEngineRequest {
        address: "10.42.9.9:10010".to_string(),
        ..req()
    };
    let err = c.snapshot_list(elsewhere.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .starts_with("failed to list replicas for volume 10.42.9.9:10010: "),
        "{}",
        err.message()
    );
    assert!(
        err.message().ends_with("connection refused"),
        "{}",
        err.message()
    );
    let err = c.server_version_get(elsewhere.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().ends_with("connection refused"));

    engine.remove_engine(ADDR);
    let err = c.volume_get(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .starts_with(&format!("failed to get volume {ADDR}: "))
    );
}

#[tokio::test]
async fn unsupported_data_engine_is_unimplemented() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    let err = c
        .snapshot_list(ProxyEngineRequest {
            data_engine: 7,
            ..req()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "unsupported data engine 7");
    // DATA_ENGINE_V2 is accepted.
    c.snapshot_list(ProxyEngineRequest {
        data_engine: 1,
        ..req()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn snapshot_backup_errors_are_internal() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;

    let err = c
        .snapshot_backup(backup_req("b-1", "volume-head"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        err.message(),
        "failed to create backup: cannot backup the head disk in the chain"
    );

    let err = c
        .snapshot_backup(backup_req("b-1", "snap-gone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        err.message(),
        format!(
            "failed to create backup: snapshot disk volume-snap-snap-gone.img not found on replica {REPLICA}"
        )
    );

    let mut wrong = backup_req("b-1", "snap-a");
    wrong.proxy_engine_request = Some(ProxyEngineRequest {
        volume_name: "pvc-x".to_string(),
        ..req()
    });
    let err = c.snapshot_backup(wrong).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Internal,
        "even a name mismatch is INTERNAL"
    );
    assert_eq!(
        err.message(),
        "failed to create backup: incorrect volume name pvc-x; check controller address"
    );

    let mut elsewhere = backup_req("b-1", "snap-a");
    elsewhere.proxy_engine_request = Some(ProxyEngineRequest {
        address: "10.42.9.9:10010".to_string(),
        ..req()
    });
    let err = c.snapshot_backup(elsewhere).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().starts_with("failed to create backup: "));
    assert!(err.message().ends_with("connection refused"));
    assert!(engine.backup_names(ADDR).is_empty());
}

#[tokio::test]
async fn backup_runs_to_complete() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, mut c) = start(&engine).await;
    let name = "backup-0123456789abcdef";

    let started = c
        .snapshot_backup(backup_req(name, "snap-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.backup_id, name);
    assert_eq!(started.replica, REPLICA);
    assert!(!started.is_incremental);
    assert_eq!(engine.backup_names(ADDR), [name]);

    let first = c
        .snapshot_backup_status(status_req(name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.state, "in_progress");
    assert_eq!(first.progress, 50);
    assert_eq!(first.backup_url, "");
    assert_eq!(first.snapshot_name, "snap-a");

    let done = c
        .snapshot_backup_status(status_req(name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, "complete");
    assert_eq!(done.progress, 100);
    assert_eq!(done.error, "");
    assert_eq!(
        done.backup_url,
        format!("{TARGET}?backup={name}&volume={VOLUME}")
    );
    assert_eq!(done.snapshot_name, "snap-a");
    assert_eq!(done.replica_address, REPLICA);

    // A second backup is incremental; a failed one reports state error.
    let second = c
        .snapshot_backup(backup_req("b-2", "snap-b"))
        .await
        .unwrap()
        .into_inner();
    assert!(second.is_incremental);
    engine.fail_backup(ADDR, "b-2", "target unreachable");
    let failed = c
        .snapshot_backup_status(status_req("b-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, "error");
    assert_eq!(failed.error, "target unreachable");

    // Unknown backup: OK, with the replica's error text.
    let unknown = c
        .snapshot_backup_status(status_req("b-unknown"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unknown.error,
        format!(
            "Failed to get backup status on {REPLICA} for b-unknown: rpc error: code = Unknown desc = backup not found b-unknown"
        )
    );
    assert_eq!(unknown.state, "");
    assert_eq!(engine.stats().calls_by_method["SnapshotBackupStatus"], 4);
}

#[tokio::test]
async fn health_check_is_serving_for_any_service_name() {
    let engine = FakeEngine::new();
    let server = serve(engine.clone(), loopback()).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "imrpc.ProxyEngineService", "anything.Else"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "{service:?}");
    }
    assert_eq!(engine.stats().calls_by_method["Health/Check"], 3);
    // A fault on every proxy method leaves health checks alone.
    engine.set_fault(Method::Any, Fault::BlackHole);
    let resp = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_calls_counts_exactly_the_calls_in_flight() {
    let engine = engine_with_volume(FakeEngine::new());
    let (_server, c) = start(&engine).await;
    engine.set_fault(
        Method::SnapshotList,
        Fault::Delay(Duration::from_millis(1500)),
    );
    const N: u64 = 8;
    let calls: Vec<_> = (0..N)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.snapshot_list(req()).await })
        })
        .collect();
    eventually("all calls in flight", || {
        engine.stats().concurrent_calls == N
    })
    .await;
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let stats = engine.stats();
    assert_eq!(stats.max_concurrent_calls, N);
    assert_eq!(stats.concurrent_calls, 0);
    assert_eq!(stats.calls_by_method["SnapshotList"], N);
    engine.reset_max_concurrent_calls();
    assert_eq!(engine.stats().max_concurrent_calls, 0);
}

#[tokio::test]
async fn open_connections_return_to_zero_when_the_client_goes_away() {
    let engine = engine_with_volume(FakeEngine::new());
    let server = serve(engine.clone(), loopback()).await.unwrap();
    let mut a = client(server.local_addr).await;
    let mut b = client(server.local_addr).await;
    a.snapshot_list(req()).await.unwrap();
    b.snapshot_list(req()).await.unwrap();
    let stats = engine.stats();
    assert_eq!(stats.open_connections, 2);
    assert_eq!(stats.total_connections, 2);
    drop(a);
    eventually("one connection closed", || {
        engine.stats().open_connections == 1
    })
    .await;
    drop(b);
    eventually("all connections closed", || {
        engine.stats().open_connections == 0
    })
    .await;
    assert_eq!(engine.stats().total_connections, 2);
    eventually("no task left", || server.live_tasks() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_task_running() {
    let engine = engine_with_volume(FakeEngine::new());
    engine.set_fault(Method::SnapshotList, Fault::BlackHole);
    let weak = engine.downgrade();
    let server = serve(engine, loopback()).await.unwrap();
    let addr = server.local_addr;
    let stats = || weak.upgrade().unwrap().stats();

    let mut idle = client(addr).await;
    idle.volume_get(req()).await.unwrap();
    let mut busy = client(addr).await;
    let stuck = tokio::spawn(async move { busy.snapshot_list(req()).await });
    eventually("black-holed call in flight", || {
        stats().concurrent_calls == 1
    })
    .await;
    assert_eq!(stats().open_connections, 2);
    assert!(server.live_tasks() >= 3, "2 connections + 1 stream task");

    server.shutdown().await;
    // Every task and every clone of the service held the state; all are gone.
    assert!(
        weak.upgrade().is_none(),
        "a task of the server still holds the fake's state"
    );
    let err = stuck.await.unwrap().unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(idle.volume_get(req()).await.is_err());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn serve_refuses_non_loopback_addresses() {
    for addr in ["0.0.0.0:0", "10.1.2.3:0", "[::]:0"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let err = serve(FakeEngine::new(), addr).await.err().expect("refused");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    let server = serve(FakeEngine::new(), "127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(server.local_addr.ip().to_string(), "127.0.0.2");
    server.shutdown().await;
}
