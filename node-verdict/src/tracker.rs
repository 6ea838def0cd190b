//! The hysteresis tracker: turns the manager monitor's samples into a [`Verdict`] with its
//! [`Evidence`] and transitions. Pure: time comes in with each sample.
//!
//! **Signals.** Each sample gives the sockets longhorn-manager holds to instance-manager ports,
//! its RSS, threads and fds. Connections and RSS are judged by their *floor*: the lowest value
//! seen over the last `floorSeconds` (sample included; at most half the window). A leaked connection never closes, so a
//! leak raises the floor at the leak's rate; the short-lived connections of a busy, healthy
//! manager only raise the peaks and leave the floor where it was. The same holds for RSS and the
//! Go garbage collector's saw-tooth.
//!
//! **Slope.** Ordinary least squares of the floors against time over the samples of the last
//! `windowSeconds`: `slope = Σ(t−t̄)(y−ȳ) / Σ(t−t̄)²`, stated per minute. A slope is only
//! trusted once the window holds at least [`MIN_POINTS`] samples spanning at least half of
//! `windowSeconds`; before that no level's condition holds.
//!
//! **Condition of a level** (`degrading`, `leaking`, [`crate::Level`]): the connection floor is
//! at least `minConnections` and its slope at least `connectionsPerMinute`, or the RSS floor is
//! at least `minRssMib` and its slope at least `rssMibPerMinute`.
//!
//! **Hysteresis.** The verdict enters a higher level only when that level's condition has held
//! at every sample for `enterAfterSeconds`; it steps down only when its own condition has been
//! clear at every sample for `recoverAfterSeconds`, to the highest lower level whose condition
//! holds at that moment (else `healthy`). So a level is kept at least `recoverAfterSeconds` once
//! entered, and a level left is entered again at the earliest `enterAfterSeconds` later.
//!
//! **Resets.** A new process (new pid or start time), no process at all, or a clock that went
//! backwards empties the window: the slopes start again from the new process's samples, and
//! the verdict steps down through the normal recovery (the condition is clear without data).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Evidence, Level, Thresholds, Verdict};

/// Samples needed in the window before a slope is trusted.
pub const MIN_POINTS: usize = 3;
/// At most this many samples are kept (memory stays bounded whatever the sample interval).
pub const MAX_POINTS: usize = 4096;

const MIB: f64 = 1024.0 * 1024.0;

/// Which process a sample is from: a change means longhorn-manager restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessKey {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time_ticks: u64,
}

/// One sample of the node's longhorn-manager.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub at: SystemTime,
    pub process: ProcessKey,
    /// Sockets to instance-manager ports that are connections (not listening, not TIME_WAIT).
    pub connections: u64,
    pub rss_bytes: u64,
    pub threads: u64,
    pub fds: u64,
}

/// A change of verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Verdict,
    pub to: Verdict,
    pub at: SystemTime,
}

/// The tracker's answer to one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub evidence: Evidence,
    /// Set on the sample that changed the verdict.
    pub transition: Option<Transition>,
}

#[derive(Clone, Copy, Debug)]
struct Point {
    /// Seconds since the Unix epoch.
    t: f64,
    connection_floor: f64,
    rss_floor: f64,
    connections: u64,
    rss_bytes: u64,
}

/// The window's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    /// `None` while the window is too short for a slope.
    trusted: bool,
    connection_floor: f64,
    connections_per_minute: f64,
    rss_floor: f64,
    rss_bytes_per_minute: f64,
    span_seconds: f64,
}

/// How long one level's condition has held, or been clear, without interruption.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    holding_since: Option<SystemTime>,
    clear_since: Option<SystemTime>,
}

impl Run {
    fn update(&mut self, holds: bool, at: SystemTime) {
        if holds {
            self.clear_since = None;
            self.holding_since.get_or_insert(at);
        } else {
            self.holding_since = None;
            self.clear_since.get_or_insert(at);
        }
    }

    fn held_for(&self, at: SystemTime) -> Option<Duration> {
        self.holding_since
            .map(|s| at.duration_since(s).unwrap_or(Duration::ZERO))
    }

    fn clear_for(&self, at: SystemTime) -> Option<Duration> {
        self.clear_since
            .map(|s| at.duration_since(s).unwrap_or(Duration::ZERO))
    }
}

/// One node's verdict, fed sample by sample.
#[derive(Clone, Debug)]
pub struct Tracker {
    thresholds: Thresholds,
    points: VecDeque<Point>,
    process: Option<ProcessKey>,
    last_at: Option<SystemTime>,
    last: Option<Observation>,
    verdict: Verdict,
    since: SystemTime,
    /// Index 0: degrading, 1: leaking.
    runs: [Run; 2],
    evidence: Evidence,
}

