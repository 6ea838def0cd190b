//! The watches that feed the index: one kube-runtime `watcher` per kind (list+watch with
//! the default config: the API server may be as old as 1.20, so no streaming lists).

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume};
use tokio::task::JoinSet;

use super::{Applied, Index, IndexedKind};
use crate::metrics::Metrics;

/// Which namespaces to watch.
#[derive(Clone, Debug, Default)]
pub enum WatchScope {
    #[default]
    AllNamespaces,
    Namespace(String),
}

impl WatchScope {
    fn api<K>(&self, client: Client) -> Api<K>
    where
        K: IndexedKind + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            WatchScope::AllNamespaces => Api::all(client),
            WatchScope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }
}

/// Starts one watch task per kind into `tasks`. They run until aborted.
pub fn run_watches(
    tasks: &mut JoinSet<()>,
    client: Client,
    scope: &WatchScope,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
) {
    tasks.spawn(watch_kind::<Snapshot>(
        scope.api(client.clone()),
        index.clone(),
        metrics.clone(),
    ));
    tasks.spawn(watch_kind::<Volume>(
        scope.api(client.clone()),
        index.clone(),
        metrics.clone(),
    ));
    tasks.spawn(watch_kind::<Engine>(
        scope.api(client.clone()),
        index.clone(),
        metrics.clone(),
    ));
    tasks.spawn(watch_kind::<Backup>(
        scope.api(client.clone()),
        index.clone(),
        metrics.clone(),
    ));
    tasks.spawn(watch_kind::<BackupTarget>(
        scope.api(client),
        index,
        metrics,
    ));
}

async fn watch_kind<K: IndexedKind>(api: Api<K>, index: Arc<Index>, metrics: Arc<Metrics>) {
    let kind = K::KIND;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => match index.apply(event) {
                Applied::RelistStarted { restart: true } => {
                    metrics.watch_restarted(kind);
                    tracing::info!(kind = kind.as_str(), "watch restarted: relisting");
                }
                Applied::RelistDone => {
                    tracing::info!(
                        kind = kind.as_str(),
                        objects = index.view().data().len(kind),
                        "initial list indexed"
                    );
                }
                _ => {}
            },
            Err(error) => {
                metrics.watch_failed(kind);
                tracing::warn!(kind = kind.as_str(), %error, "watch error; retrying with backoff");
            }
        }
    }
}
