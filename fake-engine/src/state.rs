//! The fake's shared, scriptable state: reachable engines, their snapshot chains and backups, faults and
//! counters. Every lock here is a short, synchronous critical section, never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use longhorn_guard_proto::VOLUME_HEAD;
use longhorn_guard_proto::imrpc::EngineSnapshotDiskInfo;
use longhorn_guard_proto::ptypes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::fault::{Action, Fault, Method};
use crate::keepalive::KeepalivePolicy;
use crate::version::EngineVersion;

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

const DEFAULT_BACKUP_POLLS_TO_COMPLETE: u32 = 2;

pub(crate) struct Data {
    pub(crate) engines: HashMap<String, Engine>,
    faults: HashMap<Method, Fault>,
    rng: StdRng,
    pub(crate) backup_polls_to_complete: u32,
    keepalive: Option<KeepalivePolicy>,
}

/// One engine (controller) reachable through the proxy.
pub(crate) struct Engine {
    pub(crate) spec: EngineSpec,
    pub(crate) version: EngineVersion,
    pub(crate) volume: VolumeSpec,
    /// In the engine's order; `SnapshotList` and `SnapshotBackup` use the first RW one.
    pub(crate) replicas: Vec<Replica>,
    pub(crate) backups: HashMap<String, Backup>,
}

pub(crate) struct Replica {
    pub(crate) address: String,
    pub(crate) name: String,
    pub(crate) mode: ReplicaMode,
    pub(crate) chain: Chain,
}

/// A replica's disk chain: snapshots oldest first (a tree when a revert left branches) and the
/// live head.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Chain {
    pub(crate) snapshots: Vec<SnapshotSpec>,
    pub(crate) head: Head,
}

/// `volume-head`: its parent (empty without snapshots), when it was created and its size.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Head {
    pub(crate) parent: String,
    pub(crate) created: String,
    pub(crate) size: u64,
}

pub(crate) struct Backup {
    pub(crate) snapshot: String,
    pub(crate) target: String,
    pub(crate) replica: String,
    pub(crate) polls: u32,
    pub(crate) error: Option<String>,
}

impl Engine {
    /// An engine with the defaults of [`FakeEngine::add_engine`]: Longhorn v1.7.2, a 1 GiB volume
    /// on `tgt-blockdev` (up), one RW replica on the engine's host, port 10000, no snapshot.
    pub(crate) fn with_defaults(spec: EngineSpec) -> Self {
        let host = match spec.address.rsplit_once(':') {
            Some((host, _port)) => host,
            None => spec.address.as_str(),
        };
        let replica = Replica {
            address: format!("tcp://{host}:10000"),
            name: format!("{}-r-0", spec.volume_name),
            mode: ReplicaMode::Rw,
            chain: Chain::empty(),
        };
        Engine {
            spec,
            version: EngineVersion::default(),
            volume: VolumeSpec::default(),
            replicas: vec![replica],
            backups: HashMap::new(),
        }
    }

    /// The first RW replica: where Longhorn reads the snapshot list and takes backups from.
    pub(crate) fn first_rw(&self) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.mode == ReplicaMode::Rw)
    }

    /// The `tcp://` address of the first RW replica (else of the first replica).
    pub(crate) fn replica_address(&self) -> String {
        self.first_rw()
            .or(self.replicas.first())
            .map(|r| r.address.clone())
            .unwrap_or_default()
    }

    pub(crate) fn volume(&self) -> ptypes::Volume {
        let v = &self.volume;
        let endpoint = if v.frontend_state == "up" {
            match v.frontend.as_str() {
                FRONTEND_BLOCKDEV => format!("/dev/longhorn/{}", self.spec.volume_name),
                "tgt-iscsi" => format!(
                    "iscsi://{}:3260/iqn.2019-10.io.longhorn:{}/1",
                    self.spec.address.rsplit_once(':').map_or("", |(h, _)| h),
                    self.spec.volume_name
                ),
                _ => String::new(),
            }
        } else {
            String::new()
        };
        ptypes::Volume {
            name: self.spec.volume_name.clone(),
            size: v.size,
            replica_count: i32::try_from(self.replicas.len()).unwrap_or(i32::MAX),
            endpoint,
            frontend: v.frontend.clone(),
            frontend_state: v.frontend_state.clone(),
            unmap_mark_snap_chain_removed: v.unmap_mark_snap_chain_removed,
            snapshot_max_count: v.snapshot_max_count,
            snapshot_max_size: v.snapshot_max_size,
            ..Default::default()
        }
    }

    pub(crate) fn replica_list(&self) -> ptypes::ReplicaListReply {
        ptypes::ReplicaListReply {
            replicas: self
                .replicas
                .iter()
                .map(|r| ptypes::ControllerReplica {
                    address: Some(ptypes::ReplicaAddress {
                        address: r.address.clone(),
                        instance_name: r.name.clone(),
                    }),
                    mode: r.mode.to_proto() as i32,
                })
                .collect(),
        }
    }

    fn chains_mut(&mut self) -> impl Iterator<Item = &mut Chain> {
        self.replicas.iter_mut().map(|r| &mut r.chain)
    }
}

