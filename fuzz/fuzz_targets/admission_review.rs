//! AdmissionReview bodies through the webhook's real `router` (in-process, `oneshot`), over
//! an index built from the input, plus `BackupRequest::from_object` + `decide` directly.
//!
//! Input: `HEADER \n BODY`. HEADER (≤ 96 bytes) is a space-separated list of snapshot names
//! indexed before the review; its first byte also picks flags (endpoint, snapshot state,
//! policy mode). BODY is sent as the HTTP request body as is.
//!
//! Invariants: no panic; never HTTP 500; a 200 answer is an AdmissionReview whose response
//! echoes a uid; a direct denial names the snapshot it judged.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::index::LiveSnapshot;
use longhorn_guard_webhook::policy::{CheckAction, Mode};
use longhorn_guard_webhook::{
    AppState, BackupRequest, Decision, Index, Metrics, NoSnapshotSource, Policy, decide, router,
};
use longhorn_types::{BackupTarget, Snapshot, Volume, shapes};
use serde_json::{Value, json};
use tower::ServiceExt;

const NS: &str = "longhorn-system";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn metrics() -> Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new())).clone()
}

fn with_status(mut obj: Value, status: Value) -> Value {
    obj["status"] = status;
    obj
}

fn build_index(header: &[u8], flags: u8) -> Index {
    let index = Index::default();
    for v in ["vol-0", "vol-1", "vol-2"] {
        if let Ok(vol) = serde_json::from_value::<Volume>(with_status(
            shapes::volume(NS, v, "node-1"),
            shapes::volume_status("node-1"),
        )) {
            index.apply(IndexEvent::Upsert(vol));
        }
    }
    if let Ok(t) = serde_json::from_value::<BackupTarget>(with_status(
        shapes::backup_target(NS, "default", "s3://bk@us-east-1/"),
        shapes::backup_target_status("node-1", flags & 0x40 == 0),
    )) {
        index.apply(IndexEvent::Upsert(t));
    }
    let names = String::from_utf8_lossy(header);
    for (i, name) in names
        .split(' ')
        .filter(|n| !n.is_empty())
        .take(8)
        .enumerate()
    {
        let mut status = shapes::snapshot_status("node-1", "");
        let bits = flags.rotate_left(i as u32);
        status["readyToUse"] = json!(bits & 1 == 0);
        status["markRemoved"] = json!(bits & 2 != 0);
        if bits & 4 != 0 {
            status["error"] = json!(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR);
        }
        let obj = with_status(
            shapes::snapshot(NS, name, &format!("vol-{}", i % 4)),
            status,
        );
        if let Ok(s) = serde_json::from_value::<Snapshot>(obj) {
            index.apply(IndexEvent::Upsert(s));
        }
    }
    index
}

fn policy(flags: u8) -> Policy {
    Policy {
        mode: if flags & 0x20 != 0 {
            Mode::WarnOnly
        } else {
            Mode::Enforce
        },
        live_snapshot_lookup: flags & 0x10 != 0,
        snapshot_not_ready: if flags & 0x08 != 0 {
            CheckAction::Deny
        } else {
            CheckAction::Warn
        },
        volume_missing: if flags & 0x04 != 0 {
            CheckAction::Deny
        } else {
            CheckAction::Ignore
        },
        ..Policy::default()
    }
}

/// `decide` directly on the request object, when the body has one.
fn decide_directly(policy: &Policy, index: &Index, body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Some(object) = v.pointer("/request/object").cloned() else {
        return;
    };
    let Ok(obj) = serde_json::from_value::<DynamicObject>(object) else {
        return;
    };
    let user = v
        .pointer("/request/userInfo/username")
        .and_then(Value::as_str)
        .unwrap_or("fuzz");
    let Ok(req) = BackupRequest::from_object(&obj, Some(NS), user, &[]) else {
        return;
    };
    let mut decision = decide(policy, &index.view(), &req);
    if decision == Decision::NeedsLiveSnapshot {
        let view =
            index
                .view()
                .with_live_snapshot(&req.namespace, &req.snapshot, LiveSnapshot::NotFound);
        decision = decide(policy, &view, &req);
        assert_ne!(
            decision,
            Decision::NeedsLiveSnapshot,
            "asked twice for a live lookup"
        );
    }
    if let Decision::Deny(d) = &decision {
        assert!(
            d.message.contains(&format!("{:?}", req.snapshot)),
            "denial does not name the snapshot {:?}: {}",
            req.snapshot,
            d.message
        );
        assert!(d.code >= 400, "denial with code {}", d.code);
    }
}

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) if i <= 96 => (&data[..i], &data[i + 1..]),
        _ => (&[][..], data),
    };
    let flags = header.first().copied().unwrap_or(0);
    let policy = policy(flags);
    let index = Arc::new(build_index(header, flags));
    decide_directly(&policy, &index, body);

    let state = AppState::new(
        Arc::new(policy),
        index,
        metrics(),
        Arc::new(NoSnapshotSource),
    );
    state.set_serving(true);
    let path = if flags & 0x80 != 0 {
        "/mutate/backups"
    } else {
        "/validate/backups"
    };
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    let response = runtime()
        .block_on(router(state).oneshot(request))
        .expect("router is infallible");
    let status = response.status();
    assert_ne!(status.as_u16(), 500, "bare 500 for a bad body");
    let bytes = runtime()
        .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .expect("body");
    if status.as_u16() == 200 {
        let review: Value = serde_json::from_slice(&bytes).expect("200 answer is JSON");
        assert_eq!(review["kind"], "AdmissionReview", "{review}");
        assert!(review["response"]["uid"].is_string(), "{review}");
    } else {
        assert!(
            matches!(status.as_u16(), 400 | 413 | 415 | 422),
            "status {status}"
        );
    }
});
