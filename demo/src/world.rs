//! The Longhorn world of one run: fake instance managers (one fake engine proxy per node on
//! its own loopback address), and the objects Longhorn would hold for them: InstanceManagers,
//! Volumes, Engines, the BackupTarget and the recurring jobs' Snapshots (those lost in the
//! outage created and deleted again, as they were).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, bail};
use fake_engine::{EngineScenario, FakeEngine, RunningServer, Scenario, SnapshotScenario};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::storm::{PlannedBackup, SnapshotFate, volume_name};

/// Longhorn's engine-proxy port: the agent dials `InstanceManager.status.ip:8501`.
pub const PREFERRED_PROXY_PORT: u16 = longhorn_guard_proto::ENGINE_PROXY_PORT;

/// One simulated node.
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub instance_manager: String,
    pub engine: FakeEngine,
    server: Option<RunningServer>,
}

impl Node {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map_or(SocketAddr::from((self.ip, 0)), |s| s.local_addr)
    }
}

/// The fake nodes of a run.
pub struct Nodes {
    pub nodes: Vec<Node>,
    /// The engine-proxy port of every node: the agents are told it (`--engine-proxy-port`).
    pub port: u16,
}

/// Ports tried after 8501 before the demo gives up.
const PORT_ATTEMPTS: usize = 5;

impl Nodes {
    /// Starts a fake engine proxy per node on `base`, `base+1`, ... (all in 127.0.0.0/8), all on
    /// one port: Longhorn's 8501 when it is free on every address, else a port the kernel gives
    /// as free and that binds on every address; the agents must be told it ([`Nodes::port`]),
    /// as they would learn an instance manager's. When no port binds on every address after a
    /// few tries, fails with an error naming the address that was taken.
    pub async fn start(count: usize, base: Ipv4Addr) -> anyhow::Result<Self> {
        let ips: Vec<Ipv4Addr> = (0..count)
            .map(|i| {
                let b = u32::from(base).saturating_add(i as u32);
                Ipv4Addr::from(b)
            })
            .collect();
        if let Some(ip) = ips.iter().find(|ip| !ip.is_loopback()) {
            bail!("node address {ip} is not in 127.0.0.0/8");
        }
        let mut last_error = match Self::start_on(&ips, PREFERRED_PROXY_PORT).await {
            Ok(nodes) => return Ok(nodes),
            Err(e) => e,
        };
        let first = ips.first().copied().unwrap_or(Ipv4Addr::LOCALHOST);
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::processes::free_port(first)?;
            tracing::warn!(
                error = format!("{last_error:#}"),
                port,
                "the fake engine proxies use another port, which the agents are told"
            );
            match Self::start_on(&ips, port).await {
                Ok(nodes) => return Ok(nodes),
                Err(e) => last_error = e,
            }
        }
        Err(last_error.context(format!(
            "no port is free on every node address ({first} and the next {}): tried 8501 and {PORT_ATTEMPTS} others",
            ips.len().saturating_sub(1)
        )))
    }

    async fn start_on(ips: &[Ipv4Addr], port: u16) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let engine = FakeEngine::new();
            let server = fake_engine::serve(engine.clone(), SocketAddr::from((*ip, port)))
                .await
                .with_context(|| {
                    format!(
                        "starting the fake engine proxy of node-{} on {ip}:{port}",
                        i + 1
                    )
                })?;
            nodes.push(Node {
                name: format!("node-{}", i + 1),
                ip: *ip,
                instance_manager: format!("instance-manager-{:016x}", 0x5eed_0000_u64 + i as u64),
                engine,
                server: Some(server),
            });
        }
        Ok(Self { nodes, port })
    }

    pub fn node_of_volume(&self, volume_index: usize) -> &Node {
        &self.nodes[volume_index % self.nodes.len()]
    }

    pub fn proxies(&self) -> BTreeMap<String, SocketAddr> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.proxy_addr()))
            .collect()
    }

    /// Connections open on all the fake engine proxies.
    pub fn open_connections(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.engine.stats().open_connections)
            .sum()
    }

    /// Stops every fake engine proxy and waits for their tasks.
    pub async fn shutdown(mut self) {
        for n in &mut self.nodes {
            if let Some(s) = n.server.take() {
                s.shutdown().await;
            }
        }
    }
}

