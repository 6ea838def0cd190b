//! Shared set-up of the agent's integration tests: a fake engine proxy on loopback and a pool
//! pointed at it, test certificates, `/metrics` fetched over HTTP and checked with promtool.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// `GET path` on 127.0.0.1:`port` over HTTP/1.1: (status, body).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad HTTP response {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn promtool() -> PathBuf {
    std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"))
}

pub fn run_promtool(args: &[&str], stdin: Option<&str>) -> anyhow::Result<(bool, String)> {
    let promtool = promtool();
    let mut child = std::process::Command::new(&promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "promtool ({}) is required to check the /metrics exposition and could not be run: {e}; \
                 install the Debian package `prometheus` or set PROMTOOL",
                Path::new(&promtool).display()
            )
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        use std::io::Write as _;
        pipe.write_all(stdin.unwrap_or_default().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), report))
}

/// Checks the exposition with promtool; fails (never skips) when promtool is missing.
///
/// 1. Strict OpenMetrics parse: Prometheus's own OpenMetrics parser, reached through
///    `promtool tsdb create-blocks-from openmetrics` (it needs a timestamp on every sample, so one
///    is appended; nothing else is changed).
/// 2. `promtool check metrics` lints the Prometheus text format, where an OpenMetrics counter
///    family `x` with samples `x_total` looks like an untyped `x_total` without HELP: that one
///    finding is accepted when `# HELP x` is present; any other finding fails.
pub fn promtool_check(text: &str) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = files_dir(&[])?;
    ingest_into_tsdb(
        text,
        now,
        &dir.path().join("metrics.om"),
        &dir.path().join("blocks"),
    )?;

    let (ok, report) = run_promtool(&["check", "metrics"], Some(text))?;
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            let accepted = line
                .strip_suffix(" no help text")
                .and_then(|name| name.strip_suffix("_total"))
                .is_some_and(|family| text.contains(&format!("# HELP {family} ")));
            !accepted
        })
        .collect();
    anyhow::ensure!(
        unexpected.is_empty(),
        "promtool check metrics (exit ok: {ok}) found problems:\n{}\n--- exposition ---\n{text}",
        unexpected.join("\n")
    );
    Ok(())
}

/// Puts `text` (an OpenMetrics exposition) through Prometheus's own OpenMetrics parser into the
/// TSDB at `blocks`: `promtool tsdb create-blocks-from openmetrics` on a copy at `input` with
/// timestamp `at` (seconds) appended to every sample, nothing else changed.
pub fn ingest_into_tsdb(text: &str, at: u64, input: &Path, blocks: &Path) -> anyhow::Result<()> {
    let stamped: String = text
        .lines()
        .map(|line| match line.starts_with('#') {
            true => format!("{line}\n"),
            false => format!("{line} {at}\n"),
        })
        .collect();
    std::fs::write(input, stamped)?;
    let (ok, report) = run_promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            &input.display().to_string(),
            &blocks.display().to_string(),
        ],
        None,
    )?;
    anyhow::ensure!(
        ok,
        "Prometheus's OpenMetrics parser rejected the exposition:\n{report}\n--- exposition ---\n{text}"
    );
    Ok(())
}
