//! Property tests of the pure admission decision (`decide`) over an index built from
//! generated objects: arbitrary names, namespaces, labels, users and policies.
//!
//! 1. A Backup of an indexed, live (not removed, not lost, readyToUse) Snapshot of its own
//!    volume is never denied by a snapshot rule, whatever the policy; with its volume and an
//!    available target indexed it is allowed outright.
//! 2. Every denial, whatever the snapshot's state, names the Backup, its namespace, the
//!    snapshot and the volume, carries its reason tag, and the reason's status code.
#![allow(clippy::unwrap_used)]

use longhorn_types::shapes::with_status;
use std::collections::BTreeMap;

use kube::core::DynamicObject;
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::index::LiveSnapshot;
use longhorn_guard_webhook::policy::{CheckAction, EmptySnapshotRule, FailMode, Mode};
use longhorn_guard_webhook::{BackupRequest, Decision, Index, Policy, Reason, decide};
use longhorn_types::{BackupTarget, Snapshot, Volume, labels, shapes};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Kubernetes-ish names, with the odd character Longhorn itself never uses.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?",
        1 => "[ -~]{1,20}",
        1 => "\\PC{1,12}",
    ]
}

fn action() -> impl Strategy<Value = CheckAction> {
    prop_oneof![
        Just(CheckAction::Deny),
        Just(CheckAction::Warn),
        Just(CheckAction::Ignore)
    ]
}

/// Any policy over the fields the snapshot rules read. Throttling is not part of `decide`.
fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        (action(), action(), action()),
        any::<bool>(),
        prop::collection::btree_map("[a-z./-]{1,16}", "[*a-z0-9]{0,6}", 0..3),
        prop::collection::vec(name(), 0..3),
        prop::collection::vec("[*a-z]{1,4}:[a-z-]{1,12}", 0..3),
        name(),
    )
        .prop_map(
            |(
                warn_only,
                deny_empty,
                live,
                (not_ready, volume_missing, target),
                closed,
                ex_labels,
                users,
                sas,
                longhorn_sa,
            )| {
                let mut p = Policy {
                    mode: if warn_only {
                        Mode::WarnOnly
                    } else {
                        Mode::Enforce
                    },
                    empty_snapshot_name: if deny_empty {
                        EmptySnapshotRule::DenyUnlessLonghorn
                    } else {
                        EmptySnapshotRule::Allow
                    },
                    longhorn_service_account: longhorn_sa,
                    live_snapshot_lookup: live,
                    snapshot_not_ready: not_ready,
                    volume_missing,
                    target_unavailable: target,
                    on_deadline: if closed {
                        FailMode::Closed
                    } else {
                        FailMode::Open
                    },
                    ..Policy::default()
                };
                p.exemptions.labels = ex_labels;
                p.exemptions.users = users;
                p.exemptions.service_accounts = sas;
                p
            },
        )
}

#[derive(Clone, Debug)]
struct Case {
    namespace: String,
    backup: String,
    generate_name: bool,
    snapshot: String,
    volume: String,
    /// `backup-volume` label set to the snapshot's own volume (else no such label).
    volume_label: bool,
    extra_labels: BTreeMap<String, String>,
    username: String,
    groups: Vec<String>,
    volume_indexed: bool,
    target: Option<bool>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (name(), name(), any::<bool>(), name(), name(), any::<bool>()),
        prop::collection::btree_map("[a-z./-]{1,24}", "[ -~]{0,24}", 0..5),
        name(),
        prop::collection::vec(name(), 0..3),
        any::<bool>(),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(
                (namespace, backup, generate_name, snapshot, volume, volume_label),
                mut extra_labels,
                username,
                groups,
                volume_indexed,
                target,
            )| {
                extra_labels.remove(labels::BACKUP_VOLUME);
                extra_labels.remove(labels::BACKUP_TARGET);
                Case {
                    namespace,
                    backup,
                    generate_name,
                    snapshot,
                    volume,
                    volume_label,
                    extra_labels,
                    username,
                    groups,
                    volume_indexed,
                    target,
                }
            },
        )
}

/// What state the indexed snapshot is in (property 2).
#[derive(Clone, Copy, Debug)]
enum SnapshotState {
    Live,
    NotReady,
    Removed,
    Lost,
    OtherVolume,
    /// Not indexed; the live lookup (if the policy asks) says 404.
    Missing,
}

fn snapshot_state() -> impl Strategy<Value = SnapshotState> {
    prop_oneof![
        Just(SnapshotState::Live),
        Just(SnapshotState::NotReady),
        Just(SnapshotState::Removed),
        Just(SnapshotState::Lost),
        Just(SnapshotState::OtherVolume),
        Just(SnapshotState::Missing),
    ]
}

