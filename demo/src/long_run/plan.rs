//! The long run's plan: its options and the timetable derived from them, each wave's Backups
//! and engine fault, and the policy the guard runs with.

use std::time::Duration;

use anyhow::bail;
use fake_engine::Fault;

use crate::DemoOptions;
use crate::storm::{self, PlannedBackup, StormShape};

/// What only the long run is told (the rest comes from [`DemoOptions`]).
#[derive(Clone, Debug)]
pub struct LongRunOptions {
    pub total: Duration,
    /// Between two storm waves (default: 5 minutes, or a quarter of the run if shorter).
    pub wave_every: Option<Duration>,
    /// Backups per wave.
    pub wave_backups: usize,
    /// How long the guard loses the API server (default: 20 s, 10 s for runs under 10 minutes).
    pub outage: Option<Duration>,
    pub sample_every: Duration,
}

impl Default for LongRunOptions {
    fn default() -> Self {
        Self {
            total: Duration::from_secs(3600),
            wave_every: None,
            wave_backups: 600,
            outage: None,
            sample_every: Duration::from_secs(10),
        }
    }
}

/// The long run's timetable, derived from its options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timetable {
    pub total: Duration,
    pub wave_every: Duration,
    pub waves: u32,
    /// Each wave's CREATEs start evenly over this span.
    pub spread: Duration,
    /// The outage starts this long after the run and lasts `outage`.
    pub outage_at: Duration,
    pub outage: Duration,
}

impl LongRunOptions {
    pub fn timetable(&self, storm_spread: Duration) -> anyhow::Result<Timetable> {
        let total = self.total;
        if total < Duration::from_secs(60) {
            bail!("--long-run-minutes must be at least 1");
        }
        if self.wave_backups == 0 || self.sample_every.is_zero() {
            bail!("--wave-backups and --sample-seconds must be > 0");
        }
        let wave_every = self
            .wave_every
            .unwrap_or_else(|| Duration::from_secs(300).min(total / 4));
        if wave_every.is_zero() {
            bail!("--wave-seconds must be > 0");
        }
        let spread = storm_spread.min(wave_every / 3);
        let outage = self.outage.unwrap_or(if total < Duration::from_secs(600) {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(20)
        });
        // Waves start while their storm still fits in the run.
        let waves = ((total.saturating_sub(spread)).as_secs_f64() / wave_every.as_secs_f64())
            .floor() as u32
            + 1;
        // The outage: in the quiet gap after the second wave (early in the warm-up half), so
        // that the judged half shows whether the guard came back to its level.
        let outage_at = wave_every + spread + Duration::from_secs(2);
        if spread + Duration::from_secs(2) + outage >= wave_every {
            bail!(
                "the outage ({outage:?}) does not fit between two waves ({wave_every:?} apart, storms of {spread:?}); lengthen --wave-seconds or shorten --outage-seconds"
            );
        }
        if outage_at + outage >= total / 2 && total >= Duration::from_secs(120) {
            bail!(
                "the outage ({outage:?} at {outage_at:?}) must end in the run's first half ({:?}); lengthen the run or shorten --wave-seconds",
                total / 2
            );
        }
        Ok(Timetable {
            total,
            wave_every,
            waves,
            spread,
            outage_at,
            outage,
        })
    }
}

/// The fault the engines suffer during wave `k` (on every RPC but health checks).
pub fn wave_fault(k: u32) -> (&'static str, Fault) {
    let injected = || "injected by the long run".to_string();
    match k % 5 {
        0 => (
            "20 % UNAVAILABLE",
            Fault::Probabilistic {
                probability: 0.2,
                fault: Box::new(Fault::Error {
                    code: tonic::Code::Unavailable,
                    message: injected(),
                }),
            },
        ),
        1 => (
            "10 % connection reset",
            Fault::Probabilistic {
                probability: 0.1,
                fault: Box::new(Fault::Reset),
            },
        ),
        2 => (
            "delay 1-150 ms",
            Fault::RandomDelay {
                min: Duration::from_millis(1),
                max: Duration::from_millis(150),
            },
        ),
        3 => (
            "5 % black hole",
            Fault::Probabilistic {
                probability: 0.05,
                fault: Box::new(Fault::BlackHole),
            },
        ),
        _ => ("none", Fault::None),
    }
}

