//! Judges what the run observed: each followed series, the agents' leak gauges, every denial
//! against the simulated cluster's truth, and the goals the run missed.

use std::collections::HashMap;
use std::time::Duration;

use super::series::FOLLOWED;
use super::{LeakFigures, LongRunReport, SeriesReport};
use crate::DemoOptions;
use crate::long_run::sampler::Row;
use crate::long_run::truth::{Caps, Denial, FalseDenial, Truth};
use crate::long_run::{LongRunOptions, Observed, Timetable, denial_of};
use crate::storm::Outcome;

/// How late the watches may be: a throttle denial counts Backups in flight within this of it.
pub const TRUTH_SLACK: Duration = Duration::from_secs(2);

/// The CREATEs' denials, each checked against the truth.
struct DenialCheck {
    denials: u64,
    false_denials: Vec<FalseDenial>,
    create_errors: u64,
}

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
    let series: Vec<SeriesReport> = FOLLOWED.iter().map(|f| f.judge(rows, total)).collect();
    let leaks = leak_figures(rows);
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
    let checked = check_denials(&observed, &truth);
    let failures = failures(&observed, &series, &leaks, &checked.false_denials);
    LongRunReport {
        minutes: total / 60.0,
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
        denials: checked.denials,
        false_denials: checked.false_denials,
        create_errors: checked.create_errors,
        engine_checks: observed.engine_checks,
        engine_check_errors: observed.engine_check_errors,
        controller_leaked_connections: observed.controller_leaked_connections,
        sample_errors: observed.sample_errors,
        failures,
    }
}

/// The agents' leak gauges: the highest in any sample, the detection counters at the end.
fn leak_figures(rows: &[Row]) -> LeakFigures {
    let max = |name: &str| rows.iter().map(|r| r.metric(name)).fold(0.0, f64::max);
    let last = |name: &str| rows.last().map_or(0.0, |r| r.metric(name));
    LeakFigures {
        max_leaked_leases: max("longhorn_guard_agent_leaked_leases"),
        max_leaked_channels: max("longhorn_guard_agent_leaked_channels"),
        leaked_leases_detected_end: last("longhorn_guard_agent_leaked_leases_detected_total"),
        leaked_channels_detected_end: last("longhorn_guard_agent_leaked_channels_detected_total"),
    }
}

/// Every denial of every wave, checked against `truth`; failed CREATEs counted.
fn check_denials(observed: &Observed, truth: &Truth<'_>) -> DenialCheck {
    let mut checked = DenialCheck {
        denials: 0,
        false_denials: Vec::new(),
        create_errors: 0,
    };
    for (_, plan, attempts) in &observed.waves {
        for a in attempts {
            if matches!(a.outcome, Outcome::Failed(_)) {
                checked.create_errors += 1;
            }
            let (Some(reason), Some(planned)) = (denial_of(a), plan.get(a.index)) else {
                continue;
            };
            checked.denials += 1;
            let d = Denial {
                reason,
                backup: &planned.name,
                volume: &planned.volume,
                fate: planned.fate,
                sent: a.sent,
                answered: a.sent + a.latency,
            };
            if let Err(f) = truth.check(&d) {
                checked.false_denials.push(f);
            }
        }
    }
    checked
}

/// The goals the run missed, in words (empty: it passed).
fn failures(
    observed: &Observed,
    series: &[SeriesReport],
    leaks: &LeakFigures,
    false_denials: &[FalseDenial],
) -> Vec<String> {
    let mut failures = Vec::new();
    if observed.rows.is_empty() {
        failures.push("no sample was taken".to_string());
    }
    for s in series.iter().filter(|s| s.judged && !s.trend.flat) {
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
    if let Some(first) = observed.sample_errors.first() {
        failures.push(format!(
            "{} samples failed, first: {first}",
            observed.sample_errors.len()
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::long_run::report::OutageFigures;
    use crate::long_run::trend::{DriftBound, Trend};

    fn series(key: &str, flat: bool, judged: bool) -> SeriesReport {
        SeriesReport {
            key: key.into(),
            title: key.into(),
            unit: "MiB".into(),
            points: Vec::new(),
            bound: DriftBound {
                relative: 0.05,
                absolute: 1.0,
            },
            trend: Trend {
                samples: 10,
                mean: 1.0,
                slope_per_hour: if flat { 0.0 } else { -20.0 },
                ci95_per_hour: 1.0,
                horizon_hours: 1.0,
                drift: if flat { 0.0 } else { -20.0 },
                bound: 1.0,
                flat,
                why: if flat { "flat" } else { "falls" }.into(),
            },
            judged,
        }
    }

    #[test]
    fn only_judged_series_fail_the_run() {
        let observed = Observed {
            rows: vec![Row::default()],
            sample_errors: Vec::new(),
            waves: Vec::new(),
            spans: Vec::new(),
            outage: OutageFigures {
                at_seconds: 10.0,
                seconds: 5.0,
                connections_refused: 0,
            },
            engine_checks: 0,
            engine_check_errors: 0,
            controller_leaked_connections: 0,
        };
        let leaks = LeakFigures::default();
        let all = [
            series("webhook-anon", true, true),
            series("webhook-rss", false, false),
        ];
        assert!(failures(&observed, &all, &leaks, &[]).is_empty());
        let growing = [
            series("webhook-anon", false, true),
            series("webhook-rss", false, false),
        ];
        let f = failures(&observed, &growing, &leaks, &[]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("webhook-anon is not flat"), "{f:?}");
    }

    #[test]
    fn memory_is_judged_by_its_anonymous_part() {
        let judged: Vec<&str> = FOLLOWED
            .iter()
            .filter(|f| f.judged)
            .map(|f| f.key)
            .collect();
        assert!(judged.contains(&"webhook-anon") && judged.contains(&"agents-anon"));
        assert!(!judged.contains(&"webhook-rss") && !judged.contains(&"agents-rss"));
        assert_eq!(judged.len(), FOLLOWED.len() - 2);
    }
}
