//! LeasePool against the fake engine proxy over real loopback sockets: faults, caps,
//! cancellation, panics, breaker, idle / max-age eviction.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fake_engine::{Fault, Method};
use longhorn_guard_agent::breaker::BreakerState;
use longhorn_guard_agent::metrics::{CloseReason, LeaseOutcome};
use longhorn_guard_agent::{LeasePool, PoolConfig, PoolMetrics};
use support::*;
use tonic::Code;

type TestResult = anyhow::Result<()>;

fn assert_names_call(message: &str, endpoint: &str, method: &str) {
    for needle in [endpoint, method, VOLUME, ENGINE_NAME] {
        assert!(
            message.contains(needle),
            "error message {message:?} does not name {needle:?}"
        );
    }
}

/// One faulted SnapshotList with a 300 ms deadline; returns the error and how long it took.
async fn faulted_call(fx: &Fixture, fault: Fault) -> (tonic::Status, Duration) {
    fx.fake.set_fault(Method::SnapshotList, fault);
    let started = std::time::Instant::now();
    let result = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_millis(300)))
        .await;
    let took = started.elapsed();
    fx.fake.clear_faults();
    match result {
        Ok(_) => panic!("a faulted call succeeded"),
        Err(status) => (status, took),
    }
}

/// After a fault the pool must be balanced and the endpoint usable again.
async fn assert_balanced_and_recovers(fx: &Fixture) {
    let book = fx.pool.book();
    assert_eq!(book.leases_active, 0, "{book:?}");
    let ok = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_secs(2)))
        .await;
    assert!(ok.is_ok(), "call after the fault failed: {ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_fault_is_cut_at_the_lease_deadline() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let (status, took) = faulted_call(&fx, Fault::Delay(Duration::from_secs(5))).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_names_call(status.message(), &fx.endpoint, "SnapshotList");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    let book = fx.pool.book();
    assert_eq!(book.released(LeaseOutcome::Deadline), 1, "{book:?}");
    assert_eq!(book.deadline_exceeded, 1);
    assert_eq!(calls(&fx.fake, "SnapshotList"), 1);
    assert_balanced_and_recovers(&fx).await;
    assert_eq!(calls(&fx.fake, "SnapshotList"), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_fault_is_cut_at_the_lease_deadline() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let (status, took) = faulted_call(&fx, Fault::BlackHole).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_names_call(status.message(), &fx.endpoint, "SnapshotList");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    assert_eq!(fx.pool.book().released(LeaseOutcome::Deadline), 1);
    assert_eq!(calls(&fx.fake, "SnapshotList"), 1);
    assert_balanced_and_recovers(&fx).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_fault_keeps_its_code_and_names_the_call() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let (status, _) = faulted_call(
        &fx,
        Fault::Error {
            code: Code::FailedPrecondition,
            message: "incorrect volume name pvc-x; check controller address".into(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("incorrect volume name pvc-x"));
    assert_names_call(status.message(), &fx.endpoint, "SnapshotList");
    let book = fx.pool.book();
    assert_eq!(book.released(LeaseOutcome::Error), 1, "{book:?}");
    // An application error says nothing about the connection: the channel stays.
    assert_eq!(book.closed(CloseReason::TransportError), 0, "{book:?}");
    assert_eq!(fx.pool.open_channels(), 1);
    assert_eq!(calls(&fx.fake, "SnapshotList"), 1);
    assert_balanced_and_recovers(&fx).await;
    assert_eq!(fx.pool.book().channels_created, 1, "channel reused");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fault_evicts_the_channel() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let (status, took) = faulted_call(&fx, Fault::Reset).await;
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{status:?}"
    );
    assert_names_call(status.message(), &fx.endpoint, "SnapshotList");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    let book = fx.pool.book();
    assert_eq!(book.released(LeaseOutcome::Error), 1, "{book:?}");
    assert_eq!(book.closed(CloseReason::TransportError), 1, "{book:?}");
    assert_eq!(fx.pool.open_channels(), 0);
    assert_eq!(calls(&fx.fake, "SnapshotList"), 1);
    assert_balanced_and_recovers(&fx).await;
    assert_eq!(fx.pool.book().channels_created, 2, "a fresh channel");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_fault_evicts_the_channel() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let (status, took) = faulted_call(&fx, Fault::GoAway).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_names_call(status.message(), &fx.endpoint, "SnapshotList");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    let book = fx.pool.book();
    assert_eq!(book.released(LeaseOutcome::Error), 1, "{book:?}");
    assert_eq!(book.closed(CloseReason::TransportError), 1, "{book:?}");
    assert_eq!(calls(&fx.fake, "SnapshotList"), 1);
    assert_balanced_and_recovers(&fx).await;
    // The old connection is gone on both sides.
    assert!(
        eventually(Duration::from_secs(2), || fx.fake.stats().open_connections
            == 1)
        .await,
        "{:?}",
        fx.fake.stats()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_callers_never_exceed_four_concurrent_calls() -> TestResult {
    let config = PoolConfig {
        max_leases_per_endpoint: 4,
        queue_timeout: Duration::from_secs(5),
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    fx.fake.set_fault(
        Method::SnapshotList,
        Fault::Delay(Duration::from_millis(20)),
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = fx.client.clone();
        let target = fx.target.clone();
        tasks.push(tokio::spawn(async move {
            client
                .snapshot_list(&target, deadline_in(Duration::from_secs(5)))
                .await
        }));
    }
    for task in tasks {
        let result = task.await?;
        assert!(result.is_ok(), "{result:?}");
    }
    let stats = fx.fake.stats();
    assert!(stats.max_concurrent_calls <= 4, "{stats:?}");
    assert!(
        stats.max_concurrent_calls >= 2,
        "no concurrency at all: {stats:?}"
    );
    assert_eq!(calls(&fx.fake, "SnapshotList"), 50);
    let book = fx.pool.book();
    assert_eq!(book.leases_acquired, 50);
    assert_eq!(book.released(LeaseOutcome::Ok), 50);
    assert_eq!(book.lease_wait_overflow, 0);
    assert!(fx.pool.open_channels() <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_is_resource_exhausted_and_counted() -> TestResult {
    let config = PoolConfig {
        max_leases_per_endpoint: 4,
        queue_timeout: Duration::from_millis(100),
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    fx.fake.set_fault(
        Method::SnapshotList,
        Fault::Delay(Duration::from_millis(600)),
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = fx.client.clone();
        let target = fx.target.clone();
        tasks.push(tokio::spawn(async move {
            client
                .snapshot_list(&target, deadline_in(Duration::from_secs(3)))
                .await
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                exhausted += 1;
                assert_names_call(status.message(), &fx.endpoint, "SnapshotList");
                assert!(
                    status.message().contains("4 concurrent calls per endpoint"),
                    "{status:?}"
                );
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(exhausted, 16);
    let book = fx.pool.book();
    assert_eq!(book.lease_wait_overflow, 16, "{book:?}");
    assert_eq!(
        book.leases_acquired, 4,
        "refused callers never held a lease"
    );
    assert_eq!(calls(&fx.fake, "SnapshotList"), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_callers_release_their_leases() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    fx.fake
        .set_fault(Method::SnapshotList, Fault::Delay(Duration::from_secs(30)));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = fx.client.clone();
        let target = fx.target.clone();
        tasks.push(tokio::spawn(async move {
            client
                .snapshot_list(&target, deadline_in(Duration::from_secs(5)))
                .await
        }));
    }
    assert!(
        eventually(Duration::from_secs(3), || fx.pool.book().leases_active == 6
            && fx.fake.stats().concurrent_calls == 6)
        .await,
        "calls never got in flight: {:?} {:?}",
        fx.pool.book(),
        fx.fake.stats()
    );
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let joined = task.await;
        assert!(joined.is_err_and(|e| e.is_cancelled()));
    }
    let book = fx.pool.book();
    assert_eq!(book.leases_active, 0, "{book:?}");
    assert_eq!(book.released(LeaseOutcome::Cancelled), 6, "{book:?}");
    assert_eq!(
        fx.pool
            .endpoint_status(&fx.endpoint)
            .map(|s| s.leases_in_use),
        Some(0)
    );
    // The server sees the streams reset and stops working on them.
    assert!(
        eventually(Duration::from_secs(2), || fx.fake.stats().concurrent_calls
            == 0)
        .await,
        "{:?}",
        fx.fake.stats()
    );
    fx.fake.clear_faults();
    assert_balanced_and_recovers(&fx).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_caller_releases_its_lease() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let pool = fx.pool.clone();
    let endpoint = fx.endpoint.clone();
    let always = !endpoint.is_empty();
    let task = tokio::spawn(async move {
        pool.call(
            &endpoint,
            "SnapshotList",
            deadline_in(Duration::from_secs(2)),
            |_channel, _timeout| async move {
                if !always {
                    return Ok(());
                }
                panic!("caller bug while holding a lease")
            },
        )
        .await
    });
    assert!(task.await.is_err_and(|e| e.is_panic()));
    let book = fx.pool.book();
    assert_eq!(book.released(LeaseOutcome::Panic), 1, "{book:?}");
    assert_eq!(book.leases_active, 0);
    assert_balanced_and_recovers(&fx).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_sheds_fast_probes_and_closes() -> TestResult {
    let config = PoolConfig {
        breaker_failure_threshold: 3,
        breaker_cool_down: Duration::from_millis(300),
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    let breaker = || fx.pool.endpoint_status(&fx.endpoint).map(|s| s.breaker);
    fx.fake.set_fault(
        Method::SnapshotList,
        Fault::Error {
            code: Code::Unavailable,
            message: "engine down".into(),
        },
    );
    for _ in 0..3 {
        let r = fx
            .client
            .snapshot_list(&fx.target, deadline_in(Duration::from_secs(1)))
            .await;
        assert_eq!(r.err().map(|s| s.code()), Some(Code::Unavailable));
    }
    assert_eq!(breaker(), Some(BreakerState::Open));
    assert_eq!(calls(&fx.fake, "SnapshotList"), 3);

    let started = std::time::Instant::now();
    let shed = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_secs(1)))
        .await
        .err();
    assert!(started.elapsed() < Duration::from_millis(50), "not fast");
    let shed = shed.unwrap_or_else(|| tonic::Status::ok(""));
    assert_eq!(shed.code(), Code::Unavailable);
    assert!(
        shed.message()
            .contains(&format!("circuit open for {}", fx.endpoint)),
        "{shed:?}"
    );
    assert_eq!(
        calls(&fx.fake, "SnapshotList"),
        3,
        "shed calls never reach the engine"
    );

    // After the cool-down one probe goes through; it fails, so the breaker re-opens.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let probe = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_secs(1)))
        .await;
    assert!(probe.is_err());
    assert_eq!(calls(&fx.fake, "SnapshotList"), 4);
    assert_eq!(breaker(), Some(BreakerState::Open));

    // The engine recovers; the next probe succeeds and closes the breaker.
    fx.fake.clear_faults();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let probe = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_secs(1)))
        .await;
    assert!(probe.is_ok(), "{probe:?}");
    assert_eq!(breaker(), Some(BreakerState::Closed));
    assert_eq!(calls(&fx.fake, "SnapshotList"), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_channels_are_closed_and_the_server_sees_it() -> TestResult {
    let config = PoolConfig {
        idle_timeout: Duration::from_millis(200),
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    let r = fx
        .client
        .volume_get(&fx.target, deadline_in(Duration::from_secs(1)))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(fx.pool.open_channels(), 1);
    assert_eq!(fx.fake.stats().open_connections, 1);
    assert!(
        eventually(Duration::from_secs(2), || fx.pool.open_channels() == 0).await,
        "idle channel never closed"
    );
    assert_eq!(fx.pool.book().closed(CloseReason::Idle), 1);
    assert!(
        eventually(Duration::from_secs(2), || fx.fake.stats().open_connections
            == 0)
        .await,
        "server still sees the connection: {:?}",
        fx.fake.stats()
    );
    // Nothing of the channel is left: no clone of it, no connection.
    assert!(
        eventually(Duration::from_secs(2), || fx.pool.channels_alive() == 0).await,
        "a closed channel is still alive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_replaced_at_their_max_age() -> TestResult {
    let config = PoolConfig {
        max_age: Duration::from_millis(250),
        max_channels_per_endpoint: 1,
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    for _ in 0..12 {
        let r = fx
            .client
            .server_version_get(&fx.target, deadline_in(Duration::from_secs(1)))
            .await;
        assert!(r.is_ok(), "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let book = fx.pool.book();
    assert!(book.closed(CloseReason::MaxAge) >= 1, "{book:?}");
    assert!(book.channels_created >= 2, "{book:?}");
    assert!(fx.pool.open_channels() <= 1);
    assert!(
        eventually(Duration::from_secs(2), || fx.fake.stats().open_connections
            <= 1)
        .await,
        "{:?}",
        fx.fake.stats()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_frees_its_state() -> TestResult {
    let fx = fixture(test_pool_config()).await?;
    let r = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_secs(1)))
        .await;
    assert!(r.is_ok(), "{r:?}");
    let metrics = Arc::clone(fx.pool.metrics());
    let liveness = fx.pool.liveness();
    let Fixture {
        pool,
        client,
        server,
        ..
    } = fx;
    drop(client);
    drop(pool);
    // The reaper holds only a weak reference between passes.
    assert!(
        eventually(Duration::from_secs(1), || !liveness.is_alive()).await,
        "pool state still referenced after every handle was dropped"
    );
    let book = metrics.snapshot();
    assert_eq!(book.closed(CloseReason::Shutdown), 1, "{book:?}");
    assert_eq!(book.channels_active, 0);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_with_unavailable_naming_it() -> TestResult {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let pool = LeasePool::new(test_pool_config(), Arc::new(PoolMetrics::new()))?;
    let client = longhorn_guard_agent::EngineClient::new(pool.clone());
    let r = client
        .snapshot_list(&target_for(&endpoint), deadline_in(Duration::from_secs(1)))
        .await;
    let status = r.err().unwrap_or_else(|| tonic::Status::ok(""));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_names_call(status.message(), &endpoint, "SnapshotList");
    let book = pool.book();
    assert_eq!(book.channels_created, 0);
    assert_eq!(book.leases_active, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reset_connection_counts_once_toward_the_breaker() -> TestResult {
    let config = PoolConfig {
        max_channels_per_endpoint: 1,
        max_leases_per_endpoint: 16,
        breaker_failure_threshold: 3,
        breaker_cool_down: Duration::from_secs(30),
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    let breaker = || fx.pool.endpoint_status(&fx.endpoint).map(|s| s.breaker);
    // Eight slow calls in flight on the endpoint's one connection...
    fx.fake
        .set_fault(Method::SnapshotList, Fault::Delay(Duration::from_secs(2)));
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let (client, target) = (fx.client.clone(), fx.target.clone());
            tokio::spawn(async move {
                client
                    .snapshot_list(&target, deadline_in(Duration::from_secs(5)))
                    .await
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(2), || fx.fake.stats().concurrent_calls
            == 8)
        .await,
        "{:?}",
        fx.fake.stats()
    );
    assert_eq!(fx.fake.stats().total_connections, 1);
    // ...then a ninth call on it makes the server reset that connection: nine calls fail.
    fx.fake.set_fault(Method::VolumeGet, Fault::Reset);
    let reset = fx
        .client
        .volume_get(&fx.target, deadline_in(Duration::from_secs(2)))
        .await;
    assert!(reset.is_err());
    let mut failed = 1;
    for call in in_flight {
        if call.await?.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 9, "every call on the reset connection fails");
    let book = fx.pool.book();
    assert_eq!(book.closed(CloseReason::TransportError), 1, "{book:?}");
    // One broken connection is one failure, not nine: K = 3 is not reached.
    assert_eq!(breaker(), Some(BreakerState::Closed));
    fx.fake.clear_faults();
    assert_balanced_and_recovers(&fx).await;

    // Three connections that break one after the other do open it.
    fx.fake.set_fault(Method::SnapshotList, Fault::Reset);
    for _ in 0..3 {
        let r = fx
            .client
            .snapshot_list(&fx.target, deadline_in(Duration::from_secs(2)))
            .await;
        assert!(r.is_err());
    }
    assert_eq!(breaker(), Some(BreakerState::Open));
    Ok(())
}

/// Short bounds so a leak shows within a second: leases cut at 300 ms, 200 ms grace, a sweep
/// every 20 ms.
fn leak_test_config() -> PoolConfig {
    PoolConfig {
        max_lease: Duration::from_millis(300),
        leak_grace: Duration::from_millis(200),
        reap_interval: Duration::from_millis(20),
        ..test_pool_config()
    }
}

/// Waits (up to 10 s, else fails) until the pool's book satisfies `cond`.
async fn book_until(
    pool: &LeasePool,
    what: &str,
    cond: impl Fn(&longhorn_guard_agent::metrics::PoolBook) -> bool,
) -> longhorn_guard_agent::metrics::PoolBook {
    let reached = eventually(Duration::from_secs(10), || cond(&pool.book())).await;
    let book = pool.book();
    assert!(reached, "never reached: {what}: {book:?}");
    book
}

/// A call future polled until it holds its lease, then never polled again (its closure would
/// never finish anyway).
async fn call_holding_its_lease<'a>(
    fx: &'a Fixture,
) -> std::pin::Pin<Box<impl Future<Output = Result<(), tonic::Status>> + 'a>> {
    let held_before = fx.pool.book().leases_active;
    let mut call = Box::pin(fx.pool.call(
        &fx.endpoint,
        "SnapshotList",
        deadline_in(Duration::from_secs(60)),
        |_channel, _left| std::future::pending::<Result<(), tonic::Status>>(),
    ));
    tokio::select! {
        ended = &mut call => panic!("a call that never answers ended: {ended:?}"),
        // Holding its lease and a channel (from then on the closure has been called).
        holds = eventually(Duration::from_secs(5), || {
            let book = fx.pool.book();
            book.leases_active > held_before && book.channels_created >= 1
        }) => {
            assert!(holds, "the call never got its lease: {:?}", fx.pool.book());
        }
    }
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_past_its_deadline_is_found_leaked_and_a_forgotten_one_stays_leaked()
-> TestResult {
    let fx = fixture(leak_test_config()).await?;
    let grace = fx.pool.config().leak_grace;

    // A call future nobody polls or drops any more: its lease outlives its 300 ms deadline.
    let stalled = call_holding_its_lease(&fx).await;
    let book = book_until(&fx.pool, "stalled lease found leaked", |b| {
        b.leaked_leases == 1
    })
    .await;
    assert_eq!(book.leaked_leases_detected, 1, "{book:?}");
    assert!(book.leaked_lease_oldest_age >= grace, "{book:?}");
    let text = longhorn_guard_agent::metrics::encode_registry(
        &longhorn_guard_agent::metrics::agent_registry(fx.pool.metrics()),
    )?;
    assert!(
        text.contains("longhorn_guard_agent_leaked_leases 1\n"),
        "{text}"
    );

    // Dropped at last: the lease returns (cancelled) and the gauge clears; the count stays.
    drop(stalled);
    let book = book_until(&fx.pool, "gauge cleared", |b| {
        b.leaked_leases == 0 && b.leases_active == 0
    })
    .await;
    assert_eq!(book.released(LeaseOutcome::Cancelled), 1, "{book:?}");
    assert_eq!(book.leaked_lease_oldest_age, Duration::ZERO);
    assert_eq!(book.leaked_leases_detected, 1, "{book:?}");

    // `mem::forget` of the future: the lease is never returned. Found, counted once, and still
    // there many sweeps later.
    std::mem::forget(call_holding_its_lease(&fx).await);
    let book = book_until(&fx.pool, "forgotten lease found leaked", |b| {
        b.leaked_leases == 1
    })
    .await;
    let later = book_until(&fx.pool, "20 more sweeps", |b| {
        b.leak_sweeps >= book.leak_sweeps + 20
    })
    .await;
    assert_eq!(later.leaked_leases, 1, "{later:?}");
    assert_eq!(later.leaked_leases_detected, 2, "{later:?}");
    assert!(later.leaked_lease_oldest_age > book.leaked_lease_oldest_age);
    // The exact counters alone cannot tell: they balance with one active lease.
    assert_eq!(
        later.leases_acquired,
        later.leases_released + later.leases_active
    );
    // The pool still serves other calls meanwhile.
    let ok = fx
        .client
        .snapshot_list(&fx.target, deadline_in(Duration::from_millis(250)))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_kept_by_a_caller_after_the_pool_closed_it_is_found_leaked() -> TestResult {
    let fx = fixture(leak_test_config()).await?;
    // The longhorn-manager v1.7.2 shape: a caller keeps the gRPC client it was handed.
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Arc::clone(&kept);
    fx.pool
        .call(
            &fx.endpoint,
            "SnapshotList",
            deadline_in(Duration::from_secs(1)),
            move |channel, _left| {
                if let Ok(mut kept) = keep.lock() {
                    kept.push(channel);
                }
                async { Ok(()) }
            },
        )
        .await?;
    assert_eq!(fx.pool.channels_alive(), 1);
    // The pool lets go of every channel; the kept clone holds the connection open.
    fx.pool.shutdown();
    assert_eq!(fx.pool.open_channels(), 0);
    let book = book_until(&fx.pool, "kept channel found leaked", |b| {
        b.leaked_channels == 1
    })
    .await;
    assert_eq!(book.leaked_channels_detected, 1, "{book:?}");
    assert!(book.leaked_channel_oldest_age > Duration::ZERO, "{book:?}");
    assert_eq!(book.channels_active, 0, "the book alone says all is closed");
    assert_eq!(fx.fake.stats().open_connections, 1);

    // The caller lets go: the connection closes and the gauge clears.
    kept.lock().map(|mut k| k.clear()).ok();
    book_until(&fx.pool, "gauge cleared", |b| b.leaked_channels == 0).await;
    assert!(
        eventually(Duration::from_secs(5), || fx.fake.stats().open_connections
            == 0)
        .await
    );
    assert_eq!(fx.pool.channels_alive(), 0);
    assert_eq!(fx.pool.book().leaked_channels_detected, 1);
    Ok(())
}
