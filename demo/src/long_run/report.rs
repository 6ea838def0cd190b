//! The long run's verdicts and report: each series judged ([`super::trend`]), the leak gauges,
//! every denial checked ([`super::truth`]); written as `long-run.json`, `long-run.md` and one
//! SVG per series.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::sampler::Row;
use super::trend::{self, DriftBound, Trend};
use super::truth::{Caps, Denial, FalseDenial, Truth};
use super::{LongRunOptions, Observed, Timetable, denial_of};
use crate::DemoOptions;
use crate::plot::{self, Chart, Line};
use crate::storm::{Attempt, Outcome};

/// One wave's CREATEs by outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WaveFigures {
    pub wave: u32,
    pub started_seconds: f64,
    pub fault: String,
    pub attempted: u64,
    pub admitted: u64,
    pub denied_by_reason: BTreeMap<String, u64>,
    pub errors: u64,
    pub not_sent: u64,
}

impl WaveFigures {
    pub fn of(wave: u32, started_seconds: f64, fault: &str, attempts: &[Attempt]) -> Self {
        let mut f = Self {
            wave,
            started_seconds,
            fault: fault.to_string(),
            ..Self::default()
        };
        for a in attempts {
            match &a.outcome {
                Outcome::Admitted => f.admitted += 1,
                Outcome::Denied { reason, .. } => {
                    *f.denied_by_reason.entry(reason.clone()).or_insert(0) += 1;
                }
                Outcome::Failed(_) => f.errors += 1,
                Outcome::NotSent => f.not_sent += 1,
            }
        }
        f.attempted = attempts.len() as u64 - f.not_sent;
        f
    }

    pub fn denied(&self) -> u64 {
        self.denied_by_reason.values().sum()
    }
}

/// The guard's API server outage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutageFigures {
    pub at_seconds: f64,
    pub seconds: f64,
    /// Connections the relay closed on accept while cut (the guard trying to come back).
    pub connections_refused: u64,
}

/// One followed series with its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesReport {
    /// File name stem of its plot.
    pub key: String,
    pub title: String,
    pub unit: String,
    pub points: Vec<(f64, f64)>,
    pub bound: DriftBound,
    pub trend: Trend,
}

/// The leak gauges of the agents over the run (summed over the agents).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakFigures {
    pub max_leaked_leases: f64,
    pub max_leaked_channels: f64,
    pub leaked_leases_detected_end: f64,
    pub leaked_channels_detected_end: f64,
}

