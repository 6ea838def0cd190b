//! Shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
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

// The demo's end-to-end tests (demo.rs, long_run.rs): the real binary, every process it starts
// marked with `LHG_RUN_ID=<unique>` so that "nothing left" can be checked.

pub const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");

pub fn run_id(what: &str) -> String {
    format!(
        "lhg-demo-test-{what}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Pids of live processes whose environment holds `LHG_RUN_ID=<id>`, with their command.
pub fn procs_of_run(id: &str) -> Vec<(u32, String)> {
    let want = format!("LHG_RUN_ID={id}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            // A zombie still listed but already exited is not alive.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            if state == Some(Some('Z')) {
                continue;
            }
            let cmd = std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            out.push((pid, cmd));
        }
    }
    out
}

pub fn temp_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "lhg-demo-test-{what}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `longhorn-guard demo --out OUT EXTRA...` marked with `LHG_RUN_ID=id`, its stderr in
/// `OUT/demo-stderr.log`, on the cluster of `kubeconfig` (else its own control plane).
pub fn demo_command(
    kubeconfig: Option<&Path>,
    out: &Path,
    id: &str,
    extra: &[&str],
) -> Result<Command> {
    let stderr = std::fs::File::create(out.join("demo-stderr.log"))?;
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "text", "demo", "--out"])
        .arg(out)
        .args(extra)
        .env("LHG_RUN_ID", id)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    Ok(cmd)
}

/// Waits for `child` to exit, at most `limit`; kills it on timeout.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the demo did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn stderr_tail(out: &Path) -> String {
    let text = std::fs::read_to_string(out.join("demo-stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
