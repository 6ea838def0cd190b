#![allow(clippy::unwrap_used, clippy::expect_used)]

use longhorn_types::shapes::with_status;
use std::collections::BTreeMap;

use crate::index::IndexEvent;
use longhorn_types::{Engine, Snapshot, Volume, shapes};
use serde_json::json;

use super::*;
use crate::decision::{Denial, Reason, decide};
use crate::policy::{EngineCheckMode, Mode};

const NS: &str = "lh-ns";

fn req(snapshot: &str, volume: Option<&str>) -> BackupRequest {
    let mut labels = BTreeMap::new();
    if let Some(v) = volume {
        labels.insert("backup-volume".to_string(), v.to_string());
    }
    BackupRequest {
        namespace: NS.into(),
        name: "backup-1".into(),
        snapshot: snapshot.into(),
        has_spec: true,
        labels,
        username: "alice".into(),
        ..BackupRequest::default()
    }
}

fn finding(outcome: Outcome, cr_ready: Option<bool>) -> Finding {
    Finding {
        outcome,
        volume: "vol-1".into(),
        engine: Some("vol-1-e-0".into()),
        node: Some("node-a".into()),
        detail: "agent https://127.0.0.2:1 for engine \"vol-1-e-0\" on node \"node-a\": transport error: connection refused".into(),
        cr_ready,
    }
}

fn allowed() -> Decision {
    Decision::Allow {
        reason: Reason::Checked,
        warnings: Vec::new(),
    }
}

#[test]
fn present_keeps_the_cr_decision() {
    let d = apply(
        EngineCheckMode::Enforce,
        Mode::Enforce,
        &req("snap-a", Some("vol-1")),
        allowed(),
        &finding(Outcome::Present, Some(true)),
    );
    assert_eq!(d, allowed());
}

#[test]
fn absent_denies_410_in_enforce_naming_backup_snapshot_volume_engine_node() {
    let d = apply(
        EngineCheckMode::Enforce,
        Mode::Enforce,
        &req("snap-a", Some("vol-1")),
        allowed(),
        &finding(Outcome::Absent, Some(true)),
    );
    let Decision::Deny(Denial {
        reason,
        code,
        message,
        ..
    }) = d
    else {
        panic!("not denied: {d:?}");
    };
    assert_eq!(reason, Reason::SnapshotLost);
    assert_eq!(code, 410);
    for needle in [
        "Backup \"backup-1\"",
        "snapshot \"snap-a\"",
        "volume \"vol-1\"",
        "engine \"vol-1-e-0\"",
        "node \"node-a\"",
        "[snapshot_lost]",
    ] {
        assert!(message.contains(needle), "{needle} missing in {message}");
    }
}

#[test]
fn removed_denies_410() {
    let d = apply(
        EngineCheckMode::Enforce,
        Mode::Enforce,
        &req("snap-a", Some("vol-1")),
        allowed(),
        &finding(Outcome::Removed, Some(true)),
    );
    assert!(
        matches!(&d, Decision::Deny(x) if x.reason == Reason::SnapshotRemoved && x.code == 410 && x.message.contains("as removed")),
        "{d:?}"
    );
}

#[test]
fn warn_mode_and_warn_only_policy_never_deny() {
    for (check, mode) in [
        (EngineCheckMode::Warn, Mode::Enforce),
        (EngineCheckMode::Enforce, Mode::WarnOnly),
    ] {
        let d = apply(
            check,
            mode,
            &req("snap-a", Some("vol-1")),
            allowed(),
            &finding(Outcome::Absent, Some(true)),
        );
        match d {
            Decision::Allow { reason, warnings } => {
                assert_eq!(reason, Reason::SnapshotLost);
                assert!(warnings[0].contains("would deny"), "{warnings:?}");
                assert!(warnings[0].contains("vol-1-e-0"), "{warnings:?}");
            }
            other => panic!("{check:?}/{mode:?}: {other:?}"),
        }
    }
}

#[test]
fn absent_while_the_cr_is_not_ready_only_warns() {
    for ready in [Some(false), None] {
        let d = apply(
            EngineCheckMode::Enforce,
            Mode::Enforce,
            &req("snap-a", Some("vol-1")),
            allowed(),
            &finding(Outcome::Absent, ready),
        );
        assert!(
            matches!(&d, Decision::Allow { reason: Reason::Checked, warnings } if warnings.len() == 1 && warnings[0].contains("not readyToUse")),
            "{d:?}"
        );
    }
}

