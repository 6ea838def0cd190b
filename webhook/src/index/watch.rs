//! The watches that feed the index: per kind a streamed list ([`list_into`]) and a watch from
//! its resourceVersion (the API server may be as old as 1.20, so no streaming lists), and the
//! staleness rule: a kind whose watch fails for longer than the bound is relisted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{WatchEvent, WatchParams};

use kube::{Api, Client, Resource};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume};
use tokio::task::JoinSet;

use super::list::list_into;
use super::{Applied, Index, IndexEvent, IndexMetrics, IndexedKind};

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

    fn namespace(&self) -> Option<&str> {
        match self {
            WatchScope::AllNamespaces => None,
            WatchScope::Namespace(ns) => Some(ns),
        }
    }
}

/// Starts one watch task per kind into `tasks`. They run until aborted.
pub fn run_watches(
    tasks: &mut JoinSet<()>,
    client: Client,
    scope: &WatchScope,
    index: Arc<Index>,
    metrics: IndexMetrics,
) {
    let c = || client.clone();
    let s = || scope.clone();
    let i = || index.clone();
    let m = || metrics.clone();
    tasks.spawn(watch_kind::<Snapshot>(c(), s(), i(), m()));
    tasks.spawn(watch_kind::<Volume>(c(), s(), i(), m()));
    tasks.spawn(watch_kind::<Engine>(c(), s(), i(), m()));
    tasks.spawn(watch_kind::<Backup>(c(), s(), i(), m()));
    tasks.spawn(watch_kind::<BackupTarget>(c(), s(), i(), m()));
}

