//! The demo report as Markdown: one column per run, then the slow-leak run's section.

use std::fmt::Write as _;

use super::{Report, RunReport, Settings, SlowLeakRun};

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
        if !self.slow_leak.is_empty() {
            out.push_str(&slow_leak_section(&self.settings, &self.slow_leak));
        }
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

fn seconds(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_string(), |v| format!("{v:.1} s"))
}

/// The third run's table: one column per slow-leak run.
fn slow_leak_section(s: &Settings, runs: &[SlowLeakRun]) -> String {
    let mut out = String::new();
    let node = runs.first().map_or("", |r| r.leaky_node.as_str());
    let _ = writeln!(
        out,
        "\n## Run C: a slow leak the static caps cannot see\n\n\
         {:.0} Backups a second for {:.0} s, every snapshot present: the throttle admits them all. \
         {node}'s simulated longhorn-manager (a process of its own) leaks one connection to its \
         engine proxy and 1 MiB on every reconcile; each node's agent judges its manager from \
         `/proc` and publishes the verdict in a Lease; the webhook reads the Leases. Once with \
         `nodeProtection.mode: off`, once with `enforce`. Connections and RSS over time: \
         `slow-leak.svg`.\n",
        s.slow_leak_rate, s.slow_leak_seconds
    );
    let mut header = "| figure |".to_string();
    let mut rule = "| --- |".to_string();
    for r in runs {
        let _ = write!(header, " {} |", r.label);
        rule.push_str(" ---: |");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let mut row = |name: &str, f: &dyn Fn(&SlowLeakRun) -> String| {
        let mut line = format!("| {name} |");
        for r in runs {
            let _ = write!(line, " {} |", f(r));
        }
        let _ = writeln!(out, "{line}");
    };
    row("namespace", &|r| format!("`{}`", r.namespace));
    row("`nodeProtection.mode`", &|r| format!("`{}`", r.mode));
    row("Backup CREATEs sent / admitted", &|r| {
        format!("{} / {}", r.sent, r.admitted)
    });
    row("denied (by reason)", &|r| {
        let reasons: Vec<String> = r
            .denied_by_reason
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect();
        if reasons.is_empty() {
            "0".into()
        } else {
            reasons.join(", ")
        }
    });
    row(&format!("{node}'s Backups admitted / denied"), &|r| {
        format!("{} / {}", r.leaky_node_admitted, r.leaky_node_denied)
    });
    row("leak start → webhook sees `leaking`", &|r| {
        seconds(r.time_to_protection_s)
    });
    row("seconds the webhook saw it `leaking`", &|r| {
        format!(
            "{:.1}",
            r.leaking_spans.iter().map(|(a, b)| b - a).sum::<f64>()
        )
    });
    row(
        &format!("**{node}'s Backups admitted while it was `leaking`**"),
        &|r| format!("**{}**", r.leaky_node_admitted_while_leaking),
    );
    row("manager connections at the end (peak)", &|r| {
        format!(
            "{} ({})",
            r.samples.last().map_or(0, |s| s.connections),
            r.peak_connections
        )
    });
    row("manager RSS at the end (peak), MiB", &|r| {
        format!(
            "{:.0} ({:.0})",
            r.samples.last().map_or(0.0, |s| s.rss_mib),
            r.peak_rss_mib
        )
    });
    row("connections leaked by the controller", &|r| {
        r.leaked_by_controller.to_string()
    });
    out
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
    use std::collections::BTreeMap;

    use super::super::AgentFigures;
    use super::*;

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