#[test]
fn every_inconclusive_outcome_falls_back_with_a_skipped_warning() {
    for outcome in Outcome::ALL.into_iter().filter(|o| !o.is_definite()) {
        let d = apply(
            EngineCheckMode::Enforce,
            Mode::Enforce,
            &req("snap-a", Some("vol-1")),
            allowed(),
            &finding(outcome, Some(true)),
        );
        match d {
            Decision::Allow { reason, warnings } => {
                assert_eq!(reason, Reason::Checked);
                assert_eq!(warnings.len(), 1);
                assert!(
                    warnings[0].starts_with("longhorn-guard: engine check skipped: "),
                    "{warnings:?}"
                );
                assert!(
                    warnings[0].contains(&format!("[{}]", outcome.as_str())),
                    "{warnings:?}"
                );
            }
            other => panic!("{outcome:?}: {other:?}"),
        }
    }
}

#[test]
fn only_allowed_cr_checked_decisions_are_eligible() {
    let deny = Decision::Deny(Denial {
        reason: Reason::SnapshotMissing,
        code: 404,
        message: "m".into(),
        warnings: vec![],
    });
    for (d, eligible) in [
        (allowed(), true),
        (
            Decision::Allow {
                reason: Reason::SnapshotNotReady,
                warnings: vec!["w".into()],
            },
            true,
        ),
        (
            Decision::Allow {
                reason: Reason::Exempt,
                warnings: vec![],
            },
            false,
        ),
        (
            Decision::Allow {
                reason: Reason::EmptySnapshotName,
                warnings: vec![],
            },
            false,
        ),
        (
            Decision::Allow {
                reason: Reason::DeadlineExceeded,
                warnings: vec!["w".into()],
            },
            false,
        ),
        (deny.clone(), false),
    ] {
        assert_eq!(is_eligible(&d), eligible, "{d:?}");
        let after = apply(
            EngineCheckMode::Enforce,
            Mode::Enforce,
            &req("snap-a", Some("vol-1")),
            d.clone(),
            &finding(Outcome::Absent, Some(true)),
        );
        if !eligible {
            assert_eq!(after, d, "an ineligible decision is left alone");
        }
    }
    let off = apply(
        EngineCheckMode::Off,
        Mode::Enforce,
        &req("snap-a", Some("vol-1")),
        allowed(),
        &finding(Outcome::Absent, Some(true)),
    );
    assert_eq!(off, allowed());
}

fn engine(name_volume: &str, node: &str, active: bool) -> Engine {
    let mut obj = shapes::engine(NS, name_volume, node);
    obj["spec"]["active"] = json!(active);
    serde_json::from_value(obj).unwrap()
}

fn renamed(mut e: Engine, name: &str) -> Engine {
    e.metadata.name = Some(name.into());
    e
}

fn index() -> Index {
    let idx = Index::default();
    let vol: Volume = serde_json::from_value(with_status(
        shapes::volume(NS, "vol-1", "node-b"),
        shapes::volume_status("node-b"),
    ))
    .unwrap();
    idx.apply(IndexEvent::Upsert(vol));
    let snap: Snapshot = serde_json::from_value(with_status(
        shapes::snapshot(NS, "snap-a", "vol-1"),
        shapes::snapshot_status("node-b", ""),
    ))
    .unwrap();
    idx.apply(IndexEvent::Upsert(snap));
    // Migration: an inactive engine on node-a, two active ones (node-c first by name).
    idx.apply(IndexEvent::Upsert(renamed(
        engine("vol-1", "node-a", false),
        "vol-1-e-0",
    )));
    idx.apply(IndexEvent::Upsert(renamed(
        engine("vol-1", "node-c", true),
        "vol-1-e-1",
    )));
    idx.apply(IndexEvent::Upsert(renamed(
        engine("vol-1", "node-b", true),
        "vol-1-e-2",
    )));
    idx.apply(IndexEvent::Upsert(engine("vol-2", "", true)));
    idx
}

#[test]
fn engine_target_is_the_active_engine_on_the_volumes_node() {
    let idx = index();
    let t = backup_engine(&idx.view(), &req("snap-a", Some("vol-1"))).unwrap();
    assert_eq!(
        t,
        BackupEngine {
            volume: "vol-1".into(),
            engine: "vol-1-e-2".into(),
            node: "node-b".into(),
            cr_ready: Some(true),
        }
    );
    // The volume from the Snapshot when the Backup has no label.
    let t = backup_engine(&idx.view(), &req("snap-a", None)).unwrap();
    assert_eq!(t.engine, "vol-1-e-2");
    let err = backup_engine(&idx.view(), &req("snap-x", Some("vol-9"))).unwrap_err();
    assert!(err.contains("no Engine"), "{err}");
    let err = backup_engine(&idx.view(), &req("snap-x", Some("vol-2"))).unwrap_err();
    assert!(err.contains("on no node"), "{err}");
    let err = backup_engine(&idx.view(), &req("snap-x", None)).unwrap_err();
    assert!(err.contains("unknown"), "{err}");
}

