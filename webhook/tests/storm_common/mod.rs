//! Shared by the storm test, the replicas test and the replicas bench: the storm's fixtures
//! (volumes with engines on `NODES` nodes, the default BackupTarget), a watch that records the
//! in-flight maxima per volume / node / cluster, a simulated v1.7.2 backup controller, and
//! several webhook replicas behind one round-robin loopback TCP proxy (a Service with several
//! endpoints).
//!
//! Each user includes it with `mod storm_common;` (a bench with `#[path]`) next to `mod common;`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use longhorn_guard_testkit::TestCluster;
use longhorn_types::{Backup, BackupState, Engine, Snapshot, Volume, shapes};

pub const NODES: usize = 6;
pub const CONCURRENCY: usize = 32;
/// Simulated controller: Backups started per tick, tick length, how long one runs.
pub const STARTS_PER_TICK: usize = 8;
pub const TICK: Duration = Duration::from_millis(20);
pub const RUN_TIME: Duration = Duration::from_millis(300);
/// How long the storm's watch may lag behind the last admission before a test fails.
pub const WATCH_CATCH_UP: Duration = Duration::from_secs(60);

pub fn node_of(volume: usize) -> String {
    format!("node-{}", volume % NODES)
}

/// Live in-flight counts as the watch sees them, and their maxima.
#[derive(Default)]
pub struct Observer {
    pub backups: HashMap<String, (String, BackupState)>,
    per_volume: HashMap<String, u32>,
    per_node: HashMap<String, u32>,
    cluster: u32,
    pub max_volume: u32,
    pub max_node: u32,
    pub max_cluster: u32,
    pub events: u64,
    pub nodes: HashMap<String, String>,
}

impl Observer {
    /// An observer of the storm's `volumes` volumes (`vol-<v>` on [`node_of`]).
    pub fn new(volumes: usize) -> Self {
        Self {
            nodes: (0..volumes)
                .map(|v| (format!("vol-{v}"), node_of(v)))
                .collect(),
            ..Self::default()
        }
    }

    /// The maxima against `caps`: "volume M (cap C), node M (cap C), cluster M (cap C)".
    pub fn maxima(
        &self,
        caps: &longhorn_guard_webhook::policy::throttle::ThrottlePolicy,
    ) -> String {
        format!(
            "volume {} (cap {}), node {} (cap {}), cluster {} (cap {})",
            self.max_volume,
            caps.max_in_flight_per_volume,
            self.max_node,
            caps.max_in_flight_per_node,
            self.max_cluster,
            caps.max_in_flight_per_cluster,
        )
    }

    fn counts(&mut self, volume: &str, delta: i32) {
        let node = self.nodes.get(volume).cloned().unwrap_or_default();
        let v = self.per_volume.entry(volume.to_string()).or_default();
        *v = v.saturating_add_signed(delta);
        self.max_volume = self.max_volume.max(*v);
        let n = self.per_node.entry(node).or_default();
        *n = n.saturating_add_signed(delta);
        self.max_node = self.max_node.max(*n);
        self.cluster = self.cluster.saturating_add_signed(delta);
        self.max_cluster = self.max_cluster.max(self.cluster);
    }

    fn apply(&mut self, b: &Backup) {
        self.events += 1;
        let name = b.metadata.name.clone().unwrap_or_default();
        if b.spec.snapshot_name.is_empty() {
            return;
        }
        let volume = b.volume_label().unwrap_or_default().to_string();
        let state = b.state();
        let was = self.backups.insert(name, (volume.clone(), state.clone()));
        let was_in_flight = was.as_ref().is_some_and(|(_, s)| !s.is_terminal());
        let in_flight = !state.is_terminal();
        match (was_in_flight, in_flight) {
            (false, true) => self.counts(&volume, 1),
            (true, false) => self.counts(&volume, -1),
            _ => {}
        }
    }

