//! The live lookup used when the index does not have a Snapshot: the UI creates a Snapshot
//! and at once its Backup, so the watch may lag behind the request (longhorn/longhorn#11451).

use futures::future::BoxFuture;
use kube::{Api, Client};
use longhorn_types::Snapshot;

use crate::index::SnapshotFacts;

/// A live lookup failed (not a 404: the API server could not say).
#[derive(Debug, thiserror::Error)]
#[error("live GET of Snapshot {namespace}/{name} failed: {message}")]
pub struct SnapshotGetError {
    pub namespace: String,
    pub name: String,
    pub message: String,
}

/// Where Snapshots are looked up when the index misses them.
pub trait SnapshotSource: Send + Sync + 'static {
    /// `Ok(None)` only when the API server answered 404.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SnapshotFacts>, SnapshotGetError>>;
}

/// GETs Snapshots through the API server.
#[derive(Clone)]
pub struct ApiSnapshotSource {
    client: Client,
}

impl ApiSnapshotSource {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl SnapshotSource for ApiSnapshotSource {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SnapshotFacts>, SnapshotGetError>> {
        Box::pin(async move {
            let api: Api<Snapshot> = Api::namespaced(self.client.clone(), namespace);
            match api.get_opt(name).await {
                Ok(found) => Ok(found.as_ref().map(SnapshotFacts::of)),
                Err(e) => Err(SnapshotGetError {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    message: e.to_string(),
                }),
            }
        })
    }
}

/// A source that never finds anything without asking anyone; for servers run without a
/// cluster (benchmarks, router tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSnapshotSource;

impl SnapshotSource for NoSnapshotSource {
    fn get<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<SnapshotFacts>, SnapshotGetError>> {
        Box::pin(async { Ok(None) })
    }
}
