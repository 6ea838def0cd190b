//! Engine-truth verification end to end: a real kube-apiserver calls the webhook (registered
//! by URL), the webhook asks the agent of the engine's node over mutual TLS, the agent asks its
//! (fake) engine. Two agents on 127.0.0.2 and 127.0.0.3, each with its own fake engine, fed by
//! Engine/InstanceManager objects in the test namespace; a third node's "agent" is a TCP
//! listener that accepts and never answers.
//!
//! Latencies are measured client-side through the API server and only checked against the
//! budget plus a generous slack (250 ms + 1 s): the machine is 2 busy cores.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use fake_engine::{EngineSpec, FakeEngine, Fault, Method, RunningServer, SnapshotSpec};
use http_body_util::BodyExt as _;
use kube::Client;
use longhorn_guard_agent::{Agent, AgentConfig, PoolConfig};
use longhorn_guard_certs::{Options, pki};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_guard_webhook::engine_truth::{AgentDiscovery, EngineTruthConfig};
use longhorn_guard_webhook::policy::EngineCheckMode;
use longhorn_guard_webhook::{Policy, WebhookConfig};
use longhorn_types::shapes;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const BUDGET: Duration = Duration::from_millis(250);
const SLACK: Duration = Duration::from_secs(1);
const CHECKS: &str = "longhorn_guard_webhook_engine_checks_total";

/// CA, agent serving certificate, webhook client certificate (all from `longhorn_guard_certs`,
/// as the certs Job issues them) and a client certificate from another CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "lhg-engine-truth-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let day = Duration::from_secs(86_400);
        let opts = Options::default();
        let ca = pki::new_ca("longhorn-guard test CA", day)?;
        let agent = pki::issue_leaf(&ca, &opts.agent_leaf(), day)?;
        let client = pki::issue_leaf(&ca, &opts.webhook_client_leaf(), day)?;
        let other_ca = pki::new_ca("some other CA", day)?;
        let stranger = pki::issue_leaf(&other_ca, &opts.webhook_client_leaf(), day)?;
        for (file, pem) in [
            ("ca.crt", &ca.cert_pem),
            ("agent.crt", &agent.cert_pem),
            ("agent.key", &agent.key_pem),
            ("client.crt", &client.cert_pem),
            ("client.key", &client.key_pem),
            ("stranger.crt", &stranger.cert_pem),
            ("stranger.key", &stranger.key_pem),
        ] {
            std::fs::write(dir.join(file), pem)?;
        }
        Ok(Self { dir })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node: its fake engine (instance-manager proxy) and its agent, both on `ip`.
