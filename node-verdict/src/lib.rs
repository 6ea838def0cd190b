//! The per-node leak verdict (issue #19): the agent judges its node's longhorn-manager
//! `healthy` / `degrading` / `leaking` from the manager monitor's samples, publishes the verdict
//! in one `coordination.k8s.io/v1` Lease per node in the guard's namespace, and the webhook reads
//! those Leases and holds back Backups of volumes on a `leaking` node.
//!
//! This crate is the contract between the two, plus the agent's pure judgement ([`tracker`]): the verdict and its evidence,
//! the thresholds (a section of the policy file both read), and how a verdict is written into and
//! read back from a Lease's name, labels and annotations. No I/O, no kube client: the agent and the
//! webhook do their own API calls with these values.
//!
//! The Lease (see [`lease`]):
//! - name [`lease::lease_name`]`(node)` (`longhorn-guard-node-<node>`, hashed when too long);
//! - label [`lease::LABEL_KEY`]`=`[`lease::LABEL_VALUE`] (what the webhook lists and watches);
//! - `spec.holderIdentity` = the agent (its pod name), `spec.leaseDurationSeconds` = how long the
//!   verdict stays valid without a renewal, `spec.renewTime` = the last renewal. A verdict whose
//!   `renewTime + leaseDurationSeconds` is past has expired: the webhook stops acting on it;
//! - annotations [`lease::ANNOTATION_NODE`] (the node, the truth; the name is only a lookup key),
//!   [`lease::ANNOTATION_VERDICT`] ([`Verdict::as_str`]) and [`lease::ANNOTATION_EVIDENCE`]
//!   ([`Evidence`] as JSON).

pub mod lease;
pub mod thresholds;
pub mod tracker;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use lease::{ContractError, Published};
pub use thresholds::{Level, Thresholds, ThresholdsError};
pub use tracker::{Judgement, Observation, ProcessKey, Tracker, Transition};

/// What the agent concluded about its node's longhorn-manager.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Nothing sustained: the normal state, and the state a busy manager stays in.
    #[default]
    Healthy,
    /// Growth sustained past the `degrading` level: the webhook warns.
    Degrading,
    /// Growth sustained past the `leaking` level: the webhook holds back the node's Backups.
    Leaking,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Healthy, Verdict::Degrading, Verdict::Leaking];

    /// The annotation and metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degrading => "degrading",
            Verdict::Leaking => "leaking",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ContractError::UnknownVerdict(s.to_owned()))
    }
}

/// What the verdict rests on: the manager monitor's figures at the last judgement, and the
/// slopes over the window. Published with the verdict so a refusal can name them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Evidence {
    /// Sockets longhorn-manager holds to instance-manager ports (the engine proxy among them).
    pub connections: u64,
    /// Their growth over the window, per minute.
    pub connections_per_minute: f64,
    /// longhorn-manager's resident memory, bytes.
    pub rss_bytes: u64,
    /// Its growth over the window, bytes per minute.
    pub rss_bytes_per_minute: f64,
    pub threads: u64,
    pub fds: u64,
    /// The window the slopes were measured over, seconds.
    pub window_seconds: u64,
    /// When the current verdict was entered, RFC 3339 (UTC).
    pub since: String,
    /// One line for people: why this verdict (which level, which figure, for how long).
    pub reason: String,
}

impl Evidence {
    /// The figures as one phrase for a refusal or an Event, e.g.
    /// `3120 connections to instance managers (+412/min), RSS 2.1 GiB (+35.0 MiB/min)`.
    pub fn summary(&self) -> String {
        format!(
            "{} connections to instance managers ({:+.0}/min), RSS {} ({:+.1} MiB/min)",
            self.connections,
            self.connections_per_minute,
            human_bytes(self.rss_bytes),
            self.rss_bytes_per_minute / MIB,
        )
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * MIB {
        format!("{:.1} GiB", b / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_names_round_trip_and_unknown_names_are_errors() {
        for v in Verdict::ALL {
            assert_eq!(v.as_str().parse::<Verdict>().ok(), Some(v));
        }
        assert!(matches!(
            "Leaking".parse::<Verdict>(),
            Err(ContractError::UnknownVerdict(s)) if s == "Leaking"
        ));
    }

    #[test]
    fn evidence_summary_names_connections_rss_and_slopes() {
        let e = Evidence {
            connections: 3120,
            connections_per_minute: 412.0,
            rss_bytes: 2 * 1024 * 1024 * 1024 + 100 * 1024 * 1024,
            rss_bytes_per_minute: 35.0 * MIB,
            ..Evidence::default()
        };
        assert_eq!(
            e.summary(),
            "3120 connections to instance managers (+412/min), RSS 2.1 GiB (+35.0 MiB/min)"
        );
    }
}
