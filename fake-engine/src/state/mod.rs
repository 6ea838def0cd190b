//! The fake's shared, scriptable state: reachable engines, their snapshot chains and backups, faults and
//! counters. Every lock here is a short, synchronous critical section, never held across an `.await`.
//!
//! [`model`] holds the engines (replicas, snapshot chains, backups); [`calls`] counts the calls
//! and connections the server serves.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use longhorn_guard_proto::ptypes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::fault::{Fault, Method};
use crate::keepalive::KeepalivePolicy;

mod calls;
mod model;

pub(crate) use calls::ConnectionRecord;
use model::DEFAULT_BACKUP_POLLS_TO_COMPLETE;
pub(crate) use model::{Backup, Chain, Data, Engine, Replica};

/// An engine reachable through this proxy, with the defaults of [`FakeEngine::add_engine`]
/// (a scenario file says more: see [`crate::Scenario`] and [`FakeEngine::load_scenario`]).
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotSpec {
    pub name: String,
    /// Empty: the previous snapshot of the chain (or none for the first one), see
    /// [`FakeEngine::set_snapshots`].
    pub parent: String,
    pub user_created: bool,
    /// Marked removed (Longhorn's `markRemoved`): still listed, `removed = true`.
    pub removed: bool,
    pub created: String,
    pub size: u64,
    pub labels: BTreeMap<String, String>,
}

/// A replica's mode in the engine (`ptypes.ReplicaMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMode {
    #[serde(rename = "RW")]
    Rw,
    #[serde(rename = "WO")]
    Wo,
    #[serde(rename = "ERR")]
    Error,
}

impl ReplicaMode {
    fn to_proto(self) -> ptypes::ReplicaMode {
        match self {
            ReplicaMode::Rw => ptypes::ReplicaMode::Rw,
            ReplicaMode::Wo => ptypes::ReplicaMode::Wo,
            ReplicaMode::Error => ptypes::ReplicaMode::Err,
        }
    }
}

/// What the engine reports about its volume besides the name and the replica count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeSpec {
    /// Bytes.
    pub size: i64,
    /// The engine's frontend (`tgt-blockdev`, `tgt-iscsi`, ...; empty: none).
    pub frontend: String,
    /// `up` or `down` (empty without a frontend).
    pub frontend_state: String,
    pub unmap_mark_snap_chain_removed: bool,
    pub snapshot_max_count: i32,
    pub snapshot_max_size: i64,
}

/// 1 GiB.
pub const DEFAULT_VOLUME_SIZE: i64 = 1 << 30;
/// Longhorn's default `snapshotMaxCount`.
pub const DEFAULT_SNAPSHOT_MAX_COUNT: i32 = 250;
/// The frontend Longhorn gives a v1 volume with frontend `blockdev`.
pub const FRONTEND_BLOCKDEV: &str = "tgt-blockdev";

impl Default for VolumeSpec {
    fn default() -> Self {
        Self {
            size: DEFAULT_VOLUME_SIZE,
            frontend: FRONTEND_BLOCKDEV.to_string(),
            frontend_state: "up".to_string(),
            unmap_mark_snap_chain_removed: false,
            snapshot_max_count: DEFAULT_SNAPSHOT_MAX_COUNT,
            snapshot_max_size: 0,
        }
    }
}

/// One connection the fake accepted, as [`FakeEngine::connections`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub open: bool,
    /// HTTP/2 PINGs the client sent (not counting ACKs).
    pub pings_received: u64,
    /// The keepalive enforcement sent it GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings".
    pub told_too_many_pings: bool,
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
    /// HTTP/2 PINGs received from clients (not counting ACKs).
    pub pings_received: u64,
    /// GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings" sent (connections closed for pinging too often).
    pub too_many_pings_goaways: u64,
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
    pings_received: Arc<AtomicU64>,
    too_many_pings_goaways: Arc<AtomicU64>,
    connections: Mutex<VecDeque<Arc<ConnectionRecord>>>,
}