/// The storage address of volume `v`'s engine (`status.storageIP:status.port`).
fn engine_address(node: &Node, v: usize) -> (String, i64) {
    (node.ip.to_string(), 10_000 + v as i64)
}

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: longhorn_types::GROUP.into(),
        version: longhorn_types::VERSION.into(),
        api_version: longhorn_types::API_VERSION.into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_ascii_lowercase()),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Creates `obj`, then writes `status` (if any) through the status subresource.
async fn create_with_status(
    client: &Client,
    ns: &str,
    obj: Value,
    status: Option<Value>,
) -> anyhow::Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api = api(client, ns, &kind);
    let dynamic: DynamicObject = serde_json::from_value(obj)?;
    let mut created = match api.create(&PostParams::default(), &dynamic).await {
        Ok(c) => c,
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .get(&name)
            .await
            .with_context(|| format!("reading existing {kind} {ns}/{name}"))?,
        Err(e) => return Err(e).with_context(|| format!("creating {kind} {ns}/{name}")),
    };
    if let Some(status) = status {
        created.data["status"] = status;
        api.replace_status(&name, &PostParams::default(), &created)
            .await
            .with_context(|| format!("writing status of {kind} {ns}/{name}"))?;
    }
    Ok(())
}

/// Volume → node name, for every volume of the run.
pub fn volume_nodes(nodes: &Nodes, volumes: usize) -> HashMap<String, String> {
    (0..volumes)
        .map(|v| (volume_name(v), nodes.node_of_volume(v).name.clone()))
        .collect()
}

/// Creates the run's objects in `ns` and gives the fake engine proxies their engines and
/// surviving snapshots through scenario files (`scenario-<ns>-<node>.yaml` in `scenario_dir`,
/// the format of `fake-engine/SCENARIOS.md`). `concurrency` bounds the API calls in flight.
pub async fn populate(
    client: &Client,
    ns: &str,
    nodes: &Nodes,
    volumes: usize,
    plan: &[PlannedBackup],
    concurrency: usize,
    scenario_dir: &Path,
) -> anyhow::Result<()> {
    let objects = run_objects(ns, nodes, volumes, plan);
    load_scenarios(ns, nodes, volumes, plan, scenario_dir)?;
    futures::stream::iter(objects)
        .map(|(obj, status)| create_with_status(client, ns, obj, status))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    delete_lost_snapshots(client, ns, plan, concurrency).await
}

/// The run's Longhorn objects with their status: the BackupTarget, an InstanceManager per
/// node, each volume with its engine, and every planned Backup's Snapshot (without a status
/// when it is lost in the outage).
fn run_objects(
    ns: &str,
    nodes: &Nodes,
    volumes: usize,
    plan: &[PlannedBackup],
) -> Vec<(Value, Option<Value>)> {
    use longhorn_types::shapes as s;
    let mut objects: Vec<(Value, Option<Value>)> = Vec::new();
    objects.push((
        s::backup_target(
            ns,
            longhorn_types::DEFAULT_BACKUP_TARGET,
            "s3://backupbucket@us-east-1/",
        ),
        Some(s::backup_target_status("node-1", true)),
    ));
    for n in &nodes.nodes {
        objects.push((
            s::instance_manager(ns, &n.instance_manager, &n.name),
            Some(s::instance_manager_status(&n.name, &n.ip.to_string())),
        ));
    }
    for v in 0..volumes {
        let node = nodes.node_of_volume(v);
        let vol = volume_name(v);
        let (ip, port) = engine_address(node, v);
        objects.push((
            s::volume(ns, &vol, &node.name),
            Some(s::volume_status(&node.name)),
        ));
        objects.push((
            s::engine(ns, &vol, &node.name),
            Some(s::engine_status(
                &node.name,
                &node.instance_manager,
                &ip,
                port,
            )),
        ));
    }
    for b in plan {
        let owner = volume_owner(nodes, &b.volume);
        let status =
            (b.fate != SnapshotFate::LostBeforeStorm).then(|| s::snapshot_status(&owner, ""));
        objects.push((s::snapshot(ns, &b.snapshot, &b.volume), status));
    }
    objects
}

