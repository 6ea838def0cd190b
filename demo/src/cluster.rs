//! The cluster side of the demo: clients, the Longhorn CRDs, fresh namespaces, and the
//! Backups the API server holds by state.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::guard::DEMO_NAMESPACE_LABEL;

/// A client for `kubeconfig`. `retry: false` turns off kube's transparent retry of 429/503
/// answers: the storm client must see a throttle denial (429) as the denial it is, not wait
/// through retries.
pub(crate) async fn connect(kubeconfig: &Path, retry: bool) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    config.default_retry = retry;
    Client::try_from(config).context("building a kube client")
}

pub(crate) async fn ensure_crds(client: &Client) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let crds = longhorn_types::crds::all();
    for crd in &crds {
        match api.create(&PostParams::default(), crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("installing the Longhorn CRDs"),
        }
    }
    let start = Instant::now();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("CRD {name} not Established after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub(crate) async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { DEMO_NAMESPACE_LABEL: name } }
    }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            bail!(
                "namespace {name} already exists: the demo needs fresh namespaces (use another cluster or --kubeconfig)"
            )
        }
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Backups the API server holds, by `status.state` (`""` as `New`).
pub async fn backups_by_state(api: &Api<DynamicObject>) -> anyhow::Result<BTreeMap<String, u64>> {
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing Backups")?;
    let mut by_state = BTreeMap::new();
    for b in list.items {
        let state = b.data["status"]["state"].as_str().unwrap_or_default();
        let key = if state.is_empty() { "New" } else { state };
        *by_state.entry(key.to_string()).or_insert(0) += 1;
    }
    Ok(by_state)
}