#[test]
fn budget_is_the_policys_but_never_past_the_deadline() {
    let now = Instant::now();
    let budget = Duration::from_millis(250);
    assert_eq!(
        check_budget(budget, now, now + Duration::from_secs(2)),
        budget
    );
    let short = check_budget(budget, now, now + Duration::from_millis(100));
    assert_eq!(short, Duration::from_millis(90));
    assert_eq!(check_budget(budget, now, now), Duration::ZERO);
    assert_eq!(
        check_budget(budget, now + Duration::from_secs(1), now),
        Duration::ZERO
    );
}

#[test]
fn the_lost_track_error_is_denied_by_decide_without_any_agent() {
    let idx = Index::default();
    let mut status = shapes::snapshot_status("node-1", "");
    status["error"] = json!(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR);
    status["readyToUse"] = json!(false);
    let snap: Snapshot =
        serde_json::from_value(with_status(shapes::snapshot(NS, "snap-a", "vol-1"), status))
            .unwrap();
    idx.apply(IndexEvent::Upsert(snap));
    let d = decide(
        &Policy::default(),
        &idx.view(),
        &req("snap-a", Some("vol-1")),
    );
    assert!(
        matches!(&d, Decision::Deny(x) if x.reason == Reason::SnapshotLost && x.code == 410),
        "{d:?}"
    );
    assert!(!is_eligible(&d), "no engine check after a CR denial");
}

struct Pki {
    dir: std::path::PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki() -> Pki {
    use longhorn_guard_certs::{Options, pki};
    let dir = std::env::temp_dir().join(format!(
        "lhg-engine-truth-unit-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let day = Duration::from_secs(86_400);
    let ca = pki::new_ca("unit CA", day).unwrap();
    let client = pki::issue_leaf(&ca, &Options::default().webhook_client_leaf(), day).unwrap();
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &client.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &client.key_pem).unwrap();
    Pki { dir }
}

#[test]
fn a_config_with_missing_files_or_bad_discovery_is_refused() {
    let p = pki();
    let ok = EngineTruthConfig::new(
        p.dir.join("tls.crt"),
        p.dir.join("tls.key"),
        p.dir.join("ca.crt"),
        AgentDiscovery::Pattern("{node}:9443".into()),
    );
    assert!(EngineTruth::new(&ok, EngineCheckMetrics::default()).is_ok());
    let mut missing = ok.clone();
    missing.ca = p.dir.join("nope.crt");
    let err = EngineTruth::new(&missing, EngineCheckMetrics::default()).unwrap_err();
    assert!(err.to_string().contains("nope.crt"), "{err}");
    let mut no_placeholder = ok.clone();
    no_placeholder.discovery = AgentDiscovery::Pattern("agents:9443".into());
    assert!(EngineTruth::new(&no_placeholder, EngineCheckMetrics::default()).is_err());
}

#[tokio::test]
async fn a_refusing_agent_opens_its_breaker_and_holds_at_most_one_channel() {
    crate::tls::install_crypto_provider();
    let p = pki();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = EngineTruthConfig::new(
        p.dir.join("tls.crt"),
        p.dir.join("tls.key"),
        p.dir.join("ca.crt"),
        AgentDiscovery::Static(BTreeMap::from([(
            "node-b".to_string(),
            format!("127.0.0.1:{port}"),
        )])),
    );
    config.breaker_failures = 3;
    config.breaker_cool_down = Duration::from_secs(60);
    let metrics = EngineCheckMetrics::default();
    let truth = EngineTruth::new(&config, metrics.clone()).unwrap();
    let idx = index();
    let policy = Policy {
        engine_check: EngineCheckMode::Enforce,
        ..Policy::default()
    };
    let r = req("snap-a", Some("vol-1"));
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let target = backup_engine(&idx.view(), &r);
        let f = truth
            .check(
                &r,
                target,
                Duration::from_millis(250),
                Instant::now() + Duration::from_secs(2),
            )
            .await;
        outcomes.push(f.outcome);
        assert!(truth.channel_count() <= 1, "one channel per agent at most");
        let d = apply(policy.engine_check, policy.mode, &r, allowed(), &f);
        assert!(matches!(d, Decision::Allow { .. }), "never a denial: {d:?}");
    }
    assert_eq!(
        outcomes,
        [
            Outcome::Error,
            Outcome::Error,
            Outcome::Error,
            Outcome::BreakerOpen,
            Outcome::BreakerOpen,
            Outcome::BreakerOpen
        ]
    );
    assert_eq!(truth.channel_count(), 0, "refused channels are evicted");
    assert_eq!(truth.open_breakers(), 1);
    assert_eq!(metrics.channels_opened.get(), 3);
    // A node without an agent.
    let other = backup_engine(&idx.view(), &r).map(|mut t| {
        t.node = "node-z".into();
        t
    });
    let f = truth
        .check(
            &r,
            other,
            Duration::from_millis(250),
            Instant::now() + Duration::from_secs(2),
        )
        .await;
    assert_eq!(f.outcome, Outcome::NoAgent);
    assert!(f.detail.contains("node-z"), "{}", f.detail);
}
