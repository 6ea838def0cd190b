//! The pool against instance managers with Longhorn's gRPC TLS (reference §1.7): mTLS when both
//! sides have the `longhorn-grpc-tls` files, plaintext fallback (counted) when only the agent
//! has them, and a precise error with nothing left behind when the client certificate is refused.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_engine::{FakeTls, LONGHORN_PEER_NAME};
use longhorn_guard_agent::connect::Transport;
use longhorn_guard_agent::metrics::{agent_registry, encode_registry};
use longhorn_guard_agent::{EngineClient, LeasePool, PoolConfig, PoolMetrics};
use rcgen::{CertifiedIssuer, KeyPair};
use support::*;
use tonic::Code;

type TestResult = anyhow::Result<()>;

/// A directory shaped like Longhorn's `/tls-files/`: `ca.crt` trusted, `tls.crt`/`tls.key`
/// issued by `issuer` for `name`.
fn tls_dir(
    trusted: &CertifiedIssuer<'static, KeyPair>,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
) -> anyhow::Result<tempfile::TempDir> {
    let (cert, key) = leaf(&[name], issuer)?;
    files_dir(&[
        ("ca.crt", &trusted.pem()),
        ("tls.crt", &cert),
        ("tls.key", &key),
    ])
}

struct Setup {
    longhorn_ca: CertifiedIssuer<'static, KeyPair>,
    /// Longhorn's own files: what the instance manager and longhorn-manager mount.
    longhorn_dir: tempfile::TempDir,
}

fn setup() -> anyhow::Result<Setup> {
    let longhorn_ca = make_ca("longhorn-grpc-tls CA")?;
    let longhorn_dir = tls_dir(&longhorn_ca, &longhorn_ca, LONGHORN_PEER_NAME)?;
    Ok(Setup {
        longhorn_ca,
        longhorn_dir,
    })
}

async fn start_tls_fake(
    dir: &Path,
) -> anyhow::Result<(fake_engine::FakeEngine, fake_engine::RunningServer)> {
    let (fake, plain) = start_fake().await?;
    plain.shutdown().await;
    let server = fake_engine::serve_tls(
        fake.clone(),
        "127.0.0.1:0".parse()?,
        &FakeTls::longhorn_dir(dir),
    )
    .await?;
    Ok((fake, server))
}

fn pool_with_tls_dir(dir: &Path) -> anyhow::Result<(LeasePool, EngineClient)> {
    let config = PoolConfig {
        longhorn_tls_dir: Some(dir.to_path_buf()),
        ..test_pool_config()
    };
    let pool = LeasePool::new(config, Arc::new(PoolMetrics::new()))?;
    Ok((pool.clone(), EngineClient::new(pool)))
}

