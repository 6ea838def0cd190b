//! The demo's report: figures of each run side by side, as JSON and Markdown, and the
//! percentile arithmetic behind the admission latencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// In-flight (non-terminal) Backups at `t` seconds after the storm started.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub in_flight: u64,
}

/// What the agents' `/metrics` said at the end of a run (summed over the nodes' agents).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentFigures {
    pub agents: u64,
    /// `GetSnapshot` calls the demo's engine probe sent through the agents.
    pub engine_checks: u64,
    pub engine_check_errors: u64,
    pub channels_created: u64,
    pub channels_active: u64,
    pub leases_acquired: u64,
    pub leases_active: u64,
    /// Leases / channels the agents' leak sweep found leaked at its last pass (the gauges).
    pub leaked_leases: u64,
    pub leaked_channels: u64,
    /// Distinct leases / channels the sweep found leaked during the whole run.
    pub leaked_leases_detected: u64,
    pub leaked_channels_detected: u64,
    /// Sweeps the agents made (each sweeps its live leases and channels).
    pub leak_sweeps: u64,
}

/// The figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub namespace: String,
    pub guard: bool,
    /// Backup CREATEs sent.
    pub attempted: u64,
    /// Planned Backups not sent because the run's time bound was reached.
    pub not_sent: u64,
    pub admitted: u64,
    pub denied: u64,
    /// Denials by the webhook's reason (`snapshot_missing`, `throttled:volume`, ...).
    pub denied_by_reason: BTreeMap<String, u64>,
    /// Denials by the throttle (every `throttled:*` reason).
    pub throttled: u64,
    /// CREATEs that failed for another reason than a denial (timeouts, API errors).
    pub errors: u64,
    pub peak_in_flight: u64,
    /// Backups the API server holds in this namespace at the end, by `status.state`
    /// (`""` shown as `New`).
    pub backups_by_state: BTreeMap<String, u64>,
    pub in_flight_end: u64,
    /// Backups `Pending` at the end: their snapshot is gone, v1.7.2 retries them forever.
    pub stuck_pending_end: u64,
    pub completed_end: u64,
    /// Snapshots deleted right after their Backup was admitted (the incident's mid-storm loss).
    pub snapshots_lost_mid_storm: u64,
    /// gRPC connections the simulated v1.7.2 controller opened and never closed.
    pub leaked_manager_connections: u64,
    /// Connections open on the fake engine proxies at the end: the leaks, plus the connections
    /// of Backups waiting for or holding a backup slot, plus the agents' channels.
    pub engine_proxy_open_connections: u64,
    /// The port the fake instance managers served their engine proxy on (8501 unless taken;
    /// the agents were told it).
    #[serde(default)]
    pub engine_proxy_port: u16,
    /// The leak reached the demo's safety cap and the run was cut short.
    pub leak_cap_hit: bool,
    pub reconciles: u64,
    pub admission_p50_ms: f64,
    pub admission_p99_ms: f64,
    pub storm_seconds: f64,
    pub run_seconds: f64,
    pub agent: Option<AgentFigures>,
    pub timeline: Vec<Sample>,
}

/// The settings a demo ran with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub backups: usize,
    pub volumes: usize,
    pub nodes: usize,
    pub lost_share: f64,
    pub mid_storm_loss_share: f64,
    pub duration_seconds: f64,
    pub resync_seconds: f64,
    pub concurrency: usize,
    pub leak_cap: usize,
    pub cluster: String,
}

/// The whole demo report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub settings: Settings,
    pub runs: Vec<RunReport>,
    pub total_seconds: f64,
}

/// Nearest-rank percentile (`p` in 0..=100) of `values`, which need not be sorted. `None`
/// for an empty slice.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

