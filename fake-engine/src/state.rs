//! The fake's shared, scriptable state: reachable engines, their snapshot chains and backups, faults and
//! counters. Every lock here is a short, synchronous critical section, never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::fault::{Action, Fault, Method};

/// An engine reachable through this proxy.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    /// `host:port`, as `ProxyEngineRequest.address`.
    pub address: String,
    /// The Engine CR name (`ProxyEngineRequest.engine_name`).
    pub engine_name: String,
    /// The volume (`ProxyEngineRequest.volume_name`).
    pub volume_name: String,
}

/// One snapshot of an engine's chain.
#[derive(Clone, Debug, Default)]
pub struct SnapshotSpec {
    pub name: String,
    /// Empty: the previous snapshot of the chain (or none for the first one), see
    /// [`FakeEngine::set_snapshots`].
    pub parent: String,
    pub user_created: bool,
    pub created: String,
    pub size: u64,
    pub labels: BTreeMap<String, String>,
}

/// Counters of the fake. Health checks count as calls (key `Health/Check`); proxy RPCs are keyed by RPC
/// name (`SnapshotList`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub open_connections: u64,
    pub total_connections: u64,
    pub concurrent_calls: u64,
    pub max_concurrent_calls: u64,
    pub calls_total: u64,
    pub calls_by_method: BTreeMap<String, u64>,
    /// TLS servers ([`crate::serve_tls`]): handshakes completed (mTLS connections served).
    pub tls_connections: u64,
    /// TLS servers: handshakes that failed (bad or missing client certificate, plaintext
    /// client, timeout).
    pub tls_handshake_failures: u64,
}

/// Scriptable state of one fake engine proxy; cheap to clone (all clones share the state).
#[derive(Clone, Default)]
pub struct FakeEngine {
    pub(crate) inner: Arc<Inner>,
}

/// A handle that does not keep the fake's state alive: tests use it as a leak oracle (after
/// [`crate::RunningServer::shutdown`], no task of the server may still hold the state).
#[derive(Clone)]
pub struct WeakFakeEngine(Weak<Inner>);

impl WeakFakeEngine {
    pub fn upgrade(&self) -> Option<FakeEngine> {
        self.0.upgrade().map(|inner| FakeEngine { inner })
    }
}

pub(crate) struct Inner {
    data: Mutex<Data>,
    open_connections: AtomicU64,
    total_connections: AtomicU64,
    concurrent_calls: AtomicU64,
    max_concurrent_calls: AtomicU64,
    calls_total: AtomicU64,
    calls_by_method: Mutex<BTreeMap<String, u64>>,
    tls_connections: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self::with_rng(StdRng::from_os_rng())
    }
}

impl Inner {
    fn with_rng(rng: StdRng) -> Self {
        Inner {
            data: Mutex::new(Data {
                engines: HashMap::new(),
                faults: HashMap::new(),
                rng,
                backup_polls_to_complete: DEFAULT_BACKUP_POLLS_TO_COMPLETE,
            }),
            open_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            concurrent_calls: AtomicU64::new(0),
            max_concurrent_calls: AtomicU64::new(0),
            calls_total: AtomicU64::new(0),
            calls_by_method: Mutex::new(BTreeMap::new()),
            tls_connections: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
        }
    }
}

const DEFAULT_BACKUP_POLLS_TO_COMPLETE: u32 = 2;

pub(crate) struct Data {
    pub(crate) engines: HashMap<String, Engine>,
    faults: HashMap<Method, Fault>,
    rng: StdRng,
    pub(crate) backup_polls_to_complete: u32,
}

pub(crate) struct Engine {
    pub(crate) spec: EngineSpec,
    /// Oldest first; the last one is the parent of `volume-head`.
    pub(crate) snapshots: Vec<Snapshot>,
    pub(crate) backups: HashMap<String, Backup>,
}

pub(crate) struct Snapshot {
    pub(crate) spec: SnapshotSpec,
    pub(crate) removed: bool,
}

pub(crate) struct Backup {
    pub(crate) snapshot: String,
    pub(crate) target: String,
    pub(crate) replica: String,
    pub(crate) polls: u32,
    pub(crate) error: Option<String>,
}

impl Engine {
    /// The `tcp://` address of the engine's only (RW) replica: same host as the engine, port 10000.
    pub(crate) fn replica_address(&self) -> String {
        let host = match self.spec.address.rsplit_once(':') {
            Some((host, _port)) => host,
            None => self.spec.address.as_str(),
        };
        format!("tcp://{host}:10000")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fills empty parents with the previous snapshot of the chain.
fn link_parents(chain: &mut [Snapshot]) {
    for i in 1..chain.len() {
        if chain[i].spec.parent.is_empty() {
            chain[i].spec.parent = chain[i - 1].spec.name.clone();
        }
    }
}

impl FakeEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake whose random choices (`RandomDelay`, `Probabilistic`) come from a seeded generator, so a
    /// test sending its calls one at a time sees the same sequence on every run.
    pub fn with_seed(seed: u64) -> Self {
        FakeEngine {
            inner: Arc::new(Inner::with_rng(StdRng::seed_from_u64(seed))),
        }
    }

    pub fn downgrade(&self) -> WeakFakeEngine {
        WeakFakeEngine(Arc::downgrade(&self.inner))
    }

    pub(crate) fn data(&self) -> MutexGuard<'_, Data> {
        lock(&self.inner.data)
    }

    /// An engine reachable through this proxy at `spec.address` ("host:port" string, as
    /// ProxyEngineRequest.address). Replaces an engine already registered at that address.
    pub fn add_engine(&self, spec: EngineSpec) {
        let address = spec.address.clone();
        self.data().engines.insert(
            address,
            Engine {
                spec,
                snapshots: Vec::new(),
                backups: HashMap::new(),
            },
        );
    }

