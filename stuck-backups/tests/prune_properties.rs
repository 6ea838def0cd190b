//! Property: `prune` never deletes a Backup that a later reconcile would complete.
//!
//! The states are generated from a timeline of one snapshot (the truth inside the engine)
//! and what Longhorn's objects show of it at two moments, the diagnosis and the re-check
//! right before the delete. The oracle follows Longhorn's backup controller
//! (`../shared/reference/longhorn.md` §4.2, §4.4): a Backup completes when it is non-terminal
//! (`""`, `Pending`, `InProgress`; `Error` and `Completed` are terminal), names a snapshot,
//! its volume exists, and the engine has (or, for a snapshot requested through a Snapshot
//! object, will have) the snapshot, not removed: the backup controller waits in Pending
//! while the Snapshot object is missing or not ready, and the engine's `SnapshotList` is the
//! precheck of `SnapshotBackup`. A snapshot the engine has gets its Snapshot object synced
//! (CR name = engine snapshot name), so a missing object alone does not doom a Backup.
//!
//! What the objects show lags the truth:
//! - `Engine.status.snapshots` is the engine's list as of `lag_engine` seconds ago (Longhorn's
//!   engine monitor syncs it periodically), at most [`MAX_LAG`];
//! - a Snapshot object's status is derived from an engine status at most [`MAX_LAG`] older
//!   than the one read (the Snapshot controller reads the Engine; `ClusterState::fetch` lists
//!   Engines after Snapshots);
//! - a snapshot taken through the engine (UI, recurring job) has no Snapshot object until
//!   that sync; one taken through a Snapshot object (`spec.createSnapshot`) has the object
//!   first, and the engine takes it later, or not yet (volume detached, engine busy);
//! - the snapshot is requested before the Backup is created (Longhorn's flows: recurring
//!   jobs wait for it to be ready, the UI takes it, then creates the Backup).
//!
//! The stuck threshold is the default 15 minutes, well above [`MAX_LAG`].

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use longhorn_guard_stuck_backups::{ClusterState, diagnose, recheck};
use longhorn_types::{Backup, Engine, Snapshot, Volume, shapes};
use proptest::prelude::*;
use serde_json::{Value, json};

const NS: &str = "longhorn-system";
const SNAP: &str = "snap-b";
const MAX_LAG: i64 = 120;
const STUCK_AFTER: Duration = Duration::from_secs(15 * 60);
/// The moment of the diagnosis.
const NOW: i64 = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// No snapshot of that name ever existed (a recurring job's stale name).
    Never,
    /// Taken by the engine at the request; the Snapshot object follows by sync.
    Engine,
    /// A Snapshot object first; the engine takes it `take_delay` later, or not yet.
    Object { taken: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    /// The Snapshot object was deleted, and with it the engine's snapshot.
    Deleted,
    /// The engine lost it; the object stays (Longhorn marks it lost).
    Lost,
    /// Marked removed in the engine's chain.
    MarkedRemoved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EngineObject {
    /// No Engine object for the volume.
    Absent,
    /// An Engine without a snapshot list (no RW replica).
    NoList,
    /// An Engine whose list is synced `lag_engine` seconds behind.
    Synced,
}

#[derive(Clone, Debug)]
struct World {
    backup_age: i64,
    state: &'static str,
    has_url: bool,
    named: bool,
    volume_exists: bool,
    origin: Origin,
    requested_before_backup: i64,
    take_delay: i64,
    gone: Option<(Gone, i64)>,
    engine: EngineObject,
    lag_engine: i64,
    lag_object: i64,
    recheck_after: i64,
}

fn world() -> impl Strategy<Value = World> {
    let origin = prop_oneof![
        Just(Origin::Never),
        Just(Origin::Engine),
        any::<bool>().prop_map(|taken| Origin::Object { taken }),
    ];
    let gone = prop::option::of((
        prop_oneof![
            Just(Gone::Deleted),
            Just(Gone::Lost),
            Just(Gone::MarkedRemoved)
        ],
        0i64..4000,
    ));
    let engine = prop_oneof![
        1 => Just(EngineObject::Absent),
        1 => Just(EngineObject::NoList),
        4 => Just(EngineObject::Synced),
    ];
    (
        (
            0i64..3600,
            prop::sample::select(vec!["", "Pending", "InProgress", "Error", "Completed"]),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.95),
            prop::bool::weighted(0.9),
        ),
        (origin, 0i64..600, 0i64..MAX_LAG, gone),
        (engine, 0i64..=MAX_LAG, 0i64..=MAX_LAG, 0i64..1200),
    )
        .prop_map(
            |(
                (backup_age, state, has_url, named, volume_exists),
                (origin, requested_before_backup, take_delay, gone),
                (engine, lag_engine, lag_object, recheck_after),
            )| World {
                backup_age,
                state,
                has_url,
                named,
                volume_exists,
                origin,
                requested_before_backup,
                take_delay,
                gone,
                engine,
                lag_engine,
                lag_object,
                recheck_after,
            },
        )
}

