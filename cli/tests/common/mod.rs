//! Shared by the CLI's integration tests.
#![allow(dead_code)]

use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use longhorn_guard_testkit::TEST_NAMESPACE_LABEL;
use serde_json::json;

/// A ValidatingWebhookConfiguration `name` with one webhook `entry` that sends the CREATEs of
/// longhorn.io/v1beta2 backups in namespace `ns` to `url` (`https://127.0.0.1:PORT/...`),
/// `failurePolicy: Fail`; the API server trusts `ca_bundle` (PEM) for it, or nothing yet.
pub fn backup_webhook_by_url(
    name: &str,
    entry: &str,
    ns: &str,
    url: &str,
    ca_bundle: Option<&str>,
) -> Result<ValidatingWebhookConfiguration> {
    let mut client_config = json!({ "url": url });
    if let Some(pem) = ca_bundle {
        client_config["caBundle"] =
            serde_json::to_value(k8s_openapi::ByteString(pem.as_bytes().to_vec()))?;
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": entry,
            "clientConfig": client_config,
            "rules": [{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"],
                       "resources": ["backups"], "operations": ["CREATE"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: ns}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
        }]
    }))?)
}
