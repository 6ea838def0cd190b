//! When a node's longhorn-manager is `degrading` or `leaking`: the `nodeProtection.thresholds`
//! section of the policy file. The webhook validates the whole policy (so a bad threshold is
//! refused at load, like any policy error); the agent reads only this section from the same
//! file with [`Thresholds::from_policy_yaml`].
//!
//! The defaults and their reasoning (derived from the v1.7.2 incident) are documented on
//! [`Thresholds::default`].

use serde::{Deserialize, Serialize};

/// One verdict's entry condition. Both a level and a sustained growth must hold: a manager that
/// is big but flat, or growing from a small base, is not leaking. A level given in the policy
/// names all four figures (a missing one is a parse error, not a silent default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Level {
    /// Sockets to instance-manager ports at least this many…
    pub min_connections: u64,
    /// …and growing at least this fast over the window (per minute)…
    pub connections_per_minute: f64,
    /// …or RSS at least this many MiB and growing at least `rssMibPerMinute`.
    pub min_rss_mib: u64,
    pub rss_mib_per_minute: f64,
}

/// The verdict's thresholds and hysteresis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    /// Slopes are measured over this many seconds of samples.
    pub window_seconds: u64,
    /// Connections and RSS are judged by their floor: the lowest value over this many seconds.
    /// Leaked connections raise the floor; a busy manager's short-lived ones only its peaks.
    /// 0 judges the raw samples. At most half of `windowSeconds` is used (see
    /// [`Thresholds::effective_floor_seconds`]), so a short test window needs no floor of its own.
    pub floor_seconds: u64,
    /// A level must hold this long before the verdict enters it.
    pub enter_after_seconds: u64,
    /// The condition must have been clear this long before the verdict steps down.
    pub recover_after_seconds: u64,
    pub degrading: Level,
    pub leaking: Level,
}

impl Default for Thresholds {
    /// Derived from the v1.7.2 leak (reference §4.2, docs/node-protection.md has the figures):
    ///
    /// - **The leak's unit.** Every reconcile of a stuck `Pending` Backup (about every 30 s)
    ///   leaks one gRPC client to the local instance manager's engine proxy: **2 connections per
    ///   minute per stuck Backup**, never closed. Each leaked client held ~62 KiB in the
    ///   agent's leak benchmark (BENCHMARKS.md: 5,000 leaked clients, 5.5 → 316 MiB), a lower
    ///   bound for Go's ClientConn with its goroutines; the incident's manager passed 7 GB and
    ///   was OOM-killed (~118,000 leaked clients at that size).
    /// - **Connections are the primary signal** and RSS the backstop for a leak of something
    ///   else: at 62 KiB a connection, a leak is visible in connections long before it is in
    ///   RSS under the Go collector's noise.
    /// - **`degrading` = one stuck Backup or more**: a floor of ≥ 50 connections growing
    ///   ≥ 1.5/min (one stuck Backup leaks 2/min; a healthy manager holds a few long-lived
    ///   streams per instance manager and its floor does not grow). Or RSS ≥ 1 GiB growing
    ///   ≥ 5 MiB/min (7 GB within a day).
    /// - **`leaking` = five stuck Backups or more**: a floor of ≥ 150 connections growing
    ///   ≥ 10/min, half the node cap's rate (10 stuck Backups, the throttle's per-node cap,
    ///   leak 20/min): a leak the static caps allow is caught, with margin for the slope's
    ///   estimate. Or RSS ≥ 2 GiB growing ≥ 20 MiB/min (7 GB within ~4 hours).
    /// - **Timing.** `floorSeconds` 60 = two reconcile periods (every stuck Backup leaks at
    ///   least once in it, and short-lived connections close within it); `windowSeconds` 300 =
    ///   ten reconcile periods, 20 samples at the monitor's 15 s; `enterAfterSeconds` 120 = four
    ///   reconciles in a row must show it; `recoverAfterSeconds` 300 = a full window clear.
    ///
    /// Result (unit test `tracker::tests::defaults_catch_the_incident_long_before_oom`): the
    /// node cap's 10 stuck Backups make a node `leaking` 9.5 minutes after the leak starts, with
    /// 200 clients = 12 MiB leaked (0.17 % of the OOM point, ~4 days away at that rate); the
    /// incident's ~550 stuck Backups per node (4,422 over 8 nodes) in 3 minutes with 3,850
    /// clients = 233 MiB leaked (3.3 % of the OOM point, ~100 minutes away). One stuck Backup
    /// makes it `degrading`, never `leaking`.
    fn default() -> Self {
        Thresholds {
            window_seconds: 300,
            floor_seconds: 60,
            enter_after_seconds: 120,
            recover_after_seconds: 300,
            degrading: Level {
                min_connections: 50,
                connections_per_minute: 1.5,
                min_rss_mib: 1024,
                rss_mib_per_minute: 5.0,
            },
            leaking: Level {
                min_connections: 150,
                connections_per_minute: 10.0,
                min_rss_mib: 2048,
                rss_mib_per_minute: 20.0,
            },
        }
    }
}

