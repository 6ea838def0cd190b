//! The README's prune-and-restore procedure with the guard registered on the local API server
//! (by `url: https://127.0.0.1:PORT`), run with the real binary:
//! 1. `longhorn-guard prune --yes` writes a restore file and deletes the stuck Backups;
//! 2. `kubectl create -f <restore file>` (what the README used to say) is refused by the guard:
//!    every Backup in the file has its snapshot gone;
//! 3. `longhorn-guard prune --restore FILE` without the policy's restore exemption is refused
//!    too, says how to fix it, creates nothing and exits non-zero;
//! 4. with the exemption in the (hot-reloaded) policy, `prune --restore FILE` brings them back,
//!    marked as restored; other Backups of missing snapshots are still refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Api, Client};
use longhorn_guard_certs::pki::{self, LeafSpec, LeafUsage};
use longhorn_guard_stuck_backups::{RESTORED_FROM_ANNOTATION, RESTORED_LABEL};
use longhorn_guard_testkit::{TestCluster, wait_for};
use longhorn_types::{Backup, shapes};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");

/// The policy the README shows for restores.
const RESTORE_EXEMPTION: &str =
    "exemptions:\n  labels:\n    longhorn-guard.io/restored-by-prune: \"true\"\n";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `longhorn-guard <args>` against the test control plane: (success, stdout + stderr).
/// On a blocking thread: the guard serving the API server's reviews runs on this runtime.
async fn run(cluster: &TestCluster, args: &[&str]) -> Result<(bool, String)> {
    let mut command = cluster.command(BIN);
    command.args(["--log-format", "text"]).args(args);
    let what = format!("running longhorn-guard {args:?}");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context(what)?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

async fn names(client: &Client, ns: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = Api::<Backup>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|b| b.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Creates `obj` as a Backup: `Ok(None)` when admitted, `Ok(Some(message))` when refused.
async fn create(client: &Client, ns: &str, obj: Value, dry_run: bool) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Backup>(&()));
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    match api.create(&params, &serde_json::from_value(obj)?).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) => Ok(Some(e.message)),
        Err(e) => Err(e.into()),
    }
}

/// A server certificate for 127.0.0.1 signed by a fresh CA; returns the CA's PEM.
fn certificate(dir: &Path) -> Result<String> {
    let ca = pki::new_ca("lhg-prune-restore-test", Duration::from_secs(86_400))?;
    let leaf = pki::issue_leaf(
        &ca,
        &LeafSpec {
            common_name: "127.0.0.1".into(),
            dns_names: vec!["127.0.0.1".into()],
            usage: LeafUsage::Server,
        },
        Duration::from_secs(86_400),
    )?;
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &leaf.key_pem)?;
    Ok(ca.cert_pem)
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn the_documented_restore_brings_pruned_backups_back_with_the_guard_registered() -> Result<()>
{
    longhorn_guard_runtime::install_crypto_provider();
    let cluster = TestCluster::connect().await?;
    let client = cluster.client();
    let ns = cluster.namespace("prune-restore").await?;
    let dir = TempDir(std::env::temp_dir().join(format!("lhg-prune-restore-{ns}")));
    std::fs::create_dir_all(&dir.0)?;

    // The incident's state, seeded before the guard is registered (it would refuse it).
    let mut removed = shapes::snapshot_status("node-1", "");
    removed["markRemoved"] = json!(true);
    removed["readyToUse"] = json!(false);
    let seed = [
        (
            shapes::backup_target(&ns, "default", "s3://bk@us-east-1/"),
            shapes::backup_target_status("node-1", true),
        ),
        (
            shapes::volume(&ns, "vol-1", "node-1"),
            shapes::volume_status("node-1"),
        ),
        (
            shapes::snapshot(&ns, "snap-ok", "vol-1"),
            shapes::snapshot_status("node-1", ""),
        ),
        (shapes::snapshot(&ns, "snap-removed", "vol-1"), removed),
    ];
    for (obj, status) in seed {
        cluster
            .create_longhorn_object(&ns, obj, Some(status))
            .await?;
    }
    for (name, snap) in [
        ("backup-gone", "snap-gone"),
        ("backup-removed", "snap-removed"),
        ("backup-ok", "snap-ok"),
    ] {
        cluster
            .create_longhorn_object(
                &ns,
                shapes::backup(&ns, name, "vol-1", snap, Some("daily-backup")),
                Some(shapes::backup_status("Pending", "node-1", "vol-1", snap)),
            )
            .await?;
    }

    // The guard, with the default policy from a file it hot-reloads, registered by url.
    let ca_pem = certificate(&dir.0)?;
    let policy = dir.0.join("policy.yaml");
    std::fs::write(&policy, "{}\n")?;
    let config = longhorn_guard_webhook::WebhookConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        metrics_listen: ([127, 0, 0, 1], 0).into(),
        tls_cert: dir.0.join("tls.crt"),
        tls_key: dir.0.join("tls.key"),
        policy_path: Some(policy.clone()),
        namespace: Some(ns.clone()),
        shutdown_grace: Duration::from_secs(5),
        policy_poll_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let guard = longhorn_guard_webhook::start(config, client.clone()).await?;
    let vwc_name = format!("lhg-prune-restore-{ns}");
    let vwc = common::backup_webhook_by_url(
        &vwc_name,
        "backups.longhorn-guard.io",
        &ns,
        &format!("https://{}/validate/backups", guard.local_addr()),
        Some(&ca_pem),
    )?;
    let vwcs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    vwcs.create(&PostParams::default(), &vwc).await?;
    let result = procedure(&cluster, &client, &ns, &dir.0, &policy).await;
    vwcs.delete(&vwc_name, &DeleteParams::default()).await?;
    guard.shutdown().await?;
    result
}