struct Node {
    name: String,
    volume: String,
    engine_address: String,
    fake: FakeEngine,
    fake_server: Option<RunningServer>,
    agent_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    async fn stop_agent(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    async fn shutdown(mut self) -> Result<()> {
        self.stop_agent().await?;
        for w in &self.watches {
            w.abort();
        }
        if let Some(server) = self.fake_server.take() {
            server.shutdown().await;
        }
        Ok(())
    }
}

fn snapshot_spec(name: &str) -> SnapshotSpec {
    SnapshotSpec {
        name: name.to_string(),
        user_created: true,
        created: "2026-11-24T10:00:00Z".to_string(),
        size: 4096,
        ..SnapshotSpec::default()
    }
}

/// Creates the node's Longhorn objects (Volume, Engine, InstanceManager with `status.ip` =
/// the fake's IP, Snapshot CRs `snap-ok`, `snap-gone`, `snap-rm` all readyToUse) and starts
/// the fake engine (which has `snap-ok`, `snap-rm` marked removed, and `snap-other`) and the
/// agent (engine proxy port = the fake's port).
async fn start_node(
    cluster: &TestCluster,
    ns: &str,
    pki: &Pki,
    name: &str,
    ip: &str,
    octet: u8,
) -> Result<Node> {
    let volume = format!("vol-{name}");
    let engine_name = format!("{volume}-e-0");
    let im = format!("im-{name}");
    let engine_ip = format!("10.42.{octet}.17");
    let engine_address = format!("{engine_ip}:10010");

    let fake = FakeEngine::new();
    fake.add_engine(EngineSpec {
        address: engine_address.clone(),
        engine_name: engine_name.clone(),
        volume_name: volume.clone(),
    });
    fake.set_snapshots(
        &engine_address,
        ["snap-ok", "snap-rm", "snap-other"]
            .iter()
            .map(|s| snapshot_spec(&format!("{s}-{name}")))
            .collect(),
    );
    fake.mark_removed(&engine_address, &format!("snap-rm-{name}"));
    let fake_server = fake_engine::serve(fake.clone(), format!("{ip}:0").parse()?).await?;

    cluster
        .create_longhorn_object(
            ns,
            shapes::instance_manager(ns, &im, name),
            Some(shapes::instance_manager_status(name, ip)),
        )
        .await?;
    volume_objects(
        cluster,
        ns,
        name,
        octet,
        &["snap-ok", "snap-gone", "snap-rm"],
    )
    .await?;

    let mut config = AgentConfig::new(name);
    config.namespace = ns.to_string();
    config.server_cert = pki.path("agent.crt");
    config.server_key = pki.path("agent.key");
    config.client_ca = Some(pki.path("ca.crt"));
    config.engine_proxy_port = fake_server.local_addr.port();
    config.pool = PoolConfig {
        connect_timeout: Duration::from_secs(1),
        queue_timeout: Duration::from_secs(1),
        breaker_failure_threshold: 1_000_000,
        ..PoolConfig::default()
    };
    let agent = Agent::new(config)?;
    let index = agent.index().clone();
    let watches = index.spawn_watches(cluster.client());
    let grpc = TcpListener::bind(format!("{ip}:0")).await?;
    let http = TcpListener::bind(format!("{ip}:0")).await?;
    let agent_addr = grpc.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.serve(grpc, http, async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(15), index.wait_ready())
        .await
        .with_context(|| format!("agent of {name}: Engine/InstanceManager watches never synced"))?;
    wait_for(
        Duration::from_secs(15),
        &format!("agent of {name} indexes {engine_name}"),
        || {
            let index = index.clone();
            let volume = volume.clone();
            async move { Ok(index.lookup(&volume).is_ok()) }
        },
    )
    .await?;
    Ok(Node {
        name: name.to_string(),
        volume,
        engine_address,
        fake,
        fake_server: Some(fake_server),
        agent_addr,
        stop: Some(stop),
        task: Some(task),
        watches,
    })
}

/// A TCP listener that accepts and never answers; counts the connections it accepted.
struct BlackHole {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start(ip: &str) -> Result<Self> {
        let listener = TcpListener::bind(format!("{ip}:0")).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        Ok(Self {
            addr,
            accepted,
            task,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Longhorn objects of `node`: Volume `vol-<node>`, its Engine `vol-<node>-e-0` in
/// instance manager `im-<node>` at `10.42.<octet>.17:10010`, and a ready Snapshot CR
/// `<snap>-<node>` of each of `snaps`.
async fn volume_objects(
    cluster: &TestCluster,
    ns: &str,
    node: &str,
    octet: u8,
    snaps: &[&str],
) -> Result<()> {
    let volume = format!("vol-{node}");
    let engine_status = shapes::engine_status(
        node,
        &format!("im-{node}"),
        &format!("10.42.{octet}.17"),
        10010,
    );
    let mut objects = vec![
        (
            shapes::volume(ns, &volume, node),
            shapes::volume_status(node),
        ),
        (shapes::engine(ns, &volume, node), engine_status),
    ];
    for snap in snaps {
        objects.push((
            shapes::snapshot(ns, &format!("{snap}-{node}"), &volume),
            shapes::snapshot_status(node, ""),
        ));
    }
    for (obj, status) in objects {
        cluster
            .create_longhorn_object(ns, obj, Some(status))
            .await?;
    }
    Ok(())
}

struct Setup {
    cluster: TestCluster,
    ns: String,
    pki: Pki,
    nodes: Vec<Node>,
    hole: BlackHole,
}

impl Setup {
    async fn new(prefix: &str) -> Result<Self> {
        let cluster = TestCluster::connect().await?;
        let ns = cluster.namespace(prefix).await?;
        let pki = Pki::new()?;
        cluster
            .create_longhorn_object(
                &ns,
                shapes::backup_target(&ns, "default", "s3://backupbucket@us-east-1/"),
                Some(shapes::backup_target_status("node-a", true)),
            )
            .await?;
        let a = start_node(&cluster, &ns, &pki, "node-a", "127.0.0.2", 1).await?;
        let b = start_node(&cluster, &ns, &pki, "node-b", "127.0.0.3", 2).await?;
        // node-c: a Volume, Engine and Snapshot `snap-ok-node-c`; its "agent" is `hole`.
        volume_objects(&cluster, &ns, "node-c", 3, &["snap-ok"]).await?;
        let hole = BlackHole::start("127.0.0.4").await?;
        Ok(Self {
            cluster,
            ns,
            pki,
            nodes: vec![a, b],
            hole,
        })
    }

    fn truth_config(&self, client_cert: &str, client_key: &str) -> EngineTruthConfig {
        let mut agents = BTreeMap::new();
        for n in &self.nodes {
            agents.insert(n.name.clone(), n.agent_addr.to_string());
        }
        agents.insert("node-c".to_string(), self.hole.addr.to_string());
        let mut config = EngineTruthConfig::new(
            self.pki.path(client_cert),
            self.pki.path(client_key),
            self.pki.path("ca.crt"),
            AgentDiscovery::Static(agents),
        );
        config.breaker_failures = 3;
        config.breaker_cool_down = Duration::from_secs(120);
        config
    }

    async fn serve(&self, policy: Policy, truth: EngineTruthConfig) -> Result<Served> {
        let cert = TestCert::new()?;
        let config = WebhookConfig {
            engine_truth: Some(truth),
            ..cert.config(Some(policy), Some(&self.ns))
        };
        let handle = longhorn_guard_webhook::start(config, self.cluster.client()).await?;
        let served = Served { handle, cert };
        wait_ready(&served).await?;
        Ok(served)
    }

    /// The webhook with [`enforce`] and the guard's own client certificate, registered for
    /// the test's namespace (the API server calls it).
    async fn serve_registered(&self) -> Result<(Served, Registration)> {
        let truth = self.truth_config("client.crt", "client.key");
        let served = self.serve(enforce(), truth).await?;
        let reg = register(&self.cluster, &served, &self.ns).await?;
        Ok((served, reg))
    }

    /// A Backup CREATE in the test's namespace through the API server (see [`create`]).
    async fn create(&self, name: &str, volume: &str, snap: &str) -> Result<Answer> {
        create(&self.cluster.client(), &self.ns, name, volume, snap).await
    }

    /// The Backup `b-<case>-<node>` of the node's Snapshot CR `snap-<case>-<node>`.
    async fn create_case(&self, node: &Node, case: &str) -> Result<Answer> {
        let n = &node.name;
        let (name, snap) = (format!("b-{case}-{n}"), format!("snap-{case}-{n}"));
        self.create(&name, &node.volume, &snap).await
    }

    /// Creates the Backup and checks the webhook admitted it with the skipped-check warning
    /// `[outcome]` (the engine check fell back).
    async fn fallback(
        &self,
        name: &str,
        volume: &str,
        snap: &str,
        outcome: &str,
    ) -> Result<Answer> {
        let a = self.create(name, volume, snap).await?;
        assert!(
            skipped_with(&a, outcome),
            "{name}: not admitted with [{outcome}]: {a:?}"
        );
        Ok(a)
    }

    async fn shutdown(self) -> Result<()> {
        for n in self.nodes {
            n.shutdown().await?;
        }
        Ok(())
    }
}

/// `engineCheck: enforce` with the test budget. The throttle (when this build has one) is
/// turned off: these tests create several Backups per volume on purpose.
fn enforce() -> Policy {
    let policy = Policy {
        engine_check: EngineCheckMode::Enforce,
        engine_check_budget_ms: BUDGET.as_millis() as u64,
        ..Policy::default()
    };
    let mut value = serde_json::to_value(&policy).unwrap_or_default();
    if let Some(throttle) = value.get_mut("throttle") {
        throttle["enabled"] = json!(false);
    }
    serde_json::from_value(value).unwrap_or(policy)
}

/// What the API server answered to a Backup CREATE, with its warnings and the client-side
/// latency.
#[derive(Debug)]
struct Answer {
    allowed: bool,
    code: u16,
    message: String,
    warnings: Vec<String>,
    took: Duration,
}

async fn create(client: &Client, ns: &str, name: &str, volume: &str, snap: &str) -> Result<Answer> {
    let obj: Value = shapes::backup(ns, name, volume, snap, None);
    let req = http::Request::post(format!("/apis/longhorn.io/v1beta2/namespaces/{ns}/backups"))
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&obj)?))?;
    let start = Instant::now();
    let resp = client.send(req).await?;
    let took = start.elapsed();
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let message = v["message"].as_str().unwrap_or_default().to_string();
    Ok(Answer {
        allowed: (200..300).contains(&code),
        code,
        message,
        warnings,
        took,
    })
}

fn skipped_with(answer: &Answer, outcome: &str) -> bool {
    answer.allowed
        && answer
            .warnings
            .iter()
            .any(|w| w.contains("engine check skipped") && w.contains(&format!("[{outcome}]")))
}

/// The fallback came within the budget (plus the slack of a busy machine).
fn assert_within_budget(a: &Answer, what: &str) {
    assert!(a.took < BUDGET + SLACK, "{what} took {:?}", a.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn engine_answers_deny_absent_and_removed_and_allow_present() -> Result<()> {
    let setup = Setup::new("truth-verdicts").await?;
    let (served, reg) = setup.serve_registered().await?;
    let client = setup.cluster.client();
    let ns = &setup.ns;

    for node in &setup.nodes {
        let n = &node.name;
        let v = &node.volume;
        let ok = setup.create_case(node, "ok").await?;
        assert!(ok.allowed, "{n}: engine has the snapshot: {ok:?}");
        assert!(ok.warnings.is_empty(), "{n}: {ok:?}");

        let gone = setup.create_case(node, "gone").await?;
        assert!(!gone.allowed, "{n}: CR present, engine lacks it: {gone:?}");
        assert_eq!(gone.code, 410, "{gone:?}");
        for needle in [
            format!("Backup \"b-gone-{n}\""),
            format!("snapshot \"snap-gone-{n}\""),
            format!("volume \"{v}\""),
            format!("engine \"{v}-e-0\""),
            format!("node \"{n}\""),
            "[snapshot_lost]".to_string(),
        ] {
            assert!(
                gone.message.contains(&needle),
                "{needle} not in {}",
                gone.message
            );
        }

        let rm = setup.create_case(node, "rm").await?;
        assert!(!rm.allowed, "{n}: engine says removed: {rm:?}");
        assert_eq!(rm.code, 410, "{rm:?}");
        assert!(rm.message.contains("[snapshot_removed]"), "{rm:?}");
        assert!(rm.message.contains(&format!("node \"{n}\"")), "{rm:?}");
    }

    // The fake engines saw the calls: each agent asked its own engine.
    for node in &setup.nodes {
        let calls = node
            .fake
            .stats()
            .calls_by_method
            .get("SnapshotList")
            .copied()
            .unwrap_or(0);
        assert!(calls >= 3, "{}: {calls} SnapshotList calls", node.name);
        assert!(!node.engine_address.is_empty());
    }

    // A Snapshot CR with Longhorn's "lost track" error is denied on the CR alone.
    let mut status = shapes::snapshot_status("node-a", "");
    status["error"] = json!(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR);
    status["readyToUse"] = json!(false);
    setup
        .cluster
        .create_longhorn_object(
            ns,
            shapes::snapshot(ns, "snap-lost-track", "vol-node-a"),
            Some(status),
        )
        .await?;
    let text = served.metrics().await?;
    let checks_before = metric(&text, CHECKS, "");
    wait_for(Duration::from_secs(10), "the lost-track CR denied", || {
        let client = client.clone();
        async move {
            let name = format!("b-lost-{:08x}", rand::random::<u32>());
            let a = create(&client, ns, &name, "vol-node-a", "snap-lost-track").await?;
            Ok(!a.allowed && a.code == 410 && a.message.contains("lost track"))
        }
    })
    .await?;
    let text = served.metrics().await?;
    assert_eq!(
        metric(&text, CHECKS, ""),
        checks_before,
        "no engine check for a CR already known lost"
    );
    assert!(metric(&text, CHECKS, "outcome=\"present\"") >= 2, "{text}");
    assert!(metric(&text, CHECKS, "outcome=\"absent\"") >= 2, "{text}");
    assert!(metric(&text, CHECKS, "outcome=\"removed\"") >= 2, "{text}");
    assert!(
        served
            .handle
            .state()
            .engine_truth
            .get()
            .map(|t| t.channel_count())
            == Some(2),
        "one channel per agent, reused"
    );

    reg.remove().await?;
    served.stop().await?;
    setup.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn agent_down_agent_black_holed_engine_black_holed_fall_back_within_budget() -> Result<()> {
    let mut setup = Setup::new("truth-fallback").await?;
    let (served, reg) = setup.serve_registered().await?;
    let client = setup.cluster.client();
    let ns = setup.ns.clone();

    // Engine black-holed: the agent on node-b is up, its engine never answers.
    setup.nodes[1]
        .fake
        .set_fault(Method::SnapshotList, Fault::BlackHole);
    let a = setup
        .fallback("b-engine-hole", "vol-node-b", "snap-gone-node-b", "timeout")
        .await?;
    assert_within_budget(&a, "engine black hole");
    setup.nodes[1].fake.clear_faults();

    // Agent black-holed: TCP accepted, no TLS handshake, ever.
    let a = setup
        .fallback("b-agent-hole", "vol-node-c", "snap-ok-node-c", "timeout")
        .await?;
    assert_within_budget(&a, "agent black hole");
    assert!(
        setup.hole.accepted() >= 1,
        "the webhook did dial the black hole"
    );

    // Agent down: node-a's agent stopped (connection refused).
    let ok = create(
        &client,
        &ns,
        "b-before-stop",
        "vol-node-a",
        "snap-ok-node-a",
    )
    .await?;
    assert!(ok.allowed && ok.warnings.is_empty(), "{ok:?}");
    setup.nodes[0].stop_agent().await?;
    // A missing snapshot is admitted, with a warning.
    let a = setup
        .fallback("b-agent-down", "vol-node-a", "snap-gone-node-a", "error")
        .await?;
    assert_within_budget(&a, "agent down");
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("node-a") && w.contains("vol-node-a-e-0")),
        "{a:?}"
    );

    // A volume whose node has no agent configured at all.
    setup
        .cluster
        .create_longhorn_object(
            &ns,
            shapes::engine(&ns, "vol-node-z", "node-z"),
            Some(shapes::engine_status(
                "node-z",
                "im-node-z",
                "10.42.9.17",
                10010,
            )),
        )
        .await?;
    setup
        .cluster
        .create_longhorn_object(
            &ns,
            shapes::snapshot(&ns, "snap-z", "vol-node-z"),
            Some(shapes::snapshot_status("node-z", "")),
        )
        .await?;
    wait_for(Duration::from_secs(10), "a no_agent fallback", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let name = format!("b-z-{:08x}", rand::random::<u32>());
            let a = create(&client, &ns, &name, "vol-node-z", "snap-z").await?;
            Ok(skipped_with(&a, "no_agent"))
        }
    })
    .await?;

