//! Which agent serves a node: from agent pods seen through a watch (`spec.nodeName` →
//! `status.podIP:port`), from an address pattern with `{node}`, or from a static map.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::config::AgentDiscovery;

/// One agent pod as discovery keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AgentPod {
    node: String,
    ip: String,
    ready: bool,
    /// `metadata.creationTimestamp` (unix seconds): the newest pod of a node wins a tie.
    created: i64,
}

/// Agent pods by pod name, plus the node → address view decisions read.
#[derive(Debug, Default)]
struct PodTable {
    pods: HashMap<String, AgentPod>,
    relist: Option<HashMap<String, AgentPod>>,
}

/// Resolves a node to its agent's URI (`https://host:port`).
#[derive(Clone, Debug)]
pub struct AgentDirectory {
    kind: Directory,
}

#[derive(Clone, Debug)]
enum Directory {
    Pattern(String),
    Static(BTreeMap<String, String>),
    Pods {
        namespace: String,
        selector: String,
        port: u16,
        table: Arc<RwLock<PodTable>>,
    },
}

/// `https://` unless the address has a scheme.
fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    }
}

fn pod_uri(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("https://[{ip}]:{port}")
    } else {
        format!("https://{ip}:{port}")
    }
}

impl AgentDirectory {
    pub fn new(discovery: &AgentDiscovery) -> Self {
        let kind = match discovery {
            AgentDiscovery::Pattern(p) => Directory::Pattern(p.clone()),
            AgentDiscovery::Static(map) => Directory::Static(map.clone()),
            AgentDiscovery::Pods {
                namespace,
                selector,
                port,
            } => Directory::Pods {
                namespace: namespace.clone(),
                selector: selector.clone(),
                port: *port,
                table: Arc::default(),
            },
        };
        Self { kind }
    }

    /// The URI of the agent serving `node`, if known.
    pub fn agent_for(&self, node: &str) -> Option<String> {
        if node.is_empty() {
            return None;
        }
        match &self.kind {
            Directory::Pattern(p) => Some(with_scheme(&p.replace("{node}", node))),
            Directory::Static(map) => map.get(node).map(|a| with_scheme(a)),
            Directory::Pods { port, table, .. } => {
                let table = table.read().unwrap_or_else(|p| p.into_inner());
                table
                    .pods
                    .values()
                    .filter(|p| p.node == node && !p.ip.is_empty())
                    .max_by_key(|p| (p.ready, p.created))
                    .map(|p| pod_uri(&p.ip, *port))
            }
        }
    }

    /// Where discovery looks, for logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            Directory::Pattern(p) => format!("address pattern {p:?}"),
            Directory::Static(map) => format!("static map of {} node(s)", map.len()),
            Directory::Pods {
                namespace,
                selector,
                port,
                ..
            } => format!("pods {selector:?} in namespace {namespace:?}, port {port}"),
        }
    }

    /// Agent pods known now (pod discovery only).
    pub fn pod_count(&self) -> usize {
        match &self.kind {
            Directory::Pods { table, .. } => {
                table.read().unwrap_or_else(|p| p.into_inner()).pods.len()
            }
            _ => 0,
        }
    }

    /// Applies one pod watch event (pod discovery only; tests feed it directly).
    pub fn apply_pod_event(&self, event: Event<Pod>) {
        let Directory::Pods { table, .. } = &self.kind else {
            return;
        };
        let mut table = table.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Init => table.relist = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let Some((name, entry)) = agent_pod(&pod) {
                    match &mut table.relist {
                        Some(relist) => {
                            relist.insert(name, entry);
                        }
                        None => {
                            table.pods.insert(name, entry);
                        }
                    }
                }
            }
            Event::InitDone => {
                if let Some(relist) = table.relist.take() {
                    table.pods = relist;
                }
            }
            Event::Apply(pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                match agent_pod(&pod) {
                    Some((name, entry)) => {
                        table.pods.insert(name, entry);
                    }
                    // Terminating, not scheduled or without an IP: not dialable any more.
                    None => {
                        table.pods.remove(&name);
                    }
                }
            }
            Event::Delete(pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                table.pods.remove(&name);
            }
        }
    }

    /// Starts the agent-pod watch when discovery is by pods; `None` otherwise.
    pub fn spawn_watch(&self, client: Client) -> Option<impl Future<Output = ()> + Send + 'static> {
        let Directory::Pods {
            namespace,
            selector,
            ..
        } = &self.kind
        else {
            return None;
        };
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(selector);
        let directory = self.clone();
        let namespace = namespace.clone();
        Some(async move {
            let stream = watcher::watcher(api, config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => directory.apply_pod_event(event),
                    Err(error) => tracing::warn!(
                        %namespace, %error,
                        "agent pod watch error; retrying with backoff"
                    ),
                }
            }
        })
    }
}

