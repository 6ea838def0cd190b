//! The agent's gRPC API over TLS (and mTLS with `client_ca`), answered from the fake engine, and
//! its plain-HTTP `/metrics`, `/healthz`, `/readyz`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fake_engine::{Fault, Method};
use longhorn_guard_agent::metrics::LeaseOutcome;
use longhorn_guard_agent::{Agent, AgentConfig, EngineIndex, ManagerMonitorConfig, ProcessMatch};
use longhorn_guard_proto::agent::snapshot_service_client::SnapshotServiceClient;
use longhorn_guard_proto::agent::{GetSnapshotRequest, ListSnapshotsRequest};
use longhorn_types::{
    Engine, EngineSpec, EngineStatus, InstanceManager, InstanceManagerSpec, InstanceManagerStatus,
};
use rcgen::{CertifiedIssuer, KeyPair};
use support::*;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

type TestResult = anyhow::Result<()>;

const NODE: &str = "node-1";

struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    client_cert: String,
    client_key: String,
    stranger_cert: String,
    stranger_key: String,
}

fn pki() -> anyhow::Result<Pki> {
    let ca = make_ca("agent test CA")?;
    let other_ca = make_ca("some other CA")?;
    let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], &ca)?;
    let (client_cert, client_key) = leaf(&["longhorn-guard-webhook"], &ca)?;
    let (stranger_cert, stranger_key) = leaf(&["longhorn-guard-webhook"], &other_ca)?;
    let dir = files_dir(&[
        ("tls.crt", &server_cert),
        ("tls.key", &server_key),
        ("ca.crt", &ca.pem()),
    ])?;
    Ok(Pki {
        dir,
        ca_pem: ca.pem(),
        ca,
        client_cert,
        client_key,
        stranger_cert,
        stranger_key,
    })
}

fn engine(name: &str, volume: &str, node: &str, im: &str) -> Engine {
    let mut e = Engine::new(
        name,
        EngineSpec {
            volume_name: volume.into(),
            node_id: node.into(),
            data_engine: "v1".into(),
            active: true,
            ..EngineSpec::default()
        },
    );
    let (ip, port) = ENGINE_ADDRESS.split_once(':').unwrap_or_default();
    e.status = Some(EngineStatus {
        current_state: "running".into(),
        instance_manager_name: im.into(),
        storage_ip: ip.into(),
        port: port.parse().unwrap_or_default(),
        ..EngineStatus::default()
    });
    e
}

fn instance_manager(name: &str) -> InstanceManager {
    let mut im = InstanceManager::new(
        name,
        InstanceManagerSpec {
            node_id: NODE.into(),
            ..InstanceManagerSpec::default()
        },
    );
    im.status = Some(InstanceManagerStatus {
        current_state: "running".into(),
        ip: "127.0.0.1".into(),
        proxy_api_version: 1,
        ..InstanceManagerStatus::default()
    });
    im
}

fn feed(index: &EngineIndex) {
    index.apply_engine(&engine(ENGINE_NAME, VOLUME, NODE, "im-1"));
    index.apply_engine(&engine("pvc-9-e-0", "pvc-9", "node-2", "im-2"));
    index.apply_instance_manager(&instance_manager("im-1"));
}

struct RunningAgent {
    grpc_port: u16,
    http_port: u16,
    index: EngineIndex,
    pool: longhorn_guard_agent::LeasePool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}

async fn start_agent(pki: &Pki, client_ca: bool, proxy_port: u16) -> anyhow::Result<RunningAgent> {
    start_agent_with(pki, client_ca, proxy_port, |_| {}).await
}