impl Chain {
    /// No snapshot yet: the head was created with the volume (now).
    pub(crate) fn empty() -> Self {
        Chain {
            snapshots: Vec::new(),
            head: Head {
                created: rfc3339_now(),
                ..Head::default()
            },
        }
    }

    /// `specs` oldest first, an empty parent meaning the previous snapshot; the head follows
    /// `head_parent` (default: the last snapshot). Checks that every parent is listed before its
    /// child, that names are unique and that only the first snapshot is a root.
    pub(crate) fn new(
        mut specs: Vec<SnapshotSpec>,
        head_parent: Option<String>,
        head_created: Option<String>,
        head_size: u64,
    ) -> Result<Self, String> {
        for i in 1..specs.len() {
            if specs[i].parent.is_empty() {
                specs[i].parent = specs[i - 1].name.clone();
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for s in &specs {
            if s.name.is_empty() {
                return Err("a snapshot has an empty name".to_string());
            }
            if s.name == VOLUME_HEAD {
                return Err(format!(
                    "{VOLUME_HEAD:?} is the live head, not a snapshot name"
                ));
            }
            if seen.contains(&s.name.as_str()) {
                return Err(format!("snapshot {} is listed twice", s.name));
            }
            if !s.parent.is_empty() && !seen.contains(&s.parent.as_str()) {
                return Err(format!(
                    "snapshot {} names parent {}, which is not listed before it",
                    s.name, s.parent
                ));
            }
            seen.push(&s.name);
        }
        let parent = match head_parent {
            Some(p) if p.is_empty() && !specs.is_empty() => {
                return Err(format!(
                    "{VOLUME_HEAD} has no parent but the chain has snapshots"
                ));
            }
            Some(p) => {
                if !p.is_empty() && !seen.contains(&p.as_str()) {
                    return Err(format!(
                        "{VOLUME_HEAD} names parent {p}, which is not a snapshot of the chain"
                    ));
                }
                p
            }
            None => specs.last().map(|s| s.name.clone()).unwrap_or_default(),
        };
        let created = head_created.unwrap_or_else(|| {
            specs
                .iter()
                .find(|s| s.name == parent)
                .map(|s| s.created.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(rfc3339_now)
        });
        Ok(Chain {
            snapshots: specs,
            head: Head {
                parent,
                created,
                size: head_size,
            },
        })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.snapshots.iter().any(|s| s.name == name)
    }

    /// A new snapshot of the head (as Longhorn takes one): its parent is the head's parent
    /// unless it names one, and the head starts again, empty, at the snapshot's time.
    fn add(&mut self, mut snapshot: SnapshotSpec) {
        self.snapshots.retain(|s| s.name != snapshot.name);
        if snapshot.parent.is_empty() || !self.contains(&snapshot.parent) {
            snapshot.parent = self.head.parent.clone();
            if !self.contains(&snapshot.parent) {
                snapshot.parent.clear();
            }
        }
        self.head = Head {
            parent: snapshot.name.clone(),
            created: if snapshot.created.is_empty() {
                rfc3339_now()
            } else {
                snapshot.created.clone()
            },
            size: 0,
        };
        self.snapshots.push(snapshot);
    }

    /// Purged: gone from the chain, its children (and the head) re-parented to its parent.
    fn remove(&mut self, name: &str) {
        let Some(pos) = self.snapshots.iter().position(|s| s.name == name) else {
            return;
        };
        let removed = self.snapshots.remove(pos);
        for s in &mut self.snapshots {
            if s.parent == name {
                s.parent = removed.parent.clone();
            }
        }
        if self.head.parent == name {
            self.head.parent = removed.parent;
        }
    }

    fn mark_removed(&mut self, name: &str) {
        if let Some(s) = self.snapshots.iter_mut().find(|s| s.name == name) {
            s.removed = true;
        }
    }

    /// The chain as `SnapshotList` answers it: by name, `volume-head` included, children derived
    /// from the parents.
    pub(crate) fn disks(&self) -> HashMap<String, EngineSnapshotDiskInfo> {
        let mut disks: HashMap<String, EngineSnapshotDiskInfo> = self
            .snapshots
            .iter()
            .map(|s| {
                let info = EngineSnapshotDiskInfo {
                    name: s.name.clone(),
                    parent: s.parent.clone(),
                    children: HashMap::new(),
                    removed: s.removed,
                    user_created: s.user_created,
                    created: s.created.clone(),
                    size: s.size.to_string(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                (s.name.clone(), info)
            })
            .collect();
        disks.insert(
            VOLUME_HEAD.to_string(),
            EngineSnapshotDiskInfo {
                name: VOLUME_HEAD.to_string(),
                parent: self.head.parent.clone(),
                created: self.head.created.clone(),
                size: self.head.size.to_string(),
                ..Default::default()
            },
        );
        let links: Vec<(String, String)> = disks
            .values()
            .filter(|d| !d.parent.is_empty())
            .map(|d| (d.parent.clone(), d.name.clone()))
            .collect();
        for (parent, child) in links {
            if let Some(p) = disks.get_mut(&parent) {
                p.children.insert(child, true);
            }
        }
        disks
    }
}

/// Now as Longhorn writes snapshot times (`time.RFC3339` in UTC, e.g. `2026-11-24T10:00:00Z`).
pub(crate) fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` since the Unix epoch as RFC 3339 UTC (days to civil date: H. Hinnant's algorithm).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Counters of one accepted connection (see [`ConnectionInfo`]).
pub(crate) struct ConnectionRecord {
    peer: SocketAddr,
    open: AtomicBool,
    pings: AtomicU64,
    too_many_pings: AtomicBool,
    pings_total: Arc<AtomicU64>,
    goaways_total: Arc<AtomicU64>,
}

impl ConnectionRecord {
    pub(crate) fn ping_received(&self) {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.pings_total.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn told_too_many_pings(&self) {
        self.too_many_pings.store(true, Ordering::SeqCst);
        self.goaways_total.fetch_add(1, Ordering::SeqCst);
    }

    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            peer: self.peer,
            open: self.open.load(Ordering::SeqCst),
            pings_received: self.pings.load(Ordering::SeqCst),
            told_too_many_pings: self.too_many_pings.load(Ordering::SeqCst),
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
    pub(crate) fn connection_opened(&self, peer: SocketAddr) -> ConnectionGuard {
        let i = &self.inner;
        i.total_connections.fetch_add(1, Ordering::SeqCst);
        i.open_connections.fetch_add(1, Ordering::SeqCst);
        let record = Arc::new(ConnectionRecord {
            peer,
            open: AtomicBool::new(true),
            pings: AtomicU64::new(0),
            too_many_pings: AtomicBool::new(false),
            pings_total: i.pings_received.clone(),
            goaways_total: i.too_many_pings_goaways.clone(),
        });
        {
            let mut connections = lock(&i.connections);
            if connections.len() == CONNECTIONS_REMEMBERED {
                connections.pop_front();
            }
            connections.push_back(record.clone());
        }
        ConnectionGuard {
            inner: self.inner.clone(),
            record,
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
    record: Arc<ConnectionRecord>,
}

impl ConnectionGuard {
    pub(crate) fn record(&self) -> Arc<ConnectionRecord> {
        self.record.clone()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.record.open.store(false, Ordering::SeqCst);
        self.inner.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_729_211_743), "2024-10-18T00:35:43Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
