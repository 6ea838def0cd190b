//! Every denial of the long run checked against the simulated cluster's truth: a snapshot
//! denial is true only if the Backup's snapshot really was gone when it was created (lost in
//! the outage before its wave); a throttle denial is true only if the cap of its scope
//! (volume, node, cluster) really was reached: at least `cap` other Backups of that scope were
//! in flight, as the demo's own watch saw them, within `slack` of the CREATE. The slack covers
//! the watch's lag (the webhook's index and the demo's watch each see events a little late).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::inflight::InFlightSpan;
use crate::storm::SnapshotFate;

/// The in-flight caps of the policy the long run runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub volume: u32,
    pub node: u32,
    pub cluster: u32,
}

/// One denial to check.
pub struct Denial<'a> {
    /// `snapshot_missing`, `throttled:volume`, ... (see [`crate::report::denial_reason`]).
    pub reason: &'a str,
    pub backup: &'a str,
    pub volume: &'a str,
    pub fate: SnapshotFate,
    /// When the CREATE was sent and when it was answered.
    pub sent: Instant,
    pub answered: Instant,
}

/// A denial the cluster's truth does not support.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FalseDenial {
    pub backup: String,
    pub reason: String,
    pub why: String,
}

/// What the cluster looked like: every Backup's in-flight span and the node of each volume.
pub struct Truth<'a> {
    pub spans: &'a [InFlightSpan],
    pub volume_nodes: &'a HashMap<String, String>,
    pub caps: Caps,
    pub slack: Duration,
}

