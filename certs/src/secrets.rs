//! The guard's TLS Secrets: `kubernetes.io/tls` with `ca.crt`, `tls.crt`, `tls.key`, read and
//! written with optimistic concurrency (a replace carries the resourceVersion it read).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::error::{Error, Result};

pub const CA_CRT: &str = "ca.crt";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The CA Secret's staged successor CA during a CA rotation.
pub const NEXT_CRT: &str = "next.crt";
pub const NEXT_KEY: &str = "next.key";

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "longhorn-guard-certs";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// RFC 3339 time at which the CA Secret's `next.crt` was staged.
pub const NEXT_CA_STAGED_AT: &str = "longhorn-guard.io/next-ca-staged-at";
/// RFC 3339 `notAfter` of `tls.crt`, for humans (`kubectl get secret -o yaml`).
pub const NOT_AFTER: &str = "longhorn-guard.io/not-after";

/// A Secret as read: its text entries and the resourceVersion to write back against.
#[derive(Debug, Clone, Default)]
pub struct StoredSecret {
    pub name: String,
    pub resource_version: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, String>,
}

impl StoredSecret {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }
}

pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
}

impl SecretStore {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn api_error(&self, action: &'static str, name: &str, e: kube::Error) -> Error {
        Error::SecretApi {
            action,
            namespace: self.namespace.clone(),
            name: name.to_string(),
            source: Box::new(e),
        }
    }

    /// Reads Secret `name`; `None` when it does not exist. Entries that are not UTF-8 are
    /// reported as an invalid Secret (PEM is text).
    pub async fn read(&self, name: &str) -> Result<Option<StoredSecret>> {
        let Some(secret) = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| self.api_error("reading", name, e))?
        else {
            return Ok(None);
        };
        let mut data = BTreeMap::new();
        for (key, ByteString(bytes)) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(bytes).map_err(|_| Error::SecretInvalid {
                namespace: self.namespace.clone(),
                name: name.to_string(),
                reason: format!("entry {key} is not UTF-8 text"),
            })?;
            data.insert(key, text);
        }
        Ok(Some(StoredSecret {
            name: name.to_string(),
            resource_version: secret.metadata.resource_version,
            annotations: secret.metadata.annotations.unwrap_or_default(),
            data,
        }))
    }

    /// Creates the Secret when `resource_version` is `None`, else replaces it conditionally
    /// on that version (a concurrent writer makes this fail with 409 Conflict).
    pub async fn write(&self, secret: &StoredSecret) -> Result<()> {
        let labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (PART_OF_LABEL.to_string(), "longhorn-guard".to_string()),
        ]);
        let obj = Secret {
            metadata: ObjectMeta {
                name: Some(secret.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: secret.resource_version.clone(),
                labels: Some(labels),
                annotations: Some(secret.annotations.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(
                secret
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let pp = PostParams::default();
        if secret.resource_version.is_none() {
            self.api
                .create(&pp, &obj)
                .await
                .map_err(|e| self.api_error("creating", &secret.name, e))?;
        } else {
            self.api
                .replace(&secret.name, &pp, &obj)
                .await
                .map_err(|e| self.api_error("updating", &secret.name, e))?;
        }
        Ok(())
    }
}
