//! `kubectl longhorn-guard ...` with the real kubectl v1.33.9 (`LHG_TEST_KUBECTL`, installed by
//! `scripts/test.sh`): the guard's binary under the plugin name `kubectl-longhorn_guard` on
//! `PATH` (what the README's install step makes) is found by `kubectl plugin list`, and
//! `doctor` / `prune` run through kubectl against the local control plane with kubectl's own
//! flag names (`--kubeconfig`, `--context`, `-n`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::Result;
use longhorn_guard_testkit::TestCluster;
use longhorn_types::{Backup, Snapshot, shapes};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");
const PLUGIN: &str = "kubectl-longhorn_guard";

fn kubectl_binary() -> PathBuf {
    longhorn_guard_testkit::test_env()
        .kubectl()
        .unwrap_or_else(|e| panic!("{e}"))
        .clone()
}

/// A directory holding only the plugin (a symlink to the guard's binary, as the README's
/// install step makes it), removed on drop.
struct PluginDir(PathBuf);

impl PluginDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "lhg-kubectl-plugin-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(BIN, dir.join(PLUGIN)).unwrap();
        Self(dir)
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// `kubectl <args>` with only the plugin directory and the system directories on `PATH`, no
/// `KUBECONFIG` (the cluster is named by flags, as a user would on a machine with several).
fn kubectl(plugins: &PluginDir, args: &[&str]) -> Output {
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", plugins.0.display());
    Command::new(kubectl_binary())
        .env_clear()
        .env("PATH", path)
        .env("HOME", &plugins.0)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The name of the kubeconfig's current context.
fn current_context(kubeconfig: &Path) -> String {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    file.current_context
        .expect("the test kubeconfig names a context")
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn kubectl_finds_the_plugin_and_runs_doctor_and_prune_through_it() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("plugin").await?;
    // A Backup stuck for a known reason (its Snapshot is gone), and one that is fine.
    cluster
        .create::<Snapshot>(&ns, shapes::snapshot(&ns, "snap-ok", "vol-1"))
        .await?;
    cluster
        .create::<Backup>(
            &ns,
            shapes::backup(&ns, "backup-of-gone-snapshot", "vol-1", "snap-gone", None),
        )
        .await?;
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    let context = current_context(cluster.kubeconfig_path());
    let plugins = PluginDir::new();

    let listed = kubectl(&plugins, &["plugin", "list"]);
    assert!(
        text(&listed).contains(&format!("{}/{PLUGIN}", plugins.0.display())),
        "kubectl plugin list does not show the plugin:\n{}",
        text(&listed)
    );

    let help = kubectl(&plugins, &["longhorn-guard", "--help"]);
    assert!(help.status.success(), "{}", text(&help));
    assert!(
        text(&help).contains("Usage: kubectl longhorn-guard"),
        "help should read as the user typed it:\n{}",
        text(&help)
    );

    // doctor through kubectl, cluster by kubectl's flags: exit 1 = something needs attention.
    let doctor = kubectl(
        &plugins,
        &[
            "longhorn-guard",
            "doctor",
            "--kubeconfig",
            &kubeconfig,
            "--context",
            &context,
            "-n",
            &ns,
            "-o",
            "json",
        ],
    );
    assert_eq!(doctor.status.code(), Some(1), "{}", text(&doctor));
    let report: Value = serde_json::from_slice(&doctor.stdout)?;
    let names: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["backup-of-gone-snapshot"], "{report:#}");

    // A context the kubeconfig does not have is an error naming it, not another cluster.
    let wrong = kubectl(
        &plugins,
        &[
            "longhorn-guard",
            "doctor",
            "--kubeconfig",
            &kubeconfig,
            "--context",
            "no-such-context",
            "-n",
            &ns,
        ],
    );
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(text(&wrong).contains("no-such-context"), "{}", text(&wrong));

    // prune without --yes through kubectl: a dry run that deletes nothing.
    let restore_file = plugins.0.join("restore.yaml");
    let prune = kubectl(
        &plugins,
        &[
            "longhorn-guard",
            "prune",
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &ns,
            "--restore-file",
            &restore_file.display().to_string(),
        ],
    );
    assert!(prune.status.success(), "{}", text(&prune));
    let left = kube::Api::<Backup>::namespaced(cluster.client(), &ns)
        .list(&Default::default())
        .await?;
    assert_eq!(left.items.len(), 1, "a dry run deleted something");
    Ok(())
}