    pub fn remove_engine(&self, address: &str) {
        self.data().engines.remove(address);
    }

    /// Replace the snapshot chain of the engine at `address`, oldest first (the live "volume-head" entry
    /// is always added by the fake, as child of the last snapshot). An empty `parent` means the previous
    /// snapshot in the list. No-op for an unknown address.
    pub fn set_snapshots(&self, address: &str, snapshots: Vec<SnapshotSpec>) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            engine.snapshots = snapshots
                .into_iter()
                .map(|spec| Snapshot {
                    spec,
                    removed: false,
                })
                .collect();
            link_parents(&mut engine.snapshots);
        }
    }

    /// Append a snapshot (it becomes the newest: parent of volume-head). An empty `parent` means the
    /// current newest snapshot. Replaces a snapshot of the same name. No-op for an unknown address.
    pub fn add_snapshot(&self, address: &str, snapshot: SnapshotSpec) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            engine.snapshots.retain(|s| s.spec.name != snapshot.name);
            engine.snapshots.push(Snapshot {
                spec: snapshot,
                removed: false,
            });
            let last = engine.snapshots.len() - 1;
            link_parents(&mut engine.snapshots[last.saturating_sub(1)..]);
        }
    }

    /// The snapshot is gone from the engine (purged); its children are re-parented to its parent.
    pub fn remove_snapshot(&self, address: &str, name: &str) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            let Some(pos) = engine.snapshots.iter().position(|s| s.spec.name == name) else {
                return;
            };
            let removed = engine.snapshots.remove(pos);
            for s in &mut engine.snapshots {
                if s.spec.parent == name {
                    s.spec.parent = removed.spec.parent.clone();
                }
            }
        }
    }

    /// The snapshot is still listed, with `removed = true` (marked removed, not yet purged).
    pub fn mark_removed(&self, address: &str, name: &str) {
        if let Some(engine) = self.data().engines.get_mut(address)
            && let Some(s) = engine.snapshots.iter_mut().find(|s| s.spec.name == name)
        {
            s.removed = true;
        }
    }

    /// Replaces the fault for that method (`Method::Any`: every method without its own fault).
    pub fn set_fault(&self, method: Method, fault: Fault) {
        self.data().faults.insert(method, fault);
    }

    pub fn clear_faults(&self) {
        self.data().faults.clear();
    }

    /// How many `SnapshotBackupStatus` polls a backup takes to reach `complete` (progress grows evenly
    /// until then; 0 = complete at once). Default 2: `in_progress` 50, then `complete` 100.
    pub fn set_backup_polls_to_complete(&self, polls: u32) {
        self.data().backup_polls_to_complete = polls;
    }

    /// Make a started backup fail: its status becomes state `error` with this `error` text.
    pub fn fail_backup(&self, address: &str, backup_name: &str, error: &str) {
        if let Some(b) = self
            .data()
            .engines
            .get_mut(address)
            .and_then(|e| e.backups.get_mut(backup_name))
        {
            b.error = Some(error.to_string());
        }
    }

    /// Names of the backups started on the engine at `address` (sorted).
    pub fn backup_names(&self, address: &str) -> Vec<String> {
        let data = self.data();
        let mut names: Vec<String> = data
            .engines
            .get(address)
            .map(|e| e.backups.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The `tcp://` replica address the fake reports for the engine at `address`.
    pub fn replica_address(&self, address: &str) -> Option<String> {
        self.data()
            .engines
            .get(address)
            .map(Engine::replica_address)
    }

    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        Stats {
            open_connections: i.open_connections.load(Ordering::SeqCst),
            total_connections: i.total_connections.load(Ordering::SeqCst),
            concurrent_calls: i.concurrent_calls.load(Ordering::SeqCst),
            max_concurrent_calls: i.max_concurrent_calls.load(Ordering::SeqCst),
            calls_total: i.calls_total.load(Ordering::SeqCst),
            calls_by_method: lock(&i.calls_by_method).clone(),
            tls_connections: i.tls_connections.load(Ordering::SeqCst),
            tls_handshake_failures: i.tls_handshake_failures.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn tls_handshake_completed(&self) {
        self.inner.tls_connections.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.inner
            .tls_handshake_failures
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Sets `max_concurrent_calls` to the number of calls in flight now.
    pub fn reset_max_concurrent_calls(&self) {
        let i = &self.inner;
        i.max_concurrent_calls
            .store(i.concurrent_calls.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// The fault action for one call of `method`, randomness resolved.
    pub(crate) fn action_for(&self, method: Method) -> Action {
        let mut data = self.data();
        let data = &mut *data;
        match data
            .faults
            .get(&method)
            .or_else(|| data.faults.get(&Method::Any))
        {
            Some(fault) => fault.resolve(&mut data.rng),
            None => Action::Proceed,
        }
    }

    /// Counts a call; the guard keeps it "in flight" until dropped (also when the call is cancelled).
    pub(crate) fn begin_call(&self, method_key: &str) -> CallGuard {
        let i = &self.inner;
        i.calls_total.fetch_add(1, Ordering::SeqCst);
        *lock(&i.calls_by_method)
            .entry(method_key.to_string())
            .or_default() += 1;
        let now = i.concurrent_calls.fetch_add(1, Ordering::SeqCst) + 1;
        i.max_concurrent_calls.fetch_max(now, Ordering::SeqCst);
        CallGuard {
            inner: self.inner.clone(),
        }
    }

    /// Counts a connection; open until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        let i = &self.inner;
        i.total_connections.fetch_add(1, Ordering::SeqCst);
        i.open_connections.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct CallGuard {
    inner: Arc<Inner>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.inner.concurrent_calls.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct ConnectionGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.inner.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}