impl World {
    fn backup_created(&self) -> i64 {
        NOW - self.backup_age
    }

    fn requested(&self) -> i64 {
        self.backup_created() - self.requested_before_backup
    }

    /// When the engine took the snapshot, if it has.
    fn taken(&self) -> Option<i64> {
        match self.origin {
            Origin::Never => None,
            Origin::Engine => Some(self.requested()),
            Origin::Object { taken: false } => None,
            Origin::Object { taken: true } => Some(self.requested() + self.take_delay),
        }
    }

    fn gone_at(&self, kind: Gone, t: i64) -> bool {
        match (self.taken(), self.gone) {
            (Some(taken), Some((k, after))) => k == kind && taken + after <= t,
            _ => false,
        }
    }

    /// In the engine's chain at `t` (possibly marked removed).
    fn in_engine(&self, t: i64) -> bool {
        self.taken().is_some_and(|taken| taken <= t)
            && !self.gone_at(Gone::Deleted, t)
            && !self.gone_at(Gone::Lost, t)
    }

    /// The oracle: a later reconcile of the Backup completes it.
    fn would_complete(&self) -> bool {
        matches!(self.state, "" | "Pending" | "InProgress")
            && self.named
            && self.volume_exists
            && self.gone.is_none_or(|_| self.taken().is_none())
            && self.origin != Origin::Never
    }

