//! The Longhorn objects a test creates through the API server in its namespace, each with the
//! status Longhorn v1.7.2 writes (`longhorn_types::shapes`), and the RBAC a test grants.

use anyhow::Result;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_testkit::TestCluster;
use longhorn_types::{BackupTarget, Engine, Snapshot, Volume, shapes};
use serde_json::{Value, json};

/// The Volume `name`, attached to `node`.
pub async fn volume(cluster: &TestCluster, ns: &str, name: &str, node: &str) -> Result<()> {
    volume_object(cluster, ns, shapes::volume(ns, name, node), node).await
}

/// The Volume `obj` (a [`shapes::volume`], changed by the caller), attached to `node`.
pub async fn volume_object(cluster: &TestCluster, ns: &str, obj: Value, node: &str) -> Result<()> {
    cluster
        .create_with_status::<Volume>(ns, obj, shapes::volume_status(node))
        .await?;
    Ok(())
}

/// The ready Snapshot `name` of `volume`, on `node`.
pub async fn snapshot(
    cluster: &TestCluster,
    ns: &str,
    name: &str,
    volume: &str,
    node: &str,
) -> Result<()> {
    cluster
        .create_with_status::<Snapshot>(
            ns,
            shapes::snapshot(ns, name, volume),
            shapes::snapshot_status(node, ""),
        )
        .await?;
    Ok(())
}

/// The Engine of `volume` on `node` (no status).
pub async fn engine(cluster: &TestCluster, ns: &str, volume: &str, node: &str) -> Result<()> {
    cluster
        .create::<Engine>(ns, shapes::engine(ns, volume, node))
        .await?;
    Ok(())
}

/// The BackupTarget `default` (`s3://bk@us-east-1/`), available, checked from `node-1`.
pub async fn default_target(cluster: &TestCluster, ns: &str) -> Result<()> {
    default_target_from(cluster, ns, "node-1").await
}

/// [`default_target`], its availability checked from `node`.
pub async fn default_target_from(cluster: &TestCluster, ns: &str, node: &str) -> Result<()> {
    cluster
        .create_with_status::<BackupTarget>(
            ns,
            shapes::backup_target(ns, "default", "s3://bk@us-east-1/"),
            shapes::backup_target_status(node, true),
        )
        .await?;
    Ok(())
}

/// The Role `name` in `ns` allowing `verbs` on the longhorn.io `resources`, bound to
/// `subjects` (RoleBinding subjects as JSON).
pub async fn grant(
    cluster: &TestCluster,
    ns: &str,
    name: &str,
    resources: &[&str],
    verbs: &[&str],
    subjects: Value,
) -> Result<()> {
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "rules": [{ "apiGroups": ["longhorn.io"], "resources": resources, "verbs": verbs }],
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
        "subjects": subjects,
    }))?;
    Api::<Role>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    Api::<RoleBinding>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}
