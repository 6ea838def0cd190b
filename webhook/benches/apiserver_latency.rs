//! Latency of a Backup CREATE through the real kube-apiserver, in one run, in three
//! namespaces shaped alike: no webhook, the floor registered (a minimal axum + rustls server
//! echoing `allowed: true`, see `webhook_vs_floor`), and our webhook registered (started the
//! way the binary starts it: watches, index, reloading TLS). Both are registered the same way
//! (`clientConfig.url` + `caBundle`, namespaceSelector). Sequential creates, interleaved in
//! rounds whose order rotates, so drift on the shared machine hits all three alike.
//!
//! Needs the test control plane: `LHG_TEST_KUBECONFIG` (see control-plane/README.md).
//! `LHG_BENCH_CREATES` sets the creates per namespace (default 300).
//!
//! Scale (issue #12, "one real run at 100k through the API server"):
//! `LHG_BENCH_INDEXED_NAMESPACE=NS` adds a fourth target, a second webhook of ours watching
//! `NS`, a namespace already filled with many objects (`scripts/bench-webhook-memory.sh` with
//! `LHG_BENCH_STATE` fills `lhg-bench-memory` with 100k Backups + 100k Snapshots + 10k
//! Volumes), measured in the same rounds: `ours@NS / ours` is the cost of the index's size.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use longhorn_guard_testkit::{TEST_NAMESPACE_LABEL, TestCluster, wait_for};
use longhorn_guard_webhook::policy::throttle::{RateLimit, ThrottlePolicy};
use longhorn_guard_webhook::{Policy, WebhookConfig, tls};
use longhorn_types::{Backup, BackupTarget, Snapshot, Volume, shapes};
use serde_json::json;

use base64::Engine as _;

const WARM: usize = 20;
const ROUND: usize = 25;

async fn fixtures(cluster: &TestCluster, ns: &str, n: usize) {
    cluster
        .create_with_status::<Volume>(
            ns,
            shapes::volume(ns, "vol-1", "node-1"),
            shapes::volume_status("node-1"),
        )
        .await
        .unwrap();
    cluster
        .create_with_status::<BackupTarget>(
            ns,
            shapes::backup_target(ns, "default", "s3://b@r/"),
            shapes::backup_target_status("node-1", true),
        )
        .await
        .unwrap();
    for i in 0..n {
        cluster
            .create_with_status::<Snapshot>(
                ns,
                shapes::snapshot(ns, &format!("snap-{i}"), "vol-1"),
                shapes::snapshot_status("node-1", ""),
            )
            .await
            .unwrap();
    }
}

/// The webhook's policy: the default one, with the throttle on (every review counts the
/// namespace's Backups in flight and takes a reservation) but its caps and rates off, so
/// that hundreds of sequential Backups of one volume are all admitted.
fn policy() -> Policy {
    Policy {
        throttle: ThrottlePolicy {
            max_in_flight_per_volume: 0,
            max_in_flight_per_node: 0,
            max_in_flight_per_cluster: 0,
            cluster_rate: RateLimit::OFF,
            recurring_job_rate: RateLimit::OFF,
            user_rate: RateLimit::OFF,
            ..ThrottlePolicy::default()
        },
        ..Policy::default()
    }
}

/// Registers `url` (trusting `ca_pem`) for Backup CREATEs in `ns`.
async fn register(cluster: &TestCluster, ns: &str, url: String, ca_pem: &str) -> String {
    let name = format!("lhg-bench-{ns}");
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "backups.longhorn-guard.io",
            "clientConfig": {
                "url": url,
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "operations": ["CREATE"], "resources": ["backups"]}],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: ns}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "timeoutSeconds": 5,
        }],
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(cluster.client())
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();
    name
}

/// Waits until the API server calls the webhook of `ns`: dry-run creates until `calls`
/// (the server's own count of reviews) moves.
async fn wait_called(cluster: &TestCluster, ns: &str, calls: impl Fn() -> u64) {
    let api: Api<Backup> = Api::namespaced(cluster.client(), ns);
    let before = calls();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_for(Duration::from_secs(20), "webhook called", || {
        let api = api.clone();
        let dry = dry.clone();
        let called = calls() > before;
        async move {
            let b: Backup =
                serde_json::from_value(shapes::backup(ns, "probe", "vol-1", "snap-0", None))?;
            let _ = api.create(&dry, &b).await;
            Ok(called)
        }
    })
    .await
    .unwrap();
}