impl Tracker {
    /// A tracker that starts `healthy` at `start`.
    pub fn new(thresholds: Thresholds, start: SystemTime) -> Self {
        let mut tracker = Tracker {
            thresholds,
            points: VecDeque::new(),
            process: None,
            last_at: None,
            last: None,
            verdict: Verdict::Healthy,
            since: start,
            runs: [Run::default(); 2],
            evidence: Evidence::default(),
        };
        tracker.evidence = tracker.build_evidence(&Figures::default(), "no sample yet".into());
        tracker
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// New thresholds (the policy file changed): the verdict and the samples are kept, the
    /// window is cut to the new length, and the next sample is judged by the new values.
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
        if let Some(at) = self.last_at {
            self.trim(secs(at));
        }
    }

    /// A sample of the followed longhorn-manager.
    pub fn observe(&mut self, obs: Observation) -> Judgement {
        match self.last_at {
            Some(last) if obs.at == last => return self.judgement(None),
            Some(last) if obs.at < last => self.clock_went_back(),
            _ => {}
        }
        if self.process != Some(obs.process) {
            self.reset();
            self.process = Some(obs.process);
        }
        self.last_at = Some(obs.at);
        self.last = Some(obs);
        let t = secs(obs.at);
        self.trim(t);
        let floor_from = t - self.thresholds.effective_floor_seconds() as f64;
        let (mut connection_floor, mut rss_floor) = (obs.connections as f64, obs.rss_bytes as f64);
        for p in self.points.iter().rev().take_while(|p| p.t >= floor_from) {
            connection_floor = connection_floor.min(p.connections as f64);
            rss_floor = rss_floor.min(p.rss_bytes as f64);
        }
        self.points.push_back(Point {
            t,
            connection_floor,
            rss_floor,
            connections: obs.connections,
            rss_bytes: obs.rss_bytes,
        });
        if self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
        let figures = self.figures();
        self.judge(obs.at, &figures)
    }

    /// No longhorn-manager is running on the node at `at`: the window empties, and the verdict
    /// recovers as it would from a clear condition.
    pub fn observe_absent(&mut self, at: SystemTime) -> Judgement {
        match self.last_at {
            Some(last) if at == last => return self.judgement(None),
            Some(last) if at < last => self.clock_went_back(),
            _ => {}
        }
        self.reset();
        self.last_at = Some(at);
        self.last = None;
        self.judge(at, &Figures::default())
    }

    /// The wall clock went back: the window's and the runs' times no longer compare. The runs
    /// start again from the next sample (a level in force is kept another full recovery).
    fn clock_went_back(&mut self) {
        self.reset();
        self.runs = [Run::default(); 2];
    }

    fn reset(&mut self) {
        self.points.clear();
        self.process = None;
    }

    fn trim(&mut self, now: f64) {
        let from = now - self.thresholds.window_seconds as f64;
        while self.points.front().is_some_and(|p| p.t < from) {
            self.points.pop_front();
        }
    }

    fn figures(&self) -> Figures {
        let (Some(first), Some(last)) = (self.points.front(), self.points.back()) else {
            return Figures::default();
        };
        let span_seconds = last.t - first.t;
        let trusted = self.points.len() >= MIN_POINTS
            && span_seconds > 0.0
            && span_seconds >= self.thresholds.window_seconds as f64 / 2.0;
        let slope = |y: fn(&Point) -> f64| -> f64 {
            if span_seconds <= 0.0 {
                return 0.0;
            }
            let n = self.points.len() as f64;
            // Times relative to the first sample keep the sums' precision.
            let t_mean = self.points.iter().map(|p| p.t - first.t).sum::<f64>() / n;
            let y_mean = self.points.iter().map(y).sum::<f64>() / n;
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for p in &self.points {
                let dt = p.t - first.t - t_mean;
                sxy += dt * (y(p) - y_mean);
                sxx += dt * dt;
            }
            if sxx > 0.0 { sxy / sxx * 60.0 } else { 0.0 }
        };
        Figures {
            trusted,
            connection_floor: last.connection_floor,
            connections_per_minute: slope(|p| p.connection_floor),
            rss_floor: last.rss_floor,
            rss_bytes_per_minute: slope(|p| p.rss_floor),
            span_seconds,
        }
    }

    /// Which part of `level` holds, if any: a phrase for people.
    fn condition(level: &Level, f: &Figures) -> Option<String> {
        if !f.trusted {
            return None;
        }
        if f.connection_floor >= level.min_connections as f64
            && f.connections_per_minute >= level.connections_per_minute
        {
            return Some(format!(
                "connection floor {:.0} >= {} and growing {:+.1}/min >= {}/min",
                f.connection_floor,
                level.min_connections,
                f.connections_per_minute,
                level.connections_per_minute
            ));
        }
        if f.rss_floor >= level.min_rss_mib as f64 * MIB
            && f.rss_bytes_per_minute >= level.rss_mib_per_minute * MIB
        {
            return Some(format!(
                "RSS floor {:.0} MiB >= {} MiB and growing {:+.1} MiB/min >= {} MiB/min",
                f.rss_floor / MIB,
                level.min_rss_mib,
                f.rss_bytes_per_minute / MIB,
                level.rss_mib_per_minute
            ));
        }
        None
    }

