//! Longhorn's Setting (no spec: `value` sits at the top level).

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::{GROUP, VERSION};

/// A Longhorn setting: `metadata.name` is the key, `value` is always a string.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Setting {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SettingStatus>,
}

/// `Setting.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SettingStatus {
    #[serde(default)]
    pub applied: bool,
}

impl kube::Resource for Setting {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Setting".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "settings".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