struct Target {
    label: String,
    ns: String,
    ms: Vec<f64>,
}

impl Target {
    async fn creates(&mut self, cluster: &TestCluster, from: usize, to: usize, prefix: &str) {
        let api: Api<Backup> = Api::namespaced(cluster.client(), &self.ns);
        for i in from..to {
            let b: Backup = serde_json::from_value(shapes::backup(
                &self.ns,
                &format!("{prefix}-{i}"),
                "vol-1",
                &format!("snap-{i}"),
                None,
            ))
            .unwrap();
            let t = Instant::now();
            api.create(&PostParams::default(), &b).await.unwrap();
            if prefix != "warm" {
                self.ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }

    fn pct(&self, p: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    }
}

/// Sum and count of our webhook's `review_duration_seconds{endpoint="validate"}`.
fn review_time(text: &str) -> (f64, f64) {
    let sample = |suffix: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "longhorn_guard_webhook_review_duration_seconds_{suffix}{{"
                )) && l.contains("endpoint=\"validate\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (sample("sum"), sample("count"))
}

/// Established TCP connections on the server side of `port` (`ss` from iproute2).
fn connections(port: u16) -> String {
    std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .count()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// Starts our webhook watching `ns` (as the binary does), waits until its index is synced,
/// registers it for `ns` and waits until the API server calls it. Returns the handle and the
/// registration's name.
async fn start_ours(
    cluster: &TestCluster,
    ns: &str,
    dir: &std::path::Path,
    ca_pem: &str,
) -> (longhorn_guard_webhook::WebhookHandle, String) {
    let started = Instant::now();
    let handle = longhorn_guard_webhook::start(
        WebhookConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: dir.join("tls.crt"),
            tls_key: dir.join("tls.key"),
            policy: Some(policy()),
            namespace: Some(ns.to_string()),
            ..WebhookConfig::default()
        },
        cluster.client(),
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(600), "index synced", || async {
        Ok(handle.state().is_ready())
    })
    .await
    .unwrap();
    let state = handle.state().clone();
    let objects: u64 = state
        .metrics
        .encode(&state.index)
        .lines()
        .filter(|l| l.starts_with("longhorn_guard_webhook_index_objects{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    println!(
        "  our webhook for {ns}: {objects} objects indexed, ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let reg = register(
        cluster,
        ns,
        format!("https://{}/validate/backups", handle.local_addr()),
        ca_pem,
    )
    .await;
    let reviews = move || review_time(&state.metrics.encode(&state.index)).1 as u64;
    wait_called(cluster, ns, reviews).await;
    (handle, reg)
}

#[tokio::main]
async fn main() {
    let n = longhorn_guard_testkit::test_env()
        .bench_creates
        .unwrap_or(300);
    let cluster = TestCluster::connect()
        .await
        .expect("set LHG_TEST_KUBECONFIG to a running control plane");
    tls::install_crypto_provider();

    let mut targets = Vec::new();
    for label in ["no webhook", "floor", "our webhook"] {
        let ns = cluster
            .namespace(&format!("bench-{}", label.replace(' ', "-")))
            .await
            .unwrap();
        fixtures(&cluster, &ns, n + WARM).await;
        targets.push(Target {
            label: label.to_string(),
            ns,
            ms: Vec::with_capacity(n),
        });
    }
    if let Some(ns) = longhorn_guard_testkit::test_env()
        .bench_indexed_namespace
        .clone()
    {
        // The filled namespace: labelled like a test namespace so a registration can select
        // it, given the same fixtures (their names differ from the filled objects').
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client());
        namespaces
            .patch(
                &ns,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"metadata": {"labels": {TEST_NAMESPACE_LABEL: ns}}}),
                ),
            )
            .await
            .expect("LHG_BENCH_INDEXED_NAMESPACE names an existing namespace");
        fixtures(&cluster, &ns, n + WARM).await;
        targets.push(Target {
            label: format!("ours@{ns}"),
            ns,
            ms: Vec::with_capacity(n),
        });
    }

    // The floor, with its own certificate.
    let floor_ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let floor_tls = tls::server_config_from_pem(
        floor_ck.cert.pem().as_bytes(),
        floor_ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let (floor_app, floor_stats) = common::floor_router();
    let (floor_addr, floor_handle) = common::serve(floor_app, floor_tls).await;
    let floor_reg = register(
        &cluster,
        &targets[1].ns,
        format!("https://{floor_addr}/validate/backups"),
        &floor_ck.cert.pem(),
    )
    .await;
    let stats = floor_stats.clone();
    wait_called(&cluster, &targets[1].ns, move || {
        let s = stats.lock().unwrap();
        s.http1 + s.http2
    })
    .await;

    // Our webhook(s), started as the binary starts it.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("lhg-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let mut ours = Vec::new();
    for t in &targets[2..] {
        ours.push(start_ours(&cluster, &t.ns, &dir, &ck.cert.pem()).await);
    }
    let handle = &ours[0].0;

    // Warm-up, then rounds of ROUND creates per namespace, the order rotating each round.
    for t in targets.iter_mut() {
        t.creates(&cluster, n, n + WARM, "warm").await;
    }
    let times = |ours: &[(longhorn_guard_webhook::WebhookHandle, String)]| -> Vec<(f64, f64)> {
        ours.iter()
            .map(|(h, _)| review_time(&h.state().metrics.encode(&h.state().index)))
            .collect()
    };
    let before = times(&ours);
    let mut from = 0;
    let mut round = 0;
    while from < n {
        let to = (from + ROUND).min(n);
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            targets[i].creates(&cluster, from, to, "b").await;
        }
        from = to;
        round += 1;
    }
    let after = times(&ours);

    println!(
        "Backup CREATE through kube-apiserver v1.20, {n} sequential creates per namespace, interleaved in rounds of {ROUND}:"
    );
    for t in &targets {
        println!(
            "  {:<12} p50 {:.2} ms  p99 {:.2} ms",
            t.label,
            t.pct(0.50),
            t.pct(0.99)
        );
    }
    let (none, floor, mine) = (&targets[0], &targets[1], &targets[2]);
    for (what, a, b) in [
        ("ours/none ", mine, none),
        ("floor/none", floor, none),
        ("ours/floor", mine, floor),
    ] {
        println!(
            "  {what}: p50 {:.2}x ({:+.2} ms)  p99 {:.2}x",
            a.pct(0.5) / b.pct(0.5),
            a.pct(0.5) - b.pct(0.5),
            a.pct(0.99) / b.pct(0.99)
        );
    }
    println!("  (goal: ours/none <= 1.2 at p50)");
    for (k, ((sum0, count0), (sum1, count1))) in before.iter().zip(&after).enumerate() {
        let reviewed = count1 - count0;
        println!(
            "  {}: own time per review (review_duration_seconds, handler only): mean {:.3} ms over {reviewed} reviews",
            targets[2 + k].label,
            if reviewed > 0.0 {
                (sum1 - sum0) / reviewed * 1000.0
            } else {
                0.0
            }
        );
    }
    if let Some(big) = targets.get(3) {
        let small = &targets[2];
        println!(
            "  {} / {}: p50 {:.2}x ({:+.2} ms)  p99 {:.2}x  (goal: flat, p99 within 1.2x)",
            big.label,
            small.label,
            big.pct(0.5) / small.pct(0.5),
            big.pct(0.5) - small.pct(0.5),
            big.pct(0.99) / small.pct(0.99)
        );
    }
    {
        let s = floor_stats.lock().unwrap();
        println!(
            "  the API server called the floor over HTTP/2 {} times, HTTP/1.1 {} times, from {} client connection(s)",
            s.http2,
            s.http1,
            s.peers.len()
        );
    }
    println!(
        "  established connections now: floor {}, our webhook {}",
        connections(floor_addr.port()),
        connections(handle.local_addr().port())
    );

    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client());
    vwcs.delete(&floor_reg, &DeleteParams::default())
        .await
        .unwrap();
    floor_handle.shutdown();
    for (handle, reg) in ours {
        vwcs.delete(&reg, &DeleteParams::default()).await.unwrap();
        handle.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
