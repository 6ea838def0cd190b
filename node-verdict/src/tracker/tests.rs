//! The tracker with explicit timestamps: leaks enter, busy managers stay healthy, recovery
//! waits, and no sequence flaps faster than the hysteresis allows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;

const KIB: u64 = 1024;
const MIB_U: u64 = 1024 * 1024;
/// Memory each leaked client holds (BENCHMARKS.md, the leaking v1.7.2 pattern: ~62 KiB).
const LEAKED_CLIENT_BYTES: u64 = 62 * KIB;
/// The incident's manager was OOM-killed past 7 GB.
const OOM_BYTES: u64 = 7 * 1024 * MIB_U;
const MANAGER: ProcessKey = ProcessKey {
    pid: 4242,
    start_time_ticks: 1_000,
};

fn at(seconds: f64) -> SystemTime {
    // 2026-12-06T04:50:00Z, so the times are realistic.
    let base = UNIX_EPOCH + Duration::from_secs(1_796_532_600);
    if seconds >= 0.0 {
        base + Duration::from_secs_f64(seconds)
    } else {
        base - Duration::from_secs_f64(-seconds)
    }
}

fn obs(seconds: f64, connections: u64, rss_bytes: u64) -> Observation {
    Observation {
        at: at(seconds),
        process: MANAGER,
        connections,
        rss_bytes,
        threads: 40,
        fds: 30 + connections,
    }
}

/// A small deterministic generator (no randomness in unit tests but the property test's).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A v1.7.2 manager on a node with `stuck` Backups that cannot finish from `leak_from` on:
/// each is reconciled every 30 s and leaks one client then (connections + RSS).
struct LeakingManager {
    stuck: u64,
    leak_from: f64,
    baseline_connections: u64,
    baseline_rss: u64,
}

impl LeakingManager {
    fn leaked(&self, t: f64) -> u64 {
        if t < self.leak_from {
            return 0;
        }
        // Reconciles of each stuck Backup so far (the first at leak start).
        let reconciles = ((t - self.leak_from) / 30.0).floor() as u64 + 1;
        reconciles * self.stuck
    }

    fn sample(&self, t: f64) -> Observation {
        let leaked = self.leaked(t);
        obs(
            t,
            self.baseline_connections + leaked,
            self.baseline_rss + leaked * LEAKED_CLIENT_BYTES,
        )
    }
}

/// Feeds samples every `interval` seconds from `from` to `to`; returns the transitions.
fn run(
    tracker: &mut Tracker,
    from: f64,
    to: f64,
    interval: f64,
    mut sample: impl FnMut(f64) -> Observation,
) -> Vec<Transition> {
    let mut transitions = Vec::new();
    let mut t = from;
    while t <= to {
        if let Some(tr) = tracker.observe(sample(t)).transition {
            transitions.push(tr);
        }
        t += interval;
    }
    transitions
}

fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
}

/// Thresholds small enough for short simulated runs.
fn quick() -> Thresholds {
    Thresholds {
        window_seconds: 60,
        floor_seconds: 10,
        enter_after_seconds: 20,
        recover_after_seconds: 30,
        degrading: Level {
            min_connections: 20,
            connections_per_minute: 10.0,
            min_rss_mib: 512,
            rss_mib_per_minute: 50.0,
        },
        leaking: Level {
            min_connections: 50,
            connections_per_minute: 60.0,
            min_rss_mib: 1024,
            rss_mib_per_minute: 200.0,
        },
    }
}

