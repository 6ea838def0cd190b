//! Sustained engine faults under the agent's pool: the engine black-holes, then resets every
//! connection, then errors, each followed by recovery. Every call ends by its deadline (its
//! lease released with it), the breaker opens during each fault and closes after recovery,
//! nothing leaks, and the process's fds and RSS are back near their baseline. Alone in its own
//! test binary so fd counts are undisturbed.
//!
//! In the suite each fault lasts 3 s (~13 s in all). `LHG_TEST_ENGINE_FAULT_SECS=60` makes it the
//! minutes-long run (`bash scripts/reliability.sh engine-faults`, ~3.3 min; capped at 600 s per
//! fault): fds, RSS and the lease book are sampled at the start, middle and end of each fault
//! and breaker transitions are counted, all printed as a table (`--no-capture`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_engine::{Fault, Method};
use longhorn_guard_agent::PoolConfig;
use longhorn_guard_agent::breaker::BreakerState;
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

/// Seconds per fault: `LHG_TEST_ENGINE_FAULT_SECS` (1..=600), else 3.
fn fault_secs() -> u64 {
    match longhorn_guard_testkit::test_env().engine_fault_secs {
        Some(s) if (1..=600).contains(&s) => s,
        Some(s) => panic!("LHG_TEST_ENGINE_FAULT_SECS={s}: want whole seconds, 1..=600"),
        None => 3,
    }
}

/// The process and the pool at one instant.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: Duration,
    fds: usize,
    rss_kib: u64,
    acquired: u64,
    released: u64,
    active: u64,
}

fn sample(f: &Fixture, start: Instant) -> Sample {
    let book = f.pool.book();
    Sample {
        at: start.elapsed(),
        fds: open_fds().unwrap_or_else(|e| panic!("{e:#}")),
        rss_kib: resident_bytes().unwrap_or_else(|e| panic!("{e:#}")) / 1024,
        acquired: book.leases_acquired,
        released: book.leases_released,
        active: book.leases_active,
    }
}

#[derive(Default)]
struct Phase {
    calls: u64,
    ok: u64,
    shed_or_failed: u64,
    late: Vec<Duration>,
    breaker_opened: bool,
    /// Breaker state changes seen by the 20 ms sampler (short-lived states can be missed).
    transitions: u64,
    /// Start, middle and end of the phase.
    samples: Vec<Sample>,
}

/// Runs WORKERS callers for `secs`, sampling the breaker every 20 ms.
async fn phase(f: &Arc<Fixture>, secs: u64, run_start: Instant) -> Phase {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
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
    let breaker = || f.pool.endpoint_status(&f.endpoint).map(|s| s.breaker);
    let (mut opened, mut transitions, mut last) = (false, 0, breaker());
    let mut samples = vec![sample(f, run_start)];
    let middle = started + Duration::from_secs(secs) / 2;
    while Instant::now() < until {
        let now = breaker();
        opened |= now == Some(BreakerState::Open);
        if now != last {
            transitions += 1;
            last = now;
        }
        if samples.len() == 1 && Instant::now() >= middle {
            samples.push(sample(f, run_start));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut total = Phase {
        breaker_opened: opened,
        transitions,
        ..Phase::default()
    };
    for t in tasks {
        let p = t.await.expect("worker");
        total.calls += p.calls;
        total.ok += p.ok;
        total.shed_or_failed += p.shed_or_failed;
        total.late.extend(p.late);
    }
    samples.push(sample(f, run_start));
    total.samples = samples;
    total
}

fn row(name: &str, p: &Phase) -> String {
    let s = |i: usize| {
        p.samples.get(i).map_or(String::from("-"), |s| {
            format!(
                "{:.0}s fds {} RSS {} KiB leases {}/{}/{}",
                s.at.as_secs_f64(),
                s.fds,
                s.rss_kib,
                s.acquired,
                s.released,
                s.active
            )
        })
    };
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
        p.calls,
        p.ok,
        p.shed_or_failed,
        p.late.len(),
        p.transitions,
        s(0),
        s(1),
        s(p.samples.len().saturating_sub(1)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_black_hole_reset_and_errors_end_by_deadlines_and_leak_nothing()
-> anyhow::Result<()> {
    let secs = fault_secs();
    let f = Arc::new(fixture(config()).await?);
    let run_start = Instant::now();
    // Warm up: channels open, allocator settled.
    let warm = phase(&f, 1, run_start).await;
    assert!(warm.ok > 0 && warm.late.is_empty());
    let fds0 = open_fds()?;
    let rss0 = resident_bytes()?;

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
    let mut report = vec![
        format!(
            "{secs} s per fault, {WORKERS} callers, {} ms deadlines; leases = acquired/released/active",
            CALL_DEADLINE.as_millis()
        ),
        "| phase | calls | ok | failed/shed | late | breaker transitions | start | middle | end |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
        row("warm-up", &warm),
    ];
    for (name, fault) in faults {
        f.fake.set_fault(Method::SnapshotList, fault);
        let p = phase(&f, secs, run_start).await;
        report.push(row(name, &p));
        assert!(
            p.late.is_empty(),
            "{name}: calls past their deadline: {:?}",
            p.late
        );
        assert!(p.breaker_opened, "{name}: the breaker never opened");
        assert_eq!(p.ok, 0, "{name}: a call succeeded through the fault");
        f.fake.clear_faults();
        // Recovery: the breaker lets a probe through after its cool-down and closes.
        let r = phase(&f, 1, run_start).await;
        report.push(row(&format!("{name} recovery"), &r));
        assert!(r.ok > 0, "{name}: no success after recovery");
        let closed = eventually(Duration::from_secs(3), || {
            f.pool
                .endpoint_status(&f.endpoint)
                .is_some_and(|s| s.breaker == BreakerState::Closed)
        })
        .await;
        assert!(closed, "{name}: breaker did not close after recovery");
    }

    // Every lease ended: none active, none unaccounted for.
    assert!(
        eventually(Duration::from_secs(2), || f.pool.book().leases_active == 0).await,
        "{:?}",
        f.pool.book()
    );
    // The leak sweep ran all along (every 50 ms) and never found a lease held past its deadline
    // + grace, or a channel alive past what the pool allows it.
    let book = f.pool.book();
    assert!(book.leak_sweeps > 100, "{book:?}");
    assert_eq!(book.leaked_leases_detected, 0, "{book:?}");
    assert_eq!(book.leaked_channels_detected, 0, "{book:?}");
    assert!(book.leases_acquired > 100, "{book:?}");

    let fds1 = open_fds()?;
    let rss1 = resident_bytes()?;
    report.push(format!(
        "after warm-up -> end: fds {fds0} -> {fds1}; RSS {} -> {} KiB; book {book:?}",
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

/// The fd figures above fail loudly instead of reading 0 when procfs cannot be read (they used
/// `unwrap_or(0)`, which turned "could not look" into "no fds", so `fds1 <= fds0 + 4` passed).
#[test]
fn fd_count_is_an_error_not_zero_when_procfs_cannot_be_read() {
    let missing = std::path::Path::new("/proc/self/no-such-fd-dir");
    let err = count_fds_in(missing).err().map(|e| format!("{e:#}"));
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("/proc/self/no-such-fd-dir") && e.contains("procfs")),
        "{err:?}"
    );
    assert!(open_fds().is_ok_and(|n| n > 0));
}
