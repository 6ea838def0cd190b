#![allow(clippy::unwrap_used)]

use k8s_openapi::api::coordination::v1::Lease;
use node_verdict::lease::{labels, lease_name};
use node_verdict::{Evidence, Published, Verdict};
use serde_json::json;

use super::*;

pub(crate) const NOW_MS: i64 = 1_800_000_000_000;

/// A verdict Lease as the agent writes it, renewed `age_s` seconds before [`NOW_MS`].
pub(crate) fn lease(node: &str, verdict: Verdict, age_s: i64, duration_s: i32) -> Lease {
    let annotations = Published {
        node: node.into(),
        verdict,
        evidence: Evidence {
            connections: 900,
            connections_per_minute: 120.0,
            since: "2026-12-06T03:00:00Z".into(),
            reason: "connections +120/min for 3m".into(),
            ..Evidence::default()
        },
    }
    .annotations();
    let renew = k8s_openapi::jiff::Timestamp::from_millisecond(NOW_MS - age_s * 1000).unwrap();
    serde_json::from_value(json!({
        "metadata": {
            "name": lease_name(node),
            "namespace": "guard",
            "labels": labels(),
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": format!("agent-{node}"),
            "leaseDurationSeconds": duration_s,
            "renewTime": renew.to_string(),
        },
    }))
    .unwrap()
}

#[test]
fn current_expired_and_unknown_nodes() {
    let v = NodeVerdicts::default();
    v.relist_start();
    let (changes, bad) = v.replace(&[
        lease("node-a", Verdict::Leaking, 5, 30),
        lease("node-b", Verdict::Leaking, 31, 30),
    ]);
    assert!(changes.is_empty() && bad.is_empty(), "{changes:?} {bad:?}");
    let view = v.view_at(NOW_MS);
    assert!(
        matches!(view.status("node-a"), NodeStatus::Current(r) if r.verdict == Verdict::Leaking)
    );
    assert_eq!(view.status("node-b").label(), "expired");
    assert!(view.holding("node-a").is_some() && view.holding("node-b").is_none());
    assert_eq!(view.status("node-c"), NodeStatus::Unknown);
}

#[test]
fn changes_are_reported_and_deletes_forget_the_node() {
    let v = NodeVerdicts::default();
    v.replace(&[lease("node-a", Verdict::Healthy, 0, 30)]);
    assert_eq!(
        v.upsert(&lease("node-a", Verdict::Leaking, 0, 30)),
        Ok(Some(("node-a".into(), "healthy", "leaking")))
    );
    assert_eq!(
        v.upsert(&lease("node-a", Verdict::Leaking, 0, 30)),
        Ok(None)
    );
    assert_eq!(
        v.upsert(&lease("node-n", Verdict::Degrading, 0, 30)),
        Ok(Some(("node-n".into(), "none", "degrading")))
    );
    assert!(v.view_at(NOW_MS).holding("node-a").is_some());
    assert!(
        v.view_at(NOW_MS).holding("node-n").is_some(),
        "degrading holds too"
    );
    v.delete(&lease("node-a", Verdict::Leaking, 0, 30));
    assert_eq!(v.view_at(NOW_MS).status("node-a"), NodeStatus::Unknown);
    assert!(v.view_at(NOW_MS).any_unhealthy(), "node-n is degrading");
    v.upsert(&lease("node-n", Verdict::Healthy, 0, 30)).unwrap();
    assert!(!v.view_at(NOW_MS).any_unhealthy());
    // A relist without node-n forgets it.
    v.replace(&[]);
    assert!(v.view_at(NOW_MS).table().is_empty());
}

#[test]
fn unreadable_leases_are_kept_aside_with_their_name_and_protect_nothing() {
    let v = NodeVerdicts::default();
    let mut wrong_name = lease("node-a", Verdict::Leaking, 0, 30);
    wrong_name.metadata.name = Some(lease_name("node-b"));
    let mut no_renew = lease("node-c", Verdict::Leaking, 0, 30);
    no_renew.spec.as_mut().unwrap().renew_time = None;
    let mut bad_verdict = lease("node-d", Verdict::Leaking, 0, 30);
    bad_verdict.metadata.annotations.as_mut().unwrap().insert(
        node_verdict::lease::ANNOTATION_VERDICT.into(),
        "Leaky".into(),
    );
    let (_, bad) = v.replace(&[wrong_name, no_renew, bad_verdict]);
    let names: Vec<&str> = bad.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            lease_name("node-b"),
            lease_name("node-c"),
            lease_name("node-d")
        ]
    );
    assert!(bad[0].1.contains("node \"node-a\""), "{}", bad[0].1);
    assert!(bad[1].1.contains("renewTime"), "{}", bad[1].1);
    assert!(bad[2].1.contains("Leaky"), "{}", bad[2].1);
    let view = v.view_at(NOW_MS);
    assert!(view.table().is_empty());
    assert_eq!(view.table().unreadable().len(), 3);
}

#[test]
fn trust_follows_the_index_rules() {
    let v = NodeVerdicts::default();
    let bound = std::time::Duration::from_secs(30);
    assert!(v.trust(bound).is_trusted(), "no watch: nothing to wait for");
    v.relist_start();
    assert!(matches!(v.trust(bound), Trust::Listing { .. }));
    v.replace(&[]);
    assert!(v.trust(bound).is_trusted());
    v.failed();
    assert!(v.trust(bound).is_trusted(), "a failure within the bound");
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(matches!(
        v.trust(std::time::Duration::from_millis(1)),
        Trust::Stale { .. }
    ));
    v.alive();
    assert!(v.trust(std::time::Duration::from_millis(1)).is_trusted());
}