/// The policy of the long run: the demo's, with the rate limits off (so that every throttle
/// denial is an in-flight cap the truth check can recount).
pub fn long_run_policy() -> longhorn_guard_webhook::Policy {
    use longhorn_guard_webhook::policy::throttle::RateLimit;
    let mut policy = crate::demo_policy();
    policy.throttle.cluster_rate = RateLimit::OFF;
    policy.throttle.recurring_job_rate = RateLimit::OFF;
    policy.throttle.user_rate = RateLimit::OFF;
    policy
}

/// Wave `k`'s Backups: the demo's storm plan, the same every wave (the same recurring jobs
/// firing for the same volumes, the same snapshots lost: a steady cluster), with Backup and
/// snapshot names made unique to the wave.
pub fn wave_plan(options: &DemoOptions, backups: usize, k: u32) -> Vec<PlannedBackup> {
    let mut plan = storm::plan(&StormShape {
        backups,
        volumes: options.volumes,
        lost_share: options.lost_share,
        mid_storm_loss_share: options.mid_storm_loss_share,
        recurring_jobs: 2,
        seed: options.seed,
    });
    for b in &mut plan {
        b.name = format!("{}-w{k}", b.name);
        b.snapshot = format!("{}-w{k}", b.snapshot);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(minutes: u64) -> LongRunOptions {
        LongRunOptions {
            total: Duration::from_secs(minutes * 60),
            ..LongRunOptions::default()
        }
    }

    #[test]
    fn an_hour_has_twelve_waves_and_the_outage_early() {
        let t = long(60).timetable(Duration::from_secs(30)).unwrap();
        assert_eq!(t.wave_every, Duration::from_secs(300));
        assert_eq!(t.waves, 12);
        assert_eq!(t.outage, Duration::from_secs(20));
        assert_eq!(t.outage_at, Duration::from_secs(300 + 32));
    }

    #[test]
    fn two_minutes_with_waves_every_15_s_fit_the_outage_early() {
        let o = LongRunOptions {
            wave_every: Some(Duration::from_secs(15)),
            outage: Some(Duration::from_secs(6)),
            ..long(2)
        };
        let t = o.timetable(Duration::from_secs(30)).unwrap();
        assert_eq!(t.spread, Duration::from_secs(5));
        assert_eq!(t.waves, 8);
        assert_eq!(t.outage_at, Duration::from_secs(22));
        assert!(t.outage_at + t.outage <= t.total / 3);
        assert_eq!(long(2).timetable(Duration::from_secs(30)).unwrap().waves, 4);
    }

    #[test]
    fn timetables_that_do_not_fit_are_refused() {
        assert!(long(0).timetable(Duration::from_secs(30)).is_err());
        let crowded = LongRunOptions {
            outage: Some(Duration::from_secs(25)),
            ..long(2)
        };
        let e = crowded.timetable(Duration::from_secs(30)).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn waves_have_their_own_snapshots_and_names() {
        let o = DemoOptions {
            volumes: 10,
            ..DemoOptions::default()
        };
        let a = wave_plan(&o, 20, 0);
        let b = wave_plan(&o, 20, 1);
        assert!(a.iter().all(|p| p.snapshot.ends_with("-w0")));
        assert!(b.iter().all(|p| p.snapshot.ends_with("-w1")));
        assert!(a.iter().all(|x| b.iter().all(|y| x.name != y.name)));
        let fates = |p: &[PlannedBackup]| p.iter().map(|x| x.fate).collect::<Vec<_>>();
        assert_eq!(
            fates(&a),
            fates(&b),
            "every wave loses the same share the same way"
        );
    }

    #[test]
    fn every_fault_is_injected_once_in_five_waves() {
        let names: std::collections::BTreeSet<_> = (0..5).map(|k| wave_fault(k).0).collect();
        assert_eq!(names.len(), 5);
        assert_eq!(wave_fault(4).0, "none");
    }

    #[test]
    fn the_long_run_policy_has_no_rate_limits() {
        let p = long_run_policy();
        assert!(!p.throttle.cluster_rate.enabled());
        assert!(!p.throttle.recurring_job_rate.enabled());
        assert!(!p.throttle.user_rate.enabled());
        assert_eq!(p.throttle.max_in_flight_per_volume, 1);
    }
}