    fn delete(&mut self, b: &Backup) {
        self.events += 1;
        let name = b.metadata.name.clone().unwrap_or_default();
        if let Some((volume, s)) = self.backups.remove(&name)
            && !s.is_terminal()
        {
            self.counts(&volume, -1);
        }
    }
}

/// Follows Backups in `ns` into `observer`.
pub fn observe(
    client: Client,
    ns: &str,
    observer: Arc<Mutex<Observer>>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Backup> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(ev)) = stream.try_next().await {
            let mut o = observer.lock().unwrap();
            match ev {
                watcher::Event::Apply(b) | watcher::Event::InitApply(b) => o.apply(&b),
                watcher::Event::Delete(b) => o.delete(&b),
                _ => {}
            }
        }
    })
}

/// The simulated backup controller: New Backups are started at a fixed rate (InProgress,
/// or Pending forever when their snapshot is gone, as in v1.7.2), and completed after
/// [`RUN_TIME`].
#[derive(Default)]
pub struct Controller {
    pub stuck: Mutex<HashSet<String>>,
    pub started: AtomicUsize,
    pub completed: AtomicUsize,
}

pub fn run_controller(
    cluster: TestCluster,
    ns: String,
    ctl: Arc<Controller>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Backup> = Api::namespaced(cluster.client(), &ns);
        let snaps: Api<Snapshot> = Api::namespaced(cluster.client(), &ns);
        let queue: Arc<Mutex<VecDeque<Backup>>> = Arc::default();
        let q = queue.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(ev)) = stream.try_next().await {
                if let watcher::Event::Apply(b) | watcher::Event::InitApply(b) = ev
                    && b.state() == BackupState::New
                    && !b.spec.snapshot_name.is_empty()
                {
                    q.lock().unwrap().push_back(b);
                }
            }
        });
        let mut running: VecDeque<(Instant, String, String, String)> = VecDeque::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let mut batch = Vec::new();
            {
                let mut q = queue.lock().unwrap();
                while batch.len() < STARTS_PER_TICK {
                    let Some(b) = q.pop_front() else { break };
                    let name = b.metadata.name.clone().unwrap_or_default();
                    if seen.insert(name) {
                        batch.push(b);
                    }
                }
            }
            let starts: Vec<(String, &'static str, String, String)> = futures::stream::iter(batch)
                .map(|b| {
                    let snaps = snaps.clone();
                    async move {
                        let name = b.metadata.name.clone().unwrap_or_default();
                        let vol = b.volume_label().unwrap_or_default().to_string();
                        let snap = b.spec.snapshot_name.clone();
                        let exists = snaps.get_opt(&snap).await.ok().flatten().is_some();
                        (
                            name,
                            if exists { "InProgress" } else { "Pending" },
                            vol,
                            snap,
                        )
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            let mut work = Vec::new();
            for (name, state, vol, snap) in starts {
                if state == "InProgress" {
                    running.push_back((Instant::now(), name.clone(), vol.clone(), snap.clone()));
                } else {
                    ctl.stuck.lock().unwrap().insert(name.clone());
                }
                ctl.started.fetch_add(1, Ordering::Relaxed);
                work.push((name, state, vol, snap));
            }
            while running
                .front()
                .is_some_and(|(t, ..)| t.elapsed() >= RUN_TIME)
            {
                let (_, name, vol, snap) = running.pop_front().unwrap();
                ctl.completed.fetch_add(1, Ordering::Relaxed);
                work.push((name, "Completed", vol, snap));
            }
            futures::stream::iter(work)
                .for_each_concurrent(16, |(name, state, vol, snap)| {
                    let cluster = cluster.clone();
                    let ns = ns.clone();
                    async move {
                        let status = shapes::backup_status(state, "node-0", &vol, &snap);
                        // A GET + conditional PUT: retried on a 409 Conflict.
                        let mut tries = 0;
                        while let Err(e) = cluster
                            .set_status::<Backup>(&ns, &name, status.clone())
                            .await
                        {
                            tries += 1;
                            if tries >= 10 {
                                eprintln!("controller: status {state} of Backup {name}: {e:#}");
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
                .await;
        }
    })
}

/// The watch recording the in-flight maxima ([`observe`]) and the simulated controller
/// ([`run_controller`]), both running in one namespace until dropped.
pub struct StormWatch {
    pub observer: Arc<Mutex<Observer>>,
    pub ctl: Arc<Controller>,
    obs_task: tokio::task::JoinHandle<()>,
    ctl_task: tokio::task::JoinHandle<()>,
}

impl StormWatch {
    /// Starts both in `ns`, a storm over `volumes` volumes ([`Observer::new`]).
    pub fn start(cluster: &TestCluster, ns: &str, volumes: usize) -> Self {
        let observer = Arc::new(Mutex::new(Observer::new(volumes)));
        let obs_task = observe(cluster.client(), ns, observer.clone());
        let ctl = Arc::new(Controller::default());
        let ctl_task = run_controller(cluster.clone(), ns.to_string(), ctl.clone());
        Self {
            observer,
            ctl,
            obs_task,
            ctl_task,
        }
    }

    /// What the watch has recorded so far, taken out of the observer.
    pub fn take(&self) -> Observer {
        std::mem::take(&mut *self.observer.lock().unwrap())
    }

    /// [`Self::take`] once the watch has delivered every one of the `admitted` Backups of the
    /// namespace (all with a snapshot name, none deleted): the maxima in flight are then
    /// final, since the events after a Backup's creation only end Backups. A watch that lags
    /// more than `timeout` fails the caller instead of under-counting.
    pub async fn take_when_seen(&self, admitted: usize, timeout: Duration) -> Result<Observer> {
        let seen = || self.observer.lock().unwrap().backups.len();
        longhorn_guard_testkit::wait_for(
            timeout,
            &format!("the watch to deliver all {admitted} admitted Backups"),
            || async { Ok(seen() >= admitted) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#} (it delivered {})", seen()))?;
        Ok(self.take())
    }
}

impl Drop for StormWatch {
    fn drop(&mut self) {
        self.obs_task.abort();
        self.ctl_task.abort();
    }
}

/// Creates the Snapshot `name(i)` of volume `vol-<i % volumes>` for each of `indices`,
/// [`CONCURRENCY`] at a time (as the recurring jobs took them before their Backups).
pub async fn create_snapshots(
    cluster: &TestCluster,
    ns: &str,
    volumes: usize,
    indices: impl Iterator<Item = usize>,
    name: impl Fn(usize) -> String,
) -> Result<()> {
    let client = cluster.client();
    futures::stream::iter(indices)
        .map(|i| {
            let client = client.clone();
            let vol = format!("vol-{}", i % volumes);
            let snap = name(i);
            async move {
                create::<Snapshot>(&client, ns, shapes::snapshot(ns, &snap, &vol))
                    .await?
                    .created()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

pub async fn create<
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
>(
    client: &Client,
    ns: &str,
    obj: serde_json::Value,
) -> Result<Result<(), (u16, String)>> {
    let k: K = serde_json::from_value(obj)?;
    match Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &k)
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(e)) if e.message.contains("denied the request") => {
            Ok(Err((e.code, e.message)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Volumes, their engines (node-<v % 6>), the default target.
pub async fn storm_fixtures(cluster: &TestCluster, ns: &str, volumes: usize) -> Result<()> {
    let client = cluster.client();
    crate::common::fixtures::default_target_from(cluster, ns, "node-0").await?;
    futures::stream::iter(0..volumes)
        .map(|v| {
            let client = client.clone();
            async move {
                let vol = format!("vol-{v}");
                let node = node_of(v);
                create::<Volume>(&client, ns, shapes::volume(ns, &vol, &node))
                    .await?
                    .created()?;
                create::<Engine>(&client, ns, shapes::engine(ns, &vol, &node))
                    .await?
                    .created()?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

pub trait Created {
    fn created(self) -> Result<()>;
}
impl Created for Result<(), (u16, String)> {
    fn created(self) -> Result<()> {
        self.map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))
    }
}

/// A loopback TCP proxy that hands each accepted connection to the next backend in turn, as
/// kube-proxy spreads the connections to a Service over its endpoints. TLS passes through
/// untouched (every backend serves the same certificate).
pub struct RoundRobinProxy {
    pub addr: SocketAddr,
    /// Connections handed to each backend.
    pub connections: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobinProxy {
    pub async fn start(backends: Vec<SocketAddr>) -> Result<Self> {
        anyhow::ensure!(!backends.is_empty(), "a proxy needs at least one backend");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = connections.clone();
        let task = tokio::spawn(async move {
            // Dropped (so every piped connection aborted) when the accept loop is aborted.
            let mut pipes = tokio::task::JoinSet::new();
            let mut next = 0;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let i = next % backends.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let backend = backends[i];
                pipes.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while pipes.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One storm through the API server against `replicas` webhook replicas behind one
/// [`RoundRobinProxy`], registered once (one webhook entry, one URL: a Service).
pub struct ReplicaStorm {
    pub replicas: usize,
    /// Backups created, 30 % of them for snapshots that do not exist.
    pub backups: usize,
    pub volumes: usize,
    pub policy: longhorn_guard_webhook::Policy,
}

/// What one [`ReplicaStorm`] saw.
#[derive(Debug)]
pub struct ReplicaFigures {
    pub elapsed: Duration,
    pub admitted: usize,
    pub throttled: usize,
    pub stale: usize,
    pub stale_denied: usize,
    /// Reviews each replica answered during the storm.
    pub reviews: Vec<u64>,
    /// API server connections the proxy handed to each replica.
    pub connections: Vec<usize>,
    /// Maximum in flight seen by a watch per volume, per node, in the cluster.
    pub max: [u32; 3],
    /// The caps of the policy, same order.
    pub caps: [u32; 3],
}

impl ReplicaFigures {
    /// The documented bound for R replicas: R × cap per scope (THROTTLING.md).
    pub fn bound(&self) -> [u32; 3] {
        let r = self.reviews.len() as u32;
        self.caps.map(|c| r * c)
    }

    pub fn summary(&self) -> String {
        let bound = self.bound();
        format!(
            "{} replicas: {} creates in {:.1?} (admitted {}, throttled 429 {}, missing snapshot 404 {}/{}); reviews per replica {:?} over connections {:?}; max in flight volume {} / node {} / cluster {}, caps {:?}, bound R×cap {:?}, overshoot {} / {} / {}",
            self.reviews.len(),
            self.admitted + self.throttled + self.stale_denied,
            self.elapsed,
            self.admitted,
            self.throttled,
            self.stale_denied,
            self.stale,
            self.reviews,
            self.connections,
            self.max[0],
            self.max[1],
            self.max[2],
            self.caps,
            bound,
            self.max[0].saturating_sub(self.caps[0]),
            self.max[1].saturating_sub(self.caps[1]),
            self.max[2].saturating_sub(self.caps[2]),
        )
    }
}

/// Runs `run` in a fresh namespace: fixtures, snapshots, the replicas, the proxy, one
/// registration, a watch recording the in-flight maxima and the simulated controller; then
/// creates the Backups through the API server, [`CONCURRENCY`] at a time, each once.
pub async fn replica_storm(cluster: &TestCluster, run: &ReplicaStorm) -> Result<ReplicaFigures> {
    use crate::common::{
        Served, TestCert, register_entry, serve_with_cert, wait_ready, wait_until_called,
        webhook_entry,
    };
    let ns = cluster.namespace("replicas").await?;
    storm_fixtures(cluster, &ns, run.volumes).await?;
    let is_stale = |i: usize| i % 10 < 3;
    let indices = (0..run.backups).filter(|i| !is_stale(*i));
    create_snapshots(cluster, &ns, run.volumes, indices, |i| format!("snap-{i}")).await?;

    let cert = TestCert::new()?;
    let mut replicas: Vec<Served> = Vec::new();
    for _ in 0..run.replicas {
        let served =
            serve_with_cert(cluster.client(), &ns, run.policy.clone(), cert.copy()?).await?;
        wait_ready(&served).await?;
        replicas.push(served);
    }
    let proxy =
        RoundRobinProxy::start(replicas.iter().map(|r| r.handle.local_addr()).collect()).await?;
    let mut entry = webhook_entry(&replicas[0], "/validate/backups", &ns);
    entry["clientConfig"]["url"] = format!("https://{}/validate/backups", proxy.addr).into();
    let reg = register_entry(cluster, &ns, entry).await?;
    wait_until_called(cluster, &ns).await?;

    let caps = &run.policy.throttle;
    let watch = StormWatch::start(cluster, &ns, run.volumes);
    let reviews = |rs: &[Served]| -> Vec<u64> {
        rs.iter()
            .map(|r| r.handle.state().0.metrics.reviews_total())
            .collect()
    };
    let reviews_before = reviews(&replicas);
    let connections_before: Vec<usize> = proxy
        .connections
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();

    let client = cluster.client_without_retry(None)?;
    let outcomes = [(); 4].map(|_| AtomicUsize::new(0)); // admitted, 429, stale, stale 404
    let start = Instant::now();
    futures::stream::iter(0..run.backups)
        .map(|i| {
            let client = client.clone();
            let ns = ns.clone();
            let outcomes = &outcomes;
            async move {
                let vol = format!("vol-{}", i % run.volumes);
                let job = format!("storm-job-{}", i % 10);
                let (snap, stale) = if is_stale(i) {
                    (format!("gone-{i}"), true)
                } else {
                    (format!("snap-{i}"), false)
                };
                let name = format!("bk-{i}");
                let obj = shapes::backup(&ns, &name, &vol, &snap, Some(&job));
                let outcome = create::<Backup>(&client, &ns, obj).await?;
                if stale {
                    outcomes[2].fetch_add(1, Ordering::Relaxed);
                }
                match (outcome, stale) {
                    (Ok(()), false) => outcomes[0].fetch_add(1, Ordering::Relaxed),
                    (Err((429, _)), false) => outcomes[1].fetch_add(1, Ordering::Relaxed),
                    (Err((404, _)), true) => outcomes[3].fetch_add(1, Ordering::Relaxed),
                    (Ok(()), true) => {
                        anyhow::bail!("{name}: a Backup of a missing snapshot was admitted")
                    }
                    (Err((c, m)), _) => anyhow::bail!("{name}: unexpected denial {c}: {m}"),
                };
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let elapsed = start.elapsed();
    let o = watch
        .take_when_seen(outcomes[0].load(Ordering::Relaxed), WATCH_CATCH_UP)
        .await?;
    let figures = ReplicaFigures {
        elapsed,
        admitted: outcomes[0].load(Ordering::Relaxed),
        throttled: outcomes[1].load(Ordering::Relaxed),
        stale: outcomes[2].load(Ordering::Relaxed),
        stale_denied: outcomes[3].load(Ordering::Relaxed),
        reviews: reviews(&replicas)
            .iter()
            .zip(&reviews_before)
            .map(|(a, b)| a - b)
            .collect(),
        connections: proxy
            .connections
            .iter()
            .zip(&connections_before)
            .map(|(a, b)| a.load(Ordering::Relaxed) - b)
            .collect(),
        max: [o.max_volume, o.max_node, o.max_cluster],
        caps: [
            caps.max_in_flight_per_volume,
            caps.max_in_flight_per_node,
            caps.max_in_flight_per_cluster,
        ],
    };
    drop(watch);
    reg.remove().await?;
    drop(proxy);
    for r in replicas {
        r.stop().await?;
    }
    Ok(figures)
}
