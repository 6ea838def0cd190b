//! Longhorn's Engine.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `Engine.spec` (the fields the guard reads).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "Engine",
    namespaced,
    status = "EngineStatus",
    shortname = "lhe"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct EngineSpec {
    #[serde(default)]
    pub volume_name: String,
    #[serde(default, rename = "nodeID")]
    pub node_id: String,
    /// `v1` or `v2` (the CRD's enum); left out when empty, which the CRD would refuse.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_engine: String,
    /// The active engine of a volume during migration.
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub desire_state: String,
    #[serde(default)]
    pub image: String,
}

/// `Engine.status` (the fields the guard reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct EngineStatus {
    /// `running`, `stopped`, `error`, `starting`, `stopping`, `unknown`.
    #[serde(default)]
    pub current_state: String,
    /// The InstanceManager hosting this engine: dial its `status.ip:8501`.
    #[serde(default)]
    pub instance_manager_name: String,
    #[serde(default)]
    pub ip: String,
    /// With `port`, the engine address `ProxyEngineRequest.address` carries.
    #[serde(default, rename = "storageIP")]
    pub storage_ip: String,
    #[serde(default)]
    pub port: i64,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    /// Engine snapshots as synced by Longhorn's engine monitor, keyed by snapshot name.
    #[serde(default)]
    pub snapshots: Option<BTreeMap<String, EngineSnapshotInfo>>,
    #[serde(default)]
    pub snapshots_error: String,
}

/// One entry of `Engine.status.snapshots` (Longhorn writes these keys all lowercase).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct EngineSnapshotInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub children: Option<BTreeMap<String, bool>>,
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub usercreated: bool,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub size: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl Engine {
    /// `storageIP:port`, the address Longhorn puts in `ProxyEngineRequest.address`.
    pub fn address(&self) -> Option<String> {
        let st = self.status.as_ref()?;
        (!st.storage_ip.is_empty() && st.port > 0).then(|| format!("{}:{}", st.storage_ip, st.port))
    }

    pub fn is_running(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.current_state == "running")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        let v = serde_json::json!({
            "apiVersion": "longhorn.io/v1beta2", "kind": "Engine",
            "metadata": {"name": "pvc-1-e-0", "namespace": "longhorn-system"},
            "spec": {"volumeName": "pvc-1", "nodeID": "node-1", "somethingNew": {"x": 1}},
            "status": {"storageIP": "10.42.1.17", "port": 10010, "currentState": "running"}
        });
        let e: Engine = serde_json::from_value(v).unwrap();
        assert_eq!(e.address().as_deref(), Some("10.42.1.17:10010"));
        assert!(e.is_running());
        assert!(!e.spec.active);
        assert_eq!(e.spec.data_engine, "");
    }
}
