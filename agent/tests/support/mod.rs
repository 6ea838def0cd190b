//! Shared set-up of the agent's integration tests: a fake engine proxy on loopback and a pool
//! pointed at it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use fake_engine::{EngineSpec, FakeEngine, RunningServer, SnapshotSpec};
use longhorn_guard_agent::{EngineClient, EngineTarget, LeasePool, PoolConfig, PoolMetrics};

pub const ENGINE_ADDRESS: &str = "10.42.1.17:10010";
pub const ENGINE_NAME: &str = "pvc-1-e-0";
pub const VOLUME: &str = "pvc-1";

pub struct Fixture {
    pub fake: FakeEngine,
    pub server: RunningServer,
    pub endpoint: String,
    pub pool: LeasePool,
    pub client: EngineClient,
    pub target: EngineTarget,
}

/// Short timers so tests finish quickly; breaker effectively off unless a test turns it on.
pub fn test_pool_config() -> PoolConfig {
    PoolConfig {
        max_channels_per_endpoint: 2,
        max_leases_per_endpoint: 8,
        max_channels_total: 8,
        max_leases_total: 64,
        queue_timeout: Duration::from_secs(2),
        max_lease: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        max_age: Duration::from_secs(300),
        breaker_failure_threshold: 1_000_000,
        breaker_cool_down: Duration::from_millis(200),
        reap_interval: Duration::from_millis(50),
        leak_grace: Duration::from_secs(1),
        ..PoolConfig::default()
    }
}

pub fn snapshots() -> Vec<SnapshotSpec> {
    ["snap-a", "snap-b"]
        .iter()
        .map(|name| SnapshotSpec {
            name: (*name).to_string(),
            user_created: true,
            created: "2026-11-24T10:00:00Z".to_string(),
            size: 4096,
            ..SnapshotSpec::default()
        })
        .collect()
}

pub async fn start_fake() -> anyhow::Result<(FakeEngine, RunningServer)> {
    let fake = FakeEngine::new();
    fake.add_engine(EngineSpec {
        address: ENGINE_ADDRESS.to_string(),
        engine_name: ENGINE_NAME.to_string(),
        volume_name: VOLUME.to_string(),
    });
    fake.set_snapshots(ENGINE_ADDRESS, snapshots());
    let server = fake_engine::serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
    Ok((fake, server))
}

pub fn target_for(endpoint: &str) -> EngineTarget {
    EngineTarget {
        proxy_endpoint: endpoint.to_string(),
        instance_manager: "instance-manager-test".to_string(),
        node: "node-1".to_string(),
        engine_name: ENGINE_NAME.to_string(),
        volume_name: VOLUME.to_string(),
        engine_address: ENGINE_ADDRESS.to_string(),
        data_engine: "v1".to_string(),
    }
}

pub async fn fixture(config: PoolConfig) -> anyhow::Result<Fixture> {
    let (fake, server) = start_fake().await?;
    let endpoint = server.local_addr.to_string();
    let pool = LeasePool::new(config, Arc::new(PoolMetrics::new()))?;
    let client = EngineClient::new(pool.clone());
    let target = target_for(&endpoint);
    Ok(Fixture {
        fake,
        server,
        endpoint,
        pool,
        client,
        target,
    })
}

pub fn deadline_in(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + d
}

/// Polls `cond` every 10 ms for up to `within`.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn calls(fake: &FakeEngine, method: &str) -> u64 {
    fake.stats()
        .calls_by_method
        .get(method)
        .copied()
        .unwrap_or(0)
}

/// A self-signed CA for test certificates.
pub fn make_ca(name: &str) -> anyhow::Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok(rcgen::CertifiedIssuer::self_signed(
        params,
        rcgen::KeyPair::generate()?,
    )?)
}

/// A leaf certificate for `names` issued by `issuer`: (certificate PEM, key PEM).
pub fn leaf(
    names: &[&str],
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> anyhow::Result<(String, String)> {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A temporary directory holding `files` (name, contents); removed when dropped, so a test
/// leaves nothing in the temp dir however it ends.
pub fn files_dir(files: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("longhorn-guard-test-")
        .tempdir()?;
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents)?;
    }
    Ok(dir)
}

/// Open fds of this process. An error naming the directory, never a silent 0, when
/// /proc/self/fd cannot be read: an fd check must not pass because it could not look.
pub fn open_fds() -> anyhow::Result<usize> {
    count_fds_in(Path::new("/proc/self/fd"))
}

/// Entries of `dir` (a procfs fd directory), or an error naming it.
pub fn count_fds_in(dir: &Path) -> anyhow::Result<usize> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot count open fds in {}: the fd check needs Linux procfs",
            dir.display()
        )
    })?;
    Ok(entries.count())
}

/// VmRSS of this process in bytes, or an error (never a silent 0).
pub fn resident_bytes() -> anyhow::Result<u64> {
    longhorn_guard_agent::metrics::process_resident_memory_bytes()
        .context("cannot read VmRSS from /proc/self/status: the memory check needs Linux procfs")
}