fn build(case: &Case, state: SnapshotState) -> (Index, BackupRequest) {
    let ns = case.namespace.as_str();
    let index = Index::default();
    if case.volume_indexed {
        let vol: Volume = serde_json::from_value(with_status(
            shapes::volume(ns, &case.volume, "node-1"),
            shapes::volume_status("node-1"),
        ))
        .unwrap();
        index.apply(IndexEvent::Upsert(vol));
    }
    if let Some(available) = case.target {
        let t: BackupTarget = serde_json::from_value(with_status(
            shapes::backup_target(ns, longhorn_types::DEFAULT_BACKUP_TARGET, "s3://b@r/"),
            shapes::backup_target_status("node-1", available),
        ))
        .unwrap();
        index.apply(IndexEvent::Upsert(t));
    }
    let mut status = shapes::snapshot_status("node-1", "");
    let snapshot_volume = match state {
        SnapshotState::OtherVolume => format!("{}-other", case.volume),
        _ => case.volume.clone(),
    };
    match state {
        SnapshotState::NotReady => status["readyToUse"] = json!(false),
        SnapshotState::Removed => status["markRemoved"] = json!(true),
        SnapshotState::Lost => {
            status["error"] = json!(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR);
            status["readyToUse"] = json!(false);
        }
        _ => {}
    }
    if !matches!(state, SnapshotState::Missing) {
        let snap: Snapshot = serde_json::from_value(with_status(
            shapes::snapshot(ns, &case.snapshot, &snapshot_volume),
            status,
        ))
        .unwrap();
        index.apply(IndexEvent::Upsert(snap));
    }

    let mut obj = shapes::backup(ns, &case.backup, &case.volume, &case.snapshot, None);
    let mut labels: serde_json::Map<String, Value> = case
        .extra_labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if case.volume_label || matches!(state, SnapshotState::OtherVolume) {
        labels.insert(labels::BACKUP_VOLUME.to_string(), json!(case.volume));
    }
    obj["metadata"]["labels"] = Value::Object(labels);
    if case.generate_name {
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.remove("name");
        meta.insert("generateName".into(), json!(case.backup));
    }
    let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
    let req = BackupRequest::from_object(&dynamic, Some(ns), &case.username, &case.groups).unwrap();
    (index, req)
}

/// `decide`, answering a live lookup with 404 as the API server would for a missing object.
fn final_decision(policy: &Policy, index: &Index, req: &BackupRequest) -> Decision {
    match decide(policy, &index.view(), req) {
        Decision::NeedsLiveSnapshot => {
            let view = index.view().with_live_snapshot(
                &req.namespace,
                &req.snapshot,
                LiveSnapshot::NotFound,
            );
            let d = decide(policy, &view, req);
            assert_ne!(d, Decision::NeedsLiveSnapshot, "a second live lookup");
            d
        }
        d => d,
    }
}

const SNAPSHOT_RULES: [Reason; 6] = [
    Reason::SnapshotMissing,
    Reason::SnapshotRemoved,
    Reason::SnapshotLost,
    Reason::SnapshotOtherVolume,
    Reason::SnapshotNotReady,
    Reason::EmptySnapshotName,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_live_snapshot_of_its_own_volume_is_never_denied_by_a_snapshot_rule(
        policy in policy(),
        case in case(),
    ) {
        let (index, req) = build(&case, SnapshotState::Live);
        // Indexed: the decision never needs the API server.
        let decision = decide(&policy, &index.view(), &req);
        prop_assert_ne!(&decision, &Decision::NeedsLiveSnapshot);
        if let Decision::Deny(d) = &decision {
            prop_assert!(
                !SNAPSHOT_RULES.contains(&d.reason),
                "denied by a snapshot rule: {:?}",
                d
            );
            prop_assert!(matches!(d.reason, Reason::VolumeMissing | Reason::TargetUnavailable));
        }
        if let Decision::Allow { reason, .. } = &decision {
            prop_assert!(
                !matches!(reason, Reason::SnapshotNotReady | Reason::SnapshotMissing
                    | Reason::SnapshotRemoved | Reason::SnapshotLost | Reason::SnapshotOtherVolume),
                "warned about a live snapshot: {:?}",
                decision
            );
        }
        if case.volume_indexed && case.target == Some(true) {
            prop_assert!(
                matches!(decision, Decision::Allow { .. }),
                "volume and target fine, still {:?}",
                decision
            );
        }
    }

    #[test]
    fn every_denial_names_the_backup_namespace_snapshot_and_volume(
        policy in policy(),
        case in case(),
        state in snapshot_state(),
    ) {
        let (index, req) = build(&case, state);
        let decision = final_decision(&policy, &index, &req);
        if let Decision::Deny(d) = &decision {
            prop_assert!(d.message.contains(&req.display_name()), "{}", d.message);
            prop_assert!(d.message.contains(&format!("namespace {:?}", req.namespace)), "{}", d.message);
            prop_assert!(d.message.contains(&format!("snapshot {:?}", req.snapshot)), "{}", d.message);
            // The volume is known from the label or the snapshot; a missing snapshot of a
            // Backup without a backup-volume label leaves it unknown, and the message says so.
            let volume_known = req.volume_label().is_some() || !matches!(state, SnapshotState::Missing);
            let volume = if volume_known { format!("volume {:?}", case.volume) } else { "volume unknown".to_string() };
            prop_assert!(d.message.contains(&volume), "{}", d.message);
            let tag = format!("[{}]", d.reason.as_str());
            prop_assert!(d.message.contains(&tag), "{}", d.message);
            prop_assert_eq!(d.code, d.reason.status_code());
            prop_assert!(d.code >= 400);
        }
        // In enforce mode, what must be denied is denied (unless exempt).
        let exempt = longhorn_guard_webhook::decision::is_exempt(&policy, &req);
        if policy.mode == Mode::Enforce && !exempt {
            let must_deny = match state {
                SnapshotState::Removed | SnapshotState::Lost | SnapshotState::OtherVolume => true,
                SnapshotState::Missing => true,
                SnapshotState::NotReady => policy.snapshot_not_ready == CheckAction::Deny,
                SnapshotState::Live => false,
            };
            if must_deny {
                prop_assert!(matches!(decision, Decision::Deny(_)), "{:?} allowed: {:?}", state, decision);
            }
        }
    }
}
