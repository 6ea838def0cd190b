//! The fake answers like Longhorn's engine for versions, volumes, replicas and snapshot chains,
//! from scenario files (`fake-engine/SCENARIOS.md`), over real loopback sockets with the real
//! generated tonic client.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fake_engine::{
    EngineSpec, EngineVersion, FakeEngine, ReplicaMode, RunningServer, Scenario, serve,
};
use longhorn_guard_proto::imrpc::proxy_engine_service_client::ProxyEngineServiceClient;
use longhorn_guard_proto::imrpc::{
    EngineSnapshotBackupRequest, EngineSnapshotDiskInfo, ProxyEngineRequest,
};
use longhorn_guard_proto::ptypes;
use tonic::Code;
use tonic::transport::Channel;

type Client = ProxyEngineServiceClient<Channel>;

const PVC1: &str = "10.42.1.17:10010";
const PVC2: &str = "10.42.2.17:10011";

fn scenario_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/longhorn-volumes.yaml")
}

async fn start(engine: &FakeEngine) -> (RunningServer, Client) {
    let server = serve(engine.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    (server, ProxyEngineServiceClient::new(channel))
}

fn req(address: &str, engine: &str, volume: &str) -> ProxyEngineRequest {
    ProxyEngineRequest {
        address: address.to_string(),
        engine_name: engine.to_string(),
        volume_name: volume.to_string(),
        ..Default::default()
    }
}

fn pvc1() -> ProxyEngineRequest {
    req(PVC1, "pvc-1-e-0", "pvc-1")
}

fn pvc2() -> ProxyEngineRequest {
    req(PVC2, "pvc-2-e-0", "pvc-2")
}

async fn disks(c: &mut Client, r: ProxyEngineRequest) -> BTreeMap<String, EngineSnapshotDiskInfo> {
    c.snapshot_list(r)
        .await
        .unwrap()
        .into_inner()
        .disks
        .into_iter()
        .collect()
}

async fn volume(c: &mut Client, r: ProxyEngineRequest) -> ptypes::Volume {
    c.volume_get(r).await.unwrap().into_inner().volume.unwrap()
}

fn children(d: &EngineSnapshotDiskInfo) -> Vec<&str> {
    let mut c: Vec<&str> = d.children.keys().map(String::as_str).collect();
    c.sort_unstable();
    c
}

#[tokio::test]
async fn version_is_longhorn_v1_7_2_by_default_and_per_engine() {
    let fake = FakeEngine::from_scenario_file(&scenario_path()).unwrap();
    fake.add_engine(EngineSpec {
        address: "10.42.3.17:10012".into(),
        engine_name: "pvc-3-e-0".into(),
        volume_name: "pvc-3".into(),
    });
    let (_server, mut c) = start(&fake).await;
    // longhorn-manager sends ServerVersionGet with only the address.
    let version = |address: &str| ProxyEngineRequest {
        address: address.to_string(),
        ..Default::default()
    };
    for address in ["10.42.3.17:10012", PVC1] {
        let v = c
            .server_version_get(version(address))
            .await
            .unwrap()
            .into_inner()
            .version
            .unwrap();
        assert_eq!(
            (
                v.version.as_str(),
                v.cli_api_version,
                v.cli_api_min_version,
                v.controller_api_version,
                v.controller_api_min_version,
                v.data_format_version,
                v.data_format_min_version
            ),
            ("v1.7.2", 10, 8, 5, 4, 1, 1),
            "{address}"
        );
        assert_eq!(v.git_commit, "6f8fb28c87be373ec11287fccf6971a1a677dbe3");
    }
    let v = c
        .server_version_get(version(PVC2))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(v.version, "v1.10.2");
    assert_eq!(v.git_commit, "85f8e81961b07e0d5aa0b0793316d29f23d857be");
    assert_eq!((v.cli_api_version, v.controller_api_version), (10, 5));
    assert_eq!(EngineVersion::preset("v1.8.2").unwrap().version, "v1.8.2");
}

#[tokio::test]
async fn volume_get_reports_the_volume_of_the_scenario() {
    let fake = FakeEngine::from_scenario_file(&scenario_path()).unwrap();
    let (_server, mut c) = start(&fake).await;
    let v = volume(&mut c, pvc1()).await;
    assert_eq!(
        v,
        ptypes::Volume {
            name: "pvc-1".into(),
            size: 2 << 30,
            replica_count: 3,
            endpoint: "/dev/longhorn/pvc-1".into(),
            frontend: "tgt-blockdev".into(),
            frontend_state: "up".into(),
            unmap_mark_snap_chain_removed: true,
            snapshot_max_count: 250,
            ..Default::default()
        }
    );
    let v = volume(&mut c, pvc2()).await;
    assert_eq!(v.size, 10 << 30);
    assert_eq!(v.replica_count, 1);
    assert_eq!(
        (
            v.frontend.as_str(),
            v.frontend_state.as_str(),
            v.endpoint.as_str()
        ),
        ("", "", "")
    );
    assert!(!v.unmap_mark_snap_chain_removed);
}

#[tokio::test]
async fn replica_list_reports_every_replica_with_its_mode() {
    let fake = FakeEngine::from_scenario_file(&scenario_path()).unwrap();
    let (_server, mut c) = start(&fake).await;
    let replicas = c
        .replica_list(pvc1())
        .await
        .unwrap()
        .into_inner()
        .replica_list
        .unwrap()
        .replicas;
    let got: Vec<(String, String, i32)> = replicas
        .into_iter()
        .map(|r| {
            let a = r.address.unwrap();
            (a.address, a.instance_name, r.mode)
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "tcp://10.42.1.18:10000".into(),
                "pvc-1-r-rebuilding".into(),
                ptypes::ReplicaMode::Wo as i32
            ),
            (
                "tcp://10.42.1.19:10000".into(),
                "pvc-1-r-1".into(),
                ptypes::ReplicaMode::Rw as i32
            ),
            (
                "tcp://10.42.1.20:10000".into(),
                "pvc-1-r-2".into(),
                ptypes::ReplicaMode::Err as i32
            ),
        ]
    );
}

