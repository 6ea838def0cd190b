//! `admission.k8s.io/v1` AdmissionReviews as kube-apiserver sends them to a webhook, for the
//! tests and benches that call the webhook themselves (no API server in between).

use serde_json::{Value, json};

/// An AdmissionReview of a CREATE of the longhorn.io/v1beta2 Backup `object`, changed by the
/// builder methods; [`Review::into_value`] gives the JSON.
#[derive(Debug, Clone)]
pub struct Review(Value);

impl Review {
    /// A CREATE of `object` in `ns` by `username` (groups `system:authenticated`), request
    /// `uid`, not a dry run, no options.
    pub fn new(ns: &str, uid: &str, username: &str, object: Value) -> Self {
        let gvk = json!({ "group": "longhorn.io", "version": "v1beta2", "kind": "Backup" });
        let gvr = json!({ "group": "longhorn.io", "version": "v1beta2", "resource": "backups" });
        Self(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": gvk,
                "resource": gvr,
                "requestKind": gvk,
                "requestResource": gvr,
                "name": object["metadata"]["name"],
                "namespace": ns,
                "operation": "CREATE",
                "userInfo": { "username": username, "groups": ["system:authenticated"] },
                "object": object,
                "oldObject": null,
                "dryRun": false,
                "options": null,
            },
        }))
    }

    /// The requesting user's groups.
    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.0["request"]["userInfo"]["groups"] = json!(groups);
        self
    }

    /// Another operation (`UPDATE`, `DELETE`, ...).
    pub fn operation(mut self, operation: &str) -> Self {
        self.0["request"]["operation"] = json!(operation);
        self
    }

    /// Another longhorn.io/v1beta2 resource (as requested and as sent).
    pub fn resource(mut self, resource: &str) -> Self {
        for field in ["resource", "requestResource"] {
            self.0["request"][field]["resource"] = json!(resource);
        }
        self
    }

    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.0["request"]["dryRun"] = json!(dry_run);
        self
    }

    /// The `CreateOptions` the API server sends with a CREATE.
    pub fn create_options(mut self) -> Self {
        self.0["request"]["options"] =
            json!({ "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" });
        self
    }

    pub fn into_value(self) -> Value {
        self.0
    }
}

/// The groups of a ServiceAccount's requests (Longhorn's manager creates Backups as one).
pub const SERVICE_ACCOUNT_GROUPS: &[&str] = &["system:serviceaccounts", "system:authenticated"];
