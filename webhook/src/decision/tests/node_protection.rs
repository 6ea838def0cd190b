//! The node-verdict check (`nodeProtection`) over the shared fixture index plus vol-b on
//! node-b; verdict Leases as the agent writes them (`crate::node_verdicts::tests::lease`).

use super::*;
use crate::decision::{Held, decide_with_nodes};
use crate::node_verdicts::NodeVerdicts;
use crate::node_verdicts::tests::{NOW_MS, lease};
use crate::policy::{ManualBackups, ProtectionMode};
use node_verdict::Verdict;

/// The fixture index with vol-b on node-b and its ready snapshot snap-b.
fn two_node_index() -> Index {
    let idx = index();
    let vol: Volume = serde_json::from_value(with_status(
        shapes::volume(NS, "vol-b", "node-b"),
        shapes::volume_status("node-b"),
    ))
    .unwrap();
    idx.apply(IndexEvent::Upsert(vol));
    idx.apply(IndexEvent::Upsert(snapshot("snap-b", "vol-b", json!({}))));
    idx
}

/// node-1 (vol-1, vol-2) has `verdict`, renewed `age_s` s ago with a 30 s lease; node-b is
/// healthy.
fn verdicts(verdict: Verdict, age_s: i64) -> NodeVerdicts {
    let v = NodeVerdicts::default();
    v.replace(&[
        lease("node-1", verdict, age_s, 30),
        lease("node-b", Verdict::Healthy, 0, 30),
    ]);
    v
}

fn run(policy: &Policy, v: &NodeVerdicts, req: &BackupRequest) -> (Decision, Option<Held>) {
    let idx = two_node_index();
    decide_with_nodes(policy, &idx.view(), &v.view_at(NOW_MS), req)
}

fn recurring(mut req: BackupRequest) -> BackupRequest {
    req.recurring_job = Some("daily".into());
    req
}

fn held(action: &'static str) -> Option<Held> {
    Some(Held {
        node: "node-1".into(),
        action,
    })
}

#[test]
fn a_leaking_node_refuses_its_backups_naming_node_evidence_and_runbook() {
    let policy = Policy::default();
    let v = verdicts(Verdict::Leaking, 5);
    let (d, h) = run(
        &policy,
        &v,
        &recurring(request("b1", Some("vol-1"), "snap-ok")),
    );
    let Decision::Deny(denial) = d else {
        panic!("a leaking node's Backup was admitted: {d:?}");
    };
    assert_eq!(denial.reason, Reason::NodeLeaking);
    assert_eq!(denial.code, 403);
    for part in [
        "node \"node-1\" is leaking",
        "900 connections to instance managers (+120/min)",
        "since 2026-12-06T03:00:00Z",
        "connections +120/min for 3m",
        "docs/runbook.md#longhornguardnodeleaking",
        "volume \"vol-1\"",
    ] {
        assert!(
            denial.message.contains(part),
            "{part} missing: {}",
            denial.message
        );
    }
    assert_eq!(h, held("denied"));
    // The node is found through the Snapshot's volume when the Backup has no volume label.
    let (d, _) = run(&policy, &v, &recurring(request("b2", None, "snap-v2")));
    assert_eq!(d.label(), "denied", "{d:?}");
    // Another node's volume is admitted.
    let (d, h) = run(
        &policy,
        &v,
        &recurring(request("b3", Some("vol-b"), "snap-b")),
    );
    assert_eq!((d.label(), h), ("allowed", None), "{d:?}");
}

#[test]
fn degrading_warns_and_healthy_or_expired_releases_at_once() {
    let policy = Policy::default();
    let req = recurring(request("b1", Some("vol-1"), "snap-ok"));
    let (d, h) = run(&policy, &verdicts(Verdict::Degrading, 0), &req);
    let Decision::Allow { reason, warnings } = d else {
        panic!("degrading refused: {d:?}");
    };
    assert_eq!(reason, Reason::NodeDegrading);
    assert!(
        warnings[0].contains("node \"node-1\" is degrading"),
        "{warnings:?}"
    );
    assert_eq!(h, held("warned"));
    // Healthy again: admitted, nothing held.
    let (d, h) = run(&policy, &verdicts(Verdict::Healthy, 0), &req);
    assert_eq!((d.label(), h), ("allowed", None), "{d:?}");
    // Leaking but renewed 31 s ago with a 30 s lease: expired, protects nothing.
    let (d, h) = run(&policy, &verdicts(Verdict::Leaking, 31), &req);
    assert_eq!((d.label(), h), ("allowed", None), "{d:?}");
}

