//! Scenario files: the engines a fake engine proxy serves, written as YAML (JSON is YAML too).
//! The format is documented in `fake-engine/SCENARIOS.md`; [`Scenario`] is its schema.
//!
//! Everything is checked before anything is served, and an error names the engine (address,
//! Engine name, volume) and the replica or snapshot it is about.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use longhorn_guard_proto::VOLUME_HEAD;
use serde::{Deserialize, Serialize};

use crate::state::{
    Chain, DEFAULT_SNAPSHOT_MAX_COUNT, DEFAULT_VOLUME_SIZE, Engine, EngineSpec, FRONTEND_BLOCKDEV,
    FakeEngine, Replica, ReplicaMode, SnapshotSpec, VolumeSpec,
};
use crate::version::{EngineVersion, VERSION_PRESETS};

/// Why a scenario cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read fake-engine scenario file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("fake-engine scenario {origin} is not valid YAML for the scenario format: {message}")]
    Parse { origin: String, message: String },
    #[error("fake-engine scenario {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A scenario file: the engines one proxy can reach.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub engines: Vec<EngineScenario>,
    /// Where it was read from (for errors); not part of the format.
    #[serde(skip)]
    pub origin: String,
}

/// One engine (controller) and its volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineScenario {
    /// `host:port` (`ProxyEngineRequest.address`).
    pub address: String,
    /// The Engine CR name.
    pub engine: String,
    pub volume: String,
    /// A preset name (`v1.7.2`, the default; `v1.8.2`; `v1.10.2`) or a whole `VersionOutput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionChoice>,
    /// Bytes (default 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Default `tgt-blockdev`; `""` for an engine started without a frontend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// `up` (default with a frontend) or `down`; `""` without a frontend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_state: Option<String>,
    #[serde(default)]
    pub unmap_mark_snap_chain_removed: bool,
    /// Default 250.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_max_count: Option<i32>,
    #[serde(default)]
    pub snapshot_max_size: i64,
    /// In the engine's order. Default: one RW replica at `tcp://<address host>:10000`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaScenario>,
    /// The chain of every replica without its own, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotScenario>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadScenario>,
}

/// A preset name or a whole version answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VersionChoice {
    Preset(String),
    Custom(EngineVersion),
}

