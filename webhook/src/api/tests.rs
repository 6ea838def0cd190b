#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::index::IndexEvent;
use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use longhorn_guard_testkit::admission::Review;
use longhorn_guard_testkit::{admissible_backup_objects, typed_with_status};
use longhorn_types::{BackupTarget, Snapshot, Volume, shapes};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::index::{Index, SnapshotFacts};
use crate::metrics::sum_samples;
use crate::policy::{FailMode, FullBackupRule, Mode, Policy};
use crate::snapshot_source::{SnapshotGetError, SnapshotSource};

const NS: &str = "lh";

/// Answers every lookup with `found` after `delay`, counting calls.
struct FakeSource {
    found: Option<SnapshotFacts>,
    delay: Duration,
    calls: AtomicUsize,
}

impl SnapshotSource for FakeSource {
    fn get<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<SnapshotFacts>, SnapshotGetError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(self.found.clone())
        })
    }
}

fn setup(policy: Policy, source: Arc<FakeSource>) -> (AppState, Arc<Index>) {
    let index = Arc::new(Index::new(crate::index_options(&policy)));
    let (volume, snapshot, target) = admissible_backup_objects(NS, "snap-ok").unwrap();
    index.apply(IndexEvent::Upsert(volume));
    index.apply(IndexEvent::Upsert(snapshot));
    let mut removed = shapes::snapshot_status("node-1", "");
    removed["markRemoved"] = json!(true);
    let snapshot = shapes::snapshot(NS, "snap-removed", "vol-1");
    index.apply(IndexEvent::Upsert(
        typed_with_status::<Snapshot>(snapshot, removed).unwrap(),
    ));
    index.apply(IndexEvent::Upsert(target));
    let state = AppState::new(
        Arc::new(policy),
        index.clone(),
        Arc::new(crate::metrics::Metrics::new()),
        source,
    );
    (state, index)
}

fn source(found: Option<SnapshotFacts>, delay_ms: u64) -> Arc<FakeSource> {
    Arc::new(FakeSource {
        found,
        delay: Duration::from_millis(delay_ms),
        calls: AtomicUsize::new(0),
    })
}

fn review(op: &str, resource: &str, object: Value, user: &str, dry_run: bool) -> Value {
    Review::new(NS, "uid-1234", user, object)
        .operation(op)
        .resource(resource)
        .dry_run(dry_run)
        .into_value()
}

fn backup(name: &str, snapshot: &str) -> Value {
    shapes::backup(NS, name, "vol-1", snapshot, None)
}

async fn post(state: &AppState, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let resp = router(state.clone())
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// [`validate`] of a CREATE of the Backup `name` of vol-1's `snapshot` by `user`.
async fn validate_create(
    state: &AppState,
    name: &str,
    snapshot: &str,
    user: &str,
    dry_run: bool,
) -> Value {
    let object = backup(name, snapshot);
    validate(state, review("CREATE", "backups", object, user, dry_run)).await
}

async fn validate(state: &AppState, body: Value) -> Value {
    let (status, v) = post(state, "/validate/backups", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["response"]["uid"], "uid-1234", "{v}");
    v["response"].clone()
}

fn metrics_text(state: &AppState) -> String {
    state.metrics.encode(&state.index)
}

#[tokio::test]
async fn existing_snapshot_allowed_removed_denied_with_410() {
    let (state, _) = setup(Policy::default(), source(None, 0));
    let ok = validate_create(&state, "b-ok", "snap-ok", "alice", false).await;
    assert_eq!(ok["allowed"], true, "{ok}");
    let denied = validate_create(&state, "b-rm", "snap-removed", "alice", false).await;
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["status"]["code"], 410);
    assert_eq!(denied["status"]["reason"], "Gone");
    let msg = denied["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"b-rm\"") && msg.contains("snap-removed") && msg.contains("vol-1"),
        "{msg}"
    );
    let text = metrics_text(&state);
    assert!(
        text.contains(r#"longhorn_guard_webhook_reviews_total{operation="CREATE",decision="denied",reason="snapshot_removed"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn index_miss_uses_the_live_lookup_before_deciding() {
    let found = SnapshotFacts {
        volume: Some("vol-1".into()),
        ready_to_use: true,
        ..Default::default()
    };
    let src = source(Some(found), 0);
    let (state, _) = setup(Policy::default(), src.clone());
    let r = validate_create(&state, "b-new", "snap-new", "alice", false).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);

    let src404 = source(None, 0);
    let (state404, _) = setup(Policy::default(), src404.clone());
    let r = validate_create(&state404, "b-new", "snap-new", "alice", false).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 404);
    let text = metrics_text(&state404);
    assert!(
        text.contains(r#"longhorn_guard_webhook_live_get_fallbacks_total{outcome="NotFound"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn deadline_fails_open_with_warning_or_closed_per_policy() {
    let slow = source(None, 2_000);
    let policy = Policy {
        deadline_ms: 50,
        ..Policy::default()
    };
    let (state, _) = setup(policy.clone(), slow.clone());
    let r = validate_create(&state, "b-slow", "snap-new", "alice", false).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        r["warnings"][0].as_str().unwrap().contains("deadline"),
        "{r}"
    );
    assert_eq!(state.metrics.deadline_exceeded.get(), 1);

    let (closed, _) = setup(
        Policy {
            on_deadline: FailMode::Closed,
            ..policy
        },
        slow,
    );
    let r = validate_create(&closed, "b-slow", "snap-new", "alice", false).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 503);
}