    fn judge(&mut self, at: SystemTime, f: &Figures) -> Judgement {
        let enter = Duration::from_secs(self.thresholds.enter_after_seconds);
        let recover = Duration::from_secs(self.thresholds.recover_after_seconds);
        let conditions = [
            Self::condition(&self.thresholds.degrading, f),
            Self::condition(&self.thresholds.leaking, f),
        ];
        for (run, condition) in self.runs.iter_mut().zip(&conditions) {
            run.update(condition.is_some(), at);
        }
        let levels = [Verdict::Degrading, Verdict::Leaking];
        let index = |v: Verdict| levels.iter().position(|l| *l == v);

        let escalate = (0..2)
            .rev()
            .find(|&i| levels[i] > self.verdict && self.runs[i].held_for(at) >= Some(enter));
        let next = if let Some(i) = escalate {
            Some(levels[i])
        } else if let Some(i) = index(self.verdict) {
            (self.runs[i].clear_for(at) >= Some(recover)).then(|| {
                (0..i)
                    .rev()
                    .find(|&j| conditions[j].is_some())
                    .map_or(Verdict::Healthy, |j| levels[j])
            })
        } else {
            None
        };
        let transition = next.map(|to| {
            let t = Transition {
                from: self.verdict,
                to,
                at,
            };
            self.verdict = to;
            self.since = at;
            t
        });

        let reason = self.reason(at, f, &conditions, enter, recover);
        self.evidence = self.build_evidence(f, reason);
        self.judgement(transition)
    }

    fn reason(
        &self,
        at: SystemTime,
        f: &Figures,
        conditions: &[Option<String>; 2],
        enter: Duration,
        recover: Duration,
    ) -> String {
        let window = self.thresholds.window_seconds;
        if self.last.is_none() && self.last_at.is_some() {
            return "no longhorn-manager process found on the node".into();
        }
        if !f.trusted {
            return format!(
                "collecting samples: {:.0}s of the {window}s window needed at half length",
                f.span_seconds
            );
        }
        let held = |i: usize| {
            self.runs[i]
                .held_for(at)
                .unwrap_or(Duration::ZERO)
                .as_secs()
        };
        match self.verdict {
            Verdict::Healthy => match conditions.iter().rposition(Option::is_some) {
                Some(i) => format!(
                    "{} condition holding for {}s of the {}s needed: {}",
                    [Verdict::Degrading, Verdict::Leaking][i],
                    held(i),
                    enter.as_secs(),
                    conditions[i].as_deref().unwrap_or_default()
                ),
                None => format!(
                    "no sustained growth over {window}s: connections {:+.1}/min, RSS {:+.1} MiB/min",
                    f.connections_per_minute,
                    f.rss_bytes_per_minute / MIB
                ),
            },
            level => {
                let i = usize::from(level == Verdict::Leaking);
                match &conditions[i] {
                    Some(why) => format!("{why} (over {window}s)"),
                    None => format!(
                        "{level} condition clear for {}s of the {}s needed to step down",
                        self.runs[i]
                            .clear_for(at)
                            .unwrap_or(Duration::ZERO)
                            .as_secs(),
                        recover.as_secs()
                    ),
                }
            }
        }
    }

    fn build_evidence(&self, f: &Figures, reason: String) -> Evidence {
        let last = self.last.as_ref();
        Evidence {
            connections: last.map_or(0, |o| o.connections),
            connections_per_minute: round1(f.connections_per_minute),
            rss_bytes: last.map_or(0, |o| o.rss_bytes),
            rss_bytes_per_minute: f.rss_bytes_per_minute.round(),
            threads: last.map_or(0, |o| o.threads),
            fds: last.map_or(0, |o| o.fds),
            window_seconds: self.thresholds.window_seconds,
            since: rfc3339(self.since),
            reason,
        }
    }

    fn judgement(&self, transition: Option<Transition>) -> Judgement {
        Judgement {
            verdict: self.verdict,
            evidence: self.evidence.clone(),
            transition,
        }
    }
}

fn secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `at` as RFC 3339 in UTC with whole seconds (`2026-12-06T04:50:00Z`).
pub fn rfc3339(at: SystemTime) -> String {
    let whole = at.duration_since(UNIX_EPOCH).map_or(UNIX_EPOCH, |d| {
        UNIX_EPOCH + Duration::from_secs(d.as_secs())
    });
    time::OffsetDateTime::from(whole)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
