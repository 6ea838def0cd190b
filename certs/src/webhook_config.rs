//! Writes the CA bundle into the guard's webhook configurations: only the entries whose
//! `clientConfig.service` is the guard's Service or whose name is listed, never other entries,
//! and only when the bundle differs (a second run patches nothing).

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::error::{Error, Result};

/// Which webhook entries are the guard's.
#[derive(Debug, Clone)]
pub struct WebhookSelector {
    pub service_namespace: String,
    pub service_name: String,
    /// Entries with one of these names are ours even without a `service` client config
    /// (e.g. a `url` config in a test).
    pub webhook_names: Vec<String>,
}

impl WebhookSelector {
    fn selects(&self, name: &str, client_config: &WebhookClientConfig) -> bool {
        let by_service = client_config
            .service
            .as_ref()
            .is_some_and(|s| s.namespace == self.service_namespace && s.name == self.service_name);
        by_service || self.webhook_names.iter().any(|n| n == name)
    }
}

/// What a patch did to one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOutcome {
    /// The configuration does not exist.
    Absent,
    /// Every selected entry already had the bundle (lists the entries selected).
    Unchanged(Vec<String>),
    /// These entries got the new bundle.
    Patched(Vec<String>),
}

#[derive(Debug, Clone, Copy)]
pub enum ConfigKind {
    Validating,
    Mutating,
}

impl ConfigKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Validating => "ValidatingWebhookConfiguration",
            ConfigKind::Mutating => "MutatingWebhookConfiguration",
        }
    }
}

/// Sets `caBundle` = `bundle_pem` on the selected entries of configuration `name`.
pub async fn patch_ca_bundle(
    client: Client,
    kind: ConfigKind,
    name: &str,
    selector: &WebhookSelector,
    bundle_pem: &str,
) -> Result<BundleOutcome> {
    match kind {
        ConfigKind::Validating => {
            patch_ca_bundle_of::<ValidatingWebhookConfiguration>(
                client, kind, name, selector, bundle_pem,
            )
            .await
        }
        ConfigKind::Mutating => {
            patch_ca_bundle_of::<MutatingWebhookConfiguration>(
                client, kind, name, selector, bundle_pem,
            )
            .await
        }
    }
}

/// A configuration's resourceVersion and its entries as (entry name, client config).
type Entries = (Option<String>, Vec<(String, WebhookClientConfig)>);

/// What this module needs of both kinds of webhook configuration.
trait WebhookConfiguration:
    kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + k8s_openapi::serde::de::DeserializeOwned
{
    fn entries(self) -> Entries;
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn entries(self) -> Entries {
        let webhooks = self.webhooks.unwrap_or_default().into_iter();
        let entries = webhooks.map(|w| (w.name, w.client_config)).collect();
        (self.metadata.resource_version, entries)
    }
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn entries(self) -> Entries {
        let webhooks = self.webhooks.unwrap_or_default().into_iter();
        let entries = webhooks.map(|w| (w.name, w.client_config)).collect();
        (self.metadata.resource_version, entries)
    }
}

/// [`patch_ca_bundle`] for configurations of type `K` (`kind` names it in errors).
async fn patch_ca_bundle_of<K: WebhookConfiguration>(
    client: Client,
    kind: ConfigKind,
    name: &str,
    selector: &WebhookSelector,
    bundle_pem: &str,
) -> Result<BundleOutcome> {
    let api_err = |action, e| Error::WebhookConfigApi {
        action,
        kind: kind.as_str(),
        name: name.to_string(),
        source: Box::new(e),
    };
    let api = Api::<K>::all(client);
    let Some((rv, entries)) = api
        .get_opt(name)
        .await
        .map_err(|e| api_err("reading", e))?
        .map(K::entries)
    else {
        return Ok(BundleOutcome::Absent);
    };
    let bundle = ByteString(bundle_pem.as_bytes().to_vec());
    let (selected, to_patch) = entries_to_patch(&entries, selector, &bundle);
    if to_patch.is_empty() {
        return Ok(BundleOutcome::Unchanged(selected));
    }
    let patch = ca_bundle_patch(rv, &to_patch, &bundle)?;
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|e| api_err("patching caBundle of", e))?;
    Ok(BundleOutcome::Patched(to_patch))
}

/// The names of the entries `selector` selects, and of those among them whose `caBundle` is
/// not `bundle` yet.
fn entries_to_patch(
    entries: &[(String, WebhookClientConfig)],
    selector: &WebhookSelector,
    bundle: &ByteString,
) -> (Vec<String>, Vec<String>) {
    let mut selected = Vec::new();
    let mut to_patch = Vec::new();
    for (entry, cc) in entries {
        if !selector.selects(entry, cc) {
            continue;
        }
        selected.push(entry.clone());
        if cc.ca_bundle.as_ref() != Some(bundle) {
            to_patch.push(entry.clone());
        }
    }
    (selected, to_patch)
}

/// A strategic merge patch keyed by webhook name touches only the listed entries; the
/// resourceVersion makes it fail (409) if the configuration changed since it was read.
fn ca_bundle_patch(
    rv: Option<String>,
    to_patch: &[String],
    bundle: &ByteString,
) -> Result<serde_json::Value> {
    let b64 = serde_json::to_value(bundle).map_err(|e| Error::Option {
        option: "caBundle",
        reason: e.to_string(),
    })?;
    let webhooks: Vec<_> = to_patch
        .iter()
        .map(|n| json!({ "name": n, "clientConfig": { "caBundle": b64 } }))
        .collect();
    Ok(json!({
        "metadata": { "resourceVersion": rv },
        "webhooks": webhooks,
    }))
}