#[test]
fn a_leak_enters_leaking_within_the_configured_window_with_evidence() {
    let thresholds = quick();
    let mut tracker = Tracker::new(thresholds.clone(), at(0.0));
    // 2 connections/s = 120/min, twice the leaking slope; from t = 60 s on.
    let leak_from = 60.0;
    let transitions = run(&mut tracker, 0.0, 300.0, 1.0, |t| {
        let leaked = if t >= leak_from {
            (2.0 * (t - leak_from)) as u64
        } else {
            0
        };
        obs(t, 5 + leaked, 200 * MIB_U)
    });
    let leaking = transitions
        .iter()
        .find(|t| t.to == Verdict::Leaking)
        .copied();
    let Some(leaking) = leaking else {
        panic!("never leaking: {transitions:?}");
    };
    let after = seconds_between(at(leak_from), leaking.at);
    // The floor lags floorSeconds, the level takes 45/2 s to reach, the slope must pass 60/min
    // (a hinge's least-squares slope reaches half the rate within half the window), then the
    // condition must hold enterAfterSeconds.
    let bound = (thresholds.floor_seconds + thresholds.window_seconds / 2) as f64
        + 45.0 / 2.0
        + thresholds.enter_after_seconds as f64;
    assert!(
        after >= thresholds.enter_after_seconds as f64 && after <= bound,
        "leaking {after} s after the leak started (bound {bound} s)"
    );
    assert_eq!(tracker.verdict(), Verdict::Leaking);
    let e = tracker.evidence();
    assert!(e.connections > 400, "{e:?}");
    assert!(
        (e.connections_per_minute - 120.0).abs() < 5.0,
        "slope {}",
        e.connections_per_minute
    );
    assert_eq!(e.rss_bytes, 200 * MIB_U);
    assert_eq!(e.rss_bytes_per_minute, 0.0);
    assert_eq!(e.window_seconds, 60);
    assert_eq!(e.since, rfc3339(leaking.at));
    assert!(e.reason.contains("connection floor"), "{}", e.reason);
    assert!(e.summary().contains("(+120/min)"), "{}", e.summary());
}

#[test]
fn an_rss_leak_without_connections_enters_leaking() {
    let mut tracker = Tracker::new(quick(), at(0.0));
    // 5 MiB/s = 300 MiB/min from 1 GiB, flat connections.
    let transitions = run(&mut tracker, 0.0, 200.0, 2.0, |t| {
        obs(t, 8, 1024 * MIB_U + (5.0 * t) as u64 * MIB_U)
    });
    assert!(
        transitions.iter().any(|t| t.to == Verdict::Leaking),
        "{transitions:?}"
    );
    assert!(
        tracker.evidence().reason.contains("RSS floor"),
        "{}",
        tracker.evidence().reason
    );
}

/// Issue #19's busy manager: many short-lived connections (a burst every reconcile wave,
/// hundreds open at the peak, all closed after), flat RSS with the Go collector's saw-tooth,
/// ten minutes of simulated time, at several sample intervals: never leaves `healthy`.
#[test]
fn a_busy_healthy_manager_stays_healthy_for_ten_minutes() {
    for interval in [1.0, 5.0, 15.0] {
        let mut tracker = Tracker::new(Thresholds::default(), at(0.0));
        let mut rng = Lcg(7);
        let mut peak = 800;
        let mut wave = 0;
        let mut max_seen = 0;
        let mut t = 0.0;
        while t <= 600.0 {
            // A wave every 30 s: connections open over 20 s up to a peak of 400..1200, then
            // close within 5 s; a few dozen always come and go.
            let phase = t % 30.0;
            let this_wave = (t / 30.0) as u64;
            if this_wave != wave {
                wave = this_wave;
                peak = 400 + rng.below(800);
            }
            let burst = if phase < 20.0 {
                (peak as f64 * phase / 20.0) as u64
            } else if phase < 25.0 {
                (peak as f64 * (25.0 - phase) / 5.0) as u64
            } else {
                0
            };
            let connections = 12 + burst + rng.below(40);
            max_seen = max_seen.max(connections);
            // The heap grows 60 MiB over 90 s and the collector gives it back.
            let rss = 300 * MIB_U + ((t % 90.0) / 90.0 * 60.0) as u64 * MIB_U;
            let j = tracker.observe(obs(t, connections, rss));
            assert_eq!(
                j.verdict,
                Verdict::Healthy,
                "interval {interval} s, t = {t} s: {:?}",
                j.evidence
            );
            assert_eq!(j.transition, None);
            t += interval;
        }
        assert!(max_seen > 500, "the saw-tooth is big: {max_seen}");
        let e = tracker.evidence();
        assert!(e.reason.starts_with("no sustained growth"), "{}", e.reason);
    }
}

