//! The `nodeProtection` section of the policy (issue #19): what the webhook does with a node's
//! leak verdict (published by the node's agent in a Lease, `node_verdict::lease`), who is
//! exempt, which verdict Lease writes are admitted, and the thresholds the agent judges by
//! (`node_verdict::Thresholds`; the agent reads the same section of the same file).

use serde::{Deserialize, Serialize};

use super::Exemptions;

/// What a `leaking` (or `degrading`) node does to Backups of its volumes (`nodeProtection.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectionMode {
    /// `leaking` refuses (403), `degrading` warns.
    #[default]
    Enforce,
    /// `leaking` and `degrading` both warn; nothing is refused.
    Warn,
    /// Verdicts are still read and reported (metrics), but admission ignores them.
    Off,
}

/// Backups not created by a recurring job (no `spec.labels.RecurringJob`) while their node is
/// `leaking` (`nodeProtection.manualBackups`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManualBackups {
    /// Refused like a recurring job's: every Backup costs the leaking manager a reconcile.
    #[default]
    Deny,
    /// Admitted with a warning naming the node and its evidence: a person asked for it.
    AllowWithWarning,
}

/// Who may write a verdict Lease when the API server does not say which node the requester
/// runs on (`nodeProtection.leaseWriters`). With the node (the userInfo extra
/// `authentication.kubernetes.io/node-name`, Kubernetes >= 1.30 for pod-bound service account
/// tokens) a write is admitted only for that node's own Lease, whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseWriters {
    /// No node identity, no write: on API servers older than 1.30 no agent can publish (its
    /// verdicts then never protect); the safe choice once every API server is 1.30+.
    RequireNodeIdentity,
    /// No node identity: the agent's service account (`agentServiceAccount`, in the Lease's
    /// namespace) may write any verdict Lease; everyone else is refused. On older API servers
    /// an agent (or whoever holds its token) can then write another node's verdict.
    #[default]
    AllowServiceAccount,
}

/// The `nodeProtection` policy section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeProtectionPolicy {
    pub mode: ProtectionMode,
    pub manual_backups: ManualBackups,
    /// Requests this check does not apply to (the top-level `exemptions` also do).
    pub exemptions: Exemptions,
    /// When a node is `degrading` or `leaking` (read by the agent).
    pub thresholds: node_verdict::Thresholds,
    pub lease_writers: LeaseWriters,
    /// The agent's service account: a name in the verdict Leases' namespace (the DaemonSet),
    /// or `namespace:name` for an agent running elsewhere (the longhorn-manager sidecar:
    /// `longhorn-system:longhorn-service-account`).
    pub agent_service_account: String,
}

/// The agent's service account in the manifests.
pub const DEFAULT_AGENT_SERVICE_ACCOUNT: &str = "longhorn-guard-agent";

impl Default for NodeProtectionPolicy {
    fn default() -> Self {
        Self {
            mode: ProtectionMode::Enforce,
            manual_backups: ManualBackups::Deny,
            exemptions: Exemptions::default(),
            thresholds: node_verdict::Thresholds::default(),
            lease_writers: LeaseWriters::AllowServiceAccount,
            agent_service_account: DEFAULT_AGENT_SERVICE_ACCOUNT.to_string(),
        }
    }
}

impl NodeProtectionPolicy {
    /// The username the agent writes verdict Leases in `lease_namespace` as.
    pub fn agent_username(&self, lease_namespace: &str) -> String {
        match self.agent_service_account.split_once(':') {
            Some((namespace, name)) => format!("system:serviceaccount:{namespace}:{name}"),
            None => format!(
                "system:serviceaccount:{lease_namespace}:{}",
                self.agent_service_account
            ),
        }
    }

    /// Checks what serde cannot; the error names the field as written in YAML.
    pub fn validate(&self) -> Result<(), String> {
        self.thresholds.validate().map_err(|e| e.to_string())?;
        let sa = &self.agent_service_account;
        let parts_empty = sa.split(':').any(|part| part.trim().is_empty());
        if parts_empty || sa.matches(':').count() > 1 {
            return Err(format!(
                "nodeProtection.agentServiceAccount {sa:?} must be a name or namespace:name"
            ));
        }
        self.exemptions
            .check_service_accounts("nodeProtection.exemptions")
    }
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::*;

    #[test]
    fn the_section_is_read_with_defaults_and_checked_at_load() {
        let p = Policy::from_yaml(
            "nodeProtection:\n  mode: warn\n  manualBackups: allow-with-warning\n  thresholds:\n    windowSeconds: 60\n",
        )
        .expect("valid policy");
        assert_eq!(p.node_protection.mode, ProtectionMode::Warn);
        assert_eq!(
            p.node_protection.manual_backups,
            ManualBackups::AllowWithWarning
        );
        assert_eq!(p.node_protection.thresholds.window_seconds, 60);
        assert_eq!(
            p.node_protection.lease_writers,
            LeaseWriters::AllowServiceAccount
        );
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            Policy::default().node_protection.mode,
            ProtectionMode::Enforce
        );

        let bad = Policy::from_yaml("nodeProtection:\n  thresholds:\n    windowSeconds: 0\n")
            .expect("parses");
        let err = bad.validate().expect_err("a zero window is refused");
        assert!(
            err.contains("nodeProtection.thresholds.windowSeconds"),
            "{err}"
        );
        let typo = Policy::from_yaml("nodeProtection:\n  mode: enforcing\n")
            .expect_err("an unknown mode is refused");
        assert!(typo.to_string().contains("enforcing"), "{typo}");
        let sa = Policy::from_yaml("nodeProtection:\n  exemptions:\n    serviceAccounts: [bot]\n")
            .expect("parses")
            .validate()
            .expect_err("a service account without namespace is refused");
        assert!(
            sa.contains("nodeProtection.exemptions.serviceAccounts[0]"),
            "{sa}"
        );
    }
}