/// (pod name, entry) for a scheduled, running, non-terminating pod with an IP.
fn agent_pod(pod: &Pod) -> Option<(String, AgentPod)> {
    let name = pod.metadata.name.clone().filter(|n| !n.is_empty())?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())?;
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    if status.phase.as_deref().is_some_and(|p| p != "Running") {
        return None;
    }
    let ready = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    Some((
        name,
        AgentPod {
            node,
            ip,
            ready,
            created,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, ip: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "longhorn-guard", "creationTimestamp": created },
            "spec": { "nodeName": node, "containers": [] },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
            },
        }))
        .unwrap_or_default()
    }

    #[test]
    fn pattern_and_static_maps() {
        let d = AgentDirectory::new(&AgentDiscovery::Pattern(
            "https://{node}.agents.example:9443".into(),
        ));
        assert_eq!(
            d.agent_for("node-1").as_deref(),
            Some("https://node-1.agents.example:9443")
        );
        assert_eq!(d.agent_for(""), None);
        let d = AgentDirectory::new(&AgentDiscovery::Static(BTreeMap::from([(
            "node-a".to_string(),
            "127.0.0.2:9443".to_string(),
        )])));
        assert_eq!(
            d.agent_for("node-a").as_deref(),
            Some("https://127.0.0.2:9443")
        );
        assert_eq!(d.agent_for("node-b"), None);
    }

    #[test]
    fn pods_by_node_prefer_ready_then_newest_and_follow_deletes() {
        let d = AgentDirectory::new(&AgentDiscovery::Pods {
            namespace: "longhorn-guard".into(),
            selector: "app.kubernetes.io/component=agent".into(),
            port: 9443,
        });
        d.apply_pod_event(Event::Init);
        d.apply_pod_event(Event::InitApply(pod(
            "agent-old",
            "node-1",
            "10.0.0.1",
            true,
            "2026-01-01T00:00:00Z",
        )));
        d.apply_pod_event(Event::InitApply(pod(
            "agent-new",
            "node-1",
            "10.0.0.2",
            false,
            "2026-01-02T00:00:00Z",
        )));
        assert_eq!(d.agent_for("node-1"), None, "not visible before InitDone");
        d.apply_pod_event(Event::InitDone);
        assert_eq!(
            d.agent_for("node-1").as_deref(),
            Some("https://10.0.0.1:9443"),
            "the ready pod wins"
        );
        d.apply_pod_event(Event::Apply(pod(
            "agent-new",
            "node-1",
            "10.0.0.2",
            true,
            "2026-01-02T00:00:00Z",
        )));
        assert_eq!(
            d.agent_for("node-1").as_deref(),
            Some("https://10.0.0.2:9443"),
            "both ready: the newest wins"
        );
        d.apply_pod_event(Event::Delete(pod(
            "agent-new",
            "node-1",
            "10.0.0.2",
            true,
            "2026-01-02T00:00:00Z",
        )));
        assert_eq!(
            d.agent_for("node-1").as_deref(),
            Some("https://10.0.0.1:9443")
        );
        let mut terminating = pod(
            "agent-old",
            "node-1",
            "10.0.0.1",
            true,
            "2026-01-01T00:00:00Z",
        );
        terminating.metadata.deletion_timestamp = terminating.metadata.creation_timestamp.clone();
        d.apply_pod_event(Event::Apply(terminating));
        assert_eq!(d.agent_for("node-1"), None);
        assert_eq!(d.pod_count(), 0);
        d.apply_pod_event(Event::Apply(pod(
            "agent-v6",
            "node-2",
            "fd00::7",
            true,
            "2026-01-01T00:00:00Z",
        )));
        assert_eq!(
            d.agent_for("node-2").as_deref(),
            Some("https://[fd00::7]:9443")
        );
    }
}
