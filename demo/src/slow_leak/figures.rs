//! A slow-leak run's figures: what the webhook was seen to believe and when, and which of the
//! leaky node's Backups it admitted meanwhile.

use std::collections::BTreeMap;

use super::LEAKY_NODE;
use crate::report::{ManagerSample, SlowLeakRun};
use crate::storm::{Attempt, Outcome};

/// The spans during which the webhook was seen to believe the node leaking: from the first
/// sample that showed it to the last one of the same stretch.
pub fn leaking_spans(samples: &[ManagerSample]) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64)> = Vec::new();
    let mut open: Option<(f64, f64)> = None;
    for s in samples {
        match (&mut open, s.webhook_leaking) {
            (Some(span), true) => span.1 = s.t,
            (None, true) => open = Some((s.t, s.t)),
            (Some(_), false) => spans.extend(open.take()),
            (None, false) => {}
        }
    }
    spans.extend(open);
    spans
}

/// Backups of `node_of == LEAKY_NODE` admitted while the webhook was seen believing it leaking:
/// sent after a sample showed it leaking and answered before a later sample of the same
/// stretch (so the webhook held that verdict during the whole review).
pub fn admitted_while_leaking(
    attempts: &[Attempt],
    spans: &[(f64, f64)],
    node_of: &dyn Fn(usize) -> String,
) -> u64 {
    attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Admitted && node_of(a.index) == LEAKY_NODE)
        .filter(|a| {
            let sent = a.sent_at.as_secs_f64();
            let answered = sent + a.latency.as_secs_f64();
            spans
                .iter()
                .any(|&(from, to)| sent >= from && answered <= to)
        })
        .count() as u64
}

/// The run's figures from its CREATEs and samples.
pub(super) fn figures(
    (label, ns, mode): (&str, &str, &str),
    attempts: &[Attempt],
    samples: Vec<ManagerSample>,
    node_of: &dyn Fn(usize) -> String,
    by_state: BTreeMap<String, u64>,
    leak_cap_hit: bool,
) -> SlowLeakRun {
    let spans = leaking_spans(&samples);
    let leak_started_s = samples
        .iter()
        .find(|s| s.leaked_by_controller > 0)
        .map(|s| s.t);
    let protected_at_s = spans.first().map(|s| s.0);
    let on_node = |pred: &dyn Fn(&Outcome) -> bool| {
        attempts
            .iter()
            .filter(|a| node_of(a.index) == LEAKY_NODE && pred(&a.outcome))
            .count() as u64
    };
    let mut denied_by_reason = BTreeMap::new();
    for a in attempts {
        if let Outcome::Denied { reason, .. } = &a.outcome {
            *denied_by_reason.entry(reason.clone()).or_insert(0) += 1;
        }
    }
    let sent = attempts
        .iter()
        .filter(|a| a.outcome != Outcome::NotSent)
        .count() as u64;
    let admitted = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Admitted)
        .count() as u64;
    SlowLeakRun {
        label: label.to_string(),
        namespace: ns.to_string(),
        mode: mode.to_string(),
        leaky_node: LEAKY_NODE.to_string(),
        sent,
        admitted,
        denied_by_reason,
        errors: attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Failed(_)))
            .count() as u64,
        leaky_node_admitted: on_node(&|o| *o == Outcome::Admitted),
        leaky_node_denied: on_node(&|o| matches!(o, Outcome::Denied { .. })),
        leaky_node_admitted_while_leaking: admitted_while_leaking(attempts, &spans, node_of),
        leak_started_s,
        protected_at_s,
        time_to_protection_s: match (leak_started_s, protected_at_s) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        leaking_spans: spans,
        peak_connections: samples.iter().map(|s| s.connections).max().unwrap_or(0),
        peak_rss_mib: samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        leaked_by_controller: samples.last().map_or(0, |s| s.leaked_by_controller),
        leak_cap_hit,
        backups_by_state: by_state,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn s(t: f64, leaking: bool) -> ManagerSample {
        ManagerSample {
            t,
            webhook_leaking: leaking,
            ..ManagerSample::default()
        }
    }

    fn attempt(index: usize, outcome: Outcome, sent: f64, latency: f64) -> Attempt {
        Attempt {
            index,
            outcome,
            sent: std::time::Instant::now(),
            latency: Duration::from_secs_f64(latency),
            sent_at: Duration::from_secs_f64(sent),
        }
    }

    #[test]
    fn admitted_while_leaking_counts_only_reviews_inside_a_seen_leaking_stretch() {
        let samples = [
            s(0.0, false),
            s(1.0, true),
            s(2.0, true),
            s(3.0, false),
            s(4.0, true),
        ];
        let spans = leaking_spans(&samples);
        assert_eq!(spans, vec![(1.0, 2.0), (4.0, 4.0)]);
        // Even indexes are on the leaky node.
        let node_of = |i: usize| {
            if i.is_multiple_of(2) {
                LEAKY_NODE.to_string()
            } else {
                "node-2".to_string()
            }
        };
        let attempts = [
            attempt(0, Outcome::Admitted, 1.2, 0.1), // inside: counted
            attempt(1, Outcome::Admitted, 1.2, 0.1), // other node
            attempt(2, Outcome::Admitted, 0.9, 0.2), // sent before the webhook was seen leaking
            attempt(4, Outcome::Admitted, 1.9, 0.2), // answered after the last sample of the stretch
            attempt(
                6,
                Outcome::Denied {
                    code: 403,
                    reason: "node_leaking".into(),
                },
                1.5,
                0.1,
            ),
            attempt(8, Outcome::Admitted, 2.5, 0.1), // between stretches
        ];
        assert_eq!(admitted_while_leaking(&attempts, &spans, &node_of), 1);
    }
}
