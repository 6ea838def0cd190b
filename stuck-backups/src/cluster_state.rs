//! A point-in-time read of the Longhorn objects a diagnosis needs, from one namespace.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use kube::api::ListParams;
use kube::{Api, Resource};
use longhorn_types::{Backup, BackupTarget, Engine, Setting, Snapshot, Volume};
use serde::de::DeserializeOwned;

/// The Longhorn settings that matter for stuck Backups (reference §5).
pub const RELEVANT_SETTINGS: &[&str] = &[
    "backup-target",
    "backup-concurrent-limit",
    "failed-backup-ttl",
    "backup-execution-timeout",
    "backupstore-poll-interval",
    "recurring-failed-jobs-history-limit",
    "allow-recurring-job-while-volume-detached",
    "auto-cleanup-recurring-job-backup-snapshot",
    "snapshot-max-count",
];

/// Objects of one namespace, by name.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub namespace: String,
    pub backups: Vec<Backup>,
    pub snapshots: HashMap<String, Snapshot>,
    pub volumes: HashMap<String, Volume>,
    pub engines: Vec<Engine>,
    pub targets: HashMap<String, BackupTarget>,
    /// Values of [`RELEVANT_SETTINGS`] that exist.
    pub settings: BTreeMap<String, String>,
}

impl ClusterState {
    /// Lists every kind, in pages of 500 so a cluster with 100k Backups is read in bounded
    /// requests. Engines are listed after Snapshots on purpose: a Snapshot's `readyToUse` was
    /// derived from an engine status at least as old as the one read here, so a snapshot
    /// missing from this engine status although its Snapshot says ready was really dropped
    /// (`diagnosis`, `SnapshotLostInEngine`). The re-check before a delete reads in the same
    /// order.
    pub async fn fetch(client: kube::Client, namespace: &str) -> anyhow::Result<Self> {
        let backups = list_all::<Backup>(&client, namespace).await?;
        let snapshots = list_all::<Snapshot>(&client, namespace).await?;
        let volumes = list_all::<Volume>(&client, namespace).await?;
        let engines = list_all::<Engine>(&client, namespace).await?;
        let targets = list_all::<BackupTarget>(&client, namespace).await?;
        let settings = list_all::<Setting>(&client, namespace)
            .await?
            .into_iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                RELEVANT_SETTINGS
                    .contains(&name.as_str())
                    .then_some((name, s.value))
            })
            .collect();
        Ok(Self {
            namespace: namespace.to_string(),
            backups,
            snapshots: by_name(snapshots),
            volumes: by_name(volumes),
            engines,
            targets: by_name(targets),
            settings,
        })
    }

    /// The active engine of `volume` (the only one, or the one with `spec.active`).
    pub fn engine_of(&self, volume: &str) -> Option<&Engine> {
        let mut of_volume = self.engines.iter().filter(|e| e.spec.volume_name == volume);
        let first = of_volume.next()?;
        if first.spec.active {
            return Some(first);
        }
        of_volume.find(|e| e.spec.active).or(Some(first))
    }
}

fn by_name<K: Resource>(items: Vec<K>) -> HashMap<String, K> {
    items
        .into_iter()
        .map(|o| (o.meta().name.clone().unwrap_or_default(), o))
        .collect()
}

async fn list_all<K>(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.with_context(|| {
            format!(
                "listing {}.{} in namespace {namespace}",
                K::plural(&()),
                K::group(&())
            )
        })?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}