    let text = served.metrics().await?;
    assert!(metric(&text, CHECKS, "outcome=\"timeout\"") >= 2, "{text}");
    assert!(metric(&text, CHECKS, "outcome=\"error\"") >= 1, "{text}");
    assert!(metric(&text, CHECKS, "outcome=\"no_agent\"") >= 1, "{text}");
    assert!(
        metric(
            &text,
            "longhorn_guard_webhook_engine_check_duration_seconds_count",
            ""
        ) >= 5,
        "{text}"
    );
    reg.remove().await?;
    served.stop().await?;
    setup.shutdown().await
}

/// `GetSnapshot` straight to node-a's agent with the given client certificate.
async fn direct_get(
    setup: &Setup,
    cert: &str,
    key: &str,
) -> Result<longhorn_guard_proto::agent::GetSnapshotResponse, tonic::Status> {
    longhorn_guard_runtime::install_crypto_provider();
    let read = |f: &str| std::fs::read(setup.pki.path(f)).unwrap_or_default();
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name(longhorn_guard_webhook::engine_truth::DEFAULT_AGENT_SERVER_NAME)
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")))
        .identity(tonic::transport::Identity::from_pem(read(cert), read(key)));
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("https://{}", setup.nodes[0].agent_addr))
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut client =
        longhorn_guard_proto::agent::snapshot_service_client::SnapshotServiceClient::new(channel);
    client
        .get_snapshot(longhorn_guard_proto::agent::GetSnapshotRequest {
            namespace: setup.ns.clone(),
            volume: "vol-node-a".into(),
            snapshot: "snap-ok-node-a".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_client_certificate_from_another_ca_is_refused_and_the_webhook_falls_back() -> Result<()>
{
    let setup = Setup::new("truth-foreign-ca").await?;

    // The agent itself refuses a stranger's certificate at the handshake, and accepts ours.
    let ours = direct_get(&setup, "client.crt", "client.key").await;
    assert!(
        ours.as_ref().is_ok_and(|r| r.found),
        "the guard's own client certificate is accepted: {ours:?}"
    );
    let refused = direct_get(&setup, "stranger.crt", "stranger.key").await;
    let err = refused.expect_err("a certificate from another CA must be refused");
    // A transport failure (the status has a client-side source), never an answer: rustls
    // reports the agent's alert ("received fatal alert: UnknownCA") or, when the TLS 1.3
    // alert races the first request, the connection closed under it (read: "connection
    // closed"/reset; write: "broken pipe", seen under load).
    assert!(
        std::error::Error::source(&err).is_some(),
        "not a handshake refusal: {err:?}"
    );
    let text = format!("{err:?}").to_lowercase();
    assert!(
        text.contains("unknownca")
            || text.contains("connection closed")
            || text.contains("connection reset")
            || text.contains("broken pipe")
            || text.contains("certificate"),
        "not a handshake refusal: {text}"
    );

    let served = setup
        .serve(
            enforce(),
            setup.truth_config("stranger.crt", "stranger.key"),
        )
        .await?;
    let reg = register(&setup.cluster, &served, &setup.ns).await?;
    let a = setup
        .fallback("b-stranger", "vol-node-a", "snap-gone-node-a", "error")
        .await?;
    assert_within_budget(&a, "the stranger's review");
    let text = served.metrics().await?;
    assert_eq!(metric(&text, CHECKS, "outcome=\"absent\""), 0, "{text}");
    assert!(metric(&text, CHECKS, "outcome=\"error\"") >= 1, "{text}");

    reg.remove().await?;
    served.stop().await?;
    setup.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn after_k_failures_the_breaker_skips_the_agent_without_dialling_it() -> Result<()> {
    let setup = Setup::new("truth-breaker").await?;
    let (served, reg) = setup.serve_registered().await?;
    let client = setup.cluster.client();
    let ns = &setup.ns;

    // K = 3 timeouts against the black-holed agent of node-c; each one dialled it.
    for i in 0..3 {
        let name = format!("b-k-{i}");
        setup
            .fallback(&name, "vol-node-c", "snap-ok-node-c", "timeout")
            .await?;
    }
    let dialled = setup.hole.accepted();
    assert!(dialled >= 1, "the black hole was dialled");

    // Open: skipped at once, the black hole is not dialled again.
    let mut took = Vec::new();
    for i in 0..5 {
        let name = format!("b-open-{i}");
        let a = setup
            .fallback(&name, "vol-node-c", "snap-ok-node-c", "breaker_open")
            .await?;
        took.push(a.took);
    }
    assert_eq!(
        setup.hole.accepted(),
        dialled,
        "no dial while the breaker is open"
    );
    let text = served.metrics().await?;
    assert!(
        metric(&text, CHECKS, "outcome=\"breaker_open\"") >= 5,
        "{text}"
    );
    // The skip itself costs no budget: the check's own duration histogram says so.
    assert_eq!(
        metric(
            &text,
            "longhorn_guard_webhook_engine_check_duration_seconds_bucket",
            "le=\"0.01\",outcome=\"breaker_open\""
        ),
        metric(&text, CHECKS, "outcome=\"breaker_open\""),
        "{text}"
    );
    // Other agents are unaffected.
    let ok = create(&client, ns, "b-ok-a", "vol-node-a", "snap-ok-node-a").await?;
    assert!(ok.allowed && ok.warnings.is_empty(), "{ok:?}");
    assert_eq!(
        served
            .handle
            .state()
            .engine_truth
            .get()
            .map(|t| t.open_breakers()),
        Some(1)
    );
    eprintln!("review latencies with the breaker open: {took:?}");

    reg.remove().await?;
    served.stop().await?;
    setup.shutdown().await
}

/// Graceful shutdown, the way `longhorn-guard webhook` does it on SIGTERM
/// (`WebhookHandle::shutdown`): a review held in flight for real — its engine check waits on
/// node-a's fake engine, which answers `SnapshotList` only after `HOLD` — still gets its
/// full answer (the engine's verdict, not a fallback), while new connections are refused as
/// soon as shutdown has begun; then the server tasks end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn shutdown_finishes_the_review_in_flight_and_refuses_new_connections() -> Result<()> {
    const HOLD: Duration = Duration::from_secs(1);
    let setup = Setup::new("truth-shutdown").await?;
    let policy = Policy {
        engine_check_budget_ms: 4_000,
        deadline_ms: 5_000,
        ..enforce()
    };
    let served = setup
        .serve(policy, setup.truth_config("client.crt", "client.key"))
        .await?;
    let node = &setup.nodes[0];
    let ns = setup.ns.clone();
    node.fake
        .set_fault(Method::SnapshotList, Fault::Delay(HOLD));
    let engine_calls = || {
        node.fake
            .stats()
            .calls_by_method
            .get("SnapshotList")
            .copied()
            .unwrap_or(0)
    };
    let before = engine_calls();

    let addr = served.handle.local_addr();
    let ops_addr = served.handle.metrics_addr();
    let pem = served.cert.pem.clone();
    let body = serde_json::to_vec(&admission_review(
        &ns,
        "uid-held",
        "alice",
        shapes::backup(&ns, "b-held", &node.volume, "snap-gone-node-a", None),
    ))?;
    let sent = Instant::now();
    let in_flight =
        tokio::spawn(async move { tls_post_to(addr, &pem, "/validate/backups", body).await });
    wait_for(
        Duration::from_secs(10),
        "the review's engine call to reach the fake engine",
        || async move { Ok(engine_calls() > before) },
    )
    .await?;
    assert!(!in_flight.is_finished(), "the review was not held");

    let stopping = tokio::spawn(served.stop());
    wait_for(
        Duration::from_secs(1),
        "new connections to the admission port to be refused",
        || async move {
            Ok(matches!(
                tokio::net::TcpStream::connect(addr).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            ))
        },
    )
    .await?;
    assert!(
        !in_flight.is_finished(),
        "the review ended before new connections were refused: nothing was in flight"
    );

    let (status, text) = in_flight.await??;
    let took = sent.elapsed();
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text)?;
    let resp = &v["response"];
    assert_eq!(resp["uid"], "uid-held", "{text}");
    assert_eq!(resp["allowed"], false, "{text}");
    assert_eq!(resp["status"]["code"], 410, "{text}");
    let message = resp["status"]["message"].as_str().unwrap_or_default();
    for needle in [
        "Backup \"b-held\"",
        "snapshot \"snap-gone-node-a\"",
        "engine \"vol-node-a-e-0\"",
        "[snapshot_lost]",
    ] {
        assert!(message.contains(needle), "{needle} not in {message}");
    }
    assert!(
        took >= HOLD,
        "answered after {took:?}, before the engine did"
    );

    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .context("shutdown did not end")???;
    assert!(
        tokio::net::TcpStream::connect(ops_addr).await.is_err(),
        "the ops listener outlived shutdown"
    );
    setup.shutdown().await
}
