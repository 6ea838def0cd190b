//! Feeds the [`EngineIndex`] from watches of `Engine`s and `InstanceManager`s in Longhorn's
//! namespace: a full list replaces the index's entries, each change after it applies one.

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use longhorn_types::{Engine, InstanceManager};

use super::EngineIndex;

impl EngineIndex {
    /// Starts the Engine and InstanceManager watches in the index's namespace. They run until
    /// the returned tasks are aborted; errors are retried with kube's default backoff.
    pub fn spawn_watches(&self, client: kube::Client) -> Vec<tokio::task::JoinHandle<()>> {
        let engines: Api<Engine> = Api::namespaced(client.clone(), &self.inner.namespace);
        let ims: Api<InstanceManager> = Api::namespaced(client, &self.inner.namespace);
        vec![
            tokio::spawn(self.clone().watch_engines(engines)),
            tokio::spawn(self.clone().watch_instance_managers(ims)),
        ]
    }

    async fn watch_engines(self, api: Api<Engine>) {
        let mut stream = watcher(api).boxed();
        let mut buffer: Vec<Engine> = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(engine)) => buffer.push(engine),
                Ok(Event::InitDone) => self.replace_engines(&std::mem::take(&mut buffer)),
                Ok(Event::Apply(engine)) => self.apply_engine(&engine),
                Ok(Event::Delete(engine)) => self.delete_engine(&engine),
                Err(e) => tracing::warn!(
                    namespace = %self.inner.namespace,
                    node = %self.inner.node,
                    error = %e,
                    "Engine watch failed; retrying"
                ),
            }
        }
    }

    async fn watch_instance_managers(self, api: Api<InstanceManager>) {
        let mut stream = watcher(api).boxed();
        let mut buffer: Vec<InstanceManager> = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(im)) => buffer.push(im),
                Ok(Event::InitDone) => self.replace_instance_managers(&std::mem::take(&mut buffer)),
                Ok(Event::Apply(im)) => self.apply_instance_manager(&im),
                Ok(Event::Delete(im)) => self.delete_instance_manager(&im),
                Err(e) => tracing::warn!(
                    namespace = %self.inner.namespace,
                    error = %e,
                    "InstanceManager watch failed; retrying"
                ),
            }
        }
    }
}

fn watcher<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // Paged list + watch with bookmarks: works against the 1.20 test apiserver (no streaming lists).
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}
