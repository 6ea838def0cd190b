//! Shared by the CLI's integration tests.
#![allow(dead_code)]

use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use longhorn_guard_testkit::{TEST_NAMESPACE_LABEL, TestCluster};
use longhorn_types::shapes;
use serde_json::json;

/// The helm binary that `scripts/test.sh` exports (`LHG_TEST_HELM`); panics saying how to
/// get it.
pub fn helm() -> std::path::PathBuf {
    longhorn_guard_testkit::test_env()
        .helm()
        .unwrap_or_else(|e| panic!("{e}"))
        .clone()
}

/// The kubectl binary that `scripts/test.sh` exports (`LHG_TEST_KUBECTL`); panics saying how
/// to get it.
pub fn kubectl() -> std::path::PathBuf {
    longhorn_guard_testkit::test_env()
        .kubectl()
        .unwrap_or_else(|e| panic!("{e}"))
        .clone()
}

/// A ValidatingWebhookConfiguration `name` with one webhook `entry` that sends the CREATEs of
/// longhorn.io/v1beta2 backups in namespace `ns` to `url` (`https://127.0.0.1:PORT/...`),
/// `failurePolicy: Fail`; the API server trusts `ca_bundle` (PEM) for it, or nothing yet.
pub fn backup_webhook_by_url(
    name: &str,
    entry: &str,
    ns: &str,
    url: &str,
    ca_bundle: Option<&str>,
) -> Result<ValidatingWebhookConfiguration> {
    let mut client_config = json!({ "url": url });
    if let Some(pem) = ca_bundle {
        client_config["caBundle"] =
            serde_json::to_value(k8s_openapi::ByteString(pem.as_bytes().to_vec()))?;
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": entry,
            "clientConfig": client_config,
            "rules": [{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"],
                       "resources": ["backups"], "operations": ["CREATE"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: ns}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
        }]
    }))?)
}

/// Longhorn objects in `ns` for the webhook to judge by: Volume `vol-1` on node-1, its ready
/// Snapshot `snap-ok`, and an available BackupTarget `default`.
pub async fn seed_volume_snapshot_and_target(cluster: &TestCluster, ns: &str) -> Result<()> {
    for (obj, status) in [
        (
            shapes::volume(ns, "vol-1", "node-1"),
            shapes::volume_status("node-1"),
        ),
        (
            shapes::snapshot(ns, "snap-ok", "vol-1"),
            shapes::snapshot_status("node-1", ""),
        ),
        (
            shapes::backup_target(ns, "default", "s3://bk@us-east-1/"),
            shapes::backup_target_status("node-1", true),
        ),
    ] {
        cluster
            .create_longhorn_object(ns, obj, Some(status))
            .await?;
    }
    Ok(())
}

/// Waits (30 s at most) until the webhook's metrics listener on 127.0.0.1:`port` answers
/// `/readyz` with 200.
pub async fn wait_until_ready(port: u16) -> Result<()> {
    let ready = format!("http://127.0.0.1:{port}/readyz");
    longhorn_guard_testkit::wait_for(
        std::time::Duration::from_secs(30),
        "webhook /readyz 200",
        || {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &ready])
                .output();
            async move { Ok(out?.stdout == b"200") }
        },
    )
    .await
}