/// Gives each node's fake engine proxy its engines and their surviving snapshots through a
/// scenario file (`scenario-<ns>-<node>.yaml` in `scenario_dir`).
fn load_scenarios(
    ns: &str,
    nodes: &Nodes,
    volumes: usize,
    plan: &[PlannedBackup],
    scenario_dir: &Path,
) -> anyhow::Result<()> {
    let mut chains: HashMap<&str, Vec<SnapshotScenario>> = HashMap::new();
    for b in plan
        .iter()
        .filter(|b| b.fate != SnapshotFate::LostBeforeStorm)
    {
        chains
            .entry(b.volume.as_str())
            .or_default()
            .push(SnapshotScenario {
                name: b.snapshot.clone(),
                user_created: true,
                created: "2026-11-24T10:00:00Z".into(),
                size: 4096,
                ..SnapshotScenario::default()
            });
    }
    let mut scenarios: Vec<Scenario> = nodes.nodes.iter().map(|_| Scenario::default()).collect();
    for v in 0..volumes {
        let node_index = v % nodes.nodes.len();
        let node = &nodes.nodes[node_index];
        let (ip, port) = engine_address(node, v);
        let vol = volume_name(v);
        let snapshots = chains.remove(vol.as_str()).unwrap_or_default();
        scenarios[node_index].engines.push(EngineScenario {
            address: format!("{ip}:{port}"),
            engine: format!("{vol}-e-0"),
            volume: vol,
            snapshots,
            ..EngineScenario::default()
        });
    }
    for (node, scenario) in nodes.nodes.iter().zip(&scenarios) {
        let path = scenario_dir.join(format!("scenario-{ns}-{}.yaml", node.name));
        std::fs::write(&path, scenario.to_yaml()?)
            .with_context(|| format!("writing {}", path.display()))?;
        node.engine
            .load_scenario(&Scenario::from_file(&path)?)
            .with_context(|| format!("loading the fake engines of {}", node.name))?;
    }
    Ok(())
}

/// The outage: the Snapshots of the Backups planned as lost before the storm are deleted.
async fn delete_lost_snapshots(
    client: &Client,
    ns: &str,
    plan: &[PlannedBackup],
    concurrency: usize,
) -> anyhow::Result<()> {
    let snapshots = api(client, ns, "Snapshot");
    futures::stream::iter(
        plan.iter()
            .filter(|b| b.fate == SnapshotFate::LostBeforeStorm),
    )
    .map(|b| {
        let snapshots = snapshots.clone();
        async move {
            match snapshots
                .delete(&b.snapshot, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(anyhow::Error::from(e))
                    .with_context(|| format!("deleting lost Snapshot {ns}/{}", b.snapshot)),
            }
        }
    })
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

fn volume_owner(nodes: &Nodes, volume: &str) -> String {
    volume
        .strip_prefix("pvc-")
        .and_then(|i| i.parse::<usize>().ok())
        .map_or_else(
            || "node-1".to_string(),
            |v| nodes.node_of_volume(v).name.clone(),
        )
}

/// The snapshot of an admitted Backup disappears (Snapshot object and engine entry).
pub async fn lose_snapshot(
    client: &Client,
    ns: &str,
    nodes: &Nodes,
    volume_index: usize,
    snapshot: &str,
) -> anyhow::Result<()> {
    let node = nodes.node_of_volume(volume_index);
    let (ip, port) = engine_address(node, volume_index);
    node.engine
        .remove_snapshot(&format!("{ip}:{port}"), snapshot);
    match api(client, ns, "Snapshot")
        .delete(snapshot, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting Snapshot {ns}/{snapshot}")),
    }
}

/// Mid-storm loss: for every admitted Backup index received on `admitted` whose snapshot is
/// planned to disappear after admission, takes the snapshot away at once. Returns how many
/// were taken once the channel closes (the storm is over).
pub async fn lose_after_admission(
    client: &Client,
    ns: &str,
    nodes: &Nodes,
    volumes: usize,
    plan: &[crate::storm::PlannedBackup],
    mut admitted: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> u64 {
    let mut lost = 0;
    while let Some(i) = admitted.recv().await {
        let Some(b) = plan.get(i) else { continue };
        if b.fate != SnapshotFate::LostAfterAdmission {
            continue;
        }
        match lose_snapshot(client, ns, nodes, i % volumes.max(1), &b.snapshot).await {
            Ok(()) => lost += 1,
            Err(e) => tracing::warn!(error = format!("{e:#}"), "mid-storm snapshot loss failed"),
        }
    }
    lost
}