/// Classifies a denial by the reason the webhook put in brackets in its message:
/// `[throttled: volume]` → `throttled:volume`, `[snapshot_missing]` → `snapshot_missing`.
/// Denials without a recognisable reason are `other:<code>`.
pub fn denial_reason(code: u16, message: &str) -> String {
    if let Some(start) = message.find("[throttled: ") {
        let rest = &message[start + "[throttled: ".len()..];
        if let Some(end) = rest.find(']') {
            return format!("throttled:{}", rest[..end].trim());
        }
    }
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            break;
        };
        let inner = &after[..close];
        if !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            return inner.to_string();
        }
        rest = &after[close + 1..];
    }
    format!("other:{code}")
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "—".to_string(), |v| v.to_string())
}

impl Report {
    /// The side-by-side Markdown report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# longhorn-guard demo: the v1.7.2 Backup storm, twice\n"
        );
        out.push_str(&settings_paragraph(&self.settings));
        let mut header = "| figure |".to_string();
        let mut rule = "| --- |".to_string();
        for r in &self.runs {
            let _ = write!(header, " {} |", r.label);
            rule.push_str(" ---: |");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        let mut row = |name: &str, f: &dyn Fn(&RunReport) -> String| {
            let mut line = format!("| {name} |");
            for r in &self.runs {
                let _ = write!(line, " {} |", f(r));
            }
            let _ = writeln!(out, "{line}");
        };
        row("namespace", &|r| format!("`{}`", r.namespace));
        row("Backup CREATEs sent", &|r| r.attempted.to_string());
        row("admitted", &|r| r.admitted.to_string());
        row("denied", &|r| r.denied.to_string());
        denial_reason_rows(&self.runs, &mut row);
        row("of which throttled", &|r| r.throttled.to_string());
        row("CREATE errors", &|r| r.errors.to_string());
        row("peak in-flight Backups", &|r| r.peak_in_flight.to_string());
        row("in flight at the end", &|r| r.in_flight_end.to_string());
        row("**stuck Pending at the end**", &|r| {
            format!("**{}**", r.stuck_pending_end)
        });
        row("Completed at the end", &|r| r.completed_end.to_string());
        row("snapshots lost mid-storm", &|r| {
            r.snapshots_lost_mid_storm.to_string()
        });
        row("**leaked manager gRPC connections**", &|r| {
            if r.leak_cap_hit {
                format!(
                    "**≥ {} (cap hit, run cut short)**",
                    r.leaked_manager_connections
                )
            } else {
                format!("**{}**", r.leaked_manager_connections)
            }
        });
        row("connections open on engine proxies", &|r| {
            r.engine_proxy_open_connections.to_string()
        });
        row("admission latency p50 / p99 (ms)", &|r| {
            format!("{:.1} / {:.1}", r.admission_p50_ms, r.admission_p99_ms)
        });
        agent_rows(&mut row);
        row("storm / run seconds", &|r| {
            format!("{:.1} / {:.1}", r.storm_seconds, r.run_seconds)
        });
        let _ = writeln!(
            out,
            "\nIn-flight Backups over time: `in-flight.svg`. Figures from the API server (states at \
             the end), the storm client (admission, latency), the fake engine proxies (connections) \
             and the agents' `/metrics`. Total {:.0} s.",
            self.total_seconds
        );
        out
    }
}

/// The run's settings in one paragraph.
fn settings_paragraph(s: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} Backups over {} volumes on {} nodes; {:.0} % of their snapshots lost in the outage, \
         {:.0} % more lost right after admission; each run bounded to {:.0} s; the simulated \
         Longhorn v1.7.2 backup controller re-reconciles every stuck Backup every {:.0} s and \
         leaks one gRPC connection each time (safety cap {}). Cluster: {}.\n",
        s.backups,
        s.volumes,
        s.nodes,
        s.lost_share * 100.0,
        s.mid_storm_loss_share * 100.0,
        s.duration_seconds,
        s.resync_seconds,
        s.leak_cap,
        s.cluster
    );
    out
}