/// One kind's watch, forever: list (see [`list_into`]: streamed from the watch cache), then
/// watch from the list's resourceVersion, re-watching from the last seen resourceVersion when
/// a watch ends or fails, and relisting when the API server no longer has that version (410
/// Gone) or the watch has failed for longer than the staleness bound.
///
/// Measured with 100k Backups + 100k Snapshots + 10k Volumes on the local 1.20 API server
/// (BENCHMARKS.md, "memory and start-up at scale"): ready at 0.84–1.16× the time the API
/// server needs just to send the lists, 49 MiB peak. kube-runtime's watcher, which this
/// replaces, took 83 s in pages of 500 from etcd, or peaked at 2 GiB unpaged from the watch
/// cache (kube decodes each kind's whole response at once).
async fn watch_kind<K>(client: Client, scope: WatchScope, index: Arc<Index>, metrics: IndexMetrics)
where
    K: IndexedKind + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let kind = K::KIND;
    let url_path = K::url_path(&(), scope.namespace());
    let api: Api<K> = scope.api(client.clone());
    let mut backoff = WatchBackoff::new();
    loop {
        // (Re)list until one succeeds. Until then the kind is listing: not trusted.
        let started = std::time::Instant::now();
        if let Applied::RelistStarted { restart: true } = index.apply::<K>(IndexEvent::RelistStart)
        {
            metrics.watch_restarted(kind);
            tracing::info!(kind = kind.as_str(), "relisting");
        }
        let mut resource_version = match list_into::<K>(&client, &url_path, &index).await {
            Ok(listed) => {
                index.apply::<K>(IndexEvent::RelistDone);
                metrics.list_done(kind, started.elapsed());
                backoff.reset();
                tracing::info!(
                    kind = kind.as_str(),
                    objects = listed.items,
                    ms = started.elapsed().as_millis() as u64,
                    resource_version = %listed.resource_version,
                    "list indexed"
                );
                listed.resource_version
            }
            Err(error) => {
                index.watch_failed(kind);
                metrics.watch_failed(kind);
                let delay = backoff.next().unwrap_or(WatchBackoff::MAX);
                tracing::warn!(
                    kind = kind.as_str(),
                    url = %url_path,
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "list failed; retrying with backoff"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        // Watch until a relist is needed.
        let why = follow(&api, &mut resource_version, &index, &metrics, &mut backoff).await;
        match why {
            Relist::Gone => {
                tracing::info!(kind = kind.as_str(), "watch expired (410 Gone): relisting");
            }
            Relist::Stale => {
                metrics.index_went_stale(kind);
                tracing::warn!(
                    kind = kind.as_str(),
                    bound_ms = index.staleness().as_millis() as u64,
                    "watch failing for longer than the staleness bound: \
                     index not trusted for this kind until a relist completes"
                );
            }
        }
    }
}

/// Why [`follow`] returned.
enum Relist {
    /// The API server no longer has the resourceVersion (410 Gone).
    Gone,
    /// The watch failed for longer than the staleness bound.
    Stale,
}

/// Watches kind `K` from `resource_version`, applying each event to the index and keeping
/// `resource_version` at the last one seen; returns when only a relist can go on.
async fn follow<K: IndexedKind>(
    api: &Api<K>,
    resource_version: &mut String,
    index: &Index,
    metrics: &IndexMetrics,
    backoff: &mut WatchBackoff,
) -> Relist {
    let kind = K::KIND;
    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    loop {
        // Every await below is cut short when the kind turns stale, and the whole watch when
        // it outlives its own timeout: a connection gone half-open (no FIN, no RST) would
        // otherwise leave a quiet watch waiting forever.
        let step = async {
            let stream = match api.watch(&params, resource_version).await {
                Ok(stream) => stream,
                Err(error) => return Err(WatchFailure::Client(error)),
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = event.map_err(WatchFailure::Client)?;
                apply_watch_event(index, event, resource_version).map_err(WatchFailure::Status)?;
                backoff.reset();
            }
            // The API server closed the watch (its timeout): go on from where it ended.
            Ok(())
        };
        let step = async {
            tokio::time::timeout(WATCH_CLIENT_TIMEOUT, step)
                .await
                .unwrap_or(Err(WatchFailure::Silent))
        };
        let outcome = match index.until_stale(kind) {
            None => Some(step.await),
            Some(left) => tokio::select! {
                outcome = step => Some(outcome),
                () = tokio::time::sleep(left) => None,
            },
        };
        let failure = match outcome {
            None => return Relist::Stale,
            Some(Ok(())) => continue,
            Some(Err(failure)) if failure.is_gone() => return Relist::Gone,
            Some(Err(failure)) => failure,
        };
        index.watch_failed(kind);
        metrics.watch_failed(kind);
        let delay = backoff.next().unwrap_or(WatchBackoff::MAX);
        tracing::warn!(
            kind = kind.as_str(),
            error = %failure,
            retry_in_ms = delay.as_millis() as u64,
            "watch error; retrying with backoff"
        );
        // Not past the moment the kind turns stale.
        match index.until_stale(kind) {
            Some(left) if left <= delay => {
                tokio::time::sleep(left).await;
                return Relist::Stale;
            }
            _ => tokio::time::sleep(delay).await,
        }
    }
}

/// Applies one decoded watch event of kind `K` to `index` and moves `resource_version` to the
/// event's (never to an empty one); an `ERROR` event is handed back as its Status, for the
/// watch to end on. Public for fuzzing and tests.
pub fn apply_watch_event<K: IndexedKind>(
    index: &Index,
    event: WatchEvent<K>,
    resource_version: &mut String,
) -> Result<(), Box<kube::core::Status>> {
    if let Some(rv) = event_resource_version(&event) {
        *resource_version = rv;
    }
    match event {
        WatchEvent::Added(obj) | WatchEvent::Modified(obj) => {
            index.apply(IndexEvent::Upsert(obj));
        }
        WatchEvent::Deleted(obj) => {
            index.apply(IndexEvent::Delete(obj));
        }
        WatchEvent::Bookmark(_) => index.watch_alive(K::KIND),
        WatchEvent::Error(status) => return Err(status),
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum WatchFailure {
    #[error("{0}")]
    Client(kube::Error),
    #[error("the API server ended the watch: {} ({})", .0.message, .0.code)]
    Status(Box<kube::core::Status>),
    #[error(
        "the watch outlived its timeout by {} s without the API server closing it",
        WATCH_CLIENT_TIMEOUT.as_secs() - WATCH_TIMEOUT_SECS as u64
    )]
    Silent,
}

impl WatchFailure {
    /// The API server no longer has the watch's resourceVersion (410 Gone), as an event in the
    /// watch stream (how the watch cache says it) or as the response to the watch request.
    fn is_gone(&self) -> bool {
        match self {
            WatchFailure::Status(status) => status.code == 410,
            WatchFailure::Client(kube::Error::Api(status)) => status.code == 410,
            _ => false,
        }
    }
}

/// The `timeoutSeconds` each watch asks for (kube's default): the API server ends the watch
/// then, and the webhook re-watches from the last resourceVersion.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// How long a watch may last on the client's side: its timeout and a margin. A watch still
/// open by then sits on a dead connection and is retried as a failure.
const WATCH_CLIENT_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 30);

/// The resourceVersion an event brings the watch to.
fn event_resource_version<K: IndexedKind>(event: &WatchEvent<K>) -> Option<String> {
    match event {
        WatchEvent::Added(obj) | WatchEvent::Modified(obj) | WatchEvent::Deleted(obj) => {
            obj.meta().resource_version.clone()
        }
        WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
        WatchEvent::Error(_) => None,
    }
    .filter(|rv| !rv.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            message: "too old resource version".into(),
            ..Default::default()
        })
    }

    #[test]
    fn gone_is_410_as_an_event_or_as_the_response() {
        assert!(WatchFailure::Status(status(410)).is_gone());
        assert!(WatchFailure::Client(kube::Error::Api(status(410))).is_gone());
        assert!(!WatchFailure::Status(status(500)).is_gone());
        assert!(!WatchFailure::Client(kube::Error::Api(status(504))).is_gone());
        assert!(!WatchFailure::Silent.is_gone());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = WatchBackoff::new();
        let delays: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
