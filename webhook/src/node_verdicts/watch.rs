//! The list and watch of the verdict Leases (`node_verdict::lease::LABEL_SELECTOR`) in the
//! guard's namespace. One small object per node: a plain list (no streaming needed, unlike the
//! index's kinds), then a watch from its resourceVersion; a 410 Gone or a watch failing for
//! longer than the staleness bound relists (the index's rules, `crate::index::watch`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use node_verdict::lease::LABEL_SELECTOR;

use super::{NodeVerdictMetrics, NodeVerdicts};

/// The `timeoutSeconds` each watch asks for; a watch still open 30 s past it is retried.
const WATCH_TIMEOUT_SECS: u32 = 290;
const WATCH_CLIENT_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 30);
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(8);

/// Where the watch runs and what it reports to.
pub struct VerdictWatch {
    pub client: Client,
    /// The guard's namespace (where the agents publish).
    pub namespace: String,
    pub verdicts: Arc<NodeVerdicts>,
    pub metrics: NodeVerdictMetrics,
    /// The staleness bound now (policy `indexStalenessMs`, hot-reloadable).
    pub staleness: Arc<dyn Fn() -> Duration + Send + Sync>,
}

fn warn_unreadable(namespace: &str, unreadable: &[(String, String)]) {
    for (lease, error) in unreadable {
        tracing::warn!(
            %namespace,
            %lease,
            %error,
            "verdict Lease cannot be read: ignored (its node is not protected by it)"
        );
    }
}

impl VerdictWatch {
    /// Lists and watches forever (until the task is aborted).
    pub async fn run(self) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut delay = FIRST_DELAY;
        loop {
            self.verdicts.relist_start();
            let list = api
                .list(&ListParams::default().labels(LABEL_SELECTOR))
                .await;
            let mut resource_version = match list {
                Ok(list) => {
                    let (changes, unreadable) = self.verdicts.replace(&list.items);
                    self.metrics.changed(changes);
                    warn_unreadable(&self.namespace, &unreadable);
                    tracing::info!(
                        namespace = %self.namespace,
                        leases = list.items.len(),
                        "node verdict Leases listed"
                    );
                    delay = FIRST_DELAY;
                    list.metadata.resource_version.unwrap_or_default()
                }
                Err(error) => {
                    self.failure(&error.to_string(), delay).await;
                    delay = (delay * 2).min(MAX_DELAY);
                    continue;
                }
            };
            self.follow(&api, &mut resource_version, &mut delay).await;
        }
    }

    async fn failure(&self, error: &str, delay: Duration) {
        self.verdicts.failed();
        self.metrics.watch_failures.inc();
        tracing::warn!(
            namespace = %self.namespace,
            %error,
            retry_in_ms = delay.as_millis() as u64,
            "node verdict Leases: list or watch failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }

    /// Watches from `resource_version` until only a relist can go on (410 Gone, stale).
    async fn follow(&self, api: &Api<Lease>, resource_version: &mut String, delay: &mut Duration) {
        let params = WatchParams::default()
            .labels(LABEL_SELECTOR)
            .timeout(WATCH_TIMEOUT_SECS);
        loop {
            let step = tokio::time::timeout(
                WATCH_CLIENT_TIMEOUT,
                self.watch_once(api, &params, resource_version),
            );
            let outcome = match self.verdicts.until_stale((self.staleness)()) {
                None => step.await,
                Some(left) => tokio::select! {
                    outcome = step => outcome,
                    () = tokio::time::sleep(left) => {
                        tracing::warn!(namespace = %self.namespace, "node verdict watch stale: relisting");
                        return;
                    }
                },
            };
            let error = match outcome {
                Ok(Ok(())) => {
                    *delay = FIRST_DELAY;
                    continue;
                }
                Ok(Err(WatchEnd::Gone)) => return,
                Ok(Err(WatchEnd::Failed(error))) => error,
                Err(_) => "the watch outlived its timeout without the API server closing it".into(),
            };
            self.failure(&error, *delay).await;
            *delay = (*delay * 2).min(MAX_DELAY);
        }
    }

    async fn watch_once(
        &self,
        api: &Api<Lease>,
        params: &WatchParams,
        resource_version: &mut String,
    ) -> Result<(), WatchEnd> {
        let stream = api
            .watch(params, resource_version)
            .await
            .map_err(WatchEnd::from)?;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let event = event.map_err(WatchEnd::from)?;
            match event {
                WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                    remember_version(resource_version, &lease);
                    match self.verdicts.upsert(&lease) {
                        Ok(change) => self.metrics.changed(change),
                        Err(bad) => warn_unreadable(&self.namespace, &[bad]),
                    }
                }
                WatchEvent::Deleted(lease) => {
                    remember_version(resource_version, &lease);
                    self.verdicts.delete(&lease);
                }
                WatchEvent::Bookmark(b) => {
                    *resource_version = b.metadata.resource_version;
                    self.verdicts.alive();
                }
                WatchEvent::Error(status) if status.code == 410 => return Err(WatchEnd::Gone),
                WatchEvent::Error(status) => {
                    return Err(WatchEnd::Failed(format!(
                        "the API server ended the watch: {} ({})",
                        status.message, status.code
                    )));
                }
            }
        }
        Ok(())
    }
}

fn remember_version(resource_version: &mut String, lease: &Lease) {
    if let Some(rv) = lease
        .metadata
        .resource_version
        .as_ref()
        .filter(|v| !v.is_empty())
    {
        rv.clone_into(resource_version);
    }
}

enum WatchEnd {
    Gone,
    Failed(String),
}

impl From<kube::Error> for WatchEnd {
    fn from(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) if status.code == 410 => WatchEnd::Gone,
            other => WatchEnd::Failed(other.to_string()),
        }
    }
}
