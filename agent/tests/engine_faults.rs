//! Sustained engine faults under the agent's pool (the script-sized version runs for minutes;
//! this one ~12 s): the engine black-holes, then resets every connection, then errors, then
//! recovers. Every call ends by its deadline (its lease released with it), the breaker opens
//! during each fault and closes after recovery, nothing leaks, and the process's fds and RSS
//! are back near their baseline. Alone in its own test binary so fd counts are undisturbed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_engine::{Fault, Method};
use longhorn_guard_agent::PoolConfig;
use longhorn_guard_agent::breaker::BreakerState;
use longhorn_guard_agent::metrics::{process_open_fds, process_resident_memory_bytes};
use support::*;
use tonic::Code;

const WORKERS: usize = 8;
const CALL_DEADLINE: Duration = Duration::from_millis(300);
/// Scheduling slack on top of the deadline (2 shared cores).
const SLACK: Duration = Duration::from_millis(250);

fn config() -> PoolConfig {
    PoolConfig {
        breaker_failure_threshold: 5,
        breaker_cool_down: Duration::from_millis(400),
        connect_timeout: Duration::from_millis(500),
        queue_timeout: Duration::from_millis(300),
        ..test_pool_config()
    }
}

#[derive(Default)]
struct Phase {
    calls: u64,
    ok: u64,
    shed_or_failed: u64,
    late: Vec<Duration>,
    breaker_opened: bool,
}

/// Runs WORKERS callers for `secs`, sampling the breaker every 20 ms.
async fn phase(f: &Arc<Fixture>, secs: u64) -> Phase {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let f = Arc::clone(f);
        tasks.push(tokio::spawn(async move {
            let mut p = Phase::default();
            while Instant::now() < until {
                let started = Instant::now();
                let r = f
                    .client
                    .snapshot_list(&f.target, deadline_in(CALL_DEADLINE))
                    .await;
                let took = started.elapsed();
                p.calls += 1;
                if took > CALL_DEADLINE + SLACK {
                    p.late.push(took);
                }
                match r {
                    Ok(_) => p.ok += 1,
                    Err(_) => {
                        p.shed_or_failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            p
        }));
    }
    let mut opened = false;
    while Instant::now() < until {
        if f.pool
            .endpoint_status(&f.endpoint)
            .is_some_and(|s| s.breaker == BreakerState::Open)
        {
            opened = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut total = Phase {
        breaker_opened: opened,
        ..Phase::default()
    };
    for t in tasks {
        let p = t.await.expect("worker");
        total.calls += p.calls;
        total.ok += p.ok;
        total.shed_or_failed += p.shed_or_failed;
        total.late.extend(p.late);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_black_hole_reset_and_errors_end_by_deadlines_and_leak_nothing()
-> anyhow::Result<()> {
    let f = Arc::new(fixture(config()).await?);
    // Warm up: channels open, allocator settled.
    let warm = phase(&f, 1).await;
    assert!(warm.ok > 0 && warm.late.is_empty());
    let fds0 = process_open_fds().unwrap_or(0);
    let rss0 = process_resident_memory_bytes().unwrap_or(0);

    let faults = [
        ("black-hole", Fault::BlackHole),
        ("reset", Fault::Reset),
        (
            "error",
            Fault::Error {
                code: Code::Unavailable,
                message: "engine is restarting".into(),
            },
        ),
    ];
    let mut report = Vec::new();
    for (name, fault) in faults {
        f.fake.set_fault(Method::SnapshotList, fault);
        let p = phase(&f, 3).await;
        report.push(format!(
            "{name}: {} calls, {} ok, {} failed/shed, breaker opened {}, late {:?}",
            p.calls, p.ok, p.shed_or_failed, p.breaker_opened, p.late
        ));
        assert!(
            p.late.is_empty(),
            "{name}: calls past their deadline: {:?}",
            p.late
        );
        assert!(p.breaker_opened, "{name}: the breaker never opened");
        assert_eq!(p.ok, 0, "{name}: a call succeeded through the fault");
        f.fake.clear_faults();
        // Recovery: the breaker lets a probe through after its cool-down and closes.
        let r = phase(&f, 1).await;
        assert!(r.ok > 0, "{name}: no success after recovery");
        let closed = eventually(Duration::from_secs(3), || {
            f.pool
                .endpoint_status(&f.endpoint)
                .is_some_and(|s| s.breaker == BreakerState::Closed)
        })
        .await;
        assert!(closed, "{name}: breaker did not close after recovery");
        report.push(format!("{name} recovery: {} ok of {}", r.ok, r.calls));
    }

    // Every lease ended: none active, none unaccounted for.
    assert!(
        eventually(Duration::from_secs(2), || f.pool.book().leases_active == 0).await,
        "{:?}",
        f.pool.book()
    );
    let book = f.pool.book();
    assert_eq!(book.leaked_leases(), 0, "{book:?}");
    assert_eq!(book.leaked_channels(), 0, "{book:?}");
    assert!(book.leases_acquired > 100, "{book:?}");

    let fds1 = process_open_fds().unwrap_or(0);
    let rss1 = process_resident_memory_bytes().unwrap_or(0);
    report.push(format!(
        "fds {fds0} -> {fds1}; RSS {} -> {} KiB; book {book:?}",
        rss0 / 1024,
        rss1 / 1024
    ));
    println!("{}", report.join("\n"));
    assert!(fds1 <= fds0 + 4, "fds grew: {fds0} -> {fds1}");
    assert!(
        rss1 <= rss0 + 32 * 1024 * 1024,
        "RSS grew by more than 32 MiB: {rss0} -> {rss1}"
    );
    Ok(())
}
