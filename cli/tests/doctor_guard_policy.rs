//! `longhorn-guard doctor` (the real binary) reads the guard's policy ConfigMap: a policy
//! exempting Longhorn's own service account is listed in the text and JSON output and makes
//! the exit code 1; with a safe policy the same cluster exits 0.
#![allow(clippy::unwrap_used)]

use longhorn_guard_testkit::TestCluster;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");

async fn put_policy(cluster: &TestCluster, ns: &str, text: &str) {
    cluster
        .put_config_map(ns, "longhorn-guard-policy", "policy.yaml", text)
        .await
        .unwrap();
}

/// Runs doctor; (exit code, stdout).
fn doctor(cluster: &TestCluster, longhorn_ns: &str, guard_ns: &str, json: bool) -> (i32, String) {
    let mut cmd = cluster.command(BIN);
    cmd.args(["--log-format", "text", "doctor", "-n", longhorn_ns])
        .args(["--guard-namespace", guard_ns]);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.code().is_some(),
        "doctor was killed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn doctor_reports_a_policy_exempting_longhorns_service_account() {
    let cluster = TestCluster::connect().await.unwrap();
    let longhorn_ns = cluster.namespace("doctor-lh").await.unwrap();
    let guard_ns = cluster.namespace("doctor-guard").await.unwrap();
    put_policy(
        &cluster,
        &guard_ns,
        "exemptions:\n  serviceAccounts: ['*:longhorn-service-account']\n",
    )
    .await;

    let (code, text) = doctor(&cluster, &longhorn_ns, &guard_ns, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("exemptions.serviceAccounts: \"*:longhorn-service-account\" exempts Longhorn's own service account"),
        "{text}"
    );
    let (code, out) = doctor(&cluster, &longhorn_ns, &guard_ns, true);
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["guardPolicy"]["status"], "checked", "{v}");
    assert_eq!(v["guardPolicy"]["findings"].as_array().unwrap().len(), 1);
    assert_eq!(v["needsAttention"], 0, "no Backups here: {v}");

    put_policy(
        &cluster,
        &guard_ns,
        "exemptions:\n  serviceAccounts: ['backup-ops:restore-bot']\n",
    )
    .await;
    let (code, text) = doctor(&cluster, &longhorn_ns, &guard_ns, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("no exemption covers Longhorn's own service account"),
        "{text}"
    );
}