/// One row per reason any run denied for, with each run's count.
fn denial_reason_rows(
    runs: &[RunReport],
    row: &mut impl FnMut(&str, &dyn Fn(&RunReport) -> String),
) {
    let mut reasons: Vec<&String> = runs
        .iter()
        .flat_map(|r| r.denied_by_reason.keys())
        .collect();
    reasons.sort();
    reasons.dedup();
    for reason in reasons {
        row(&format!("&nbsp;&nbsp;denied `{reason}`"), &|r| {
            r.denied_by_reason
                .get(reason)
                .copied()
                .unwrap_or(0)
                .to_string()
        });
    }
}

/// The rows of the agents' figures (`—` for a run without the guard).
fn agent_rows(row: &mut impl FnMut(&str, &dyn Fn(&RunReport) -> String)) {
    row("agent engine checks (errors)", &|r| {
        cell(
            r.agent
                .as_ref()
                .map(|a| format!("{} ({})", a.engine_checks, a.engine_check_errors)),
        )
    });
    row("agent channels created / open", &|r| {
        cell(
            r.agent
                .as_ref()
                .map(|a| format!("{} / {}", a.channels_created, a.channels_active)),
        )
    });
    row("agent leases acquired / active", &|r| {
        cell(
            r.agent
                .as_ref()
                .map(|a| format!("{} / {}", a.leases_acquired, a.leases_active)),
        )
    });
    row(
        "agent leases / channels found leaked by the leak sweep (run; at the end)",
        &|r| {
            cell(r.agent.as_ref().map(|a| {
                format!(
                    "{} / {} over {} sweeps; {} / {}",
                    a.leaked_leases_detected,
                    a.leaked_channels_detected,
                    a.leak_sweeps,
                    a.leaked_leases,
                    a.leaked_channels
                )
            }))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
    }

    #[test]
    fn denial_reasons_come_from_the_webhook_messages() {
        assert_eq!(
            denial_reason(
                404,
                "longhorn-guard denied Backup \"b\": Snapshot \"s\" of volume \"v\" does not exist [snapshot_missing]. Create a new snapshot"
            ),
            "snapshot_missing"
        );
        assert_eq!(
            denial_reason(
                429,
                "longhorn-guard throttled Backup \"b\" in namespace \"n\" (snapshot \"s\", volume \"v\", node \"n1\") [throttled: volume]: volume \"v\" has 1 Backup(s) in flight"
            ),
            "throttled:volume"
        );
        assert_eq!(
            denial_reason(404, "x [Not A Reason] then [snapshot_lost]."),
            "snapshot_lost"
        );
        assert_eq!(denial_reason(500, "internal error"), "other:500");
    }

    fn run(label: &str, agent: Option<AgentFigures>) -> RunReport {
        RunReport {
            label: label.into(),
            namespace: format!("ns-{label}"),
            attempted: 10,
            admitted: 7,
            denied: 3,
            denied_by_reason: BTreeMap::from([("snapshot_missing".into(), 3)]),
            leaked_manager_connections: 42,
            admission_p50_ms: 1.25,
            admission_p99_ms: 9.5,
            agent,
            ..RunReport::default()
        }
    }

    #[test]
    fn markdown_has_one_column_per_run_and_every_reason() {
        let report = Report {
            runs: vec![
                run("A", None),
                run(
                    "B",
                    Some(AgentFigures {
                        leases_acquired: 5,
                        ..AgentFigures::default()
                    }),
                ),
            ],
            ..Report::default()
        };
        let md = report.markdown();
        assert!(md.contains("| figure | A | B |"), "{md}");
        assert!(md.contains("| admitted | 7 | 7 |"), "{md}");
        assert!(md.contains("denied `snapshot_missing` | 3 | 3 |"), "{md}");
        assert!(
            md.contains("| 1.2 / 9.5 |") || md.contains("| 1.3 / 9.5 |"),
            "{md}"
        );
        assert!(
            md.contains("| agent leases acquired / active | — | 5 / 0 |"),
            "{md}"
        );
        let json = serde_json::to_string(&report).expect("serializes");
        let back: Report = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, report);
    }
}