/// Thresholds that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdsError {
    #[error("nodeProtection.thresholds.{0} must be greater than 0")]
    Zero(&'static str),

    #[error(
        "nodeProtection.thresholds.leaking must be at least as strict as degrading ({0} is lower)"
    )]
    LeakingBelowDegrading(&'static str),
    #[error("nodeProtection.thresholds.{0} must be a finite number of 0 or more")]
    NotFinite(String),
    #[error("nodeProtection.thresholds in the policy file: {0}")]
    Parse(String),
}

impl Thresholds {
    /// `floorSeconds`, capped at half the window.
    pub fn effective_floor_seconds(&self) -> u64 {
        self.floor_seconds.min(self.window_seconds / 2)
    }

    pub fn validate(&self) -> Result<(), ThresholdsError> {
        for (name, v) in [
            ("windowSeconds", self.window_seconds),
            ("recoverAfterSeconds", self.recover_after_seconds),
        ] {
            if v == 0 {
                return Err(ThresholdsError::Zero(name));
            }
        }
        // A NaN rate compares false with every slope, so its level would never fire (and
        // passes the ordering checks below); an infinite one never fires either.
        for (level, l) in [("degrading", &self.degrading), ("leaking", &self.leaking)] {
            for (name, v) in [
                ("connectionsPerMinute", l.connections_per_minute),
                ("rssMibPerMinute", l.rss_mib_per_minute),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(ThresholdsError::NotFinite(format!("{level}.{name} ({v})")));
                }
            }
        }
        let (d, l) = (&self.degrading, &self.leaking);
        if l.min_connections < d.min_connections {
            return Err(ThresholdsError::LeakingBelowDegrading("minConnections"));
        }
        if l.connections_per_minute < d.connections_per_minute {
            return Err(ThresholdsError::LeakingBelowDegrading(
                "connectionsPerMinute",
            ));
        }
        if l.min_rss_mib < d.min_rss_mib {
            return Err(ThresholdsError::LeakingBelowDegrading("minRssMib"));
        }
        if l.rss_mib_per_minute < d.rss_mib_per_minute {
            return Err(ThresholdsError::LeakingBelowDegrading("rssMibPerMinute"));
        }
        Ok(())
    }

    /// Reads `nodeProtection.thresholds` from the whole policy file (every other section is
    /// ignored here; the webhook checks them). A file without the section gives the defaults.
    pub fn from_policy_yaml(text: &str) -> Result<Self, ThresholdsError> {
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct File {
            node_protection: Section,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Section {
            thresholds: Thresholds,
        }
        let file: Option<File> =
            serde_yaml::from_str(text).map_err(|e| ThresholdsError::Parse(e.to_string()))?;
        let thresholds = file.unwrap_or_default().node_protection.thresholds;
        thresholds.validate()?;
        Ok(thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_file_gives_them() {
        assert_eq!(Thresholds::default().validate(), Ok(()));
        assert_eq!(Thresholds::from_policy_yaml(""), Ok(Thresholds::default()));
        assert_eq!(
            Thresholds::from_policy_yaml("mode: enforce\nthrottle: {}\n"),
            Ok(Thresholds::default())
        );
    }

    /// The `node_verdict` fuzz target's seed-nan-rate: `.nan` passed every check (NaN compares
    /// false), and a level with it could never fire.
    #[test]
    fn nan_infinite_and_negative_rates_are_refused() {
        for (rate, shown) in [(".nan", "NaN"), (".inf", "inf"), ("-1", "-1")] {
            let text = format!(
                "nodeProtection:\n  thresholds:\n    leaking: {{minConnections: 500, connectionsPerMinute: {rate}, minRssMib: 1024, rssMibPerMinute: 20}}\n"
            );
            assert_eq!(
                Thresholds::from_policy_yaml(&text),
                Err(ThresholdsError::NotFinite(format!(
                    "leaking.connectionsPerMinute ({shown})"
                ))),
                "{rate}"
            );
        }
    }

    #[test]
    fn the_section_is_read_and_checked() {
        let t = Thresholds::from_policy_yaml(
            "nodeProtection:\n  mode: warn\n  thresholds:\n    windowSeconds: 60\n",
        );
        assert_eq!(t.map(|t| t.window_seconds), Ok(60));
        assert_eq!(
            Thresholds::from_policy_yaml(
                "nodeProtection:\n  thresholds:\n    leaking: {minConnections: 1, connectionsPerMinute: 50, minRssMib: 1024, rssMibPerMinute: 20}\n"
            ),
            Err(ThresholdsError::LeakingBelowDegrading("minConnections"))
        );
        assert!(matches!(
            Thresholds::from_policy_yaml("nodeProtection:\n  thresholds:\n    windowSecs: 60\n"),
            Err(ThresholdsError::Parse(m)) if m.contains("windowSecs")
        ));
    }
}