/// How many connections [`FakeEngine::connections`] remembers (the newest).
const CONNECTIONS_REMEMBERED: usize = 4096;

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
                keepalive: Some(KeepalivePolicy::LONGHORN),
            }),
            open_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            concurrent_calls: AtomicU64::new(0),
            max_concurrent_calls: AtomicU64::new(0),
            calls_total: AtomicU64::new(0),
            calls_by_method: Mutex::new(BTreeMap::new()),
            tls_connections: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            pings_received: Arc::new(AtomicU64::new(0)),
            too_many_pings_goaways: Arc::new(AtomicU64::new(0)),
            connections: Mutex::new(VecDeque::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// ProxyEngineRequest.address), with the defaults of a v1.7.2 engine of a 1 GiB volume on
    /// `tgt-blockdev` (up) with one RW replica at `tcp://<host>:10000`. Replaces an engine
    /// already registered at that address.
    pub fn add_engine(&self, spec: EngineSpec) {
        let address = spec.address.clone();
        self.data()
            .engines
            .insert(address, Engine::with_defaults(spec));
    }

    pub fn remove_engine(&self, address: &str) {
        self.data().engines.remove(address);
    }

    /// Replace the snapshot chain of every replica of the engine at `address`, oldest first (the
    /// live "volume-head" entry is always added by the fake, as child of the last snapshot). An
    /// empty `parent` means the previous snapshot in the list. No-op for an unknown address; a
    /// chain that does not hold together (a parent not listed before its child, a name twice) is
    /// refused with an error log and leaves the chain as it was (a scenario file reports it as an
    /// error instead).
    pub fn set_snapshots(&self, address: &str, snapshots: Vec<SnapshotSpec>) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            match Chain::new(snapshots, None, None, 0) {
                Ok(chain) => {
                    for c in engine.chains_mut() {
                        *c = chain.clone();
                    }
                }
                Err(e) => {
                    tracing::error!(%address, error = %e, "fake-engine: snapshot chain refused")
                }
            }
        }
    }

    /// Takes a snapshot on every replica of the engine at `address`: it becomes the parent of
    /// volume-head, which starts again empty at the snapshot's `created` time. An empty `parent`
    /// means the head's current parent. Replaces a snapshot of the same name. No-op for an
    /// unknown address.
    pub fn add_snapshot(&self, address: &str, snapshot: SnapshotSpec) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            for c in engine.chains_mut() {
                c.add(snapshot.clone());
            }
        }
    }

    /// The snapshot is gone from every replica (purged); its children (and the head) are
    /// re-parented to its parent.
    pub fn remove_snapshot(&self, address: &str, name: &str) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            for c in engine.chains_mut() {
                c.remove(name);
            }
        }
    }

    /// The snapshot is still listed, with `removed = true` (marked removed, not yet purged).
    pub fn mark_removed(&self, address: &str, name: &str) {
        if let Some(engine) = self.data().engines.get_mut(address) {
            for c in engine.chains_mut() {
                c.mark_removed(name);
            }
        }
    }

    /// Changes the mode of the replica at `replica_address` (`tcp://host:port`) of the engine at
    /// `address`; `false` when there is no such replica.
    pub fn set_replica_mode(
        &self,
        address: &str,
        replica_address: &str,
        mode: ReplicaMode,
    ) -> bool {
        let mut data = self.data();
        let replica = data
            .engines
            .get_mut(address)
            .and_then(|e| e.replicas.iter_mut().find(|r| r.address == replica_address));
        match replica {
            Some(r) => {
                r.mode = mode;
                true
            }
            None => false,
        }
    }

    /// The keepalive policy new connections get (default: Longhorn's, see
    /// [`KeepalivePolicy::LONGHORN`]); `None` enforces none.
    pub fn set_keepalive_policy(&self, policy: Option<KeepalivePolicy>) {
        self.data().keepalive = policy;
    }

    pub(crate) fn keepalive_policy(&self) -> Option<KeepalivePolicy> {
        self.data().keepalive
    }

    /// The connections accepted so far (the newest 4096), oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.inner.connections)
            .iter()
            .map(|r| r.info())
            .collect()
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
            pings_received: i.pings_received.load(Ordering::SeqCst),
            too_many_pings_goaways: i.too_many_pings_goaways.load(Ordering::SeqCst),
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
}