fn metrics_text(pool: &LeasePool) -> String {
    encode_registry(&agent_registry(pool.metrics())).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_both_sides_calls_go_over_mtls() -> TestResult {
    let s = setup()?;
    let (fake, server) = start_tls_fake(s.longhorn_dir.path()).await?;
    let endpoint = server.local_addr.to_string();
    let (pool, client) = pool_with_tls_dir(s.longhorn_dir.path())?;
    let target = target_for(&endpoint);
    for _ in 0..5 {
        let list = client
            .snapshot_list(&target, deadline_in(Duration::from_secs(2)))
            .await?;
        assert!(list.disks.contains_key("snap-a"));
    }
    let stats = fake.stats();
    assert_eq!(stats.tls_connections, 1, "{stats:?}");
    assert_eq!(stats.tls_handshake_failures, 0, "{stats:?}");
    assert_eq!(
        stats.total_connections, 1,
        "one connection for five calls: {stats:?}"
    );
    assert_eq!(calls(&fake, "SnapshotList"), 5);
    let status = pool.endpoint_status(&endpoint);
    assert_eq!(
        status.map(|s| s.transports),
        Some(vec![Transport::MutualTls])
    );
    assert_eq!(pool.book().tls_fallbacks, 0);
    assert!(metrics_text(&pool).contains("longhorn_guard_agent_tls_fallbacks_total 0"));
    pool.shutdown();
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_but_a_plaintext_server_fall_back_to_plaintext_and_count_it() -> TestResult {
    let s = setup()?;
    let fx = fixture(test_pool_config()).await?;
    let (pool, client) = pool_with_tls_dir(s.longhorn_dir.path())?;
    for _ in 0..5 {
        client
            .snapshot_list(&fx.target, deadline_in(Duration::from_secs(2)))
            .await?;
    }
    assert_eq!(calls(&fx.fake, "SnapshotList"), 5);
    // One failed TLS attempt, then one plaintext channel for all five calls.
    assert_eq!(
        fx.fake.stats().total_connections,
        2,
        "{:?}",
        fx.fake.stats()
    );
    assert_eq!(
        pool.endpoint_status(&fx.endpoint).map(|s| s.transports),
        Some(vec![Transport::Plaintext])
    );
    assert_eq!(pool.book().tls_fallbacks, 1);
    let text = metrics_text(&pool);
    assert!(
        text.contains("longhorn_guard_agent_tls_fallbacks_total 1"),
        "{text}"
    );
    pool.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_is_a_precise_error_and_leaves_nothing() -> TestResult {
    let s = setup()?;
    let (fake, server) = start_tls_fake(s.longhorn_dir.path()).await?;
    let endpoint = server.local_addr.to_string();
    let target = target_for(&endpoint);
    let other_ca = make_ca("some other CA")?;
    // Trusts Longhorn's CA (so the server's certificate is fine) but presents a certificate
    // from another CA; then one from Longhorn's CA without Longhorn's peer name.
    let cases = [
        (
            "client certificate from another CA",
            tls_dir(&s.longhorn_ca, &other_ca, LONGHORN_PEER_NAME)?,
        ),
        (
            "client certificate without the peer name",
            tls_dir(
                &s.longhorn_ca,
                &s.longhorn_ca,
                "someone-else.longhorn-system",
            )?,
        ),
    ];
    for (what, dir) in cases {
        let failures_before = fake.stats().tls_handshake_failures;
        let (pool, client) = pool_with_tls_dir(dir.path())?;
        let liveness = pool.liveness();
        let err = client
            .snapshot_list(&target, deadline_in(Duration::from_secs(2)))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{what}: the call succeeded"))?;
        eprintln!("{what}: {err:?}");
        assert_eq!(err.code(), Code::Unavailable, "{what}: {err:?}");
        let message = err.message();
        for needle in [
            endpoint.as_str(),
            "SnapshotList",
            ENGINE_NAME,
            VOLUME,
            "mTLS",
            "plaintext fallback failed",
        ] {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} missing in {message:?}"
            );
        }
        // Both attempts are named with their transport. In TLS 1.3 the server judges the client
        // certificate after the client's handshake is done: its alert (UnknownCA,
        // BadCertificate) usually reaches the message, but may lose the race against the
        // connection being closed, so it is not required here.
        assert!(
            message.contains("(MutualTls) failed") && message.contains("(Plaintext) failed"),
            "{what}: {message:?}"
        );
        let book = pool.book();
        assert_eq!(book.leases_active, 0, "{what}: {book:?}");
        assert_eq!(book.channels_created, 0, "{what}: {book:?}");
        assert_eq!(pool.open_channels(), 0);
        assert_eq!(book.tls_fallbacks, 0, "{what}: no channel, no fallback");
        drop(client);
        pool.shutdown();
        drop(pool);
        assert!(
            eventually(Duration::from_secs(2), || !liveness.is_alive()).await,
            "{what}: the pool's state is still referenced"
        );
        assert!(
            eventually(Duration::from_secs(2), || fake.stats().open_connections
                == 0)
            .await,
            "{what}: {:?}",
            fake.stats()
        );
        // The server refused the mTLS handshake and the plaintext attempt. While a channel lives
        // tonic redials a failed connection with backoff, as often as the call's time allows
        // (CI once saw 10 under load), so only the lower bound is fixed here; that nothing
        // dials after the pool is dropped is checked below, once every pool is gone.
        let failures = fake.stats().tls_handshake_failures - failures_before;
        assert!(failures >= 2, "{what}: {failures} refused handshakes");
    }
    assert!(
        eventually(Duration::from_secs(2), || fake.stats().open_connections
            == 0)
        .await,
        "{:?}",
        fake.stats()
    );
    // Nothing keeps dialling once the pools are gone.
    let settled = fake.stats().tls_handshake_failures;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.stats().tls_handshake_failures, settled);
    assert_eq!(calls(&fake, "SnapshotList"), 0);
    assert_eq!(fake.stats().tls_connections, 0);
    server.shutdown().await;
    Ok(())
}