#[tokio::test]
async fn warn_only_exemption_and_dry_run() {
    let (warn, _) = setup(
        Policy {
            mode: Mode::WarnOnly,
            ..Policy::default()
        },
        source(None, 0),
    );
    let r = validate_create(&warn, "b-rm", "snap-removed", "alice", false).await;
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0].as_str().unwrap().contains("would deny"),
        "{r}"
    );

    let mut policy = Policy::default();
    policy.exemptions.service_accounts = vec!["*:backup-bot".into()];
    let (exempt, _) = setup(policy, source(None, 0));
    let r = validate_create(
        &exempt,
        "b-rm",
        "snap-removed",
        "system:serviceaccount:lh:backup-bot",
        false,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = validate_create(&exempt, "b-rm", "snap-removed", "bob", false).await;
    assert_eq!(r["allowed"], false, "{r}");

    // dryRun is judged the same.
    let r = validate_create(&exempt, "b-rm", "snap-removed", "bob", true).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 410);
}

/// The cluster rate bucket is per namespace: the gauge has one series per namespace, each
/// with that namespace's tokens (it once showed one arbitrary namespace's bucket).
#[tokio::test]
async fn cluster_rate_tokens_are_reported_per_namespace() {
    // A refill too slow to matter within the test.
    let mut policy = Policy::default();
    policy.throttle.cluster_rate = crate::policy::throttle::RateLimit::new(0.01, 50);
    let (state, index) = setup(policy, source(None, 0));
    // Another namespace with a Backup in the index and an untouched bucket.
    index.apply(IndexEvent::Upsert(
        typed_with_status::<longhorn_types::Backup>(
            shapes::backup("other", "old", "vol-9", "snap-9", None),
            shapes::backup_status("Completed", "node-1", "vol-9", "snap-9"),
        )
        .unwrap(),
    ));
    let r = validate_create(&state, "b-1", "snap-ok", "alice", false).await;
    assert_eq!(r["allowed"], true, "{r}");
    state.refresh_throttle_metrics();
    let text = metrics_text(&state);
    let tokens = |ns: &str| -> f64 {
        let series =
            format!("longhorn_guard_webhook_rate_tokens{{bucket=\"cluster\",namespace=\"{ns}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series}in {text}"))
    };
    let burst = 50.0;
    assert!(
        (burst - 1.0..burst - 0.9).contains(&tokens(NS)),
        "one token spent in {NS}: {text}"
    );
    assert_eq!(tokens("other"), burst, "{text}");
    assert_eq!(
        text.matches("longhorn_guard_webhook_rate_tokens{").count(),
        2,
        "{text}"
    );
}

#[tokio::test]
async fn unexpected_requests_are_allowed_with_a_warning_and_counted() {
    let (state, _) = setup(Policy::default(), source(None, 0));
    for (op, resource) in [
        ("UPDATE", "backups"),
        ("DELETE", "backups"),
        ("CREATE", "snapshots"),
    ] {
        let r = validate(
            &state,
            review(op, resource, backup("b-rm", "snap-removed"), "alice", false),
        )
        .await;
        assert_eq!(r["allowed"], true, "{op} {resource}: {r}");
        assert!(
            r["warnings"][0]
                .as_str()
                .unwrap()
                .contains("only checks CREATE"),
            "{r}"
        );
    }
    let text = metrics_text(&state);
    assert_eq!(
        sum_samples(
            &text
                .lines()
                .filter(|l| l.contains("reason=\"unexpected\""))
                .collect::<Vec<_>>()
                .join("\n"),
            "longhorn_guard_webhook_reviews_total"
        ),
        3,
        "{text}"
    );
}