#[test]
fn modes_exemptions_and_manual_backups() {
    let v = verdicts(Verdict::Leaking, 0);
    let req = recurring(request("b1", Some("vol-1"), "snap-ok"));
    let with = |f: fn(&mut Policy)| {
        let mut p = Policy::default();
        f(&mut p);
        p
    };

    let warn = with(|p| p.node_protection.mode = ProtectionMode::Warn);
    let (d, h) = run(&warn, &v, &req);
    let Decision::Allow { reason, warnings } = &d else {
        panic!("warn mode refused: {d:?}");
    };
    assert_eq!(*reason, Reason::NodeLeaking);
    assert!(
        warnings[0].starts_with("nodeProtection.mode: warn, would deny:")
            && warnings[0].contains("node \"node-1\" is leaking"),
        "{warnings:?}"
    );
    assert_eq!(h, held("warned"));

    let global_warn = with(|p| p.mode = Mode::WarnOnly);
    let (d, _) = run(&global_warn, &v, &req);
    assert_eq!(d.label(), "warned", "{d:?}");

    let off = with(|p| p.node_protection.mode = ProtectionMode::Off);
    assert_eq!(
        run(&off, &v, &req),
        (
            Decision::Allow {
                reason: Reason::Checked,
                warnings: vec![]
            },
            None
        )
    );

    let exempt = with(|p| p.node_protection.exemptions.users = vec!["alice".into()]);
    assert_eq!(run(&exempt, &v, &req).0.label(), "allowed");
    let exempt_all = with(|p| p.exemptions.users = vec!["alice".into()]);
    assert_eq!(run(&exempt_all, &v, &req).0.reason(), Some(Reason::Exempt));

    // A manual Backup: refused by default, admitted with a warning when the policy says so.
    let manual = request("b2", Some("vol-1"), "snap-ok");
    assert_eq!(run(&Policy::default(), &v, &manual).0.label(), "denied");
    let allow_manual = with(|p| p.node_protection.manual_backups = ManualBackups::AllowWithWarning);
    let (d, h) = run(&allow_manual, &v, &manual);
    let Decision::Allow { warnings, .. } = &d else {
        panic!("manual Backup refused: {d:?}");
    };
    assert!(warnings[0].contains("manual Backup"), "{warnings:?}");
    assert_eq!(h, held("warned"));
    // ...but a recurring job's Backup is still refused.
    assert_eq!(run(&allow_manual, &v, &req).0.label(), "denied");
}

#[test]
fn a_backup_refused_for_its_snapshot_keeps_that_reason() {
    let v = verdicts(Verdict::Leaking, 0);
    let (d, h) = run(
        &Policy::default(),
        &v,
        &recurring(request("b1", Some("vol-1"), "snap-removed")),
    );
    assert_eq!((d.reason(), h), (Some(Reason::SnapshotRemoved), None));
}

#[test]
fn a_refusal_becomes_a_node_leaking_event_and_longhorn_exemptions_are_reported() {
    assert_eq!(
        crate::events::event_reason(Reason::NodeLeaking),
        "NodeLeaking"
    );
    let p = Policy::from_yaml(
        "nodeProtection:\n  exemptions:\n    serviceAccounts: ['*:longhorn-service-account']\n",
    )
    .unwrap();
    let found = p.longhorn_exemptions(Some(NS));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].section.as_str(), "nodeProtection.exemptions");
    assert!(
        found[0]
            .to_string()
            .contains("the node-verdict check (holding Backups of a leaking node) is off"),
        "{}",
        found[0]
    );
}
