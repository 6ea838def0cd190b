//! Longhorn's InstanceManager.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `InstanceManager.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "InstanceManager",
    namespaced,
    status = "InstanceManagerStatus",
    shortname = "lhim"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct InstanceManagerSpec {
    #[serde(default, rename = "nodeID")]
    pub node_id: String,
    #[serde(default)]
    pub image: String,
    /// `aio` (`engine`, `replica` deprecated): the CRD's enum; left out when empty, which
    /// the CRD would refuse.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(default)]
    pub data_engine: String,
}

/// `InstanceManager.status` (the fields the guard reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct InstanceManagerStatus {
    /// `error`, `running`, `stopped`, `starting`, `unknown`.
    #[serde(default)]
    pub current_state: String,
    /// Pod IP; the engine proxy listens on `<ip>:8501`.
    #[serde(default)]
    pub ip: String,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    #[serde(default)]
    pub api_min_version: i64,
    #[serde(default)]
    pub api_version: i64,
    #[serde(default)]
    pub proxy_api_min_version: i64,
    /// 0 = no proxy support.
    #[serde(default)]
    pub proxy_api_version: i64,
}

impl InstanceManager {
    /// `ip:8501` when Longhorn itself would dial this instance manager's proxy:
    /// running, with an IP, with proxy support.
    pub fn proxy_endpoint(&self, proxy_port: u16) -> Option<String> {
        let st = self.status.as_ref()?;
        (st.current_state == "running" && !st.ip.is_empty() && st.proxy_api_version > 0)
            .then(|| format!("{}:{proxy_port}", st.ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_manager_proxy_endpoint_requires_running_ip_and_proxy_support() {
        let mut im = InstanceManager::new("im-1", InstanceManagerSpec::default());
        assert_eq!(im.proxy_endpoint(8501), None);
        im.status = Some(InstanceManagerStatus {
            current_state: "running".into(),
            ip: "10.42.1.5".into(),
            proxy_api_version: 0,
            ..Default::default()
        });
        assert_eq!(im.proxy_endpoint(8501), None, "no proxy support");
        if let Some(st) = im.status.as_mut() {
            st.proxy_api_version = 6;
        }
        assert_eq!(im.proxy_endpoint(8501).as_deref(), Some("10.42.1.5:8501"));
        if let Some(st) = im.status.as_mut() {
            st.current_state = "starting".into();
        }
        assert_eq!(im.proxy_endpoint(8501), None);
    }
}