#[tokio::test]
async fn malformed_bodies_get_precise_answers() {
    let (state, _) = setup(Policy::default(), source(None, 0));

    // Not JSON at all: 400 with the parser's position.
    let (status, v) = post(&state, "/validate/backups", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "bad_request");
    assert!(
        v["message"].as_str().unwrap().contains("line 1 column"),
        "{v}"
    );

    // Empty body.
    let (status, v) = post(&state, "/validate/backups", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("empty body"), "{v}");

    // No request.
    let (status, v) = post(
        &state,
        "/validate/backups",
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("no request"), "{v}");

    // uid readable, operation invalid: 200 with an invalid response naming the problem.
    let mut body = review("CREATE", "backups", backup("b", "snap-ok"), "alice", false);
    body["request"]["operation"] = json!("EXPLODE");
    let r = validate(&state, body).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["reason"], "InvalidRequest");
    assert!(
        r["status"]["message"].as_str().unwrap().contains("EXPLODE"),
        "{r}"
    );

    // v1beta1 review: refused with the versions named.
    let mut body = review("CREATE", "backups", backup("b", "snap-ok"), "alice", false);
    body["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let r = validate(&state, body).await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("admission.k8s.io/v1beta1"),
        "{r}"
    );

    // snapshotName of the wrong type.
    let mut obj = backup("b-num", "snap-ok");
    obj["spec"]["snapshotName"] = json!(7);
    let r = validate(&state, review("CREATE", "backups", obj, "alice", false)).await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.snapshotName must be a string"),
        "{r}"
    );

    // CREATE without an object.
    let mut body = review("CREATE", "backups", backup("b", "snap-ok"), "alice", false);
    body["request"]["object"] = Value::Null;
    let r = validate(&state, body).await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no object"),
        "{r}"
    );

    let text = metrics_text(&state);
    assert!(
        sum_samples(&text, "longhorn_guard_webhook_malformed_reviews_total") >= 7,
        "{text}"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let (state, _) = setup(
        Policy {
            max_body_bytes: 4096,
            ..Policy::default()
        },
        source(None, 0),
    );
    let mut obj = backup("b-big", "snap-ok");
    obj["metadata"]["annotations"] = json!({"big": "x".repeat(8192)});
    let (status, v) = post(
        &state,
        "/validate/backups",
        review("CREATE", "backups", obj.clone(), "alice", false).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["message"].as_str().unwrap().contains("4096 bytes"), "{v}");

    // Without a content-length (streamed), the limit still holds.
    let body = review("CREATE", "backups", obj, "alice", false).to_string();
    let stream = futures::stream::iter(
        body.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, _) = post(&state, "/validate/backups", Body::from_stream(stream)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn mutate_sets_full_backup_mode_for_listed_volumes() {
    let policy = Policy {
        full_backup: FullBackupRule {
            enabled: true,
            volumes: vec!["vol-1".into()],
            volume_label: None,
        },
        ..Policy::default()
    };
    let (state, _) = setup(policy, source(None, 0));
    let body = review(
        "CREATE",
        "backups",
        backup("b-m", "snap-ok"),
        "alice",
        false,
    )
    .to_string();
    let (status, v) = post(&state, "/mutate/backups", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let resp: kube::core::admission::AdmissionReview<kube::core::DynamicObject> =
        serde_json::from_value(v.clone()).unwrap();
    let resp = resp.response.unwrap();
    assert!(resp.allowed);
    let patch: Value = serde_json::from_slice(&resp.patch.unwrap()).unwrap();
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/spec/backupMode", "value": "full"}])
    );
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    // Disabled (the default): no patch.
    let (off, _) = setup(Policy::default(), source(None, 0));
    let (_, v) = post(&off, "/mutate/backups", body).await;
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none(), "{v}");
}

#[tokio::test]
async fn readyz_waits_for_every_watch_and_the_listener() {
    use crate::index::Kind;
    use longhorn_types::{Backup, Engine};
    let (state, index) = setup(Policy::default(), source(None, 0));
    let get = |path: &'static str| {
        let app = ops_router(state.clone());
        async move {
            let resp = app
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    state.set_serving(true);
    index.apply::<Snapshot>(IndexEvent::RelistStart);
    index.apply::<Snapshot>(IndexEvent::RelistDone);
    index.apply::<Volume>(IndexEvent::RelistStart);
    index.apply::<Volume>(IndexEvent::RelistDone);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("engine, backup, backuptarget"), "{body}");
    index.apply::<Engine>(IndexEvent::RelistDone);
    index.apply::<Backup>(IndexEvent::RelistDone);
    index.apply::<BackupTarget>(IndexEvent::RelistDone);
    assert!(Kind::ALL.iter().all(|k| index.synced(*k)));
    assert_eq!(get("/readyz").await.0, StatusCode::OK);
    state.set_serving(false);
    assert_eq!(get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);

    let (status, text) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "longhorn_guard_webhook_index_objects{kind=\"snapshot\"}",
        "longhorn_guard_webhook_last_sync_age_seconds{kind=\"volume\"}",
        "longhorn_guard_webhook_deadline_exceeded_total",
        "# EOF",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}
