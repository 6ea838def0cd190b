//! `EngineIndex`: volume → (engine, instance-manager proxy endpoint) for the engines on this node,
//! fed by watches of `Engine`s and `InstanceManager`s in Longhorn's namespace.
//!
//! CRDs support no field selector on `spec.nodeID`, so Engines are filtered here. The index
//! keeps a compact copy of the few fields it needs, not whole objects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::ResourceExt as _;
use longhorn_types::{Engine, InstanceManager};
use tokio::sync::watch;
use tonic::Status;

use crate::engine_client::EngineTarget;

mod watches;

/// The fields of one Engine the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EngineEntry {
    name: String,
    volume: String,
    data_engine: String,
    active: bool,
    running: bool,
    instance_manager: String,
    address: Option<String>,
}

/// The fields of one InstanceManager the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InstanceManagerEntry {
    current_state: String,
    ip: String,
    proxy_api_version: i64,
    /// `ip:port` when Longhorn itself would dial it (running, IP set, proxy API > 0).
    proxy_endpoint: Option<String>,
}

#[derive(Debug, Default)]
struct IndexState {
    /// Engines on this node, by Engine name.
    engines: HashMap<String, EngineEntry>,
    /// All instance managers of the namespace, by name.
    instance_managers: HashMap<String, InstanceManagerEntry>,
}

/// Why a volume cannot be reached right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error(
        "engine index of node {node} (namespace {namespace}) has not synced its Engine/InstanceManager watches yet"
    )]
    NotSynced { node: String, namespace: String },
    #[error("volume {volume} has no engine on node {node} (namespace {namespace})")]
    UnknownVolume {
        volume: String,
        node: String,
        namespace: String,
    },
    #[error(
        "engine {engine} of volume {volume} on node {node} has no address yet (status.storageIP / status.port unset)"
    )]
    EngineWithoutAddress {
        engine: String,
        volume: String,
        node: String,
    },
    #[error(
        "engine {engine} of volume {volume} on node {node} names no instance manager (status.instanceManagerName empty)"
    )]
    EngineWithoutInstanceManager {
        engine: String,
        volume: String,
        node: String,
    },
    #[error(
        "instance manager {instance_manager} of engine {engine} (volume {volume}, node {node}) is not known in namespace {namespace}"
    )]
    UnknownInstanceManager {
        instance_manager: String,
        engine: String,
        volume: String,
        node: String,
        namespace: String,
    },
    #[error(
        "instance manager {instance_manager} of engine {engine} (volume {volume}, node {node}) has no usable engine proxy: {reason}"
    )]
    InstanceManagerNotDialable {
        instance_manager: String,
        engine: String,
        volume: String,
        node: String,
        /// State, IP and proxy API version as found.
        reason: String,
    },
}

impl From<LookupError> for Status {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::UnknownVolume { .. } => Status::not_found(e.to_string()),
            _ => Status::unavailable(e.to_string()),
        }
    }
}

/// Watch-fed index of this node's engines. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineIndex {
    inner: Arc<IndexInner>,
}

#[derive(Debug)]
struct IndexInner {
    node: String,
    namespace: String,
    proxy_port: u16,
    state: RwLock<IndexState>,
    engines_synced: AtomicBool,
    instance_managers_synced: AtomicBool,
    ready: watch::Sender<bool>,
}

