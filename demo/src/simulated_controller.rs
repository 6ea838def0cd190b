//! A simulated Longhorn v1.7.2 backup controller, with v1.7.2's leak (longhorn.md §4.2).
//!
//! It watches Backups in one namespace and, for each new one, reconciles like `checkMonitor()`:
//! every reconcile first opens a gRPC connection to the instance manager's engine proxy on the
//! Backup's node (step 5), then looks the Snapshot up (step 8). When the Snapshot is missing or
//! not ready, the Backup is set `Pending` with "Failed to get the Snapshot ..." and the
//! connection is **kept open and never closed** (held in a `Vec`), and the Backup is
//! reconciled again every `resync`, forever. When the Snapshot is there, the connection is
//! handed to the backup (closed when it ends) and the Backup goes `InProgress` when one of
//! the node's backup slots is free, then `Completed` after `backup_duration`.
//!
//! The leak is bounded by `max_leaked` so the machine running the demo survives: once
//! reached, no more connections are opened and [`SimulatedController::leak_cap_hit`] is true.
//! It writes only Backup status (through the status subresource) and never talks to anything
//! but loopback engine proxies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use longhorn_types::{Backup, Snapshot};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

/// How the simulated controller behaves.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub namespace: String,
    /// Node → its instance manager's engine-proxy address (loopback).
    pub proxies: BTreeMap<String, SocketAddr>,
    /// Volume → the node its engine runs on.
    pub volume_nodes: HashMap<String, String>,
    /// How often a stuck Backup is reconciled again (Longhorn: ~30 s).
    pub resync: Duration,
    /// Backups running at once per node (Longhorn's `backup-concurrent-limit`).
    pub slots_per_node: usize,
    /// How long a Backup stays `InProgress`.
    pub backup_duration: Duration,
    /// Safety cap on leaked connections.
    pub max_leaked: usize,
    /// The slow-leak run: one node's manager leaks on every reconcile.
    pub manager_leak: Option<ManagerLeak>,
}

/// A leak of another kind than v1.7.2's (a future release, another controller): on one node,
/// every reconcile of every Backup, stuck or not, leaks connections and memory in that node's
/// simulated longhorn-manager process ([`crate::manager`]), where its agent's monitor sees them.
#[derive(Clone, Debug)]
pub struct ManagerLeak {
    pub node: String,
    /// The node's simulated manager's commands.
    pub commands: tokio::sync::mpsc::UnboundedSender<String>,
    pub connections_per_reconcile: usize,
    pub mib_per_reconcile: usize,
}

/// Counters of the simulated controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerStats {
    pub leaked_connections: u64,
    pub reconciles: u64,
    pub completed: u64,
    pub set_pending: u64,
    pub connect_errors: u64,
    pub api_errors: u64,
    pub leak_cap_hit: bool,
    /// Connections the leaky node's simulated manager was told to leak (slow-leak run).
    pub manager_leaked: u64,
}

#[derive(Default)]
struct Shared {
    /// The leak: connections opened on failed reconciles and never closed.
    leaked: Mutex<Vec<Channel>>,
    reconciles: AtomicU64,
    completed: AtomicU64,
    set_pending: AtomicU64,
    connect_errors: AtomicU64,
    api_errors: AtomicU64,
    leak_cap_hit: AtomicBool,
    /// Connections the leaky node's manager was told to open and hold (slow-leak run).
    manager_leaked: AtomicU64,
}

