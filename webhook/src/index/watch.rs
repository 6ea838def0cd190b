//! The watches that feed the index: one kube-runtime `watcher` per kind (list+watch, see
//! [`list_config`]; the API server may be as old as 1.20, so no streaming lists), and the
//! staleness rule: a kind whose watch fails for longer than the bound is relisted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
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

/// How every watch lists: kube's default, quorum reads from etcd in pages of 500. Measured
/// with 100k Backups + 100k Snapshots + 10k Volumes on the local 1.20 API server
/// (BENCHMARKS.md, "memory and start-up at scale"), the alternatives trade memory for time:
///
/// | list | ready | steady RSS | peak RSS |
/// |---|---|---|---|
/// | pages of 500 (this) | 83 s | 61 MiB | 63 MiB |
/// | pages of 2,000 | 49 s | 118 MiB | 118 MiB |
/// | `resourceVersion=0`, from the watch cache | 31 s | 1,772 MiB | 1,998 MiB |
///
/// The watch cache ignores `limit`, so a list at `resourceVersion=0` is one response per kind
/// that kube decodes whole; larger pages leave more freed memory with the allocator. Both
/// break the index's memory budget (and the Deployment's 256 MiB limit for the cache list).
/// Note for whoever tries again: with `page_size` set, kube-core leaves `resourceVersion=0`
/// out of the request, so `any_semantic()` alone silently still pages from etcd.
fn list_config() -> watcher::Config {
    watcher::Config::default()
}

async fn watch_kind<K: IndexedKind>(api: Api<K>, index: Arc<Index>, metrics: Arc<Metrics>) {
    let kind = K::KIND;
    // One watcher per pass. A pass ends when the kind's watch has failed for longer than the
    // staleness bound: the kind is then untrusted, and since a watch that resumes quietly
    // would never say it works again, the next pass relists (trust returns at `InitDone`).
    loop {
        let stream = watcher(api.clone(), list_config());
        let mut stream = std::pin::pin!(stream);
        let mut backoff = WatchBackoff::new();
        loop {
            let item = match index.until_stale(kind) {
                None => stream.next().await,
                Some(left) => tokio::select! {
                    item = stream.next() => item,
                    () = tokio::time::sleep(left) => {
                        metrics.index_went_stale(kind);
                        tracing::warn!(
                            kind = kind.as_str(),
                            bound_ms = index.staleness().as_millis() as u64,
                            "watch failing for longer than the staleness bound: \
                             index not trusted for this kind until a relist completes"
                        );
                        break;
                    }
                },
            };
            let Some(item) = item else {
                break;
            };
            match item {
                Ok(event) => {
                    if !matches!(event, watcher::Event::Init) {
                        // News from the API server (`Init` comes before each list attempt).
                        backoff.reset();
                    }
                    match index.apply(event) {
                        Applied::RelistStarted { restart: true } => {
                            metrics.watch_restarted(kind);
                            tracing::info!(kind = kind.as_str(), "watch restarted: relisting");
                        }
                        Applied::RelistDone => {
                            tracing::info!(
                                kind = kind.as_str(),
                                objects = index.view().data().len(kind),
                                "list indexed"
                            );
                        }
                        _ => {}
                    }
                }
                Err(error) => {
                    index.watch_failed(kind);
                    metrics.watch_failed(kind);
                    let delay = backoff.next().unwrap_or(WatchBackoff::MAX);
                    if is_gone(&error) {
                        tracing::info!(kind = kind.as_str(), %error, "watch expired (410 Gone): relisting");
                    } else {
                        tracing::warn!(
                            kind = kind.as_str(),
                            %error,
                            retry_in_ms = delay.as_millis() as u64,
                            "watch error; retrying with backoff"
                        );
                    }
                    // Not past the moment the kind turns stale: the timer above handles that.
                    let delay = index
                        .until_stale(kind)
                        .map_or(delay, |left| left.min(delay));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Retry delays of one kind's watch: 0.5 s doubling to 8 s, back to 0.5 s after an event with
/// data from the API server.
///
/// Not kube-runtime's `default_backoff`: it goes up to 30 s (after a 410 Gone the watcher
/// waits one more delay before it relists: up to a minute before an index that was cut off is
/// trusted again), and it resets on every event, `Init` included, which the watcher emits
/// before each list attempt, so a failing list is retried every 0.8 s forever. Five watches
/// per replica retrying every 8 s at most are nothing to an API server.
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(8);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        Some(delay)
    }
}

impl WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The API server no longer has the watch's resourceVersion: the watcher relists.
fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = WatchBackoff::new();
        let delays: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