impl LeakFigures {
    pub fn none(&self) -> bool {
        self.max_leaked_leases == 0.0
            && self.max_leaked_channels == 0.0
            && self.leaked_leases_detected_end == 0.0
            && self.leaked_channels_detected_end == 0.0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongRunReport {
    pub minutes: f64,
    pub waves_every_seconds: f64,
    pub wave_backups: usize,
    pub volumes: usize,
    pub nodes: usize,
    pub sample_seconds: f64,
    pub caps: Caps,
    pub truth_slack_seconds: f64,
    pub waves: Vec<WaveFigures>,
    pub outage: OutageFigures,
    pub series: Vec<SeriesReport>,
    pub leaks: LeakFigures,
    pub denials: u64,
    pub false_denials: Vec<FalseDenial>,
    pub create_errors: u64,
    pub engine_checks: u64,
    pub engine_check_errors: u64,
    /// Connections the simulated v1.7.2 controller leaked (Longhorn's bug, not the guard's).
    pub controller_leaked_connections: u64,
    pub sample_errors: Vec<String>,
    /// Why the run failed its goals (empty: passed).
    pub failures: Vec<String>,
}

impl LongRunReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What is followed: key, title, unit, how a sample gives it, and its drift bound per hour.
type Extract = fn(&Row) -> f64;

const MIB: f64 = 1024.0 * 1024.0;

pub fn followed() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Extract,
    DriftBound,
)> {
    let rss = DriftBound {
        relative: 0.05,
        absolute: 1.0,
    };
    // File descriptors and threads come and go with connection pools (the API server's to the
    // webhook, the agents' to the engines) as load peaks: 4 over the horizon, or 5 %.
    let pooled = DriftBound {
        relative: 0.05,
        absolute: 4.0,
    };
    let count = DriftBound {
        relative: 0.0,
        absolute: 2.0,
    };
    vec![
        (
            "webhook-rss",
            "Webhook resident memory",
            "MiB",
            |r| r.webhook.rss_bytes as f64 / MIB,
            rss,
        ),
        (
            "agents-rss",
            "Agents' resident memory (summed)",
            "MiB",
            |r| r.agents.rss_bytes as f64 / MIB,
            rss,
        ),
        (
            "webhook-fds",
            "Webhook open file descriptors",
            "fds",
            |r| r.webhook.fds as f64,
            pooled,
        ),
        (
            "agents-fds",
            "Agents' open file descriptors (summed)",
            "fds",
            |r| r.agents.fds as f64,
            pooled,
        ),
        (
            "webhook-threads",
            "Webhook threads",
            "threads",
            |r| r.webhook.threads as f64,
            pooled,
        ),
        (
            "agents-threads",
            "Agents' threads (summed)",
            "threads",
            |r| r.agents.threads as f64,
            pooled,
        ),
        (
            "agent-channels",
            "Agents' engine-proxy channels open",
            "channels",
            |r| r.metric("longhorn_guard_agent_channels_active"),
            count,
        ),
        (
            "agent-leases",
            "Agents' leases held",
            "leases",
            |r| r.metric("longhorn_guard_agent_leases_active"),
            count,
        ),
        (
            "webhook-index",
            "Webhook index size (objects, all kinds)",
            "objects",
            |r| r.metric("longhorn_guard_webhook_index_objects"),
            DriftBound {
                relative: 0.05,
                absolute: 10.0,
            },
        ),
        (
            "webhook-watch-restarts",
            "Webhook watch restarts (all kinds, cumulative)",
            "restarts",
            |r| r.metric("longhorn_guard_webhook_watch_restarts_total"),
            DriftBound {
                relative: 0.0,
                absolute: 1.0,
            },
        ),
    ]
}

/// How late the watches may be: a throttle denial counts Backups in flight within this of it.
pub const TRUTH_SLACK: Duration = Duration::from_secs(2);

/// Judges what the run observed.
pub fn judge(
    options: &DemoOptions,
    long: &LongRunOptions,
    timetable: Timetable,
    policy: &longhorn_guard_webhook::Policy,
    volume_nodes: &HashMap<String, String>,
    observed: Observed,
) -> LongRunReport {
    let rows = &observed.rows;
    let total = timetable.total.as_secs_f64();
    let series: Vec<SeriesReport> = followed()
        .into_iter()
        .map(|(key, title, unit, extract, bound)| {
            let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.t, extract(r))).collect();
            let judged = trend::second_half(&points);
            let span = match (judged.first(), judged.last()) {
                (Some(a), Some(b)) => b.0 - a.0,
                _ => 0.0,
            };
            let trend = trend::judge(&points, bound, trend::horizon_hours(total, span));
            SeriesReport {
                key: key.into(),
                title: title.into(),
                unit: unit.into(),
                points,
                bound,
                trend,
            }
        })
        .collect();
    let max = |name: &str| rows.iter().map(|r| r.metric(name)).fold(0.0, f64::max);
    let last = |name: &str| rows.last().map_or(0.0, |r| r.metric(name));
    let leaks = LeakFigures {
        max_leaked_leases: max("longhorn_guard_agent_leaked_leases"),
        max_leaked_channels: max("longhorn_guard_agent_leaked_channels"),
        leaked_leases_detected_end: last("longhorn_guard_agent_leaked_leases_detected_total"),
        leaked_channels_detected_end: last("longhorn_guard_agent_leaked_channels_detected_total"),
    };
    let caps = Caps {
        volume: policy.throttle.max_in_flight_per_volume,
        node: policy.throttle.max_in_flight_per_node,
        cluster: policy.throttle.max_in_flight_per_cluster,
    };
    let truth = Truth {
        spans: &observed.spans,
        volume_nodes,
        caps,
        slack: TRUTH_SLACK,
    };
    let mut denials = 0;
    let mut false_denials = Vec::new();
    let mut create_errors = 0;
    for (_, plan, attempts) in &observed.waves {
        for a in attempts {
            if matches!(a.outcome, Outcome::Failed(_)) {
                create_errors += 1;
            }
            let (Some(reason), Some(planned)) = (denial_of(a), plan.get(a.index)) else {
                continue;
            };
            denials += 1;
            let d = Denial {
                reason,
                backup: &planned.name,
                volume: &planned.volume,
                fate: planned.fate,
                sent: a.sent,
                answered: a.sent + a.latency,
            };
            if let Err(f) = truth.check(&d) {
                false_denials.push(f);
            }
        }
    }
    let mut failures = Vec::new();
    if rows.is_empty() {
        failures.push("no sample was taken".to_string());
    }
    for s in series.iter().filter(|s| !s.trend.flat) {
        failures.push(format!("{} is not flat: {}", s.title, s.trend.why));
    }
    if observed.outage.seconds == 0.0 {
        failures
            .push("the API server outage did not happen (the second wave never ended)".to_string());
    }
    if !leaks.none() {
        failures.push(format!("the agents leaked: {leaks:?}"));
    }
    if !false_denials.is_empty() {
        failures.push(format!("{} false denials", false_denials.len()));
    }
    if !observed.sample_errors.is_empty() {
        failures.push(format!(
            "{} samples failed, first: {}",
            observed.sample_errors.len(),
            observed.sample_errors[0]
        ));
    }
    LongRunReport {
        minutes: timetable.total.as_secs_f64() / 60.0,
        waves_every_seconds: timetable.wave_every.as_secs_f64(),
        wave_backups: long.wave_backups,
        volumes: options.volumes,
        nodes: options.nodes,
        sample_seconds: long.sample_every.as_secs_f64(),
        caps,
        truth_slack_seconds: TRUTH_SLACK.as_secs_f64(),
        waves: observed.waves.into_iter().map(|w| w.0).collect(),
        outage: observed.outage,
        series,
        leaks,
        denials,
        false_denials,
        create_errors,
        engine_checks: observed.engine_checks,
        engine_check_errors: observed.engine_check_errors,
        controller_leaked_connections: observed.controller_leaked_connections,
        sample_errors: observed.sample_errors,
        failures,
    }
}