    /// The objects as a list at `now` shows them.
    fn observe(&self, now: i64) -> ClusterState {
        let t_engine = now - self.lag_engine;
        let t_object = t_engine - self.lag_object;
        let snapshot_name = if self.named { SNAP } else { "" };
        let mut state = ClusterState {
            namespace: NS.into(),
            ..Default::default()
        };

        let mut status = shapes::backup_status(self.state, "node-1", "vol-1", snapshot_name);
        if self.has_url {
            status["url"] = json!("s3://bk@us-east-1/?backup=backup-b&volume=vol-1");
        }
        let mut backup = shapes::backup(NS, "backup-b", "vol-1", snapshot_name, Some("daily"));
        backup["metadata"]["uid"] = json!("uid-backup-b");
        backup["metadata"]["resourceVersion"] = json!("7");
        backup["metadata"]["creationTimestamp"] = json!(
            Timestamp::from_second(self.backup_created())
                .unwrap()
                .to_string()
        );
        backup["status"] = status;
        state.backups = vec![serde_json::from_value::<Backup>(backup).unwrap()];

        if self.volume_exists {
            let mut volume = shapes::volume(NS, "vol-1", "node-1");
            volume["status"] = shapes::volume_status("node-1");
            state.volumes = HashMap::from([(
                "vol-1".to_string(),
                serde_json::from_value::<Volume>(volume).unwrap(),
            )]);
        }

        let object_exists = !self.gone_at(Gone::Deleted, now)
            && match self.origin {
                Origin::Never => false,
                Origin::Engine => self.taken().is_some_and(|t| t <= t_object),
                Origin::Object { .. } => true,
            };
        if object_exists {
            let removed = self.in_engine(t_object) && self.gone_at(Gone::MarkedRemoved, t_object);
            let ready = self.in_engine(t_object) && !removed;
            let lost = self.gone_at(Gone::Lost, t_object);
            let mut status = shapes::snapshot_status("node-1", "");
            status["readyToUse"] = json!(ready);
            status["markRemoved"] = json!(removed);
            if lost {
                status["error"] = json!(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR);
            }
            let mut snapshot = shapes::snapshot(NS, SNAP, "vol-1");
            // A status change is a new resourceVersion.
            snapshot["metadata"]["resourceVersion"] = json!(format!("{ready}-{removed}-{lost}"));
            snapshot["status"] = status;
            state.snapshots = HashMap::from([(
                SNAP.to_string(),
                serde_json::from_value::<Snapshot>(snapshot).unwrap(),
            )]);
        }

        if self.engine != EngineObject::Absent {
            let mut status = shapes::engine_status("node-1", "im-1", "10.0.0.1", 10010);
            if self.engine == EngineObject::Synced {
                let mut list = json!({
                    "volume-head": { "name": "volume-head" },
                    "snap-older": { "name": "snap-older", "usercreated": true },
                });
                if self.in_engine(t_engine) {
                    list[SNAP] = json!({
                        "name": SNAP,
                        "removed": self.gone_at(Gone::MarkedRemoved, t_engine),
                    });
                }
                status["snapshots"] = list;
            }
            let mut engine = shapes::engine(NS, "vol-1", "node-1");
            engine["status"] = status;
            state.engines = vec![serde_json::from_value::<Engine>(engine).unwrap()];
        }
        state
    }
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

/// The diagnosis at [`NOW`]: the finding of the one Backup when it is eligible.
fn planned(w: &World) -> Option<longhorn_guard_stuck_backups::BackupFinding> {
    let report = diagnose(&w.observe(NOW), at(NOW), STUCK_AFTER);
    report.findings.into_iter().find(|f| f.prune_eligible)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The diagnosis never plans to delete a Backup that would complete.
    #[test]
    fn prune_never_plans_a_backup_that_a_later_reconcile_would_complete(w in world()) {
        let eligible = planned(&w).is_some();
        prop_assert!(!(eligible && w.would_complete()), "eligible but would complete: {w:#?}");
    }

    /// Diagnosis, then the re-check on a later read: a Backup that would complete is never
    /// deleted, whatever changed in between.
    #[test]
    fn prune_never_deletes_a_backup_that_a_later_reconcile_would_complete(w in world()) {
        if let Some(finding) = planned(&w) {
            let later = NOW + w.recheck_after;
            let deleted = recheck(&finding, &w.observe(later), at(later), STUCK_AFTER).is_ok();
            prop_assert!(!(deleted && w.would_complete()), "deleted but would complete: {w:#?}");
        }
    }
}

/// The model reaches deletion: the incident's Backups (a snapshot that never existed, or
/// one lost or deleted long ago) are planned and pass the re-check; the property above is
/// not vacuous.
#[test]
fn the_incident_backups_are_deleted() {
    let base = World {
        backup_age: 3000,
        state: "Pending",
        has_url: false,
        named: true,
        volume_exists: true,
        origin: Origin::Never,
        requested_before_backup: 10,
        take_delay: 0,
        gone: None,
        engine: EngineObject::Synced,
        lag_engine: 30,
        lag_object: 30,
        recheck_after: 5,
    };
    let lost = World {
        origin: Origin::Engine,
        gone: Some((Gone::Lost, 600)),
        ..base.clone()
    };
    let deleted = World {
        origin: Origin::Engine,
        gone: Some((Gone::Deleted, 60)),
        engine: EngineObject::Absent,
        ..base.clone()
    };
    let removed = World {
        origin: Origin::Object { taken: true },
        gone: Some((Gone::MarkedRemoved, 60)),
        ..base.clone()
    };
    for w in [base, lost, deleted, removed] {
        assert!(!w.would_complete(), "{w:#?}");
        let finding = planned(&w).unwrap_or_else(|| panic!("not planned: {w:#?}"));
        let later = NOW + w.recheck_after;
        assert_eq!(
            recheck(&finding, &w.observe(later), at(later), STUCK_AFTER),
            Ok(()),
            "{w:#?}"
        );
    }
}

/// A Backup of a snapshot requested through its Snapshot object and not taken by the engine
/// yet would complete: it is not planned, however old, although the engine's list lacks it.
#[test]
fn a_snapshot_being_taken_through_its_object_would_complete_and_is_not_planned() {
    let w = World {
        backup_age: 3000,
        state: "Pending",
        has_url: false,
        named: true,
        volume_exists: true,
        origin: Origin::Object { taken: false },
        requested_before_backup: 10,
        take_delay: 0,
        gone: None,
        engine: EngineObject::Synced,
        lag_engine: 0,
        lag_object: 0,
        recheck_after: 5,
    };
    assert!(w.would_complete());
    assert!(planned(&w).is_none(), "{w:#?}");
    let state = w.observe(NOW);
    let listed: &Value = &serde_json::to_value(&state.engines[0]).unwrap()["status"]["snapshots"];
    assert!(
        listed.get(SNAP).is_none(),
        "the engine must not list it yet"
    );
}