#[test]
fn recovery_steps_down_only_after_the_recovery_time() {
    let thresholds = quick();
    let recover = thresholds.recover_after_seconds as f64;
    let mut tracker = Tracker::new(thresholds.clone(), at(0.0));
    let leak_stop = 150.0;
    let mut transitions = run(&mut tracker, 0.0, 400.0, 1.0, |t| {
        // 3 connections/s until leak_stop, then flat (the stuck Backups were pruned; the leaked
        // clients stay until longhorn-manager restarts).
        let leaked = (3.0 * t.min(leak_stop)) as u64;
        obs(t, 5 + leaked, 200 * MIB_U)
    });
    assert_eq!(tracker.verdict(), Verdict::Healthy, "{transitions:?}");
    let entered = transitions.remove(0);
    assert_eq!(
        entered.to,
        Verdict::Leaking,
        "straight to leaking at 180/min"
    );
    assert!(
        seconds_between(at(0.0), entered.at) < leak_stop,
        "{entered:?}"
    );
    // Every step down comes at least recoverAfterSeconds after the leak stopped and after the
    // level was entered.
    let mut entered_at = entered.at;
    for step in &transitions {
        assert!(
            step.to < step.from,
            "only steps down after: {transitions:?}"
        );
        assert!(
            seconds_between(at(leak_stop), step.at) >= recover,
            "{step:?}"
        );
        assert!(seconds_between(entered_at, step.at) >= recover, "{step:?}");
        entered_at = step.at;
    }
    assert_eq!(
        transitions.last().map(|t| t.to),
        Some(Verdict::Healthy),
        "{transitions:?}"
    );
    // Still leaking just before: recoverAfterSeconds after the condition cleared, not earlier.
    let mut probe = Tracker::new(thresholds, at(0.0));
    run(&mut probe, 0.0, leak_stop + recover - 1.0, 1.0, |t| {
        obs(t, 5 + (3.0 * t.min(leak_stop)) as u64, 200 * MIB_U)
    });
    assert_eq!(probe.verdict(), Verdict::Leaking);
    assert!(
        probe.evidence().reason.contains("to step down")
            || probe.evidence().reason.contains("growing"),
        "{}",
        probe.evidence().reason
    );
}

#[test]
fn a_restart_resets_the_window() {
    let mut tracker = Tracker::new(quick(), at(0.0));
    run(&mut tracker, 0.0, 120.0, 1.0, |t| {
        obs(t, 5 + (3.0 * t) as u64, 300 * MIB_U)
    });
    assert_eq!(tracker.verdict(), Verdict::Leaking);
    // A new longhorn-manager: its sockets start from scratch.
    let restarted = ProcessKey {
        pid: 5151,
        start_time_ticks: 99_000,
    };
    let j = tracker.observe(Observation {
        process: restarted,
        ..obs(121.0, 6, 150 * MIB_U)
    });
    assert_eq!(j.verdict, Verdict::Leaking, "recovery still takes its time");
    assert!(
        j.evidence.reason.contains("collecting samples"),
        "{}",
        j.evidence.reason
    );
    assert_eq!(
        j.evidence.connections_per_minute, 0.0,
        "the drop from 365 to 6 is not a slope"
    );
    assert_eq!(j.evidence.connections, 6);
    let transitions = run(&mut tracker, 122.0, 200.0, 1.0, |t| Observation {
        process: restarted,
        ..obs(t, 6, 150 * MIB_U)
    });
    assert_eq!(tracker.verdict(), Verdict::Healthy, "{transitions:?}");
    assert!(tracker.evidence().reason.starts_with("no sustained growth"));
}

#[test]
fn no_manager_and_a_clock_going_back_reset_without_panic() {
    let mut tracker = Tracker::new(quick(), at(0.0));
    run(&mut tracker, 0.0, 120.0, 1.0, |t| {
        obs(t, 5 + (3.0 * t) as u64, 300 * MIB_U)
    });
    let j = tracker.observe_absent(at(121.0));
    assert_eq!(j.verdict, Verdict::Leaking);
    assert_eq!(j.evidence.connections, 0);
    assert!(j.evidence.reason.contains("no longhorn-manager"), "{j:?}");
    // The same instant twice, then a clock 1 h back: ignored, then a fresh window.
    let same = tracker.observe_absent(at(121.0));
    assert_eq!(same.transition, None);
    let back = tracker.observe(obs(121.0 - 3600.0, 10, 300 * MIB_U));
    assert!(
        back.evidence.reason.contains("collecting samples"),
        "{back:?}"
    );
    let transitions = run(&mut tracker, 122.0 - 3600.0, 200.0 - 3600.0, 1.0, |t| {
        obs(t, 10, 300 * MIB_U)
    });
    assert!(transitions.iter().all(|t| t.to < t.from), "{transitions:?}");
    assert_eq!(tracker.verdict(), Verdict::Healthy);
}