impl Truth<'_> {
    /// `Ok` when the denial is supported by the truth, else why not.
    pub fn check(&self, d: &Denial<'_>) -> Result<(), FalseDenial> {
        let fail = |why: String| FalseDenial {
            backup: d.backup.to_string(),
            reason: d.reason.to_string(),
            why,
        };
        let Some(scope) = d.reason.strip_prefix("throttled:") else {
            // Every other denial says the snapshot cannot be backed up.
            return if d.fate == SnapshotFate::LostBeforeStorm {
                Ok(())
            } else {
                Err(fail(format!(
                    "the snapshot of volume {} existed and was ready when Backup {} was created ({:?})",
                    d.volume, d.backup, d.fate
                )))
            };
        };
        let node = self.volume_nodes.get(d.volume);
        let cap = match scope {
            "volume" => self.caps.volume,
            "node" => self.caps.node,
            "cluster" => self.caps.cluster,
            other => {
                return Err(fail(format!(
                    "throttle scope {other} is off in the long run's policy"
                )));
            }
        };
        let in_scope = |s: &InFlightSpan| match scope {
            "volume" => s.volume == d.volume,
            "node" => node.is_some() && self.volume_nodes.get(&s.volume) == node,
            _ => true,
        };
        let from = d.sent.checked_sub(self.slack).unwrap_or(d.sent);
        let to = d.answered + self.slack;
        let in_flight = self
            .spans
            .iter()
            .filter(|s| in_scope(s) && s.from <= to && s.until.is_none_or(|u| u >= from))
            .count();
        if cap > 0 && in_flight >= cap as usize {
            Ok(())
        } else {
            Err(fail(format!(
                "{in_flight} Backups in flight in scope {scope} (volume {}, node {}) within {:?} of the CREATE; cap {cap}",
                d.volume,
                node.map_or("?", String::as_str),
                self.slack
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Instant, HashMap<String, String>) {
        let nodes = [
            ("pvc-0", "node-1"),
            ("pvc-1", "node-1"),
            ("pvc-2", "node-2"),
        ]
        .into_iter()
        .map(|(v, n)| (v.to_string(), n.to_string()))
        .collect();
        (Instant::now(), nodes)
    }

    fn span(volume: &str, from: Instant, until: Option<Instant>) -> InFlightSpan {
        InFlightSpan {
            volume: volume.into(),
            from,
            until,
        }
    }

    fn denial<'a>(
        reason: &'a str,
        volume: &'static str,
        fate: SnapshotFate,
        at: Instant,
    ) -> Denial<'a> {
        Denial {
            reason,
            backup: "backup-x",
            volume,
            fate,
            sent: at,
            answered: at + Duration::from_millis(20),
        }
    }

    const CAPS: Caps = Caps {
        volume: 1,
        node: 2,
        cluster: 3,
    };

    #[test]
    fn snapshot_denials_need_a_lost_snapshot() {
        let (t0, nodes) = setup();
        let truth = Truth {
            spans: &[],
            volume_nodes: &nodes,
            caps: CAPS,
            slack: Duration::from_secs(2),
        };
        let lost = denial(
            "snapshot_missing",
            "pvc-0",
            SnapshotFate::LostBeforeStorm,
            t0,
        );
        assert!(truth.check(&lost).is_ok());
        for fate in [SnapshotFate::Kept, SnapshotFate::LostAfterAdmission] {
            let e = truth
                .check(&denial("snapshot_missing", "pvc-0", fate, t0))
                .unwrap_err();
            assert!(e.why.contains("existed"), "{e:?}");
            assert_eq!(e.backup, "backup-x");
        }
    }

    #[test]
    fn throttle_denials_need_the_cap_reached_in_their_scope() {
        let (t0, nodes) = setup();
        let at = t0 + Duration::from_secs(100);
        let long_ago = t0;
        let spans = vec![
            // pvc-0 in flight at the time; pvc-1 ended long before; pvc-2 still in flight.
            span("pvc-0", at - Duration::from_secs(5), None),
            span("pvc-1", long_ago, Some(long_ago + Duration::from_secs(1))),
            span(
                "pvc-2",
                at - Duration::from_secs(1),
                Some(at + Duration::from_secs(1)),
            ),
        ];
        let truth = Truth {
            spans: &spans,
            volume_nodes: &nodes,
            caps: CAPS,
            slack: Duration::from_secs(2),
        };
        let f = SnapshotFate::Kept;
        assert!(
            truth
                .check(&denial("throttled:volume", "pvc-0", f, at))
                .is_ok()
        );
        // pvc-1's own Backup ended 99 s earlier: nothing of pvc-1 in flight.
        let e = truth
            .check(&denial("throttled:volume", "pvc-1", f, at))
            .unwrap_err();
        assert!(e.why.contains("0 Backups in flight"), "{e:?}");
        // node-1 has 1 in flight (pvc-0) at that time, cap 2.
        assert!(
            truth
                .check(&denial("throttled:node", "pvc-1", f, at))
                .is_err()
        );
        // Cluster: 2 in flight (pvc-0, pvc-2), cap 3.
        assert!(
            truth
                .check(&denial("throttled:cluster", "pvc-2", f, at))
                .is_err()
        );
        // Rates are off in the long run: any rate denial is false.
        assert!(
            truth
                .check(&denial("throttled:rate_cluster", "pvc-2", f, at))
                .is_err()
        );
        // With a cluster cap of 2 the same moment is a true denial.
        let tighter = Truth {
            caps: Caps { cluster: 2, ..CAPS },
            ..truth
        };
        assert!(
            tighter
                .check(&denial("throttled:cluster", "pvc-2", f, at))
                .is_ok()
        );
    }

    #[test]
    fn the_slack_covers_a_backup_that_ended_just_before() {
        let (t0, nodes) = setup();
        let at = t0 + Duration::from_secs(10);
        let spans = vec![span("pvc-0", t0, Some(at - Duration::from_millis(500)))];
        let truth = Truth {
            spans: &spans,
            volume_nodes: &nodes,
            caps: CAPS,
            slack: Duration::from_secs(1),
        };
        let d = denial("throttled:volume", "pvc-0", SnapshotFate::Kept, at);
        assert!(truth.check(&d).is_ok());
        let strict = Truth {
            slack: Duration::from_millis(100),
            ..truth
        };
        assert!(strict.check(&d).is_err());
    }
}
