//! `long-run.md`: the verdict, then one section per part of the report.

use std::fmt::Write as _;

use super::LongRunReport;

impl LongRunReport {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.md_summary(&mut md);
        self.md_series(&mut md);
        self.md_leaks(&mut md);
        self.md_denials(&mut md);
        self.md_waves(&mut md);
        if !self.sample_errors.is_empty() {
            let _ = writeln!(md, "\n## Sample errors\n");
            for e in self.sample_errors.iter().take(10) {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }

    fn md_summary(&self, md: &mut String) {
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
    }

    fn md_series(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Series (judged over the second half)\n\nFlat = the least-squares slope's 95 % interval contains 0, \
             or the drift it implies over an hour (over the judged half when the run is shorter than an hour) is within \
             the bound: the larger of a share of the level and an absolute amount (resident memory 5 % or 1 MiB; fds and \
             threads 5 % or 4; channels and leases 2; index 5 % or 10 objects; watch restarts 1). Memory is judged by its \
             anonymous part (heap, stacks: what a leak grows); the total, which also holds the executable's file-backed \
             pages the kernel evicts under page-cache pressure, is fitted and plotted but not judged.\n"
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
                match (t.flat, s.judged) {
                    (true, true) => "yes",
                    (false, true) => "**no**",
                    (true, false) => "yes (not judged)",
                    (false, false) => "no (not judged)",
                },
                t.samples,
                s.key,
                s.key
            );
        }
    }

    fn md_leaks(&self, md: &mut String) {
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
    }

    fn md_denials(&self, md: &mut String) {
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
    }

    fn md_waves(&self, md: &mut String) {
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
    }
}
