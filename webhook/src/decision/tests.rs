#![allow(clippy::unwrap_used)]

use crate::index::IndexEvent;
use longhorn_types::shapes::with_status;
use longhorn_types::{Backup, BackupTarget, Snapshot, Volume, shapes};
use serde_json::{Value, json};

use super::*;
use crate::index::{Index, LiveSnapshot, SnapshotFacts};
use crate::policy::{CheckAction, EmptySnapshotRule, FullBackupRule, Mode, Policy};
use kube::core::DynamicObject;

const NS: &str = "lh-ns";

fn snapshot(name: &str, volume: &str, patch: Value) -> Snapshot {
    let mut status = shapes::snapshot_status("node-1", "");
    if let (Some(s), Some(p)) = (status.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(with_status(shapes::snapshot(NS, name, volume), status)).unwrap()
}

/// vol-1 and vol-2 exist; snap-ok (vol-1, ready), snap-removed, snap-lost, snap-notready,
/// snap-v2 (vol-2), snap-gone-vol (vol-9, volume missing); target `default` available,
/// target `broken` unavailable.
fn index() -> Index {
    let idx = Index::default();
    for v in ["vol-1", "vol-2"] {
        let vol: Volume = serde_json::from_value(with_status(
            shapes::volume(NS, v, "node-1"),
            shapes::volume_status("node-1"),
        ))
        .unwrap();
        idx.apply(IndexEvent::Upsert(vol));
    }
    for s in [
        snapshot("snap-ok", "vol-1", json!({})),
        snapshot(
            "snap-removed",
            "vol-1",
            json!({"markRemoved": true, "readyToUse": false}),
        ),
        snapshot(
            "snap-lost",
            "vol-1",
            json!({"error": longhorn_types::SNAPSHOT_LOST_TRACK_ERROR, "readyToUse": false}),
        ),
        snapshot("snap-notready", "vol-1", json!({"readyToUse": false})),
        snapshot("snap-v2", "vol-2", json!({})),
        snapshot("snap-gone-vol", "vol-9", json!({})),
    ] {
        idx.apply(IndexEvent::Upsert(s));
    }
    for (name, available) in [("default", true), ("broken", false)] {
        let t: BackupTarget = serde_json::from_value(with_status(
            shapes::backup_target(NS, name, "s3://bk@us-east-1/"),
            shapes::backup_target_status("node-1", available),
        ))
        .unwrap();
        idx.apply(IndexEvent::Upsert(t));
    }
    idx
}

fn request(name: &str, volume_label: Option<&str>, snapshot: &str) -> BackupRequest {
    let mut obj = shapes::backup(NS, name, volume_label.unwrap_or(""), snapshot, None);
    if volume_label.is_none() {
        obj["metadata"]["labels"] = json!({});
    }
    let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
    BackupRequest::from_object(
        &dynamic,
        Some(NS),
        "alice",
        &["system:authenticated".into()],
    )
    .unwrap()
}

struct Case {
    name: &'static str,
    policy: fn(&mut Policy),
    req: BackupRequest,
    live: Option<LiveSnapshot>,
    label: &'static str,
    reason: Option<Reason>,
    code: Option<u16>,
    contains: &'static [&'static str],
}

fn keep(_: &mut Policy) {}