impl Shared {
    fn leaked_len(&self) -> usize {
        self.leaked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A running simulated controller. Dropping it aborts its tasks and closes every leaked
/// connection; [`SimulatedController::stop`] does the same and waits.
pub struct SimulatedController {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimulatedController {
    pub fn start(client: Client, config: ControllerConfig) -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(main_loop(client, Arc::new(config), shared.clone(), stopped));
        Self {
            shared,
            stop,
            task: Some(task),
        }
    }

    /// Connections leaked so far.
    pub fn leaked_connections(&self) -> usize {
        self.shared.leaked_len()
    }

    pub fn leak_cap_hit(&self) -> bool {
        self.shared.leak_cap_hit.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> ControllerStats {
        let s = &self.shared;
        ControllerStats {
            leaked_connections: self.leaked_connections() as u64,
            reconciles: s.reconciles.load(Ordering::SeqCst),
            completed: s.completed.load(Ordering::SeqCst),
            set_pending: s.set_pending.load(Ordering::SeqCst),
            connect_errors: s.connect_errors.load(Ordering::SeqCst),
            api_errors: s.api_errors.load(Ordering::SeqCst),
            leak_cap_hit: self.leak_cap_hit(),
            manager_leaked: s.manager_leaked.load(Ordering::SeqCst),
        }
    }

    /// Stops reconciling, waits for the tasks, then closes the leaked connections.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.shared
            .leaked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for SimulatedController {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shared
            .leaked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

async fn main_loop(
    client: Client,
    config: Arc<ControllerConfig>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let backups: Api<Backup> = Api::namespaced(client.clone(), &config.namespace);
    let reconciler = Reconciler {
        backups: backups.clone(),
        snapshots: Api::namespaced(client, &config.namespace),
        slots: Arc::new(node_slots(&config)),
        config,
        shared,
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut events = watcher(backups, watcher::Config::default()).boxed();
    loop {
        let event = tokio::select! {
            _ = stopped.changed() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                drop(joined);
                continue;
            }
            e = events.next() => e,
        };
        let backup = match event {
            Some(Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b))) => b,
            Some(Ok(watcher::Event::Delete(b))) => {
                // Its reconcile ends at its next resync (it finds the Backup gone).
                if let Some(name) = b.metadata.name.as_deref() {
                    seen.remove(name);
                }
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                reconciler.shared.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "simulated controller: watch error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => break,
        };
        let Some(job) = new_backup_job(&backup, &reconciler.config) else {
            continue;
        };
        if !seen.insert(job.name.clone()) {
            continue;
        }
        tasks.spawn(reconciler.clone().reconcile_backup(job, stopped.clone()));
    }
    // Let every reconcile finish the write it is in (each returns at its next sleep), so
    // nothing changes a Backup after `stop` returns; abort what is left after 5 s.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// Each node's backup slots (`slots_per_node`, at least one).
fn node_slots(config: &ControllerConfig) -> HashMap<String, Arc<Semaphore>> {
    config
        .proxies
        .keys()
        .map(|n| {
            (
                n.clone(),
                Arc::new(Semaphore::new(config.slots_per_node.max(1))),
            )
        })
        .collect()
}

/// The job of a Backup the controller has not touched yet (no status state); `None` for
/// one already reconciled or without a name.
fn new_backup_job(backup: &Backup, config: &ControllerConfig) -> Option<BackupJob> {
    let name = backup.metadata.name.clone()?;
    let state = backup
        .status
        .as_ref()
        .map(|s| s.state.as_str())
        .unwrap_or("");
    if !state.is_empty() {
        return None;
    }
    let volume = backup
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(longhorn_types::labels::BACKUP_VOLUME))
        .cloned()
        .unwrap_or_default();
    Some(BackupJob {
        name,
        snapshot: backup.spec.snapshot_name.clone(),
        node: config
            .volume_nodes
            .get(&volume)
            .cloned()
            .unwrap_or_default(),
        volume,
    })
}

struct BackupJob {
    name: String,
    volume: String,
    snapshot: String,
    node: String,
}

/// Sleeps `d`, or returns true early when stopped.
async fn stopped_during(stopped: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stopped.borrow() {
        return true;
    }
    tokio::select! {
        _ = stopped.changed() => true,
        _ = tokio::time::sleep(d) => *stopped.borrow(),
    }
}

/// What every Backup's reconcile works with.
#[derive(Clone)]
struct Reconciler {
    backups: Api<Backup>,
    snapshots: Api<Snapshot>,
    config: Arc<ControllerConfig>,
    shared: Arc<Shared>,
    slots: Arc<HashMap<String, Arc<Semaphore>>>,
}

impl Reconciler {
    async fn reconcile_backup(self, job: BackupJob, mut stopped: watch::Receiver<bool>) {
        // Reconciles until the snapshot is usable; bounded by the stop signal (the run's end).
        let Some(proxy_conn) = self.until_snapshot_ready(&job, &mut stopped).await else {
            return;
        };
        self.back_up(&job, &mut stopped).await;
        drop(proxy_conn);
    }

    /// Reconciles every `resync` until the Snapshot is ready, leaking the engine-proxy
    /// connection of each failed round and setting the Backup Pending once; returns the last
    /// round's connection, or `None` when stopped first.
    async fn until_snapshot_ready(
        &self,
        job: &BackupJob,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<Option<Channel>> {
        let (config, shared) = (&self.config, &self.shared);
        let mut pending_written = false;
        let mut first = true;
        loop {
            if *stopped.borrow() {
                return None;
            }
            // A deleted Backup is not reconciled again (what the long run's retention relies on).
            if !first && matches!(self.backups.get_opt(&job.name).await, Ok(None)) {
                return None;
            }
            first = false;
            shared.reconciles.fetch_add(1, Ordering::Relaxed);
            leak_in_manager(config, shared, &job.node);
            // Step 5: getBackupTarget() opens an engine-proxy client on the node.
            let conn = open_proxy_connection(config, shared, &job.node).await;
            // Step 8/9: the Snapshot must exist and be ready.
            let ready = match self.snapshots.get_opt(&job.snapshot).await {
                Ok(Some(s)) => s.ready_to_use(),
                Ok(None) => false,
                Err(e) => {
                    shared.api_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, backup = %job.name, "simulated controller: snapshot get failed");
                    false
                }
            };
            if ready {
                return Some(conn);
            }
            // The v1.7.2 leak: the error path returns without closing the client.
            if let Some(c) = conn {
                let mut leaked = shared.leaked.lock().unwrap_or_else(PoisonError::into_inner);
                leaked.push(c);
            }
            if !pending_written && self.write_status(job, "Pending", |_| {}).await {
                pending_written = true;
                shared.set_pending.fetch_add(1, Ordering::Relaxed);
            }
            if stopped_during(stopped, config.resync).await {
                return None;
            }
        }
    }

    /// Healthy path: waits for a backup slot on the node, then InProgress and, after
    /// `backup_duration`, Completed with its URL.
    async fn back_up(&self, job: &BackupJob, stopped: &mut watch::Receiver<bool>) {
        let Some(slot) = self.slots.get(&job.node).cloned() else {
            return;
        };
        let permit = tokio::select! {
            _ = stopped.changed() => return,
            p = slot.acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        self.write_status(job, "InProgress", |status| {
            status["progress"] = json!(50);
        })
        .await;
        if stopped_during(stopped, self.config.backup_duration).await {
            return;
        }
        let url = format!(
            "s3://backupbucket@us-east-1/?backup={}&volume={}",
            job.name, job.volume
        );
        if self
            .write_status(job, "Completed", |status| status["url"] = json!(url))
            .await
        {
            self.shared.completed.fetch_add(1, Ordering::Relaxed);
        }
        drop(permit);
    }

    /// Writes the Backup's status in `state` (as Longhorn shapes it, then `amend`ed); a
    /// failure is counted and logged. Returns whether it was written.
    async fn write_status(
        &self,
        job: &BackupJob,
        state: &str,
        amend: impl FnOnce(&mut serde_json::Value),
    ) -> bool {
        let mut status =
            longhorn_types::shapes::backup_status(state, &job.node, &job.volume, &job.snapshot);
        amend(&mut status);
        match write_status(&self.backups, &job.name, status).await {
            Ok(()) => true,
            Err(e) => {
                self.shared.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, backup = %job.name, "simulated controller: status write failed");
                false
            }
        }
    }
}

/// The slow-leak run's leak: on the leaky node, the manager opens connections to its node's
/// engine proxy and never closes them, and grows (bounded by the leak cap).
fn leak_in_manager(config: &ControllerConfig, shared: &Shared, node: &str) {
    let Some(leak) = config.manager_leak.as_ref().filter(|l| l.node == node) else {
        return;
    };
    let Some(addr) = config.proxies.get(node) else {
        return;
    };
    let n = leak.connections_per_reconcile as u64;
    if shared.manager_leaked.load(Ordering::SeqCst) + n > config.max_leaked as u64 {
        shared.leak_cap_hit.store(true, Ordering::SeqCst);
        return;
    }
    shared.manager_leaked.fetch_add(n, Ordering::SeqCst);
    let _ = leak.commands.send(format!("connect {addr} {n}"));
    if leak.mib_per_reconcile > 0 {
        let _ = leak
            .commands
            .send(format!("grow {}", leak.mib_per_reconcile));
    }
}

/// Opens (and connects) a new gRPC channel to the node's engine proxy, unless the leak cap
/// is reached.
async fn open_proxy_connection(
    config: &ControllerConfig,
    shared: &Shared,
    node: &str,
) -> Option<Channel> {
    if shared.leaked_len() >= config.max_leaked {
        shared.leak_cap_hit.store(true, Ordering::SeqCst);
        return None;
    }
    let addr = config.proxies.get(node)?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2));
    match endpoint.connect().await {
        Ok(c) => Some(c),
        Err(e) => {
            shared.connect_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, %addr, "simulated controller: engine proxy connect failed");
            None
        }
    }
}

async fn write_status(
    backups: &Api<Backup>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    backups
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(|_| ())
}
