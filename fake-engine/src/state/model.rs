//! The engines the fake serves: replicas with their snapshot chains (a tree after a revert),
//! the volume head, backups in progress, and the time format Longhorn writes.

use std::collections::HashMap;

use longhorn_guard_proto::VOLUME_HEAD;
use longhorn_guard_proto::imrpc::EngineSnapshotDiskInfo;
use longhorn_guard_proto::ptypes;
use rand::rngs::StdRng;

use super::{EngineSpec, FRONTEND_BLOCKDEV, ReplicaMode, SnapshotSpec, VolumeSpec};
use crate::fault::{Fault, Method};
use crate::keepalive::KeepalivePolicy;
use crate::version::EngineVersion;

pub(super) const DEFAULT_BACKUP_POLLS_TO_COMPLETE: u32 = 2;

pub(crate) struct Data {
    pub(crate) engines: HashMap<String, Engine>,
    pub(crate) faults: HashMap<Method, Fault>,
    pub(crate) rng: StdRng,
    pub(crate) backup_polls_to_complete: u32,
    pub(crate) keepalive: Option<KeepalivePolicy>,
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

    pub(super) fn chains_mut(&mut self) -> impl Iterator<Item = &mut Chain> {
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
    pub(super) fn add(&mut self, mut snapshot: SnapshotSpec) {
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
    pub(super) fn remove(&mut self, name: &str) {
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

    pub(super) fn mark_removed(&mut self, name: &str) {
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
