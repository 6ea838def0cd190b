//! 10k engine calls with ~30 % injected faults: afterwards the process's fds, the pool's channels
//! and the runtime's alive tasks are back at their baseline, and the pool's leak sweep, running
//! all along, never found a lease held past its deadline or a channel alive past what the pool
//! allows it; at the end no channel the pool ever opened is still alive.
//! Alone in its own test binary so no other test disturbs the fd / task counts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_engine::{Fault, Method};
use longhorn_guard_agent::PoolConfig;
use support::*;
use tonic::Code;

const CALLS: usize = 10_000;
const WORKERS: usize = 32;

fn fault_mix() -> [(Method, Fault); 3] {
    let p = |fault: Fault| Fault::Probabilistic {
        probability: 0.3,
        fault: Box::new(fault),
    };
    [
        (
            Method::SnapshotList,
            p(Fault::Error {
                code: Code::Internal,
                message: "BUG: cannot get snapshot info".into(),
            }),
        ),
        (Method::VolumeGet, p(Fault::Reset)),
        (
            Method::ServerVersionGet,
            p(Fault::Delay(Duration::from_millis(400))),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_faulty_calls_leave_no_trace() -> anyhow::Result<()> {
    let config = PoolConfig {
        max_leases_per_endpoint: 16,
        idle_timeout: Duration::from_millis(300),
        // One reset fails every call in flight on that connection at once; a low K would turn the
        // soak into a breaker test. The breaker still trips on runs of failures here.
        breaker_failure_threshold: 64,
        breaker_cool_down: Duration::from_millis(20),
        ..test_pool_config()
    };
    let fx = fixture(config).await?;
    let runtime = tokio::runtime::Handle::current().metrics();
    let fds_before = open_fds()?;
    let tasks_before = runtime.num_alive_tasks();
    assert_eq!(fx.pool.open_channels(), 0);

    for (method, fault) in fault_mix() {
        fx.fake.set_fault(method, fault);
    }
    let started = std::time::Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let client = fx.client.clone();
        let target = fx.target.clone();
        let next = Arc::clone(&next);
        let failures = Arc::clone(&failures);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CALLS {
                    return;
                }
                let deadline = deadline_in(Duration::from_millis(100));
                let result = match i % 3 {
                    0 => client.snapshot_list(&target, deadline).await.map(drop),
                    1 => client.volume_get(&target, deadline).await.map(drop),
                    _ => client.server_version_get(&target, deadline).await.map(drop),
                };
                if let Err(status) = result {
                    failures.fetch_add(1, Ordering::Relaxed);
                    if status.message().contains("circuit open") {
                        // A real caller backs off when shed.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let took = started.elapsed();
    fx.fake.clear_faults();

    let book = fx.pool.book();
    assert_eq!(book.leases_active, 0, "{book:?}");
    let failed = failures.load(Ordering::Relaxed);
    // ~30 % faults plus breaker sheds: the load really was faulty, and not everything failed.
    assert!(
        failed > CALLS / 5 && failed < CALLS * 3 / 4,
        "{failed} failures"
    );
    assert!(book.closed(longhorn_guard_agent::metrics::CloseReason::TransportError) > 100);

    // Settle: idle channels close, the server's connection tasks end.
    let settled = eventually(Duration::from_secs(5), || {
        fx.pool.open_channels() == 0
            && open_fds().is_ok_and(|fds| fds <= fds_before)
            && runtime.num_alive_tasks() <= tasks_before
    })
    .await;
    let book = fx.pool.book();
    assert!(
        settled,
        "not back to baseline after {CALLS} calls: fds {:?} (before {fds_before}), tasks {} (before {tasks_before}), channels {}, {book:?}",
        open_fds().ok(),
        runtime.num_alive_tasks(),
        fx.pool.open_channels(),
    );
    // Every channel the pool opened is gone, not only closed in the book: no clone, no connection.
    assert!(
        eventually(Duration::from_secs(5), || fx.pool.channels_alive() == 0).await,
        "{} channels still alive",
        fx.pool.channels_alive()
    );
    let book = fx.pool.sweep_leaks();
    assert!(book.leak_sweeps > 20, "the sweep did not run: {book:?}");
    assert_eq!(
        (book.leaked_leases_detected, book.leaked_channels_detected),
        (0, 0),
        "{book:?}"
    );
    assert_eq!((book.leaked_leases, book.leaked_channels), (0, 0));
    assert_eq!(fx.fake.stats().open_connections, 0);
    eprintln!(
        "{CALLS} calls in {took:?}, {failed} failed; channels created {}, closed {}; leak sweeps {}, leases / channels found leaked {} / {}; fds {fds_before} -> {:?}; tasks {tasks_before} -> {}",
        book.channels_created,
        book.channels_closed,
        book.leak_sweeps,
        book.leaked_leases_detected,
        book.leaked_channels_detected,
        open_fds().ok(),
        runtime.num_alive_tasks()
    );
    Ok(())
}
