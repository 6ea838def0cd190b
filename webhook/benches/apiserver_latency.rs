//! Latency of a Backup CREATE through the real kube-apiserver, without and with the webhook
//! registered (same namespace shape, sequential creates). Needs the test control plane:
//! `LHG_TEST_KUBECONFIG` (see control-plane/README.md). `LHG_BENCH_CREATES` sets the count.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use longhorn_guard_testkit::{TEST_NAMESPACE_LABEL, TestCluster, wait_for};
use longhorn_guard_webhook::{Policy, WebhookConfig};
use longhorn_types::{Backup, BackupTarget, Snapshot, Volume, shapes};
use serde_json::json;

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

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

async fn creates(cluster: &TestCluster, ns: &str, n: usize, prefix: &str) -> (f64, f64) {
    let api: Api<Backup> = Api::namespaced(cluster.client(), ns);
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let b: Backup = serde_json::from_value(shapes::backup(
            ns,
            &format!("{prefix}-{i}"),
            "vol-1",
            &format!("snap-{i}"),
            None,
        ))
        .unwrap();
        let t = Instant::now();
        api.create(&PostParams::default(), &b).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[n / 2], ms[(n * 99 / 100).min(n - 1)])
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("LHG_BENCH_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let cluster = TestCluster::connect()
        .await
        .expect("set LHG_TEST_KUBECONFIG to a running control plane");

    let plain_ns = cluster.namespace("bench-plain").await.unwrap();
    fixtures(&cluster, &plain_ns, n).await;
    let hook_ns = cluster.namespace("bench-webhook").await.unwrap();
    fixtures(&cluster, &hook_ns, n).await;

    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("lhg-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let handle = longhorn_guard_webhook::start(
        WebhookConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: dir.join("tls.crt"),
            tls_key: dir.join("tls.key"),
            policy: Some(Policy::default()),
            namespace: Some(hook_ns.clone()),
            ..WebhookConfig::default()
        },
        cluster.client(),
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(30), "index synced", || async {
        Ok(handle.state().is_ready())
    })
    .await
    .unwrap();
    let name = format!("lhg-bench-{hook_ns}");
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "backups.longhorn-guard.io",
            "clientConfig": {"url": format!("https://{}/validate/backups", handle.local_addr()), "caBundle": b64(ck.cert.pem().as_bytes())},
            "rules": [{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "operations": ["CREATE"], "resources": ["backups"]}],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: hook_ns}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "timeoutSeconds": 5,
        }],
    }))
    .unwrap();
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client());
    vwcs.create(&PostParams::default(), &vwc).await.unwrap();
    // Wait until the API server calls the webhook (a missing snapshot is denied).
    let api: Api<Backup> = Api::namespaced(cluster.client(), &hook_ns);
    wait_for(Duration::from_secs(20), "webhook active", || {
        let api = api.clone();
        let ns = hook_ns.clone();
        async move {
            let b: Backup =
                serde_json::from_value(shapes::backup(&ns, "probe", "vol-1", "missing", None))?;
            Ok(match api.create(&PostParams::default(), &b).await {
                Err(_) => true,
                Ok(_) => {
                    api.delete("probe", &DeleteParams::default()).await?;
                    false
                }
            })
        }
    })
    .await
    .unwrap();

    // Warm-up, then interleave halves so drift on the shared machine hits both alike.
    let _ = creates(&cluster, &plain_ns, 20.min(n), "warm").await;
    let (p50_plain, p99_plain) = creates(&cluster, &plain_ns, n, "b").await;
    let (p50_hook, p99_hook) = creates(&cluster, &hook_ns, n, "b").await;
    println!("Backup CREATE through kube-apiserver v1.20, {n} sequential creates each:");
    println!("  without webhook: p50 {p50_plain:.2} ms  p99 {p99_plain:.2} ms");
    println!("  with webhook:    p50 {p50_hook:.2} ms  p99 {p99_hook:.2} ms");
    println!(
        "  ratio p50 {:.2} (goal <= 1.2), p99 {:.2}",
        p50_hook / p50_plain,
        p99_hook / p99_plain
    );
    vwcs.delete(&name, &DeleteParams::default()).await.unwrap();
    handle.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
