//! The followed series: what each is read from in a sample, how far it may drift, its verdict
//! ([`trend`]) and its plot.

use super::SeriesReport;
use crate::long_run::sampler::Row;
use crate::long_run::trend::{self, DriftBound};
use crate::plot::{self, Chart, Line};

/// One followed series: file name stem of its plot, title, unit, how a sample gives it, its
/// drift bound per hour, and whether its verdict counts toward the run's (a series that is not
/// judged is still sampled, fitted and plotted).
#[derive(Clone, Copy)]
pub struct Followed {
    pub key: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub extract: fn(&Row) -> f64,
    pub bound: DriftBound,
    pub judged: bool,
}

const MIB: f64 = 1024.0 * 1024.0;

const RSS: DriftBound = DriftBound {
    relative: 0.05,
    absolute: 1.0,
};
/// File descriptors and threads come and go with connection pools (the API server's to the
/// webhook, the agents' to the engines) as load peaks: 4 over the horizon, or 5 %.
const POOLED: DriftBound = DriftBound {
    relative: 0.05,
    absolute: 4.0,
};
const COUNT: DriftBound = DriftBound {
    relative: 0.0,
    absolute: 2.0,
};

/// Every series the long run follows, in report order.
pub const FOLLOWED: [Followed; 12] = [
    // Memory is judged by its anonymous part (heap, stacks): what a leak grows. The total
    // also holds the executable's file-backed pages, which the kernel evicts when the
    // machine's page cache is under pressure and reloads as they are touched: the first hour
    // run saw every process's total fall at the same minutes while helpers built beside it.
    Followed {
        key: "webhook-anon",
        title: "Webhook anonymous resident memory",
        unit: "MiB",
        extract: |r| r.webhook.anon_bytes as f64 / MIB,
        bound: RSS,
        judged: true,
    },
    Followed {
        key: "agents-anon",
        title: "Agents' anonymous resident memory (summed)",
        unit: "MiB",
        extract: |r| r.agents.anon_bytes as f64 / MIB,
        bound: RSS,
        judged: true,
    },
    Followed {
        key: "webhook-rss",
        title: "Webhook resident memory (all, not judged)",
        unit: "MiB",
        extract: |r| r.webhook.rss_bytes as f64 / MIB,
        bound: RSS,
        judged: false,
    },
    Followed {
        key: "agents-rss",
        title: "Agents' resident memory (summed, all, not judged)",
        unit: "MiB",
        extract: |r| r.agents.rss_bytes as f64 / MIB,
        bound: RSS,
        judged: false,
    },
    Followed {
        key: "webhook-fds",
        title: "Webhook open file descriptors",
        unit: "fds",
        extract: |r| r.webhook.fds as f64,
        bound: POOLED,
        judged: true,
    },
    Followed {
        key: "agents-fds",
        title: "Agents' open file descriptors (summed)",
        unit: "fds",
        extract: |r| r.agents.fds as f64,
        bound: POOLED,
        judged: true,
    },
    Followed {
        key: "webhook-threads",
        title: "Webhook threads",
        unit: "threads",
        extract: |r| r.webhook.threads as f64,
        bound: POOLED,
        judged: true,
    },
    Followed {
        key: "agents-threads",
        title: "Agents' threads (summed)",
        unit: "threads",
        extract: |r| r.agents.threads as f64,
        bound: POOLED,
        judged: true,
    },
    Followed {
        key: "agent-channels",
        title: "Agents' engine-proxy channels open",
        unit: "channels",
        extract: |r| r.metric("longhorn_guard_agent_channels_active"),
        bound: COUNT,
        judged: true,
    },
    Followed {
        key: "agent-leases",
        title: "Agents' leases held",
        unit: "leases",
        extract: |r| r.metric("longhorn_guard_agent_leases_active"),
        bound: COUNT,
        judged: true,
    },
    Followed {
        key: "webhook-index",
        title: "Webhook index size (objects, all kinds)",
        unit: "objects",
        extract: |r| r.metric("longhorn_guard_webhook_index_objects"),
        bound: DriftBound {
            relative: 0.05,
            absolute: 10.0,
        },
        judged: true,
    },
    Followed {
        key: "webhook-watch-restarts",
        title: "Webhook watch restarts (all kinds, cumulative)",
        unit: "restarts",
        extract: |r| r.metric("longhorn_guard_webhook_watch_restarts_total"),
        bound: DriftBound {
            relative: 0.0,
            absolute: 1.0,
        },
        judged: true,
    },
];

impl Followed {
    /// This series over `rows`, judged over the second half of a run of `total_seconds`.
    pub fn judge(&self, rows: &[Row], total_seconds: f64) -> SeriesReport {
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.t, (self.extract)(r))).collect();
        let judged = trend::second_half(&points);
        let span = match (judged.first(), judged.last()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0.0,
        };
        let trend = trend::judge(
            &points,
            self.bound,
            trend::horizon_hours(total_seconds, span),
        );
        SeriesReport {
            key: self.key.into(),
            title: self.title.into(),
            unit: self.unit.into(),
            points,
            bound: self.bound,
            trend,
            judged: self.judged,
        }
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