impl EngineIndex {
    /// `proxy_port` is Longhorn's engine-proxy port ([`longhorn_guard_proto::ENGINE_PROXY_PORT`]);
    /// tests point it at a fake.
    pub fn new(node: impl Into<String>, namespace: impl Into<String>, proxy_port: u16) -> Self {
        Self {
            inner: Arc::new(IndexInner {
                node: node.into(),
                namespace: namespace.into(),
                proxy_port,
                state: RwLock::new(IndexState::default()),
                engines_synced: AtomicBool::new(false),
                instance_managers_synced: AtomicBool::new(false),
                ready: watch::Sender::new(false),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, IndexState> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// True once both watches have listed everything once.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Resolves when the index is ready.
    pub async fn wait_ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        // Only fails if the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    fn update_ready(&self) {
        let ready = self.inner.engines_synced.load(Ordering::SeqCst)
            && self.inner.instance_managers_synced.load(Ordering::SeqCst);
        self.inner.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// Marks both kinds as listed (for tests that feed the index by hand).
    pub fn mark_synced(&self) {
        self.inner.engines_synced.store(true, Ordering::SeqCst);
        self.inner
            .instance_managers_synced
            .store(true, Ordering::SeqCst);
        self.update_ready();
    }

    fn engine_entry(&self, engine: &Engine) -> Option<EngineEntry> {
        if engine.spec.node_id != self.inner.node {
            return None;
        }
        let status = engine.status.clone().unwrap_or_default();
        Some(EngineEntry {
            name: engine.name_any(),
            volume: engine.spec.volume_name.clone(),
            data_engine: engine.spec.data_engine.clone(),
            active: engine.spec.active,
            running: engine.is_running(),
            instance_manager: status.instance_manager_name,
            address: engine.address(),
        })
    }

    fn instance_manager_entry(&self, im: &InstanceManager) -> InstanceManagerEntry {
        let status = im.status.clone().unwrap_or_default();
        InstanceManagerEntry {
            proxy_endpoint: im.proxy_endpoint(self.inner.proxy_port),
            current_state: status.current_state,
            ip: status.ip,
            proxy_api_version: status.proxy_api_version,
        }
    }

    /// Adds or updates an Engine; an Engine of another node is dropped (it may have moved away).
    pub fn apply_engine(&self, engine: &Engine) {
        let name = engine.name_any();
        let entry = self.engine_entry(engine);
        let mut state = self.write();
        match entry {
            Some(entry) => {
                state.engines.insert(name, entry);
            }
            None => {
                state.engines.remove(&name);
            }
        }
    }

    pub fn delete_engine(&self, engine: &Engine) {
        self.write().engines.remove(&engine.name_any());
    }

    pub fn apply_instance_manager(&self, im: &InstanceManager) {
        let entry = self.instance_manager_entry(im);
        self.write().instance_managers.insert(im.name_any(), entry);
    }

    pub fn delete_instance_manager(&self, im: &InstanceManager) {
        self.write().instance_managers.remove(&im.name_any());
    }

    fn replace_engines(&self, engines: &[Engine]) {
        let entries: HashMap<_, _> = engines
            .iter()
            .filter_map(|e| {
                self.engine_entry(e)
                    .map(|entry| (entry.name.clone(), entry))
            })
            .collect();
        self.write().engines = entries;
        self.inner.engines_synced.store(true, Ordering::SeqCst);
        self.update_ready();
    }

    fn replace_instance_managers(&self, ims: &[InstanceManager]) {
        let entries: HashMap<_, _> = ims
            .iter()
            .map(|im| (im.name_any(), self.instance_manager_entry(im)))
            .collect();
        self.write().instance_managers = entries;
        self.inner
            .instance_managers_synced
            .store(true, Ordering::SeqCst);
        self.update_ready();
    }

    /// Number of engines of this node in the index.
    pub fn engine_count(&self) -> usize {
        self.read().engines.len()
    }

    /// The engine to ask about `volume`: the active one when the volume has several (migration),
    /// then a running one, then the first by name; and the proxy endpoint of its instance manager.
    pub fn lookup(&self, volume: &str) -> Result<EngineTarget, LookupError> {
        let node = self.inner.node.clone();
        if !self.is_ready() {
            return Err(LookupError::NotSynced {
                node,
                namespace: self.inner.namespace.clone(),
            });
        }
        let state = self.read();
        let mut candidates: Vec<&EngineEntry> = state
            .engines
            .values()
            .filter(|e| e.volume == volume)
            .collect();
        candidates.sort_by(|a, b| {
            (b.active, b.running)
                .cmp(&(a.active, a.running))
                .then_with(|| a.name.cmp(&b.name))
        });
        let Some(engine) = candidates.first() else {
            return Err(LookupError::UnknownVolume {
                volume: volume.to_string(),
                node,
                namespace: self.inner.namespace.clone(),
            });
        };
        let Some(address) = engine.address.clone() else {
            return Err(LookupError::EngineWithoutAddress {
                engine: engine.name.clone(),
                volume: volume.to_string(),
                node,
            });
        };
        if engine.instance_manager.is_empty() {
            return Err(LookupError::EngineWithoutInstanceManager {
                engine: engine.name.clone(),
                volume: volume.to_string(),
                node,
            });
        }
        let Some(im) = state.instance_managers.get(&engine.instance_manager) else {
            return Err(LookupError::UnknownInstanceManager {
                instance_manager: engine.instance_manager.clone(),
                engine: engine.name.clone(),
                volume: volume.to_string(),
                node,
                namespace: self.inner.namespace.clone(),
            });
        };
        let Some(proxy_endpoint) = im.proxy_endpoint.clone() else {
            return Err(LookupError::InstanceManagerNotDialable {
                instance_manager: engine.instance_manager.clone(),
                engine: engine.name.clone(),
                volume: volume.to_string(),
                node,
                reason: format!(
                    "state {:?}, ip {:?}, proxyApiVersion {} (needs running, an IP and proxyApiVersion > 0)",
                    im.current_state, im.ip, im.proxy_api_version
                ),
            });
        };
        Ok(EngineTarget {
            proxy_endpoint,
            instance_manager: engine.instance_manager.clone(),
            node,
            engine_name: engine.name.clone(),
            volume_name: volume.to_string(),
            engine_address: address,
            data_engine: engine.data_engine.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longhorn_types::{EngineSpec, EngineStatus, InstanceManagerSpec, InstanceManagerStatus};

    pub(crate) fn engine(name: &str, volume: &str, node: &str, active: bool, im: &str) -> Engine {
        let mut e = Engine::new(
            name,
            EngineSpec {
                volume_name: volume.into(),
                node_id: node.into(),
                data_engine: "v1".into(),
                active,
                ..EngineSpec::default()
            },
        );
        e.status = Some(EngineStatus {
            current_state: "running".into(),
            instance_manager_name: im.into(),
            storage_ip: "10.42.1.17".into(),
            port: 10010,
            ..EngineStatus::default()
        });
        e
    }

    fn instance_manager(name: &str, state: &str, ip: &str, proxy_api: i64) -> InstanceManager {
        let mut im = InstanceManager::new(name, InstanceManagerSpec::default());
        im.status = Some(InstanceManagerStatus {
            current_state: state.into(),
            ip: ip.into(),
            proxy_api_version: proxy_api,
            ..InstanceManagerStatus::default()
        });
        im
    }

    #[test]
    fn lookup_filters_by_node_prefers_active_and_checks_the_instance_manager() {
        let index = EngineIndex::new("node-1", "longhorn-system", 8501);
        assert!(matches!(
            index.lookup("pvc-1"),
            Err(LookupError::NotSynced { .. })
        ));
        index.mark_synced();
        index.apply_engine(&engine("pvc-1-e-0", "pvc-1", "node-1", false, "im-a"));
        index.apply_engine(&engine("pvc-1-e-1", "pvc-1", "node-1", true, "im-a"));
        index.apply_engine(&engine("pvc-2-e-0", "pvc-2", "node-2", true, "im-b"));
        assert_eq!(index.engine_count(), 2);

        let err = index.lookup("pvc-1").err();
        assert!(matches!(
            err,
            Some(LookupError::UnknownInstanceManager { .. })
        ));

        index.apply_instance_manager(&instance_manager("im-a", "running", "10.42.1.5", 0));
        let err = index.lookup("pvc-1").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("proxyApiVersion 0") && e.contains("im-a")),
            "{err:?}"
        );

        index.apply_instance_manager(&instance_manager("im-a", "running", "10.42.1.5", 1));
        let target = index.lookup("pvc-1");
        assert_eq!(
            target.as_ref().map(|t| t.engine_name.as_str()),
            Ok("pvc-1-e-1")
        );
        assert_eq!(
            target.as_ref().map(|t| t.proxy_endpoint.as_str()),
            Ok("10.42.1.5:8501")
        );
        assert_eq!(
            target.as_ref().map(|t| t.engine_address.as_str()),
            Ok("10.42.1.17:10010")
        );

        let missing = index.lookup("pvc-2").err();
        let status = missing.map(Status::from);
        assert_eq!(
            status.as_ref().map(Status::code),
            Some(tonic::Code::NotFound)
        );
        let message = status.map(|s| s.message().to_string()).unwrap_or_default();
        assert!(
            message.contains("pvc-2") && message.contains("node-1"),
            "{message}"
        );

        index.apply_instance_manager(&instance_manager("im-a", "stopped", "10.42.1.5", 1));
        assert!(matches!(
            index.lookup("pvc-1"),
            Err(LookupError::InstanceManagerNotDialable { .. })
        ));
    }
}
