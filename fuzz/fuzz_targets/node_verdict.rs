//! The node verdict contract the webhook reads from another component's Lease and the agent
//! reads from the policy file: `Published::from_annotations` on arbitrary annotation values
//! and `Thresholds::from_policy_yaml` on arbitrary policy text.
//!
//! Input: `NODE \0 VERDICT \0 EVIDENCE \0 POLICY` (lossy UTF-8; an empty part is a missing
//! annotation).
//! Invariants: no panic; a verdict that reads back is written by `annotations()` and read
//! again to the same verdict (figures equal up to float formatting); thresholds that load
//! validate, and their rates are finite numbers (a NaN or infinite rate compares false and
//! would silently disable a level).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use node_verdict::lease::{ANNOTATION_EVIDENCE, ANNOTATION_NODE, ANNOTATION_VERDICT};
use node_verdict::{Evidence, Published, Thresholds};

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn same_evidence(a: &Evidence, b: &Evidence) -> bool {
    let floats = |e: &Evidence| [e.connections_per_minute, e.rss_bytes_per_minute];
    let rest = |e: &Evidence| {
        (
            e.connections,
            e.rss_bytes,
            e.threads,
            e.fds,
            e.window_seconds,
            e.since.clone(),
            e.reason.clone(),
        )
    };
    rest(a) == rest(b) && floats(a).iter().zip(floats(b)).all(|(x, y)| close(*x, y))
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0).map(String::from_utf8_lossy);
    let mut annotations = BTreeMap::new();
    for key in [ANNOTATION_NODE, ANNOTATION_VERDICT, ANNOTATION_EVIDENCE] {
        match parts.next() {
            Some(value) if !value.is_empty() => {
                annotations.insert(key.to_owned(), value.into_owned());
            }
            _ => {}
        }
    }
    if let Ok(published) = Published::from_annotations(&annotations) {
        let _ = published.evidence.summary();
        let again = Published::from_annotations(&published.annotations())
            .expect("written annotations read back");
        assert_eq!(again.node, published.node);
        assert_eq!(again.verdict, published.verdict);
        assert!(
            same_evidence(&again.evidence, &published.evidence),
            "{:?} read back as {:?}",
            published.evidence,
            again.evidence
        );
    }
    let policy = parts.next().unwrap_or_default();
    if let Ok(thresholds) = Thresholds::from_policy_yaml(&policy) {
        assert_eq!(thresholds.validate(), Ok(()));
        for level in [&thresholds.degrading, &thresholds.leaking] {
            assert!(
                level.connections_per_minute.is_finite() && level.rss_mib_per_minute.is_finite(),
                "non-finite rate accepted: {thresholds:?}"
            );
        }
    }
});