async fn start_agent_with(
    pki: &Pki,
    client_ca: bool,
    proxy_port: u16,
    adjust: impl FnOnce(&mut AgentConfig),
) -> anyhow::Result<RunningAgent> {
    let mut config = AgentConfig::new(NODE);
    config.server_cert = pki.dir.path().join("tls.crt");
    config.server_key = pki.dir.path().join("tls.key");
    config.client_ca = client_ca.then(|| pki.dir.path().join("ca.crt"));
    config.engine_proxy_port = proxy_port;
    config.pool = test_pool_config();
    adjust(&mut config);
    let agent = Agent::new(config)?;
    let index = agent.index().clone();
    let pool = agent.pool().clone();
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_port = grpc.local_addr()?.port();
    let http_port = http.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.serve(grpc, http, async move {
        let _ = stopped.await;
    }));
    Ok(RunningAgent {
        grpc_port,
        http_port,
        index,
        pool,
        stop: Some(stop),
        task,
    })
}

async fn tls_channel(
    port: u16,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Channel::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

fn get(volume: &str, snapshot: &str) -> GetSnapshotRequest {
    GetSnapshotRequest {
        namespace: "longhorn-system".into(),
        volume: volume.into(),
        snapshot: snapshot.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_service_over_mtls_answers_from_the_engine() -> TestResult {
    let pki = pki()?;
    let (fake, server) = start_fake().await?;
    let agent = start_agent(&pki, true, server.local_addr.port()).await?;
    feed(&agent.index);
    agent.index.mark_synced();

    let channel = tls_channel(
        agent.grpc_port,
        &pki.ca_pem,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await?;
    let mut client = SnapshotServiceClient::new(channel.clone());

    let found = client
        .get_snapshot(get(VOLUME, "snap-a"))
        .await?
        .into_inner();
    assert!(found.found);
    let engine = found.engine.unwrap_or_default();
    assert_eq!(engine.engine_name, ENGINE_NAME);
    assert_eq!(engine.node, NODE);
    assert_eq!(engine.instance_manager, "im-1");
    assert_eq!(engine.proxy_endpoint, server.local_addr.to_string());
    let snap = found.snapshot.unwrap_or_default();
    assert_eq!(snap.name, "snap-a");
    assert!(snap.user_created && !snap.removed);
    assert_eq!(snap.size, "4096");

    let missing = client
        .get_snapshot(get(VOLUME, "snap-zzz"))
        .await?
        .into_inner();
    assert!(!missing.found && missing.snapshot.is_none());

    fake.mark_removed(ENGINE_ADDRESS, "snap-b");
    let removed = client
        .get_snapshot(get(VOLUME, "snap-b"))
        .await?
        .into_inner();
    assert!(removed.found);
    assert!(removed.snapshot.is_some_and(|s| s.removed));

    let head = client
        .get_snapshot(get(VOLUME, "volume-head"))
        .await?
        .into_inner();
    assert!(!head.found, "volume-head is not a snapshot");

    let list = client
        .list_snapshots(ListSnapshotsRequest {
            namespace: String::new(),
            volume: VOLUME.into(),
        })
        .await?
        .into_inner();
    let names: Vec<_> = list.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["snap-a", "snap-b"]);

    // An engine of another node is not ours: NOT_FOUND naming the volume and this node.
    for volume in ["pvc-unknown", "pvc-9"] {
        let err = client.get_snapshot(get(volume, "snap-a")).await.err();
        let err = err.unwrap_or_else(|| tonic::Status::ok(""));
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(
            err.message().contains(volume) && err.message().contains(NODE),
            "{err:?}"
        );
    }

    // The caller's deadline bounds the engine call.
    fake.set_fault(Method::SnapshotList, Fault::Delay(Duration::from_secs(5)));
    let mut request = tonic::Request::new(get(VOLUME, "snap-a"));
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.get_snapshot(request).await.err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.as_ref()
            .is_some_and(|e| matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled)),
        "{err:?}"
    );
    fake.clear_faults();
    assert!(
        eventually(Duration::from_secs(2), || agent.pool.book().leases_active
            == 0)
        .await,
        "{:?}",
        agent.pool.book()
    );
    let book = agent.pool.book();
    assert_eq!(
        book.released(LeaseOutcome::Deadline) + book.released(LeaseOutcome::Cancelled),
        1,
        "{book:?}"
    );

    // grpc.health.v1 over the same TLS port.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "longhornguard.agent.v1.SnapshotService".into(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_cert_from_the_client_ca_are_refused() -> TestResult {
    let pki = pki()?;
    let (_fake, server) = start_fake().await?;
    let agent = start_agent(&pki, true, server.local_addr.port()).await?;
    feed(&agent.index);
    agent.index.mark_synced();

    let attempts = [
        ("no client certificate", None),
        (
            "a certificate from another CA",
            Some((pki.stranger_cert.as_str(), pki.stranger_key.as_str())),
        ),
    ];
    for (what, identity) in attempts {
        // TLS 1.3 may report the rejected certificate at connect or on the first call.
        let outcome = match tls_channel(agent.grpc_port, &pki.ca_pem, identity).await {
            Err(e) => Err(e.to_string()),
            Ok(channel) => SnapshotServiceClient::new(channel)
                .get_snapshot(get(VOLUME, "snap-a"))
                .await
                .map(drop)
                .map_err(|s| s.to_string()),
        };
        assert!(outcome.is_err(), "client with {what} was served");
    }
    // And the right certificate is served: the refusals above are about the certificate.
    let channel = tls_channel(
        agent.grpc_port,
        &pki.ca_pem,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await?;
    let ok = SnapshotServiceClient::new(channel)
        .get_snapshot(get(VOLUME, "snap-a"))
        .await;
    assert!(ok.is_ok(), "{ok:?}");

    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_ca_plain_tls_clients_are_served() -> TestResult {
    let pki = pki()?;
    let (_fake, server) = start_fake().await?;
    let agent = start_agent(&pki, false, server.local_addr.port()).await?;
    feed(&agent.index);
    agent.index.mark_synced();
    let channel = tls_channel(agent.grpc_port, &pki.ca_pem, None).await?;
    let found = SnapshotServiceClient::new(channel)
        .get_snapshot(get(VOLUME, "snap-a"))
        .await?
        .into_inner();
    assert!(found.found);
    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_watches_and_metrics_pass_promtool() -> TestResult {
    let pki = pki()?;
    let (_fake, server) = start_fake().await?;
    // The embedded longhorn-manager monitor follows this very test process through the real
    // /proc (matched by its exact command line), standing in for longhorn-manager.
    let own_cmdline = std::fs::read_to_string("/proc/self/cmdline")?
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let agent = start_agent_with(&pki, false, server.local_addr.port(), |config| {
        let mut monitor = ManagerMonitorConfig::for_node(NODE);
        monitor.process_match = ProcessMatch::CmdlineExact(own_cmdline);
        monitor.interval = Duration::from_millis(100);
        config.manager_monitor = Some(monitor);
    })
    .await?;

    let (code, body) = http_get(agent.http_port, "/readyz").await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("not synced") || body.contains("have not synced"),
        "{body}"
    );
    let (code, _) = http_get(agent.http_port, "/healthz").await?;
    assert_eq!(code, 200);

    feed(&agent.index);
    agent.index.mark_synced();
    let (code, _) = http_get(agent.http_port, "/readyz").await?;
    assert_eq!(code, 200);

    // Some traffic so the histograms and breaker gauge have series.
    let channel = tls_channel(agent.grpc_port, &pki.ca_pem, None).await?;
    let mut client = SnapshotServiceClient::new(channel);
    for _ in 0..3 {
        client.get_snapshot(get(VOLUME, "snap-a")).await?;
    }

    // The monitor's first sample runs as it starts; wait for it to have found the process.
    let up = format!("longhorn_guard_manager_up{{node=\"{NODE}\"}} 1");
    let mut text = String::new();
    for _ in 0..100 {
        let (code, body) = http_get(agent.http_port, "/metrics").await?;
        assert_eq!(code, 200);
        text = body;
        if text.contains(&up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(&up), "missing {up:?} in\n{text}");
    for needle in [
        "# TYPE longhorn_guard_manager_up gauge",
        &format!("longhorn_guard_manager_threads{{node=\"{NODE}\"}} "),
        &format!("longhorn_guard_manager_resident_memory_bytes{{node=\"{NODE}\"}} "),
        &format!("longhorn_guard_manager_restarts_total{{node=\"{NODE}\"}} 0"),
        &format!(
            "longhorn_guard_manager_im_connections{{node=\"{NODE}\",remote_port=\"8501\",state=\"established\"}} 0"
        ),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(
        !text.contains("longhorn_guard_agent_longhorn_guard_manager"),
        "the monitor's families must not carry the agent prefix:\n{text}"
    );
    for needle in [
        "longhorn_guard_agent_channels_active 1",
        "longhorn_guard_agent_channels_created_total 1",
        "longhorn_guard_agent_channels_closed_total{reason=\"transport_error\"} 0",
        "longhorn_guard_agent_leases_active 0",
        "longhorn_guard_agent_leases_acquired_total 3",
        "longhorn_guard_agent_leases_released_total{outcome=\"ok\"} 3",
        "longhorn_guard_agent_lease_wait_overflow_total 0",
        "longhorn_guard_agent_deadline_exceeded_total 0",
        "longhorn_guard_agent_leaked_leases 0",
        "longhorn_guard_agent_call_duration_seconds_bucket{le=\"0.0001\",method=\"SnapshotList\",code=\"ok\"}",
        "longhorn_guard_agent_process_open_fds ",
        "longhorn_guard_agent_process_resident_memory_bytes ",
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(
        text.contains(&format!(
            "longhorn_guard_agent_breaker_state{{endpoint=\"{}\"}} 0",
            server.local_addr
        )),
        "{text}"
    );
    promtool_check(&text)?;

    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}

/// Writes `content` to `path` atomically (temp file + rename), like a Secret volume update.
fn write_atomic(path: &Path, content: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A rustls client config for the agent: trusts `ca_pem`, presents the client certificate,
/// ALPN h2, no session resumption (every connection shows what the server serves now).
fn rustls_client(ca_pem: &str, cert: &str, key: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let chain = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// One GetSnapshot on a fresh mTLS connection; returns the server's leaf certificate (DER).
async fn call_on_fresh_connection(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Vec<u8>> {
    let seen: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
    let connector = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |_uri: http::Uri| {
            let (tls, seen) = (Arc::clone(&tls), Arc::clone(&seen));
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = leaf;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        })
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://localhost:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(connector)
        .await?;
    let found = SnapshotServiceClient::new(channel)
        .get_snapshot(get(VOLUME, "snap-a"))
        .await?
        .into_inner();
    anyhow::ensure!(found.found, "snap-a not found");
    let leaf = seen.lock().unwrap_or_else(|e| e.into_inner()).take();
    leaf.ok_or_else(|| anyhow::anyhow!("no server certificate seen"))
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let cert = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate"))??;
    Ok(cert.as_ref().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_serving_certificate_is_served_without_a_failed_call() -> TestResult {
    let pki = pki()?;
    let (_fake, server) = start_fake().await?;
    let agent = start_agent_with(&pki, true, server.local_addr.port(), |config| {
        config.tls_reload_interval = Duration::from_millis(50);
    })
    .await?;
    feed(&agent.index);
    agent.index.mark_synced();
    let first = pem_der(&std::fs::read_to_string(pki.dir.path().join("tls.crt"))?)?;
    let tls = rustls_client(&pki.ca_pem, &pki.client_cert, &pki.client_key)?;
    assert_eq!(
        call_on_fresh_connection(agent.grpc_port, Arc::clone(&tls)).await?,
        first
    );

    // Two callers keep calling through the rotation: one on a long-lived mTLS channel, one
    // opening a fresh mTLS connection (a full handshake) for every call.
    let stop = Arc::new(AtomicBool::new(false));
    let long_lived = {
        let channel = tls_channel(
            agent.grpc_port,
            &pki.ca_pem,
            Some((&pki.client_cert, &pki.client_key)),
        )
        .await?;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut client = SnapshotServiceClient::new(channel);
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.get_snapshot(get(VOLUME, "snap-a")).await {
                    Ok(r) if r.get_ref().found => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    let fresh = {
        let (stop, tls, port) = (Arc::clone(&stop), Arc::clone(&tls), agent.grpc_port);
        tokio::spawn(async move {
            let (mut leaves, mut failed) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match call_on_fresh_connection(port, Arc::clone(&tls)).await {
                    Ok(leaf) => leaves.push(leaf),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (leaves, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rotate: a new serving certificate from the same CA, as a renewal does.
    let (second_cert, second_key) = leaf(&["localhost", "127.0.0.1"], &pki.ca)?;
    let second = pem_der(&second_cert)?;
    assert_ne!(first, second);
    write_atomic(&pki.dir.path().join("tls.crt"), &second_cert)?;
    write_atomic(&pki.dir.path().join("tls.key"), &second_key)?;

    let mut served_new = false;
    for _ in 0..100 {
        if call_on_fresh_connection(agent.grpc_port, Arc::clone(&tls)).await? == second {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served_new, "the rotated certificate was never served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (long_ok, long_failed) = long_lived.await?;
    let (leaves, fresh_failed) = fresh.await?;

    assert!(
        long_failed.is_empty(),
        "long-lived channel: {long_failed:?}"
    );
    assert!(
        fresh_failed.is_empty(),
        "fresh connections: {fresh_failed:?}"
    );
    assert!(long_ok > 0);
    let before = leaves.iter().filter(|l| **l == first).count();
    let after = leaves.iter().filter(|l| **l == second).count();
    assert_eq!(
        before + after,
        leaves.len(),
        "a third certificate was served"
    );
    assert!(before > 0 && after > 0, "before {before}, after {after}");
    // Once the new pair is served, the old one never comes back.
    let switch = leaves
        .iter()
        .position(|l| *l == second)
        .unwrap_or(leaves.len());
    assert!(leaves[switch..].iter().all(|l| *l == second));

    let (_, text) = http_get(agent.http_port, "/metrics").await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("longhorn_guard_agent_tls_reloads_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    eprintln!(
        "rotation: {long_ok} calls on the long-lived channel, {before} fresh connections before and {after} after, 0 failed"
    );
    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}

/// Waits (up to 10 s, else fails) for the pool's next leak sweep, then scrapes `/metrics`.
async fn scrape_after_a_sweep(agent: &RunningAgent) -> anyhow::Result<String> {
    let sweeps = agent.pool.book().leak_sweeps;
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || agent.pool.book().leak_sweeps
            > sweeps)
        .await,
        "no leak sweep within 10 s: {:?}",
        agent.pool.book()
    );
    let (code, text) = http_get(agent.http_port, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}: {text}");
    Ok(text)
}

/// The series Prometheus stores from `scrapes`, scrape `i` taken at minute `i`: each exposition
/// goes through Prometheus's own OpenMetrics parser into a TSDB (`promtool tsdb
/// create-blocks-from openmetrics`; a timestamp is appended to every sample, nothing else is
/// changed), read back with `promtool tsdb dump`. Keyed `name{labels}` as PromQL writes a series,
/// one value per scrape.
fn ingested_by_prometheus(
    scrapes: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<Option<f64>>>> {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        - 3600;
    let dir = files_dir(&[])?;
    let blocks = dir.path().join("blocks");
    for (i, text) in scrapes.iter().enumerate() {
        let input = dir.path().join(format!("scrape-{i}.om"));
        ingest_into_tsdb(text, start + 60 * i as u64, &input, &blocks)?;
    }
    // `tsdb dump` opens the directory as a TSDB, which wants a (here empty) write-ahead log.
    std::fs::create_dir_all(blocks.join("wal"))?;
    let (ok, dump) = run_promtool(&["tsdb", "dump", &blocks.display().to_string()], None)?;
    anyhow::ensure!(ok, "promtool tsdb dump failed:\n{dump}");
    let mut series = std::collections::BTreeMap::new();
    for line in dump.lines().filter(|l| l.starts_with('{')) {
        // {__name__="name", label="value", ...} value timestamp_ms
        let mut fields = line.rsplitn(3, ' ');
        let (Some(ms), Some(value), Some(labels)) = (fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!("unexpected dump line {line:?}");
        };
        let labels = labels
            .strip_prefix("{__name__=\"")
            .and_then(|l| l.strip_suffix('}'))
            .ok_or_else(|| anyhow::anyhow!("no metric name in {line:?}"))?;
        let (name, rest) = labels
            .split_once('"')
            .ok_or_else(|| anyhow::anyhow!("unterminated name in {line:?}"))?;
        let key = format!("{name}{{{}}}", rest.trim_start_matches(", "));
        let minute = (ms.parse::<u64>()? / 1000 - start) / 60;
        let values = series
            .entry(key)
            .or_insert_with(|| vec![None; scrapes.len()]);
        let slot = values
            .get_mut(usize::try_from(minute)?)
            .ok_or_else(|| anyhow::anyhow!("sample outside the scrapes: {line:?}"))?;
        *slot = Some(value.parse::<f64>()?);
    }
    Ok(series)
}

/// The value of the label-less series `name` in scrape `i`.
fn ingested(
    series: &std::collections::BTreeMap<String, Vec<Option<f64>>>,
    name: &str,
    i: usize,
) -> anyhow::Result<f64> {
    series
        .get(&format!("{name}{{}}"))
        .and_then(|values| values.get(i).copied().flatten())
        .ok_or_else(|| anyhow::anyhow!("{name} is not in scrape {i}"))
}

/// The rules file's annotations of `alert`, with `{{ $labels.instance }}` filled in.
fn expected_annotations(alert: &str, instance: &str) -> anyhow::Result<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/monitoring/rules/longhorn-guard.rules.yaml");
    let rules: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let rule = rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r["alert"].as_str() == Some(alert))
        .ok_or_else(|| anyhow::anyhow!("no alert {alert} in {}", path.display()))?;
    let mut annotations = serde_yaml::Mapping::new();
    for (key, value) in rule["annotations"].as_mapping().into_iter().flatten() {
        let text = value.as_str().unwrap_or_default();
        let filled = text.replace("{{ $labels.instance }}", instance);
        anyhow::ensure!(
            !filled.contains("{{"),
            "{alert}: template this test does not fill in: {text}"
        );
        annotations.insert(key.clone(), serde_yaml::Value::from(filled));
    }
    Ok(serde_yaml::Value::Mapping(annotations))
}

/// The leak detector as an operator meets it. A call future inside a running agent is polled
/// until it holds its lease, then forgotten (`mem::forget`): it keeps its lease past the deadline
/// and its channel past max age. The agent's real `/metrics`, parsed by an OpenMetrics parser,
/// shows both; the scraped series, one scrape a minute for promtool with the real alert rules,
/// fire `LonghornGuardAgentLeakedLeases` and `LonghornGuardAgentLeakedChannels` after their 5 min,
/// and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_lease_and_channel_show_in_the_scrape_and_fire_the_alerts() -> TestResult {
    let pki = pki()?;
    let (_fake, server) = start_fake().await?;
    let agent = start_agent_with(&pki, false, server.local_addr.port(), |config| {
        config.pool.max_lease = Duration::from_millis(300);
        config.pool.max_age = Duration::from_millis(400);
        config.pool.leak_grace = Duration::from_millis(200);
        config.pool.reap_interval = Duration::from_millis(20);
    })
    .await?;
    let endpoint = server.local_addr.to_string();

    let mut scrapes = Vec::new();
    for _ in 0..3 {
        scrapes.push(scrape_after_a_sweep(&agent).await?);
    }
    let mut call = Box::pin(agent.pool.call(
        &endpoint,
        "SnapshotList",
        deadline_in(Duration::from_secs(60)),
        // The call keeps its channel while it waits forever.
        |channel, _left| async move {
            let _in_use = channel;
            std::future::pending::<Result<(), tonic::Status>>().await
        },
    ));
    tokio::select! {
        ended = &mut call => anyhow::bail!("a call that never answers ended: {ended:?}"),
        // Holding its lease and the channel it dialled (the closure has it from then on).
        holds = eventually(Duration::from_secs(5), || {
            let book = agent.pool.book();
            book.leases_active == 1 && book.channels_created == 1
        }) => {
            anyhow::ensure!(holds, "the call never got its lease: {:?}", agent.pool.book());
        }
    }
    std::mem::forget(call);
    anyhow::ensure!(
        eventually(Duration::from_secs(10), || {
            let book = agent.pool.book();
            book.leaked_leases == 1 && book.leaked_channels == 1
        })
        .await,
        "the sweep never found the forgotten lease and its channel: {:?}",
        agent.pool.book()
    );
    for _ in 0..9 {
        scrapes.push(scrape_after_a_sweep(&agent).await?);
    }

    let series = ingested_by_prometheus(&scrapes)?;
    let last = scrapes.len() - 1;
    assert_eq!(
        ingested(&series, "longhorn_guard_agent_leaked_leases", 0)?,
        0.0
    );
    assert_eq!(
        ingested(&series, "longhorn_guard_agent_leaked_leases", last)?,
        1.0
    );
    assert_eq!(
        ingested(&series, "longhorn_guard_agent_leaked_channels", last)?,
        1.0
    );
    assert_eq!(
        ingested(&series, "longhorn_guard_agent_leases_active", last)?,
        1.0
    );
    assert_eq!(
        ingested(
            &series,
            "longhorn_guard_agent_leaked_leases_detected_total",
            last
        )?,
        1.0
    );
    assert!(
        ingested(
            &series,
            "longhorn_guard_agent_leaked_lease_oldest_age_seconds",
            last
        )? >= 0.4
    );
    assert!(
        ingested(
            &series,
            "longhorn_guard_agent_leaked_channel_oldest_age_seconds",
            last
        )? > 0.4
    );

    // promtool: every stored series, labelled as Prometheus labels the agent's target.
    let instance = format!("127.0.0.1:{}", agent.http_port);
    let target = format!("instance=\"{instance}\", job=\"longhorn-guard-agent\"");
    let input_series: Vec<serde_yaml::Value> = series
        .iter()
        .map(|(key, values)| {
            let values: Vec<String> = values
                .iter()
                .map(|v| v.map_or("_".to_string(), |v| v.to_string()))
                .collect();
            let labelled = match key.strip_suffix("{}") {
                Some(name) => format!("{name}{{{target}}}"),
                None => format!("{}, {target}}}", key.trim_end_matches('}')),
            };
            let mut entry = serde_yaml::Mapping::new();
            entry.insert("series".into(), labelled.into());
            entry.insert("values".into(), values.join(" ").into());
            serde_yaml::Value::Mapping(entry)
        })
        .collect();
    let mut cases = Vec::new();
    for alert in [
        "LonghornGuardAgentLeakedLeases",
        "LonghornGuardAgentLeakedChannels",
    ] {
        // Leaked from minute 3: pending at 6, firing from 8 on.
        cases.push(serde_yaml::to_value(serde_json::json!({
            "eval_time": "6m", "alertname": alert, "exp_alerts": []
        }))?);
        cases.push(serde_yaml::to_value(serde_json::json!({
            "eval_time": "11m",
            "alertname": alert,
            "exp_alerts": [{
                "exp_labels": {
                    "instance": instance, "job": "longhorn-guard-agent", "severity": "warning"
                },
                "exp_annotations": serde_json::to_value(expected_annotations(alert, &instance)?)?,
            }],
        }))?);
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/monitoring/rules/longhorn-guard.rules.yaml")
        .canonicalize()?;
    let test = serde_json::json!({
        "rule_files": [rules.display().to_string()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": serde_json::to_value(&input_series)?,
            "alert_rule_test": serde_json::to_value(&cases)?,
        }],
    });
    let dir = files_dir(&[("scraped-leak.yaml", &serde_yaml::to_string(&test)?)])?;
    let file = dir.path().join("scraped-leak.yaml");
    let (ok, report) = run_promtool(&["test", "rules", &file.display().to_string()], None)?;
    assert!(
        ok && report.contains("SUCCESS"),
        "promtool test rules on the scraped series failed:\n{report}\n--- test file ---\n{}",
        std::fs::read_to_string(&file)?
    );

    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}

/// A flood of silent TCP connections to the agent's gRPC port: the handshakes in progress stay
/// at the cap (tasks and fds bounded, the oldest silent connections closed by the server) and a
/// real client is served in the middle of the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_costs_bounded_tasks_and_fds_and_real_clients_are_served() -> TestResult
{
    const MAX_HANDSHAKES: usize = 16;
    const FLOOD: usize = 400;
    let pki = pki()?;
    let (_fake, server) = start_fake().await?;
    let agent = start_agent_with(&pki, false, server.local_addr.port(), |config| {
        config.max_tls_handshakes = MAX_HANDSHAKES;
    })
    .await?;
    feed(&agent.index);
    agent.index.mark_synced();
    // Warm up: a real client served, its connection closed again.
    let channel = tls_channel(agent.grpc_port, &pki.ca_pem, None).await?;
    SnapshotServiceClient::new(channel)
        .get_snapshot(get(VOLUME, "snap-a"))
        .await?;
    let runtime = tokio::runtime::Handle::current().metrics();
    let (tasks0, fds0) = (runtime.num_alive_tasks(), open_fds()?);

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(tokio::net::TcpStream::connect(("127.0.0.1", agent.grpc_port)).await?);
    }
    // The server closes all but the newest MAX_HANDSHAKES; watch the process meanwhile.
    let closed_by_server = |flood: &[tokio::net::TcpStream]| {
        flood
            .iter()
            .filter(|s| {
                let mut byte = [0u8; 1];
                !matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    let (mut peak_tasks, mut peak_fds) = (0, 0);
    let evicted = eventually(Duration::from_secs(5), || {
        peak_tasks = peak_tasks.max(runtime.num_alive_tasks());
        peak_fds = peak_fds.max(open_fds().unwrap_or(usize::MAX));
        closed_by_server(&flood) >= FLOOD - MAX_HANDSHAKES
    })
    .await;
    assert!(
        evicted,
        "the server holds {} of {FLOOD} silent connections (cap {MAX_HANDSHAKES})",
        FLOOD - closed_by_server(&flood)
    );
    // Our own FLOOD client sockets, at most MAX_HANDSHAKES server sockets and their tasks.
    // The accept loop, the warm-up connection's tail, the gRPC server's own tasks.
    let slack = 16;
    assert!(
        peak_tasks <= tasks0 + MAX_HANDSHAKES + slack,
        "tasks {tasks0} -> {peak_tasks} during a flood of {FLOOD}"
    );
    assert!(
        peak_fds <= fds0 + FLOOD + MAX_HANDSHAKES + slack,
        "fds {fds0} -> {peak_fds} during a flood of {FLOOD} (its own client sockets included)"
    );

    // A real client, with MAX_HANDSHAKES silent connections still in the server's slots.
    let channel = tls_channel(agent.grpc_port, &pki.ca_pem, None).await?;
    let found = SnapshotServiceClient::new(channel)
        .get_snapshot(get(VOLUME, "snap-a"))
        .await?
        .into_inner();
    assert!(found.found);
    eprintln!(
        "flood of {FLOOD}: tasks {tasks0} -> peak {peak_tasks}, fds {fds0} -> peak {peak_fds}, {} closed by the server; a real client was served",
        closed_by_server(&flood)
    );
    drop(flood);
    agent.stop().await?;
    server.shutdown().await;
    Ok(())
}