#[test]
fn new_thresholds_apply_from_the_next_sample() {
    let mut tracker = Tracker::new(quick(), at(0.0));
    run(&mut tracker, 0.0, 100.0, 1.0, |t| {
        obs(t, 5 + 2 * t as u64, 300 * MIB_U)
    });
    let before = tracker.verdict();
    let mut strict = quick();
    strict.degrading.connections_per_minute = 500.0;
    strict.leaking.connections_per_minute = 1000.0;
    strict.window_seconds = 30;
    tracker.set_thresholds(strict);
    assert_eq!(tracker.thresholds().window_seconds, 30);
    run(&mut tracker, 101.0, 300.0, 1.0, |t| {
        obs(t, 5 + 2 * t as u64, 300 * MIB_U)
    });
    assert_eq!(before, Verdict::Leaking);
    assert_eq!(tracker.verdict(), Verdict::Healthy);
    assert_eq!(tracker.evidence().window_seconds, 30);
}

/// How long the defaults take on the incident's leak, and how far that is from the OOM point.
/// The figures are quoted on `Thresholds::default` and in docs/node-protection.md.
#[test]
fn defaults_catch_the_incident_long_before_oom() {
    struct Case {
        stuck: u64,
        within_minutes: f64,
        leaked_at_most: f64,
    }
    let cases = [
        // The throttle's node cap: 10 Backups in flight on a node, all stuck.
        Case {
            stuck: 10,
            within_minutes: 15.0,
            leaked_at_most: 0.01,
        },
        // The incident: 4,422 stuck Backups over 8 nodes.
        Case {
            stuck: 550,
            within_minutes: 4.0,
            leaked_at_most: 0.05,
        },
    ];
    for case in cases {
        let manager = LeakingManager {
            stuck: case.stuck,
            leak_from: 600.0,
            baseline_connections: 12,
            baseline_rss: 250 * MIB_U,
        };
        let mut tracker = Tracker::new(Thresholds::default(), at(0.0));
        // The monitor's default interval: 15 s.
        let transitions = run(&mut tracker, 0.0, 600.0 + 3600.0, 15.0, |t| {
            manager.sample(t)
        });
        let Some(leaking) = transitions.iter().find(|t| t.to == Verdict::Leaking) else {
            panic!("{} stuck: never leaking: {transitions:?}", case.stuck);
        };
        let t = seconds_between(at(0.0), leaking.at);
        let minutes = (t - manager.leak_from) / 60.0;
        let leaked = manager.leaked(t);
        let leaked_bytes = leaked * LEAKED_CLIENT_BYTES;
        let share = leaked_bytes as f64 / OOM_BYTES as f64;
        let per_minute = 2 * case.stuck * LEAKED_CLIENT_BYTES;
        let oom_minutes = (OOM_BYTES - leaked_bytes) as f64 / per_minute as f64;
        eprintln!(
            "{} stuck Backups: leaking after {minutes:.1} min, {leaked} leaked clients = {:.1} MiB \
             ({:.2} % of 7 GiB); OOM {oom_minutes:.0} min later at this rate",
            case.stuck,
            leaked_bytes as f64 / MIB_U as f64,
            share * 100.0
        );
        assert!(
            minutes <= case.within_minutes,
            "{} stuck: {minutes} min",
            case.stuck
        );
        assert!(
            share <= case.leaked_at_most,
            "{} stuck: {share}",
            case.stuck
        );
        assert_eq!(tracker.verdict(), Verdict::Leaking);
    }

    // One stuck Backup (2 leaked clients a minute) is a warning, never a hold.
    let manager = LeakingManager {
        stuck: 1,
        leak_from: 600.0,
        baseline_connections: 12,
        baseline_rss: 250 * MIB_U,
    };
    let mut tracker = Tracker::new(Thresholds::default(), at(0.0));
    let transitions = run(&mut tracker, 0.0, 600.0 + 7200.0, 15.0, |t| {
        manager.sample(t)
    });
    assert_eq!(
        transitions.iter().map(|t| t.to).collect::<Vec<_>>(),
        [Verdict::Degrading],
        "{transitions:?}"
    );
}