async fn procedure(
    cluster: &TestCluster,
    client: &Client,
    ns: &str,
    dir: &Path,
    policy: &Path,
) -> Result<()> {
    // The API server loads webhook configurations asynchronously: wait until it calls the
    // guard (a dry-run Backup of a missing snapshot is refused by longhorn-guard).
    let probe = |labels: Value| {
        let mut b = shapes::backup(ns, "lhg-probe", "vol-1", "snap-that-never-exists", None);
        if let Some(extra) = labels.as_object() {
            for (k, v) in extra {
                b["metadata"]["labels"][k] = v.clone();
            }
        }
        b
    };
    wait_for(
        Duration::from_secs(30),
        "the API server to call the guard",
        || async {
            Ok(create(client, ns, probe(json!({})), true)
                .await?
                .is_some_and(|m| m.contains("longhorn-guard denied")))
        },
    )
    .await?;

    // 1. prune --yes (the seeded Backups are seconds old: no age threshold here).
    let restore_file = dir.join("restore.yaml");
    let file = restore_file.to_str().context("temp path is not UTF-8")?;
    let (ok, out) = run(
        cluster,
        &[
            "prune",
            "-n",
            ns,
            "--yes",
            "--stuck-after-minutes",
            "0",
            "--restore-file",
            file,
        ],
    )
    .await?;
    ensure!(ok, "prune --yes failed: {out}");
    assert!(
        out.contains(&format!("longhorn-guard prune -n {ns} --restore {file}")),
        "prune does not say how to restore: {out}"
    );
    assert_eq!(names(client, ns).await?, ["backup-ok"], "{out}");
    let items = longhorn_guard_stuck_backups::restore::read_restore_file(&restore_file)?;
    assert_eq!(items.len(), 2);
    let header = std::fs::read_to_string(&restore_file)?;
    assert!(
        header.starts_with(&format!(
            "# Backups deleted by `longhorn-guard prune`. Restore with: longhorn-guard prune -n {ns} --restore {file}"
        )),
        "{header}"
    );

    // 2. What the README used to say, `kubectl create -f <restore file>`: refused.
    for item in &items {
        let refused = create(client, ns, item.clone(), false).await?;
        assert!(
            refused
                .as_deref()
                .is_some_and(|m| m.contains("longhorn-guard denied")),
            "{}: {refused:?}",
            item["metadata"]["name"]
        );
    }

    // 3. The restore without the policy's exemption: refused, with the fix named.
    let (ok, out) = run(cluster, &["prune", "-n", ns, "--restore", file]).await?;
    assert!(!ok, "a refused restore must fail: {out}");
    assert!(
        out.contains("0 restored, 0 already present, 2 refused"),
        "{out}"
    );
    assert!(
        out.contains("refused backup-gone: ") && out.contains("exemptions.labels"),
        "{out}"
    );
    assert_eq!(names(client, ns).await?, ["backup-ok"]);

    // 4. The documented policy exemption, hot-reloaded; wait until the guard applies it.
    std::fs::write(policy, RESTORE_EXEMPTION)?;
    let exempt = json!({ RESTORED_LABEL: "true" });
    wait_for(
        Duration::from_secs(30),
        "the guard to apply the restore exemption",
        || async {
            Ok(create(client, ns, probe(exempt.clone()), true)
                .await?
                .is_none())
        },
    )
    .await?;
    let (ok, out) = run(cluster, &["prune", "-n", ns, "--restore", file]).await?;
    ensure!(ok, "prune --restore failed: {out}");
    assert!(
        out.contains("2 restored, 0 already present, 0 refused"),
        "{out}"
    );
    assert_eq!(
        names(client, ns).await?,
        ["backup-gone", "backup-ok", "backup-removed"]
    );
    let api = Api::<Backup>::namespaced(client.clone(), ns);
    for item in &items {
        let name = item["metadata"]["name"].as_str().context("item name")?;
        let back = serde_json::to_value(api.get(name).await?)?;
        assert_eq!(back["spec"], item["spec"], "{name}: spec");
        assert_eq!(back["metadata"]["labels"][RESTORED_LABEL], "true", "{name}");
        assert!(
            back["metadata"]["annotations"][RESTORED_FROM_ANNOTATION]
                .as_str()
                .is_some_and(|a| a.contains(file)),
            "{name}: {back}"
        );
    }
    // Again: nothing to do, nothing refused.
    let (ok, out) = run(cluster, &["prune", "-n", ns, "--restore", file]).await?;
    ensure!(ok, "second restore failed: {out}");
    assert!(
        out.contains("0 restored, 2 already present, 0 refused"),
        "{out}"
    );

    // The exemption is the restore's only: an unmarked Backup of a missing snapshot is
    // still refused.
    let refused = create(client, ns, probe(json!({})), true).await?;
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("longhorn-guard denied")),
        "{refused:?}"
    );
    Ok(())
}