#[tokio::test]
async fn snapshot_list_is_the_first_rw_replicas_chain_with_branches_removed_labels_and_head() {
    let fake = FakeEngine::from_scenario_file(&scenario_path()).unwrap();
    let (_server, mut c) = start(&fake).await;
    let d = disks(&mut c, pvc1()).await;
    // Not the WO replica's (only snap-a): the first RW one's.
    assert_eq!(
        d.keys().map(String::as_str).collect::<Vec<_>>(),
        ["snap-a", "snap-b", "snap-c", "volume-head"]
    );
    // The branch: snap-b and snap-c are both children of snap-a.
    assert_eq!(children(&d["snap-a"]), ["snap-b", "snap-c"]);
    assert_eq!(d["snap-b"].parent, "snap-a");
    assert_eq!(d["snap-c"].parent, "snap-a");
    assert!(children(&d["snap-b"]).is_empty());
    assert_eq!(children(&d["snap-c"]), ["volume-head"]);
    assert!(d["snap-b"].removed && !d["snap-a"].removed && !d["snap-c"].removed);
    assert!(d["snap-a"].user_created && !d["snap-c"].user_created);
    assert_eq!(d["snap-a"].labels["RecurringJob"], "daily");
    assert_eq!(
        (d["snap-b"].size.as_str(), d["snap-b"].created.as_str()),
        ("8192", "2026-11-24T11:00:00Z")
    );
    let head = &d["volume-head"];
    assert_eq!(
        (
            head.parent.as_str(),
            head.created.as_str(),
            head.size.as_str(),
            head.user_created,
            head.removed
        ),
        ("snap-c", "2026-11-24T12:00:00Z", "65536", false, false)
    );

    // The RW replica fails: the next RW one would be used; there is none left, so the list is
    // empty (the rebuilding WO replica is never read) and no backup can be taken.
    assert!(fake.set_replica_mode(PVC1, "tcp://10.42.1.19:10000", ReplicaMode::Error));
    assert!(disks(&mut c, pvc1()).await.is_empty());
    let backup = EngineSnapshotBackupRequest {
        proxy_engine_request: Some(pvc1()),
        backup_name: "backup-1".into(),
        snapshot_name: "snap-a".into(),
        backup_target: "s3://bk@us-east-1/".into(),
        ..Default::default()
    };
    let err = c.snapshot_backup(backup.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message()
            .contains("cannot find an available replica for backup"),
        "{err:?}"
    );

    // The rebuilt replica turns RW: it is now the first RW one, with its own (shorter) chain.
    assert!(fake.set_replica_mode(PVC1, "tcp://10.42.1.18:10000", ReplicaMode::Rw));
    let d = disks(&mut c, pvc1()).await;
    assert_eq!(
        d.keys().map(String::as_str).collect::<Vec<_>>(),
        ["snap-a", "volume-head"]
    );
    let err = c
        .snapshot_backup(EngineSnapshotBackupRequest {
            snapshot_name: "snap-c".into(),
            ..backup.clone()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains(
            "snapshot disk volume-snap-snap-c.img not found on replica tcp://10.42.1.18:10000"
        ),
        "{err:?}"
    );
    let started = c.snapshot_backup(backup).await.unwrap().into_inner();
    assert_eq!(started.replica, "tcp://10.42.1.18:10000");
}

#[tokio::test]
async fn snapshots_taken_at_run_time_move_the_head_on_every_replica() {
    let fake = FakeEngine::from_scenario_file(&scenario_path()).unwrap();
    let (_server, mut c) = start(&fake).await;
    fake.add_snapshot(
        PVC1,
        fake_engine::SnapshotSpec {
            name: "snap-d".into(),
            user_created: true,
            created: "2026-11-24T13:00:00Z".into(),
            size: 4096,
            ..Default::default()
        },
    );
    let d = disks(&mut c, pvc1()).await;
    assert_eq!(d["snap-d"].parent, "snap-c");
    let head = &d["volume-head"];
    assert_eq!(
        (
            head.parent.as_str(),
            head.created.as_str(),
            head.size.as_str()
        ),
        ("snap-d", "2026-11-24T13:00:00Z", "0")
    );
    // The rebuilding replica got it too (its head followed snap-a).
    assert!(fake.set_replica_mode(PVC1, "tcp://10.42.1.19:10000", ReplicaMode::Wo));
    assert!(fake.set_replica_mode(PVC1, "tcp://10.42.1.18:10000", ReplicaMode::Rw));
    let d = disks(&mut c, pvc1()).await;
    assert_eq!(d["snap-d"].parent, "snap-a");
    // Purging the branch point re-parents both branches.
    fake.remove_snapshot(PVC1, "snap-a");
    assert!(fake.set_replica_mode(PVC1, "tcp://10.42.1.19:10000", ReplicaMode::Rw));
    assert!(fake.set_replica_mode(PVC1, "tcp://10.42.1.18:10000", ReplicaMode::Wo));
    let d = disks(&mut c, pvc1()).await;
    assert_eq!(
        (d["snap-b"].parent.as_str(), d["snap-c"].parent.as_str()),
        ("", "")
    );
}

#[tokio::test]
async fn add_engine_defaults_give_volume_head_a_created_time_and_a_size() {
    let fake = FakeEngine::new();
    fake.add_engine(EngineSpec {
        address: PVC1.into(),
        engine_name: "pvc-1-e-0".into(),
        volume_name: "pvc-1".into(),
    });
    let (_server, mut c) = start(&fake).await;
    let head = disks(&mut c, pvc1()).await.remove("volume-head").unwrap();
    assert_eq!(head.size, "0");
    assert_eq!(head.created.len(), "2026-11-24T10:00:00Z".len(), "{head:?}");
    assert!(
        head.created.ends_with('Z') && head.created.as_bytes()[10] == b'T',
        "{head:?}"
    );
    let v = volume(&mut c, pvc1()).await;
    assert_eq!(
        (
            v.replica_count,
            v.frontend.as_str(),
            v.frontend_state.as_str()
        ),
        (1, "tgt-blockdev", "up")
    );
}

#[test]
fn scenario_round_trips_through_yaml() {
    let scenario = Scenario::from_file(&scenario_path()).unwrap();
    let again = Scenario::from_yaml(&scenario.to_yaml().unwrap(), "round trip").unwrap();
    assert_eq!(scenario.engines, again.engines);
}

/// Each bad scenario is refused with an error naming the engine and what is wrong.
#[test]
fn bad_scenarios_are_refused_with_errors_naming_engine_and_problem() {
    let engine = "engines:\n- address: 10.0.0.1:1\n  engine: e-0\n  volume: vol\n";
    let cases: &[(&str, &[&str])] = &[
        (
            "  snapshots:\n  - {name: a, children: [b]}\n  - {name: b}\n  - {name: c, parent: a}\n",
            &[
                "\"e-0\"",
                "\"vol\"",
                "snapshot a",
                "parents and children disagree",
                "does not list [\"c\"]",
            ],
        ),
        (
            "  snapshots:\n  - {name: a, children: [b, x]}\n  - {name: b}\n",
            &[
                "snapshot a",
                "lists [\"x\"] as children, but their parent is not a",
            ],
        ),
        (
            "  snapshots:\n  - {name: a}\n  - {name: b, parent: c}\n  - {name: c}\n",
            &["snapshot b names parent c, which is not listed before it"],
        ),
        (
            "  snapshots:\n  - {name: a}\n  - {name: a}\n",
            &["snapshot a is listed twice"],
        ),
        (
            "  snapshots:\n  - {name: volume-head}\n",
            &["live head, not a snapshot name"],
        ),
        (
            "  snapshots:\n  - {name: a}\n  head: {parent: z}\n",
            &["volume-head names parent z, which is not a snapshot of the chain"],
        ),
        (
            "  version: v1.7.9\n",
            &[
                "unknown version preset \"v1.7.9\"",
                "v1.7.2, v1.8.2, v1.10.2",
            ],
        ),
        (
            "  version: {version: v1.7.2, gitComit: x}\n",
            &[
                "version must be a preset name or a whole VersionOutput",
                "unknown field `gitComit`",
            ],
        ),
        (
            "  frontendState: sideways\n",
            &["frontendState \"sideways\" must be up or down"],
        ),
        (
            "  frontend: \"\"\n  frontendState: up\n",
            &["without a frontend"],
        ),
        ("  size: 0\n", &["size 0 must be > 0"]),
        (
            "  replicas:\n  - {address: tcp://10.0.0.2:1, mode: RW}\n  - {address: tcp://10.0.0.2:1, mode: WO}\n",
            &["replica #2 \"tcp://10.0.0.2:1\": listed twice"],
        ),
        (
            "  replicas:\n  - {address: 10.0.0.2:1, mode: RW}\n",
            &["address must be tcp://host:port"],
        ),
        (
            "  replicas:\n  - {address: tcp://10.0.0.2:1, mode: RO}\n",
            &["not valid YAML for the scenario format", "RO"],
        ),
        ("  snapshot: []\n", &["unknown field `snapshot`"]),
        (
            "- address: 10.0.0.1:1\n  engine: e-1\n  volume: vol\n",
            &[
                "engine #2",
                "another engine of the scenario has this address",
            ],
        ),
    ];
    for (tail, needles) in cases {
        let text = format!("{engine}{tail}");
        let err = Scenario::from_yaml(&text, "case.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("case.yaml"), "{err}");
        for needle in *needles {
            assert!(
                err.contains(needle),
                "error for\n{text}\nis {err:?}; wanted {needle:?}"
            );
        }
    }
    let missing =
        Scenario::from_file(std::path::Path::new("/nonexistent/scenario.yaml")).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/scenario.yaml"),
        "{missing}"
    );
}

/// A scenario built in code is checked as a whole when loaded: on an error nothing is served.
#[test]
fn loading_a_bad_scenario_adds_no_engine() {
    let good = fake_engine::EngineScenario {
        address: "10.0.0.1:1".into(),
        engine: "e-0".into(),
        volume: "vol".into(),
        ..Default::default()
    };
    let bad = fake_engine::EngineScenario {
        address: "10.0.0.2:1".into(),
        snapshots: vec![fake_engine::SnapshotScenario {
            name: "a".into(),
            parent: "gone".into(),
            ..Default::default()
        }],
        ..good.clone()
    };
    let fake = FakeEngine::new();
    let err = fake
        .load_scenario(&Scenario {
            engines: vec![good, bad],
            origin: String::new(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("engine #2 \"e-0\""), "{err}");
    assert!(
        err.to_string().contains("snapshot a names parent gone"),
        "{err}"
    );
    assert!(
        fake.replica_address("10.0.0.1:1").is_none(),
        "the good engine was added"
    );
}