#[test]
fn rfc3339_in_utc() {
    assert_eq!(rfc3339(at(0.0)), "2026-12-06T04:50:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_868_799)),
        "2000-02-29T23:59:59Z"
    );
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
}

#[test]
fn a_condition_that_keeps_breaking_never_enters() {
    let mut tracker = Tracker::new(quick(), at(0.0));
    // A steep leak whose floor drops back every 15 s (shorter than enterAfterSeconds): the
    // connections are closed, so the condition never holds 20 s in a row.
    let transitions = run(&mut tracker, 0.0, 600.0, 1.0, |t| {
        let phase = t % 15.0;
        obs(t, 5 + (phase * 20.0) as u64, 300 * MIB_U)
    });
    assert!(transitions.is_empty(), "{transitions:?}");
}

#[derive(Clone, Debug)]
enum Step {
    Sample {
        after_ms: u64,
        connections: u64,
        rss_mib: u64,
        restart: bool,
    },
    /// Connections up by `up` from the previous sample, RSS flat at 500 MiB.
    Ramp {
        after_ms: u64,
        up: u64,
    },
    Absent {
        after_ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (100u64..20_000, 0u64..400, 100u64..2_000, prop::bool::weighted(0.02)).prop_map(
            |(after_ms, connections, rss_mib, restart)| Step::Sample {
                after_ms,
                connections,
                rss_mib,
                restart
            }
        ),
        // Sustained ramps make transitions likely, not just possible.
        6 => (100u64..5_000, 0u64..40).prop_map(|(after_ms, up)| Step::Ramp { after_ms, up }),
        1 => (100u64..20_000).prop_map(|after_ms| Step::Absent { after_ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the samples: a level is kept at least recoverAfterSeconds once entered, and a
    /// level left downward is not entered again within enterAfterSeconds.
    #[test]
    fn no_sequence_flaps_faster_than_the_hysteresis(steps in prop::collection::vec(step(), 1..400)) {
        let thresholds = quick();
        let enter = thresholds.enter_after_seconds as f64;
        let recover = thresholds.recover_after_seconds as f64;
        let mut tracker = Tracker::new(thresholds, at(0.0));
        let (mut t, mut connections, mut pid) = (0.0, 0u64, 1);
        // Per level: when it was last entered, and when it was last left downward.
        let mut entered: [Option<f64>; 3] = [Some(0.0), None, None];
        let mut left: [Option<f64>; 3] = [None; 3];
        for step in steps {
            let judgement = match step {
                Step::Sample { after_ms, connections: c, rss_mib, restart } => {
                    t += after_ms as f64 / 1000.0;
                    if restart {
                        pid += 1;
                    }
                    connections = c;
                    tracker.observe(Observation {
                        process: ProcessKey { pid, start_time_ticks: 1 },
                        ..obs(t, connections, rss_mib * MIB_U)
                    })
                }
                Step::Ramp { after_ms, up } => {
                    t += after_ms as f64 / 1000.0;
                    connections += up;
                    tracker.observe(Observation {
                        process: ProcessKey { pid, start_time_ticks: 1 },
                        ..obs(t, connections, 500 * MIB_U)
                    })
                }
                Step::Absent { after_ms } => {
                    t += after_ms as f64 / 1000.0;
                    tracker.observe_absent(at(t))
                }
            };
            prop_assert_eq!(judgement.verdict, tracker.verdict());
            if let Some(tr) = judgement.transition {
                let (from, to) = (tr.from as usize, tr.to as usize);
                prop_assert_ne!(from, to);
                if to < from {
                    let since = entered[from].unwrap_or(0.0);
                    prop_assert!(t - since >= recover, "left {:?} {}s after entering", tr.from, t - since);
                    left[from] = Some(t);
                } else if let Some(l) = left[to] {
                    prop_assert!(t - l >= enter, "re-entered {:?} {}s after leaving", tr.to, t - l);
                }
                entered[to] = Some(t);
            }
        }
    }
}