#[test]
fn decide_table() {
    let idx = index();
    let sa = |req: BackupRequest, user: &str| BackupRequest {
        username: user.into(),
        ..req
    };
    let with_labels = |mut req: BackupRequest, k: &str, v: &str| {
        req.labels.insert(k.into(), v.into());
        req
    };
    let cases = vec![
        Case {
            name: "existing ready snapshot of the labelled volume is allowed",
            policy: keep,
            req: request("backup-ok", Some("vol-1"), "snap-ok"),
            live: None,
            label: "allowed",
            reason: Some(Reason::Checked),
            code: None,
            contains: &[],
        },
        Case {
            name: "no volume label: the snapshot's volume is used",
            policy: keep,
            req: request("backup-nolabel", None, "snap-ok"),
            live: None,
            label: "allowed",
            reason: Some(Reason::Checked),
            code: None,
            contains: &[],
        },
        Case {
            name: "empty snapshotName is allowed by default",
            policy: keep,
            req: request("backup-sync", Some("vol-1"), ""),
            live: None,
            label: "allowed",
            reason: Some(Reason::EmptySnapshotName),
            code: None,
            contains: &[],
        },
        Case {
            name: "empty snapshotName denied for a user with denyUnlessLonghorn",
            policy: |p| p.empty_snapshot_name = EmptySnapshotRule::DenyUnlessLonghorn,
            req: request("backup-sync", Some("vol-1"), ""),
            live: None,
            label: "denied",
            reason: Some(Reason::EmptySnapshotName),
            code: Some(403),
            contains: &["backup-sync", "alice", "snapshotName is empty"],
        },
        Case {
            name: "empty snapshotName allowed for Longhorn's SA in the Backup's namespace",
            policy: |p| p.empty_snapshot_name = EmptySnapshotRule::DenyUnlessLonghorn,
            req: sa(
                request("backup-sync", Some("vol-1"), ""),
                "system:serviceaccount:lh-ns:longhorn-service-account",
            ),
            live: None,
            label: "allowed",
            reason: Some(Reason::EmptySnapshotName),
            code: None,
            contains: &[],
        },
        Case {
            name: "Longhorn's SA name in another namespace is not Longhorn",
            policy: |p| p.empty_snapshot_name = EmptySnapshotRule::DenyUnlessLonghorn,
            req: sa(
                request("backup-sync", Some("vol-1"), ""),
                "system:serviceaccount:other:longhorn-service-account",
            ),
            live: None,
            label: "denied",
            reason: Some(Reason::EmptySnapshotName),
            code: Some(403),
            contains: &[],
        },
        Case {
            name: "index miss asks for a live lookup",
            policy: keep,
            req: request("backup-race", Some("vol-1"), "snap-new"),
            live: None,
            label: "pending",
            reason: None,
            code: None,
            contains: &[],
        },
        Case {
            name: "index miss, API server has it: allowed",
            policy: keep,
            req: request("backup-race", Some("vol-1"), "snap-new"),
            live: Some(LiveSnapshot::Found(SnapshotFacts {
                volume: Some("vol-1".into()),
                ready_to_use: true,
                ..Default::default()
            })),
            label: "allowed",
            reason: Some(Reason::Checked),
            code: None,
            contains: &[],
        },
        Case {
            name: "index miss, API server 404: denied 404 naming backup, snapshot and volume",
            policy: keep,
            req: request("backup-missing", Some("vol-1"), "snap-new"),
            live: Some(LiveSnapshot::NotFound),
            label: "denied",
            reason: Some(Reason::SnapshotMissing),
            code: Some(404),
            contains: &[
                "\"backup-missing\"",
                "\"snap-new\"",
                "\"vol-1\"",
                "404",
                "Create the Snapshot",
            ],
        },
        Case {
            name: "live lookup disabled: index miss denies",
            policy: |p| p.live_snapshot_lookup = false,
            req: request("backup-race", Some("vol-1"), "snap-new"),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotMissing),
            code: Some(404),
            contains: &["live lookup is disabled"],
        },
        Case {
            name: "live snapshot of another volume is denied too",
            policy: keep,
            req: request("backup-race", Some("vol-1"), "snap-new"),
            live: Some(LiveSnapshot::Found(SnapshotFacts {
                volume: Some("vol-2".into()),
                ready_to_use: true,
                ..Default::default()
            })),
            label: "denied",
            reason: Some(Reason::SnapshotOtherVolume),
            code: Some(422),
            contains: &[],
        },
        Case {
            name: "markRemoved snapshot: 410",
            policy: keep,
            req: request("backup-rm", Some("vol-1"), "snap-removed"),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotRemoved),
            code: Some(410),
            contains: &["marked removed", "\"snap-removed\""],
        },
        Case {
            name: "snapshot lost in the engine: 410",
            policy: keep,
            req: request("backup-lost", Some("vol-1"), "snap-lost"),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotLost),
            code: Some(410),
            contains: &["lost track", "new snapshot"],
        },
        Case {
            name: "snapshot of another volume: 422",
            policy: keep,
            req: request("backup-x", Some("vol-1"), "snap-v2"),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotOtherVolume),
            code: Some(422),
            contains: &["belongs to volume \"vol-2\"", "says \"vol-1\""],
        },
        Case {
            name: "not readyToUse warns by default",
            policy: keep,
            req: request("backup-nr", Some("vol-1"), "snap-notready"),
            live: None,
            label: "warned",
            reason: Some(Reason::SnapshotNotReady),
            code: None,
            contains: &["not readyToUse"],
        },
        Case {
            name: "not readyToUse denies with 409 when configured",
            policy: |p| p.snapshot_not_ready = CheckAction::Deny,
            req: request("backup-nr", Some("vol-1"), "snap-notready"),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotNotReady),
            code: Some(409),
            contains: &[],
        },
        Case {
            name: "not readyToUse ignored when configured",
            policy: |p| p.snapshot_not_ready = CheckAction::Ignore,
            req: request("backup-nr", Some("vol-1"), "snap-notready"),
            live: None,
            label: "allowed",
            reason: Some(Reason::Checked),
            code: None,
            contains: &[],
        },
        Case {
            name: "volume missing warns by default",
            policy: keep,
            req: request("backup-nv", Some("vol-9"), "snap-gone-vol"),
            live: None,
            label: "warned",
            reason: Some(Reason::VolumeMissing),
            code: None,
            contains: &["volume \"vol-9\" does not exist"],
        },
        Case {
            name: "volume missing denies with 404 when configured",
            policy: |p| p.volume_missing = CheckAction::Deny,
            req: request("backup-nv", Some("vol-9"), "snap-gone-vol"),
            live: None,
            label: "denied",
            reason: Some(Reason::VolumeMissing),
            code: Some(404),
            contains: &[],
        },
        Case {
            name: "unavailable backup-target label warns by default",
            policy: keep,
            req: with_labels(
                request("backup-t", Some("vol-1"), "snap-ok"),
                "backup-target",
                "broken",
            ),
            live: None,
            label: "warned",
            reason: Some(Reason::TargetUnavailable),
            code: None,
            contains: &["BackupTarget \"broken\" is not available"],
        },
        Case {
            name: "unavailable target denies 503 when configured",
            policy: |p| p.target_unavailable = CheckAction::Deny,
            req: with_labels(
                request("backup-t", Some("vol-1"), "snap-ok"),
                "backup-target",
                "broken",
            ),
            live: None,
            label: "denied",
            reason: Some(Reason::TargetUnavailable),
            code: Some(503),
            contains: &["Fix the backup target"],
        },
        Case {
            name: "unknown target name is unavailable",
            policy: |p| p.target_unavailable = CheckAction::Deny,
            req: with_labels(
                request("backup-t", Some("vol-1"), "snap-ok"),
                "backup-target",
                "nope",
            ),
            live: None,
            label: "denied",
            reason: Some(Reason::TargetUnavailable),
            code: Some(503),
            contains: &["\"nope\" does not exist"],
        },
        Case {
            name: "warn-only turns a denial into a warning",
            policy: |p| p.mode = Mode::WarnOnly,
            req: request("backup-rm", Some("vol-1"), "snap-removed"),
            live: None,
            label: "warned",
            reason: Some(Reason::SnapshotRemoved),
            code: None,
            contains: &["warn-only mode, would deny", "marked removed"],
        },
        Case {
            name: "exempt by Backup label",
            policy: |p| {
                p.exemptions
                    .labels
                    .insert("longhorn-guard.io/exempt".into(), "*".into());
            },
            req: with_labels(
                request("backup-rm", Some("vol-1"), "snap-removed"),
                "longhorn-guard.io/exempt",
                "yes",
            ),
            live: None,
            label: "allowed",
            reason: Some(Reason::Exempt),
            code: None,
            contains: &[],
        },
        Case {
            name: "label exemption needs the right value",
            policy: |p| {
                p.exemptions
                    .labels
                    .insert("longhorn-guard.io/exempt".into(), "true".into());
            },
            req: with_labels(
                request("backup-rm", Some("vol-1"), "snap-removed"),
                "longhorn-guard.io/exempt",
                "yes",
            ),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotRemoved),
            code: Some(410),
            contains: &[],
        },
        Case {
            name: "exempt by user",
            policy: |p| p.exemptions.users = vec!["alice".into()],
            req: request("backup-rm", Some("vol-1"), "snap-removed"),
            live: None,
            label: "allowed",
            reason: Some(Reason::Exempt),
            code: None,
            contains: &[],
        },
        Case {
            name: "exempt by service account in any namespace",
            policy: |p| p.exemptions.service_accounts = vec!["*:backup-bot".into()],
            req: sa(
                request("backup-rm", Some("vol-1"), "snap-removed"),
                "system:serviceaccount:ops:backup-bot",
            ),
            live: None,
            label: "allowed",
            reason: Some(Reason::Exempt),
            code: None,
            contains: &[],
        },
        Case {
            name: "service account exemption is namespace-specific when given",
            policy: |p| p.exemptions.service_accounts = vec!["ops:backup-bot".into()],
            req: sa(
                request("backup-rm", Some("vol-1"), "snap-removed"),
                "system:serviceaccount:dev:backup-bot",
            ),
            live: None,
            label: "denied",
            reason: Some(Reason::SnapshotRemoved),
            code: Some(410),
            contains: &[],
        },
        Case {
            name: "exempt by group",
            policy: |p| p.exemptions.groups = vec!["system:authenticated".into()],
            req: request("backup-rm", Some("vol-1"), "snap-removed"),
            live: None,
            label: "allowed",
            reason: Some(Reason::Exempt),
            code: None,
            contains: &[],
        },
        Case {
            name: "objects are looked up in the Backup's own namespace",
            policy: keep,
            req: BackupRequest {
                namespace: "elsewhere".into(),
                ..request("backup-ns", Some("vol-1"), "snap-ok")
            },
            live: None,
            label: "pending",
            reason: None,
            code: None,
            contains: &[],
        },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let mut policy = Policy::default();
        (case.policy)(&mut policy);
        let mut view = idx.view();
        if let Some(live) = case.live.clone() {
            view = view.with_live_snapshot(&case.req.namespace, &case.req.snapshot, live);
        }
        let d = decide(&policy, &view, &case.req);
        let text = match &d {
            Decision::Allow { warnings, .. } => warnings.join(" | "),
            Decision::Deny(den) => den.message.clone(),
            Decision::NeedsLiveSnapshot => String::new(),
        };
        let code = match &d {
            Decision::Deny(den) => Some(den.code),
            _ => None,
        };
        if d.label() != case.label
            || d.reason() != case.reason
            || code != case.code
            || !case.contains.iter().all(|c| text.contains(c))
        {
            failures.push(format!("{}: got {d:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn generate_name_is_named_in_denials() {
    let idx = index();
    let mut req = request("", Some("vol-1"), "snap-removed");
    req.generate_name = "backup-".into();
    let Decision::Deny(d) = decide(&Policy::default(), &idx.view(), &req) else {
        panic!("expected a denial");
    };
    assert!(
        d.message.contains("generateName \"backup-\""),
        "{}",
        d.message
    );
}

#[test]
fn wrong_json_types_are_precise_errors() {
    let mut obj = shapes::backup(NS, "b", "vol-1", "snap", None);
    obj["spec"]["snapshotName"] = json!(42);
    let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
    let err = BackupRequest::from_object(&dynamic, Some(NS), "u", &[]).unwrap_err();
    assert_eq!(err, "spec.snapshotName must be a string, got a number");
}

#[test]
fn full_backup_patch_for_listed_and_labelled_volumes() {
    let opts = crate::index::IndexOptions {
        full_backup_label: Some(("backup.example.com/mode".into(), Some("full".into()))),
    };
    let idx = Index::new(opts);
    let mut labelled = shapes::volume(NS, "vol-l", "node-1");
    labelled["metadata"]["labels"] = json!({"backup.example.com/mode": "full"});
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Volume>(labelled).unwrap(),
    ));
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Volume>(shapes::volume(NS, "vol-plain", "node-1")).unwrap(),
    ));
    idx.apply(IndexEvent::Upsert(snapshot("snap-l", "vol-l", json!({}))));

    let mut policy = Policy {
        full_backup: FullBackupRule {
            enabled: true,
            volumes: vec!["vol-listed".into()],
            volume_label: Some("backup.example.com/mode=full".into()),
        },
        ..Policy::default()
    };
    let view = idx.view();
    let patch_of = |p: &Policy, req: &BackupRequest| {
        full_backup_patch(p, &view, req).map(|(v, patch)| (v, serde_json::to_value(patch).unwrap()))
    };
    let expected = json!([{"op": "add", "path": "/spec/backupMode", "value": "full"}]);
    assert_eq!(
        patch_of(&policy, &request("b1", Some("vol-listed"), "s")),
        Some(("vol-listed".into(), expected.clone()))
    );
    // Volume from the snapshot, flagged by its label.
    assert_eq!(
        patch_of(&policy, &request("b2", None, "snap-l")),
        Some(("vol-l".into(), expected))
    );
    assert_eq!(
        patch_of(&policy, &request("b3", Some("vol-plain"), "s")),
        None
    );
    let mut already = request("b4", Some("vol-listed"), "s");
    already.backup_mode = Some("full".into());
    assert_eq!(patch_of(&policy, &already), None);
    policy.full_backup.enabled = false;
    assert_eq!(
        patch_of(&policy, &request("b5", Some("vol-listed"), "s")),
        None
    );

    // The patch applies to the Backup as Longhorn writes it.
    let mut doc = shapes::backup(NS, "b1", "vol-listed", "s", None);
    let (_, patch) = full_backup_patch(
        &Policy {
            full_backup: FullBackupRule {
                enabled: true,
                volumes: vec!["vol-listed".into()],
                volume_label: None,
            },
            ..Policy::default()
        },
        &view,
        &request("b1", Some("vol-listed"), "s"),
    )
    .unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(doc["spec"]["backupMode"], "full");
    let _: Backup = serde_json::from_value(doc).unwrap();
}