impl LongRunReport {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Long run: {:.0} minutes\n\n**Verdict: {}**\n",
            self.minutes,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        for f in &self.failures {
            let _ = writeln!(md, "- {f}");
        }
        let _ = writeln!(
            md,
            "{} waves of {} Backups on {} volumes and {} nodes every {:.0} s, each with a fault in the engines; \
             the guard lost the API server for {:.0} s at {:.0} s ({} reconnects refused); a sample every {:.0} s.\n",
            self.waves.len(),
            self.wave_backups,
            self.volumes,
            self.nodes,
            self.waves_every_seconds,
            self.outage.seconds,
            self.outage.at_seconds,
            self.outage.connections_refused,
            self.sample_seconds
        );
        let _ = writeln!(
            md,
            "## Series (judged over the second half)\n\nFlat = the least-squares slope's 95 % interval contains 0, \
             or the drift it implies over an hour (over the judged half when the run is shorter than an hour) is within \
             the bound: the larger of a share of the level and an absolute amount (resident memory 5 % or 1 MiB; fds and \
             threads 5 % or 4; channels and leases 2; index 5 % or 10 objects; watch restarts 1).\n"
        );
        let _ = writeln!(
            md,
            "| series | mean | slope per hour | ± 95 % | drift over the horizon | bound | flat | samples | plot |\n|---|---:|---:|---:|---:|---:|---|---:|---|"
        );
        for s in &self.series {
            let t = &s.trend;
            let _ = writeln!(
                md,
                "| {} ({}) | {:.1} | {:+.2} | {:.2} | {:+.2} | {:.2} | {} | {} | [{}.svg]({}.svg) |",
                s.title,
                s.unit,
                t.mean,
                t.slope_per_hour,
                t.ci95_per_hour,
                t.drift,
                t.bound,
                if t.flat { "yes" } else { "**no**" },
                t.samples,
                s.key,
                s.key
            );
        }
        let l = &self.leaks;
        let _ = writeln!(
            md,
            "\n## Leaks\n\nAgents' `leaked_leases` at most {}, `leaked_channels` at most {} (every sample); \
             `leaked_leases_detected_total` {} and `leaked_channels_detected_total` {} at the end. \
             (The simulated v1.7.2 controller leaked {} connections of its own: Longhorn's bug, reproduced on purpose.)\n",
            l.max_leaked_leases,
            l.max_leaked_channels,
            l.leaked_leases_detected_end,
            l.leaked_channels_detected_end,
            self.controller_leaked_connections
        );
        let _ = writeln!(
            md,
            "## Denials\n\n{} denials, each checked against the simulated cluster: {} false. A snapshot denial is true when the \
             snapshot was lost before its wave; a throttle denial when at least the cap's number of Backups of its scope were \
             in flight within {:.0} s of it (caps: volume {}, node {}, cluster {}). CREATE errors: {}. Engine checks through the agents: {} ({} errors).\n",
            self.denials,
            self.false_denials.len(),
            self.truth_slack_seconds,
            self.caps.volume,
            self.caps.node,
            self.caps.cluster,
            self.create_errors,
            self.engine_checks,
            self.engine_check_errors
        );
        for f in self.false_denials.iter().take(20) {
            let _ = writeln!(md, "- Backup {} ({}): {}", f.backup, f.reason, f.why);
        }
        let _ = writeln!(
            md,
            "\n## Waves\n\n| wave | at (s) | engine fault | sent | admitted | denied | errors | denials by reason |\n|---:|---:|---|---:|---:|---:|---:|---|"
        );
        for w in &self.waves {
            let reasons: Vec<String> = w
                .denied_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                w.wave,
                w.started_seconds,
                w.fault,
                w.attempted,
                w.admitted,
                w.denied(),
                w.errors,
                reasons.join(", ")
            );
        }
        if !self.sample_errors.is_empty() {
            let _ = writeln!(md, "\n## Sample errors\n");
            for e in self.sample_errors.iter().take(10) {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }
}

