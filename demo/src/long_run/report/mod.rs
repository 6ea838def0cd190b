//! The long run's report: its figures (here), the verdicts ([`verdict`]: each series judged by
//! [`super::trend`], the leak gauges, every denial checked by [`super::truth`]), written as
//! `long-run.json`, `long-run.md` ([`markdown`]) and one SVG per series ([`series`]).

mod markdown;
mod series;
mod verdict;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::trend::{DriftBound, Trend};
use super::truth::{Caps, FalseDenial};
use crate::storm::{Attempt, Outcome};

pub use series::{FOLLOWED, Followed, series_svg};
pub use verdict::{TRUTH_SLACK, judge};

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
    /// Whether its verdict counts toward the run's (reports before this field: all did).
    #[serde(default = "judged_by_default")]
    pub judged: bool,
}

fn judged_by_default() -> bool {
    true
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
