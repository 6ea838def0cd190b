//! The pool's HTTP/2 keepalive against an engine proxy enforcing Longhorn's policy
//! (`MinTime: 10s`, `PermitWithoutStream: true`): the fake engine sends GOAWAY ENHANCE_YOUR_CALM
//! "too_many_pings" to an over-eager gRPC client on the same proxy, never to the pool's
//! connection, however long it pings.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use longhorn_guard_agent::config::MIN_KEEPALIVE_INTERVAL;
use longhorn_guard_agent::{EngineClient, LeasePool, PoolConfig, PoolMetrics};
use support::*;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type TestResult = anyhow::Result<()>;

/// The over-eager client connects from its own loopback address, so its connection is told
/// apart from the pool's (which comes from 127.0.0.1).
const EAGER_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// Pings that would get a too-eager client sent away: the fourth ping inside `MinTime` is the
/// third strike.
const PINGS_THAT_WOULD_BE_PUNISHED: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_never_told_too_many_pings_while_an_over_eager_client_is() -> TestResult {
    let (fake, server) = start_fake().await?;
    let endpoint = server.local_addr.to_string();
    // The pool pinging as often as it may (every 10 s, also when idle), and even asked for
    // 1 s it would clamp to 10 s: the channel must stay open long enough for several pings.
    let config = PoolConfig {
        keepalive_interval: MIN_KEEPALIVE_INTERVAL,
        keepalive_while_idle: true,
        idle_timeout: Duration::from_secs(600),
        max_age: Duration::from_secs(600),
        ..test_pool_config()
    };
    let pool = LeasePool::new(config, Arc::new(PoolMetrics::new()))?;
    let client = EngineClient::new(pool.clone());
    let target = target_for(&endpoint);
    client
        .snapshot_list(&target, deadline_in(Duration::from_secs(5)))
        .await?;

    // A gRPC client pinging every 200 ms from its own address.
    let eager = Endpoint::from_shared(format!("http://{endpoint}"))?
        .local_address(Some(IpAddr::V4(EAGER_CLIENT_IP)))
        .http2_keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    // Kept until the end: a dropped channel closes its connection.
    let mut eager_health = HealthClient::new(eager);
    eager_health.check(HealthCheckRequest::default()).await?;

    let is_eager = |peer: std::net::SocketAddr| peer.ip() == IpAddr::V4(EAGER_CLIENT_IP);
    // Facts: the eager client has been sent away, and the pool's connection has pinged at least
    // as many times as got the eager one sent away. The pool pings every 10 s: about 40 s.
    let settled = eventually(Duration::from_secs(120), || {
        let conns = fake.connections();
        let eager_told = conns
            .iter()
            .any(|c| is_eager(c.peer) && c.told_too_many_pings);
        let pool_pings = conns
            .iter()
            .filter(|c| !is_eager(c.peer))
            .map(|c| c.pings_received)
            .max()
            .unwrap_or(0);
        eager_told && pool_pings >= PINGS_THAT_WOULD_BE_PUNISHED
    })
    .await;
    let conns = fake.connections();
    assert!(settled, "not settled within 120 s: {conns:?}");
    let (eager_conns, pool_conns): (Vec<_>, Vec<_>) = conns.iter().partition(|c| is_eager(c.peer));
    assert!(
        pool_conns.iter().all(|c| !c.told_too_many_pings),
        "the pool was told too_many_pings: {pool_conns:?}"
    );
    // One connection for the whole run, still open: never sent away, never replaced.
    assert_eq!(pool_conns.len(), 1, "{pool_conns:?}");
    assert!(pool_conns[0].open, "{pool_conns:?}");
    let book = pool.book();
    assert_eq!(book.channels_created, 1, "{book:?}");
    assert_eq!(
        fake.stats().too_many_pings_goaways,
        eager_conns.iter().filter(|c| c.told_too_many_pings).count() as u64
    );
    // And it still answers on that connection.
    client
        .snapshot_list(&target, deadline_in(Duration::from_secs(5)))
        .await?;
    assert_eq!(
        fake.connections()
            .iter()
            .filter(|c| !is_eager(c.peer))
            .count(),
        1
    );
    drop(eager_health);
    pool.shutdown();
    server.shutdown().await;
    Ok(())
}

/// Over Longhorn's gRPC TLS (mTLS 1.3, peer name `longhorn-backend.longhorn-system`) the fake
/// judges the HTTP/2 frames inside the TLS stream: a gRPC client with Longhorn's certificates
/// pinging every 200 ms is told too_many_pings too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_longhorn_tls_an_over_eager_client_is_told_too_many_pings() -> TestResult {
    longhorn_guard_runtime::install_crypto_provider();
    let ca = make_ca("longhorn-grpc-tls CA")?;
    let (cert, key) = leaf(&[fake_engine::LONGHORN_PEER_NAME], &ca)?;
    let dir = files_dir(&[("ca.crt", &ca.pem()), ("tls.crt", &cert), ("tls.key", &key)])?;
    let (fake, plain) = start_fake().await?;
    plain.shutdown().await;
    let server = fake_engine::serve_tls(
        fake.clone(),
        "127.0.0.1:0".parse()?,
        &fake_engine::FakeTls::longhorn_dir(dir.path()),
    )
    .await?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .identity(tonic::transport::Identity::from_pem(&cert, &key))
        .domain_name(fake_engine::LONGHORN_PEER_NAME);
    let eager = Endpoint::from_shared(format!("https://{}", server.local_addr))?
        .tls_config(tls)?
        .http2_keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut eager_health = HealthClient::new(eager);
    eager_health.check(HealthCheckRequest::default()).await?;
    let told = eventually(Duration::from_secs(30), || {
        fake.stats().too_many_pings_goaways >= 1
    })
    .await;
    let stats = fake.stats();
    assert!(
        told,
        "not told within 30 s: {stats:?} {:?}",
        fake.connections()
    );
    assert_eq!(stats.tls_connections, stats.total_connections, "{stats:?}");
    assert!(fake.connections()[0].told_too_many_pings);
    drop(eager_health);
    server.shutdown().await;
    Ok(())
}