impl<'de> Deserialize<'de> for VersionChoice {
    /// By hand rather than `untagged`, so a mistake in a whole `VersionOutput` is named.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(name) => Ok(VersionChoice::Preset(name)),
            whole => serde_yaml::from_value(whole)
                .map(VersionChoice::Custom)
                .map_err(|e| {
                    D::Error::custom(format!(
                        "version must be a preset name or a whole VersionOutput: {e}"
                    ))
                }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaScenario {
    /// `tcp://host:port`.
    pub address: String,
    /// The replica instance name (default `<volume>-r-<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `RW`, `WO` or `ERR`.
    pub mode: ReplicaMode,
    /// This replica's own chain (e.g. one still being rebuilt); default: the engine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<SnapshotScenario>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadScenario>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotScenario {
    pub name: String,
    /// Absent or empty: the snapshot listed just before (none for the first).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    /// If given, checked: exactly the snapshots naming this one as parent, plus `volume-head`
    /// when the head follows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<String>>,
    /// Default true (taken by a user or a recurring job; false for system snapshots).
    #[serde(default = "yes")]
    pub user_created: bool,
    /// Marked removed (`markRemoved`), still listed.
    #[serde(default)]
    pub removed: bool,
    /// RFC 3339, as Longhorn writes it (`2026-11-24T10:00:00Z`).
    #[serde(default)]
    pub created: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `volume-head`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadScenario {
    /// Default: the last snapshot listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Default: its parent's `created` (the head starts when a snapshot is taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Bytes written since (default 0).
    #[serde(default)]
    pub size: u64,
}

fn yes() -> bool {
    true
}

impl Scenario {
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let mut scenario: Scenario =
            serde_yaml::from_str(text).map_err(|e| ScenarioError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        scenario.origin = origin.to_string();
        scenario.check()?;
        Ok(scenario)
    }

    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// YAML that [`Scenario::from_yaml`] reads back as `self`.
    pub fn to_yaml(&self) -> Result<String, ScenarioError> {
        serde_yaml::to_string(self).map_err(|e| ScenarioError::Parse {
            origin: self.origin_name().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks the whole scenario (what [`crate::FakeEngine::load_scenario`] does before serving).
    pub fn check(&self) -> Result<(), ScenarioError> {
        self.engines().map(|_| ())
    }

    fn origin_name(&self) -> &str {
        if self.origin.is_empty() {
            "(in memory)"
        } else {
            &self.origin
        }
    }

    pub(crate) fn engines(&self) -> Result<Vec<Engine>, ScenarioError> {
        let mut addresses = HashSet::new();
        let mut engines = Vec::with_capacity(self.engines.len());
        for (i, e) in self.engines.iter().enumerate() {
            let invalid = |message: String| ScenarioError::Invalid {
                origin: self.origin_name().to_string(),
                message: format!(
                    "engine #{} {:?} (volume {:?}, address {:?}): {message}",
                    i + 1,
                    e.engine,
                    e.volume,
                    e.address
                ),
            };
            if !addresses.insert(e.address.as_str()) {
                return Err(invalid(
                    "another engine of the scenario has this address".to_string(),
                ));
            }
            engines.push(e.build().map_err(invalid)?);
        }
        Ok(engines)
    }
}

impl EngineScenario {
    fn build(&self) -> Result<Engine, String> {
        let host = match self.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
            _ => return Err("address must be host:port".to_string()),
        };
        if self.engine.is_empty() || self.volume.is_empty() {
            return Err("engine and volume names must not be empty".to_string());
        }
        let version = match &self.version {
            None => EngineVersion::default(),
            Some(VersionChoice::Custom(v)) => v.clone(),
            Some(VersionChoice::Preset(name)) => EngineVersion::preset(name).ok_or_else(|| {
                format!(
                    "unknown version preset {name:?} (known: {}; or give a whole VersionOutput)",
                    VERSION_PRESETS.join(", ")
                )
            })?,
        };
        let volume = self.volume_spec()?;
        let engine_chain =
            chain(&self.snapshots, self.head.as_ref()).map_err(|e| format!("engine chain: {e}"))?;
        let replicas = if self.replicas.is_empty() {
            vec![Replica {
                address: format!("tcp://{host}:10000"),
                name: format!("{}-r-0", self.volume),
                mode: ReplicaMode::Rw,
                chain: engine_chain,
            }]
        } else {
            let mut seen = HashSet::new();
            let mut replicas = Vec::with_capacity(self.replicas.len());
            for (i, r) in self.replicas.iter().enumerate() {
                let about = format!("replica #{} {:?}", i + 1, r.address);
                if !r.address.starts_with("tcp://") {
                    return Err(format!("{about}: address must be tcp://host:port"));
                }
                if !seen.insert(r.address.as_str()) {
                    return Err(format!("{about}: listed twice"));
                }
                let chain = match &r.snapshots {
                    Some(own) => chain(own, r.head.as_ref()),
                    None if r.head.is_some() => chain(&self.snapshots, r.head.as_ref()),
                    None => Ok(engine_chain.clone()),
                }
                .map_err(|e| format!("{about}: {e}"))?;
                replicas.push(Replica {
                    address: r.address.clone(),
                    name: r
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}-r-{i}", self.volume)),
                    mode: r.mode,
                    chain,
                });
            }
            replicas
        };
        Ok(Engine {
            spec: EngineSpec {
                address: self.address.clone(),
                engine_name: self.engine.clone(),
                volume_name: self.volume.clone(),
            },
            version,
            volume,
            replicas,
            backups: Default::default(),
        })
    }

    fn volume_spec(&self) -> Result<VolumeSpec, String> {
        let size = self.size.unwrap_or(DEFAULT_VOLUME_SIZE);
        if size <= 0 {
            return Err(format!("size {size} must be > 0"));
        }
        let frontend = self
            .frontend
            .clone()
            .unwrap_or_else(|| FRONTEND_BLOCKDEV.to_string());
        let frontend_state = match (frontend.is_empty(), self.frontend_state.as_deref()) {
            (true, None | Some("")) => String::new(),
            (true, Some(s)) => {
                return Err(format!(
                    "frontendState {s:?} without a frontend (an engine without one reports \"\")"
                ));
            }
            (false, None) => "up".to_string(),
            (false, Some(s @ ("up" | "down"))) => s.to_string(),
            (false, Some(s)) => return Err(format!("frontendState {s:?} must be up or down")),
        };
        let snapshot_max_count = self
            .snapshot_max_count
            .unwrap_or(DEFAULT_SNAPSHOT_MAX_COUNT);
        if snapshot_max_count < 0 || self.snapshot_max_size < 0 {
            return Err("snapshotMaxCount and snapshotMaxSize must not be negative".to_string());
        }
        Ok(VolumeSpec {
            size,
            frontend,
            frontend_state,
            unmap_mark_snap_chain_removed: self.unmap_mark_snap_chain_removed,
            snapshot_max_count,
            snapshot_max_size: self.snapshot_max_size,
        })
    }
}

/// A checked chain: parents listed before their children, names unique, the head's parent a
/// snapshot of the chain, and every `children` list that is given equal to the snapshots naming
/// that snapshot as parent (plus `volume-head` when the head follows it).
fn chain(snapshots: &[SnapshotScenario], head: Option<&HeadScenario>) -> Result<Chain, String> {
    let specs: Vec<SnapshotSpec> = snapshots
        .iter()
        .map(|s| SnapshotSpec {
            name: s.name.clone(),
            parent: s.parent.clone(),
            user_created: s.user_created,
            removed: s.removed,
            created: s.created.clone(),
            size: s.size,
            labels: s.labels.clone(),
        })
        .collect();
    let chain = Chain::new(
        specs,
        head.and_then(|h| h.parent.clone()),
        head.and_then(|h| h.created.clone()),
        head.map_or(0, |h| h.size),
    )?;
    for (declared, linked) in snapshots.iter().zip(&chain.snapshots) {
        let Some(children) = &declared.children else {
            continue;
        };
        let declared_set: BTreeSet<&str> = children.iter().map(String::as_str).collect();
        let mut actual: BTreeSet<&str> = chain
            .snapshots
            .iter()
            .filter(|s| s.parent == linked.name)
            .map(|s| s.name.as_str())
            .collect();
        if chain.head.parent == linked.name {
            actual.insert(VOLUME_HEAD);
        }
        if declared_set != actual {
            let not_children: Vec<&str> = declared_set.difference(&actual).copied().collect();
            let missing: Vec<&str> = actual.difference(&declared_set).copied().collect();
            let mut problems = Vec::new();
            if !not_children.is_empty() {
                problems.push(format!(
                    "lists {not_children:?} as children, but their parent is not {}",
                    linked.name
                ));
            }
            if !missing.is_empty() {
                problems.push(format!(
                    "does not list {missing:?}, whose parent is {}",
                    linked.name
                ));
            }
            return Err(format!(
                "snapshot {}: parents and children disagree: it {}",
                linked.name,
                problems.join(" and ")
            ));
        }
    }
    Ok(chain)
}

/// Loading scenarios (here rather than in `state.rs`, which knows nothing of the file format).
impl FakeEngine {
    /// A fake serving the engines of a scenario file (see [`Scenario`]).
    pub fn from_scenario_file(path: &Path) -> Result<Self, ScenarioError> {
        let fake = Self::new();
        fake.load_scenario(&Scenario::from_file(path)?)?;
        Ok(fake)
    }

    /// Adds every engine of `scenario` (replacing engines at the same addresses), after checking
    /// all of them: on an error nothing is added.
    pub fn load_scenario(&self, scenario: &Scenario) -> Result<(), ScenarioError> {
        let engines = scenario.engines()?;
        let mut data = self.data();
        for engine in engines {
            data.engines.insert(engine.spec.address.clone(), engine);
        }
        Ok(())
    }
}