/// A series' plot: its samples and the least-squares line over the judged half.
pub fn series_svg(s: &SeriesReport) -> String {
    let judged = trend::second_half(&s.points);
    let fit: Vec<(f64, f64)> = match (trend::least_squares(judged), judged.first(), judged.last()) {
        (Some((slope, intercept, _)), Some(a), Some(b)) => {
            vec![
                (a.0, intercept + slope * a.0),
                (b.0, intercept + slope * b.0),
            ]
        }
        _ => Vec::new(),
    };
    let fit_label = format!(
        "fit over the second half: {:+.2} {}/h ({})",
        s.trend.slope_per_hour,
        s.unit,
        if s.trend.flat { "flat" } else { "NOT flat" }
    );
    let y_label = format!("{} ({})", s.title, s.unit);
    plot::lines_svg(
        &Chart {
            title: &s.title,
            x_label: "seconds since the long run started",
            y_label: &y_label,
        },
        &[
            Line {
                label: &s.unit,
                color: "#1f77b4",
                points: s.points.clone(),
                dashed: false,
            },
            Line {
                label: &fit_label,
                color: "#d62728",
                points: fit,
                dashed: true,
            },
        ],
    )
}

/// Writes `long-run.json`, `long-run.md` and `<series>.svg` into `dir`.
pub fn write(report: &LongRunReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("long-run.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("long-run.md"), report.markdown())?;
    for s in &report.series {
        std::fs::write(dir.join(format!("{}.svg", s.key)), series_svg(s))?;
    }
    Ok(())
}
