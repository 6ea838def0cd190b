//! The guard's own policy, as `doctor` sees it: read from the webhook's ConfigMap and checked
//! for exemptions that switch the guard off for Longhorn's own traffic (an exemption of
//! Longhorn's service account, which the recurring jobs create their Backups as: see the
//! webhook's `Policy::longhorn_exemptions`). Read-only, like the rest of `doctor`.

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use longhorn_guard_webhook::Policy;
use serde::Serialize;

/// Where the manifests (`manifests/base`) put the guard and its policy.
pub const DEFAULT_GUARD_NAMESPACE: &str = "longhorn-guard";
pub const DEFAULT_POLICY_CONFIGMAP: &str = "longhorn-guard-policy";
/// The ConfigMap key the webhook mounts as its policy file.
pub const POLICY_KEY: &str = "policy.yaml";

/// Which policy to check, and for which Longhorn.
#[derive(Clone, Debug)]
pub struct GuardPolicyOptions {
    /// The guard's namespace.
    pub namespace: String,
    pub configmap: String,
    /// Longhorn's namespace (whose service account must not be exempt).
    pub longhorn_namespace: String,
}

impl GuardPolicyOptions {
    /// The manifests' ConfigMap, for Longhorn in `longhorn_namespace`.
    pub fn new(longhorn_namespace: &str) -> Self {
        Self {
            namespace: DEFAULT_GUARD_NAMESPACE.to_string(),
            configmap: DEFAULT_POLICY_CONFIGMAP.to_string(),
            longhorn_namespace: longhorn_namespace.to_string(),
        }
    }

    fn shown(&self) -> String {
        format!("{}/{}", self.namespace, self.configmap)
    }
}

/// What the check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum GuardPolicyCheck {
    /// The policy was read; `findings` is empty when nothing in it needs attention.
    #[serde(rename_all = "camelCase")]
    Checked {
        configmap: String,
        findings: Vec<String>,
    },
    /// No such ConfigMap (the guard is not installed there): nothing checked.
    NotFound { configmap: String },
    /// The ConfigMap could not be read (e.g. no RBAC for it): nothing checked.
    Unreadable { configmap: String, error: String },
}

impl GuardPolicyCheck {
    /// Findings that need attention (the exit code of `doctor` counts them).
    pub fn findings(&self) -> &[String] {
        match self {
            Self::Checked { findings, .. } => findings,
            Self::NotFound { .. } | Self::Unreadable { .. } => &[],
        }
    }

    /// One paragraph for the doctor's text output.
    pub fn describe(&self) -> String {
        match self {
            Self::Checked {
                configmap,
                findings,
            } if findings.is_empty() => format!(
                "longhorn-guard policy ({configmap}): no exemption covers Longhorn's own service account"
            ),
            Self::Checked {
                configmap,
                findings,
            } => {
                let mut out = format!(
                    "longhorn-guard policy ({configmap}): {} finding(s) that need attention:",
                    findings.len()
                );
                for f in findings {
                    out.push_str("\n  ");
                    out.push_str(f);
                }
                out
            }
            Self::NotFound { configmap } => format!(
                "longhorn-guard policy: not checked, no ConfigMap {configmap} (use --guard-namespace / --guard-policy-configmap where the guard runs)"
            ),
            Self::Unreadable { configmap, error } => {
                format!(
                    "longhorn-guard policy: not checked, cannot read ConfigMap {configmap}: {error}"
                )
            }
        }
    }
}

/// Checks the policy text of `options`' ConfigMap: what the webhook would refuse, and every
/// exemption that covers Longhorn's own service account.
pub fn check_policy_text(options: &GuardPolicyOptions, text: &str) -> GuardPolicyCheck {
    let configmap = options.shown();
    let invalid = |why: String| GuardPolicyCheck::Checked {
        configmap: configmap.clone(),
        findings: vec![format!(
            "{POLICY_KEY} of ConfigMap {configmap} is not a policy the webhook accepts ({why}): it keeps its last good policy, or does not start"
        )],
    };
    let policy = match Policy::from_yaml(text) {
        Ok(p) => p,
        Err(e) => return invalid(e.to_string()),
    };
    if let Err(e) = policy.validate() {
        return invalid(e);
    }
    GuardPolicyCheck::Checked {
        findings: policy
            .longhorn_exemptions(Some(&options.longhorn_namespace))
            .iter()
            .map(ToString::to_string)
            .collect(),
        configmap,
    }
}

/// Reads the ConfigMap (one GET) and checks its policy; never fails: what could not be read
/// is reported as not checked.
pub async fn check_guard_policy(
    client: kube::Client,
    options: &GuardPolicyOptions,
) -> GuardPolicyCheck {
    let configmap = options.shown();
    let api: Api<ConfigMap> = Api::namespaced(client, &options.namespace);
    let found = api
        .get_opt(&options.configmap)
        .await
        .with_context(|| format!("GET ConfigMap {configmap}"));
    match found {
        Ok(Some(cm)) => {
            let text = cm
                .data
                .as_ref()
                .and_then(|d| d.get(POLICY_KEY))
                .map_or("", String::as_str);
            check_policy_text(options, text)
        }
        Ok(None) => GuardPolicyCheck::NotFound { configmap },
        Err(e) => GuardPolicyCheck::Unreadable {
            configmap,
            error: format!("{e:#}"),
        },
    }
}
