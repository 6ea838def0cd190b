//! Objects on the control plane: create (with a status), replace a status, Longhorn objects
//! given as JSON, and the CRDs they need.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{TestCluster, wait_for};

impl TestCluster {
    /// Creates `obj` (a JSON object such as `longhorn_types::shapes::backup(..)`) exactly as
    /// given, `""` and `null` fields included, and reads it back as `K`.
    pub async fn create<K>(&self, ns: &str, obj: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let raw = self.create_raw::<K>(ns, obj).await?;
        from_dynamic(raw)
    }

    /// Creates `obj`, then writes `status` through the status subresource (a PUT, so `null`
    /// and `""` fields are stored as given), and reads the result back as `K`.
    pub async fn create_with_status<K>(&self, ns: &str, obj: Value, status: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let created = self.create_raw::<K>(ns, obj).await?;
        let raw = self.put_status::<K>(ns, created, status).await?;
        from_dynamic(raw)
    }

    /// Replaces the status of the object `name` (read first, so the update is conditional on
    /// its resourceVersion).
    pub async fn set_status<K>(&self, ns: &str, name: &str, status: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let current = self.dynamic_api::<K>(ns).get(name).await?;
        let raw = self.put_status::<K>(ns, current, status).await?;
        from_dynamic(raw)
    }

    /// The namespaced dynamic API of kind `K`.
    pub fn dynamic_api<K: Resource<DynamicType = ()>>(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client(), ns, &ApiResource::erase::<K>(&()))
    }

    async fn create_raw<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        mut obj: Value,
    ) -> Result<DynamicObject> {
        obj["metadata"]["namespace"] = json!(ns);
        let what = describe(&obj);
        let dynamic: DynamicObject = serde_json::from_value(obj)?;
        self.dynamic_api::<K>(ns)
            .create(&PostParams::default(), &dynamic)
            .await
            .with_context(|| format!("creating {what} in {ns}"))
    }

    async fn put_status<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        mut current: DynamicObject,
        status: Value,
    ) -> Result<DynamicObject> {
        let name = current
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("object without a name"))?;
        current.data["status"] = status;
        self.dynamic_api::<K>(ns)
            .replace_status(&name, &PostParams::default(), &current)
            .await
            .with_context(|| format!("writing status of {} {ns}/{name}", K::kind(&())))
    }

    /// Creates a Longhorn object given as JSON (kind from its `kind` field, plural = lowercase
    /// kind + "s" as for every Longhorn kind), then, if `status` is given, writes it through
    /// the status subresource. Returns the stored object as the API server answers it.
    pub async fn create_longhorn_object(
        &self,
        ns: &str,
        mut obj: Value,
        status: Option<Value>,
    ) -> Result<DynamicObject> {
        let kind = obj["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("object without kind: {obj}"))?
            .to_string();
        let ar = longhorn_api_resource(&kind);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client(), ns, &ar);
        obj["metadata"]["namespace"] = json!(ns);
        let what = describe(&obj);
        let dynamic: DynamicObject = serde_json::from_value(obj)?;
        let mut created = api
            .create(&PostParams::default(), &dynamic)
            .await
            .with_context(|| format!("creating {what} in {ns}"))?;
        let Some(status) = status else {
            return Ok(created);
        };
        let name = created.metadata.name.clone().unwrap_or_default();
        created.data["status"] = status;
        api.replace_status(&name, &PostParams::default(), &created)
            .await
            .with_context(|| format!("writing status of {what} in {ns}"))
    }

    /// Creates each CRD that is missing and waits until all are Established.
    pub async fn ensure_crds(&self, crds: Vec<CustomResourceDefinition>) -> Result<()> {
        let api = Api::<CustomResourceDefinition>::all(self.client());
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            if api.get_opt(&name).await?.is_none() {
                match api.create(&PostParams::default(), crd).await {
                    Ok(_) => {}
                    // Another test process created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
                }
            }
        }
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            wait_for(
                Duration::from_secs(30),
                &format!("CRD {name} Established"),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await?;
                        Ok(crd
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True"))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }
}

/// The `ApiResource` of a Longhorn kind (`longhorn.io/v1beta2`, plural = lowercase kind + "s").
pub fn longhorn_api_resource(kind: &str) -> ApiResource {
    ApiResource {
        group: longhorn_types::GROUP.into(),
        version: longhorn_types::VERSION.into(),
        api_version: longhorn_types::API_VERSION.into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_ascii_lowercase()),
    }
}

fn from_dynamic<K: DeserializeOwned>(obj: DynamicObject) -> Result<K> {
    Ok(serde_json::from_value(serde_json::to_value(obj)?)?)
}

fn describe(obj: &Value) -> String {
    format!(
        "{} {}",
        obj["kind"].as_str().unwrap_or("object"),
        obj["metadata"]["name"]
            .as_str()
            .or(obj["metadata"]["generateName"].as_str())
            .unwrap_or("<unnamed>")
    )
}