/// Longhorn 1.10's validator on a Backup CREATE, as the reference describes it, for the
/// snapshot checks only: refuses when the Snapshot is not in its cache or belongs to another
/// volume than the `backup-volume` label; admits an empty `snapshotName`.
fn longhorn_1_10_refuses(snapshot_in_cache: Option<&str>, label: Option<&str>, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    match (snapshot_in_cache, label) {
        (None, _) => true,
        (Some(vol), Some(label)) => vol != label,
        (Some(_), None) => false,
    }
}

#[test]
fn decide_by_release() {
    use longhorn_types::Release;
    let idx = index();
    // vol-t (1.8 shape) sends its backups to "offsite", which is unavailable.
    let vol: Volume = serde_json::from_value(with_status(
        shapes::volume_of(Release::V1_8, NS, "vol-t", "node-1", "offsite"),
        shapes::volume_status("node-1"),
    ))
    .unwrap();
    idx.apply(IndexEvent::Upsert(vol));
    idx.apply(IndexEvent::Upsert(snapshot("snap-t", "vol-t", json!({}))));
    let t: BackupTarget = serde_json::from_value(with_status(
        shapes::backup_target(NS, "offsite", "nfs://offsite:/backups"),
        shapes::backup_target_status("node-1", false),
    ))
    .unwrap();
    idx.apply(IndexEvent::Upsert(t));

    let deny_targets = |p: &mut Policy| p.target_unavailable = CheckAction::Deny;
    let labelled_target = |name: &str, volume: &str, snap: &str, target: &str| {
        let mut r = request(name, Some(volume), snap);
        r.labels
            .insert(longhorn_types::labels::BACKUP_TARGET.into(), target.into());
        r
    };
    let releases = [
        None,
        Some(Release::V1_7),
        Some(Release::V1_8),
        Some(Release::V1_10),
    ];

    // Per release: reason, denial code, texts the message/warnings must and must not contain.
    type Expect = (
        Option<Reason>,
        Option<u16>,
        Vec<&'static str>,
        Vec<&'static str>,
    );
    /// `old` before release `since`, `new` from it on; an undetected release is judged as 1.8.
    struct Split {
        since: Release,
        old: Expect,
        new: Expect,
    }
    impl Split {
        fn same(expect: Expect) -> Self {
            Split {
                since: Release::V1_7,
                old: expect.clone(),
                new: expect,
            }
        }

        /// A snapshot denial on every release, whose message on 1.10+ says `says` about
        /// Longhorn's own verdict and on older releases does not mention 1.10.
        fn noted_on_1_10(reason: Reason, code: u16, says: Vec<&'static str>) -> Self {
            Split {
                since: Release::V1_10,
                old: (Some(reason), Some(code), vec![], vec!["1.10"]),
                new: (Some(reason), Some(code), says, vec![]),
            }
        }

        /// Checked on 1.7 (one target, `default`); 1.8+ denies 503 with a message saying `says`.
        fn target_unavailable_from_1_8(says: Vec<&'static str>) -> Self {
            Split {
                since: Release::V1_8,
                old: (Some(Reason::Checked), None, vec![], vec![]),
                new: (Some(Reason::TargetUnavailable), Some(503), says, vec![]),
            }
        }

        fn at(&self, release: Option<Release>) -> &Expect {
            if release.unwrap_or(Release::V1_8) >= self.since {
                &self.new
            } else {
                &self.old
            }
        }
    }
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        fn(&mut Policy),
        BackupRequest,
        Option<LiveSnapshot>,
        Split,
    )> = vec![
        (
            "backup-target label names an unavailable target",
            deny_targets,
            labelled_target("b-label", "vol-1", "snap-ok", "broken"),
            None,
            Split::target_unavailable_from_1_8(vec![
                "BackupTarget \"broken\" is not available",
                "the target of this Backup: the Backup's backup-target label",
            ]),
        ),
        (
            "no label: the volume's own target (1.8+), not default",
            deny_targets,
            request("b-vol", Some("vol-t"), "snap-t"),
            None,
            Split::target_unavailable_from_1_8(vec![
                "BackupTarget \"offsite\" is not available",
                "the target of this Backup: the volume's spec.backupTargetName",
            ]),
        ),
        (
            "the label wins over the volume's target",
            deny_targets,
            labelled_target("b-both", "vol-t", "snap-t", "default"),
            None,
            Split::same((Some(Reason::Checked), None, vec![], vec![])),
        ),
        (
            "missing snapshot (live 404): Longhorn 1.10 refuses too",
            keep,
            request("b-missing", Some("vol-1"), "snap-nope"),
            Some(LiveSnapshot::NotFound),
            Split::noted_on_1_10(
                Reason::SnapshotMissing,
                404,
                vec![
                    "Longhorn 1.10+ refuses this Backup too",
                    "snapshot <nil> is invalid",
                ],
            ),
        ),
        (
            "snapshot of another volume: Longhorn 1.10 refuses too",
            keep,
            request("b-other", Some("vol-1"), "snap-v2"),
            None,
            Split::noted_on_1_10(
                Reason::SnapshotOtherVolume,
                422,
                vec!["Longhorn 1.10+ refuses this Backup too"],
            ),
        ),
        (
            "removed snapshot: Longhorn 1.10 alone would admit it, the message says why",
            keep,
            request("b-removed", Some("vol-1"), "snap-removed"),
            None,
            Split::noted_on_1_10(
                Reason::SnapshotRemoved,
                410,
                vec!["Longhorn 1.10+ alone would admit it", "never completes"],
            ),
        ),
        (
            "lost snapshot: same explanation",
            keep,
            request("b-lost", Some("vol-1"), "snap-lost"),
            None,
            Split::noted_on_1_10(Reason::SnapshotLost, 410, vec!["alone would admit it"]),
        ),
        (
            "snapshot only the live GET found (the create race): allowed; on 1.10 a warning explains Longhorn's own refusal",
            keep,
            request("b-race", Some("vol-1"), "snap-fresh"),
            Some(LiveSnapshot::Found(SnapshotFacts {
                volume: Some("vol-1".into()),
                mark_removed: false,
                ready_to_use: true,
                lost_in_engine: false,
            })),
            Split {
                since: Release::V1_10,
                old: (Some(Reason::Checked), None, vec![], vec![]),
                new: (
                    Some(Reason::SnapshotNotYetCached),
                    None,
                    vec![
                        "snapshot <nil> is invalid",
                        "retry in a few seconds",
                        "longhorn/longhorn#11451",
                    ],
                    vec![],
                ),
            },
        ),
        (
            "empty snapshotName denied by policy: on 1.10 the message says Longhorn allows it",
            |p| p.empty_snapshot_name = EmptySnapshotRule::DenyUnlessLonghorn,
            request("b-empty", Some("vol-1"), ""),
            None,
            Split::noted_on_1_10(
                Reason::EmptySnapshotName,
                403,
                vec!["Longhorn 1.10+ alone would admit it"],
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (name, policy_fn, req, live, expect) in &cases {
        for release in releases {
            let mut policy = Policy::default();
            policy_fn(&mut policy);
            let req = BackupRequest {
                longhorn: release,
                ..req.clone()
            };
            let mut view = idx.view();
            if let Some(live) = live.clone() {
                view = view.with_live_snapshot(&req.namespace, &req.snapshot, live);
            }
            let d = decide(&policy, &view, &req);
            let (reason, code, contains, absent) = expect.at(release).clone();
            let (text, got_code) = match &d {
                Decision::Allow { warnings, .. } => (warnings.join(" | "), None),
                Decision::Deny(den) => (den.message.clone(), Some(den.code)),
                Decision::NeedsLiveSnapshot => (String::new(), None),
            };
            let ok = d.reason() == reason
                && got_code == code
                && contains.iter().all(|c| text.contains(c))
                && !absent.iter().any(|c| text.contains(c));
            if !ok {
                failures.push(format!("{name} [{release:?}]: got {d:?}"));
            }

            // Where Longhorn 1.10 judges the snapshot too, the verdicts agree; a snapshot
            // denial it would not make carries the explanation.
            if release == Some(Release::V1_10) {
                let in_cache = cached_snapshot_volume(&idx, &req);
                let lh =
                    longhorn_1_10_refuses(in_cache.as_deref(), req.volume_label(), &req.snapshot);
                let snapshot_denial = matches!(
                    d.reason(),
                    Some(
                        Reason::SnapshotMissing
                            | Reason::SnapshotRemoved
                            | Reason::SnapshotLost
                            | Reason::SnapshotOtherVolume
                            | Reason::SnapshotNotReady
                            | Reason::EmptySnapshotName
                    )
                ) && d.label() == "denied";
                if lh && d.label() != "denied" && d.reason() != Some(Reason::SnapshotNotYetCached) {
                    failures.push(format!(
                        "{name}: Longhorn 1.10 refuses, the guard admits silently: {d:?}"
                    ));
                }
                if snapshot_denial && !lh && !text.contains("alone would admit it") {
                    failures.push(format!(
                        "{name}: denial Longhorn 1.10 would not make, unexplained: {text}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}

/// The snapshot's volume as Longhorn 1.10's cache would see it: indexed objects only (a
/// Snapshot found only live is the create race: not in Longhorn's cache either).
fn cached_snapshot_volume(idx: &Index, req: &BackupRequest) -> Option<String> {
    match idx.view().snapshot(&req.namespace, &req.snapshot) {
        crate::index::SnapshotLookup::Indexed(f) => f.volume,
        _ => None,
    }
}

mod node_protection;
